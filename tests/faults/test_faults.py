"""Nothing lost, nothing doubled, whatever happens: the pipeline under a live load while
it is SIGKILLed, its databases restarted and its connections cut (see harness.py).

Short variant (part of the normal suite, ~1 min): ``pytest tests/faults``.
Long variant (marked slow, ~16 min): ``pytest tests/faults -m slow`` or
``python -m tests.faults.run --long``.
"""

from __future__ import annotations

import pytest

from tests.faults.harness import LONG, SHORT, FaultRun, Plan


def _run(plan: Plan, fault_servers, tmp_path, capsys) -> None:
    source, serving = fault_servers
    with capsys.disabled():
        print()
        run = FaultRun(plan, source, serving, tmp_path, echo=lambda s: print(s, flush=True))
        report = run.run()
        print(report.render(), flush=True)
    assert report.ok, "\n".join(report.failures)


@pytest.mark.faults
@pytest.mark.timeout(300)
def test_faults_short(fault_servers, tmp_path, capsys):
    _run(SHORT, fault_servers, tmp_path, capsys)  # the report fails unless every planned fault was injected


@pytest.mark.faults
@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_faults_long(fault_servers, tmp_path, capsys):
    _run(LONG, fault_servers, tmp_path, capsys)

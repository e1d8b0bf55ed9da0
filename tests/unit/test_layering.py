"""Engine differences stay inside ``cdcflow.sources``: code elsewhere calls the Source
protocol and never asks which engine it has."""

from __future__ import annotations

import re
from pathlib import Path

import cdcflow

PACKAGE = Path(cdcflow.__file__).parent
SOURCES = PACKAGE / "sources"

#: What asking for the engine looks like: comparing an engine name, testing a source's
#: class, or probing a source for an engine's attribute.
ASKS_ENGINE = [
    (re.compile(r"\bengine\b[\"']?\s*(?:,\s*None\s*\))?\s*[!=]="), "compares an engine name"),
    (re.compile(r"isinstance\([^)]*\b(?:SqlServerSource|PostgresSource)\b"), "tests a source's class"),
    (re.compile(r"hasattr\(\s*(?:self\.)?(?:source|src|one|probe)\b"), "probes a source for an attribute"),
    (re.compile(r"\bis_sqlserver_dsn\b"), "tests the DSN's engine"),
]


def engine_questions(root: Path = PACKAGE) -> list[str]:
    """``file:line: what`` for each place outside ``sources/`` that asks which engine it has."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if SOURCES in path.parents:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for pattern, what in ASKS_ENGINE:
                if pattern.search(line):
                    found.append(f"{path.relative_to(root.parent)}:{number}: {what}: {line.strip()}")
    return found


def test_no_engine_questions_outside_sources():
    found = engine_questions()
    assert not found, "engine differences leak out of cdcflow/sources:\n" + "\n".join(found)


def test_the_check_sees_each_form(tmp_path):
    pkg = tmp_path / "cdcflow"
    (pkg / "sources").mkdir(parents=True)
    (pkg / "sources" / "x.py").write_text('if source.engine == "sqlserver":\n    pass\n')  # allowed there
    (pkg / "a.py").write_text(
        'if source.engine == "sqlserver":\n'
        "    pass\n"
        "ok = isinstance(src, PostgresSource)\n"
        'hasattr(self.source, "serving_version")\n'
        'getattr(source, "engine", None) == "postgres"\n'
        "x = settings.engine != 'postgres'\n"
        "if is_sqlserver_dsn(source_dsn):\n"
    )
    global SOURCES
    saved, SOURCES = SOURCES, pkg / "sources"
    try:
        found = engine_questions(pkg)
    finally:
        SOURCES = saved
    assert [f.split(":")[1] for f in found] == ["1", "3", "4", "5", "6", "7"]
    assert all(f.startswith("cdcflow/a.py:") for f in found)

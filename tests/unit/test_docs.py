"""Every CLI command and every configuration variable is documented (README.md + docs/*.md),
and docs/configuration.md states each variable's default."""

from __future__ import annotations

import argparse
import re
from dataclasses import fields

import pytest

from cdcflow.cli import build_parser
from cdcflow.config import Settings, documented_variables
from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def docs_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in DOCS)


def commands() -> list[str]:
    parser = build_parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert subs, "the CLI has no subcommands?"
    return sorted(subs[0].choices)


def test_docs_exist():
    names = {p.name for p in DOCS}
    assert {"README.md", "architecture.md", "runtime.md", "configuration.md", "operations.md"} <= names


@pytest.mark.parametrize("command", commands())
def test_every_cli_command_is_documented(command):
    assert re.search(rf"`cdcflow {re.escape(command)}\b", docs_text()), (
        f"'cdcflow {command}' is not documented: add it to docs/operations.md's command table"
    )


@pytest.mark.parametrize("variable", sorted(documented_variables()))
def test_every_configuration_variable_is_documented(variable):
    assert f"`{variable}`" in docs_text(), f"{variable} is not documented: add it to docs/configuration.md"


def _default(f) -> str | None:
    d = f.default
    if d is None:
        return None
    if isinstance(d, bool):
        return str(d).lower()
    if isinstance(d, tuple):
        return ",".join(d)
    if isinstance(d, float) and d.is_integer():
        return str(int(d))
    return str(d)


def test_configuration_table_has_every_variable_with_its_default():
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([A-Z_]+)` \| ([^|]*) \|", text, re.M)}
    for f in fields(Settings):
        name = f.metadata["env"]
        assert name in rows, f"{name} has no row in docs/configuration.md"
        want = _default(f)
        if want is not None and name != "STAGING_RETENTION":  # documented as 24h
            assert f"`{want}`" in rows[name], f"{name}: docs say {rows[name].strip()}, the default is {want}"

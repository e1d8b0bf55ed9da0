"""Projection definition files: names, header comments, parsing, and the one line a bad
file gets (it names the file and what is wrong)."""

from __future__ import annotations

import pytest

from cdcflow.errors import DefinitionError
from cdcflow.projections import definition
from cdcflow.projections.definition import parse


def test_the_file_name_names_the_projection_and_its_table():
    assert parse("SELECT 1 AS x FROM t", "a/revenue.sql", "revenue").name == "proj_revenue"
    assert parse("SELECT 1 AS x FROM t", "a/proj_revenue.sql", "proj_revenue").name == "proj_revenue"
    with pytest.raises(DefinitionError, match=r"proj_my-view \(a/my-view.sql\).*letters, digits and single _"):
        parse("SELECT 1 AS x FROM t", "a/my-view.sql", "my-view")
    with pytest.raises(DefinitionError, match="single _"):  # __ separates a projection's state tables
        parse("SELECT 1 AS x FROM t", "a/a__b.sql", "a__b")
    with pytest.raises(DefinitionError, match="at most 48"):
        parse("SELECT 1 AS x FROM t", "a/x.sql", "x" * 60)


def test_header_comments_give_the_key_and_the_mode():
    d = parse("-- Revenue per day\n-- key: Day, region\n-- mode: full\nSELECT 1 AS day FROM t", "f.sql", "rev")
    assert d.key == ("day", "region") and d.mode == "full" and d.description == "Revenue per day"
    d = parse("SELECT 1 AS day FROM t -- key: ignored after the query starts", "f.sql", "rev")
    assert d.key is None and d.mode == "incremental"
    with pytest.raises(DefinitionError, match=r"'-- mode: sometimes' is not one of incremental, full"):
        parse("-- mode: sometimes\nSELECT 1 AS x FROM t", "f.sql", "rev")
    with pytest.raises(DefinitionError, match="names no column"):
        parse("-- key:\nSELECT 1 AS x FROM t", "f.sql", "rev")


@pytest.mark.parametrize(
    "text, message",
    [
        ("SELECT a FROM t WHERE", r"syntax error at line 1, column \d+"),
        ("SELECT a FROM t; SELECT b FROM u", "expected one SELECT statement, found 2 statements"),
        ("DELETE FROM t", "expected a SELECT query, found DELETE"),
        ("", "expected one SELECT statement, found 0"),
    ],
)
def test_a_file_that_is_not_one_query_gets_one_line_naming_it(text, message):
    with pytest.raises(DefinitionError, match=message) as info:
        parse(text, "defs/broken.sql", "broken")
    assert str(info.value).startswith("projection proj_broken (defs/broken.sql): ")
    assert "\n" not in str(info.value)


def test_the_digest_follows_the_query_not_its_comments_or_layout():
    a = parse("-- one\nSELECT a, b FROM t", "f.sql", "x")
    b = parse("-- two\nSELECT a,\n       b   -- trailing words\nFROM t", "f.sql", "x")
    c = parse("SELECT a, b FROM t WHERE a > 1", "f.sql", "x")
    assert a.digest == b.digest != c.digest
    assert parse("-- key: a\nSELECT a, b FROM t", "f.sql", "x").digest != a.digest


def test_the_builtin_definitions_parse():
    for name in definition.BUILTIN:
        d = definition.builtin(name)
        assert d.name == name and d.builtin and d.mode == "incremental"


def test_a_missing_projections_folder_is_one_line(tmp_path):
    with pytest.raises(DefinitionError, match="is not a folder"):
        definition.folder_files(tmp_path / "nope")
    (tmp_path / "b.sql").write_text("SELECT 1 AS x FROM t")
    (tmp_path / "a.sql").write_text("SELECT 1 AS x FROM t")
    (tmp_path / "notes.txt").write_text("not a definition")
    assert [p.name for p in definition.folder_files(tmp_path)] == ["a.sql", "b.sql"]

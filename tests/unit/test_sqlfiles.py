import pytest
from psycopg import sql

from cdcflow import sqlfiles


def test_parse_blocks_names_and_bodies():
    text = "-- name: a\n-- does a\nSELECT 1;\n\n-- name: b\nSELECT {t}\nFROM x;\n"
    blocks = sqlfiles.parse_blocks(text)
    assert blocks == {"a": "SELECT 1", "b": "SELECT {t}\nFROM x"}


def test_duplicate_block_name_rejected():
    with pytest.raises(ValueError, match="duplicate"):
        sqlfiles.parse_blocks("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")


def test_unknown_query_names_the_file():
    with pytest.raises(KeyError, match="serving_runtime.sql"):
        sqlfiles.query("serving_runtime.sql", "nope")


def test_packaged_files_load():
    for path in ("serving_runtime.sql", "source_postgres.sql", "serving_status.sql", "source/30_enable_cdc.sql"):
        assert sqlfiles.queries(path), path
    assert [n for n, _ in sqlfiles.scripts("serving")][:2] == ["00_init.sql", "10_schema.sql"]


def test_identifiers_are_quoted_by_psycopg():
    q = sqlfiles.query(
        "source/30_enable_cdc.sql",
        "alter_publication",
        publication=sql.Identifier('we"ird'),
        tables=sql.Identifier("public", "t"),
    )
    assert '"we""ird"' in q.as_string(None)

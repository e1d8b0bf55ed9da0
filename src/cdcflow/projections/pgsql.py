"""PostgreSQL SQL text as cdcflow reads and writes it: sqlglot's PostgreSQL dialect (with
``date_part`` kept apart from ``extract``), and identifiers quoted the same way for
PostgreSQL and DuckDB."""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.parsers.postgres import PostgresParser


class DatePart(exp.Expression, exp.Func):
    """PostgreSQL's ``date_part(field, source)``: double precision, where ``extract`` is
    numeric (sqlglot's PostgreSQL dialect reads both as ``EXTRACT``)."""

    arg_types = {"this": True, "expression": True}
    _sql_names = ["DATE_PART"]


class PostgresDialect(Postgres):
    """sqlglot's PostgreSQL dialect, but for ``date_part``, read as :class:`DatePart`."""

    class Parser(PostgresParser):
        FUNCTION_PARSERS = {k: v for k, v in PostgresParser.FUNCTION_PARSERS.items() if k != "DATE_PART"}
        FUNCTIONS = {**PostgresParser.FUNCTIONS, "DATE_PART": DatePart.from_arg_list}


def quote(name: str) -> str:
    """An SQL identifier, double-quoted by sqlglot (the same in PostgreSQL and DuckDB)."""
    return exp.to_identifier(name, quoted=True).sql(dialect="postgres")


def parse_pg(text: str) -> exp.Select:
    return sqlglot.parse_one(text, read=PostgresDialect)  # type: ignore[return-value]


def parse_pg_expr(text: str) -> exp.Expr:
    return parse_pg(f"SELECT {text}").expressions[0]

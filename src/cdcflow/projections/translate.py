"""PostgreSQL expressions of a definition, checked against the incremental fragment and
translated for DuckDB so that they mean what they mean in PostgreSQL.

Expressions evaluated before aggregation (WHERE, join filters, GROUP BY keys, aggregate
arguments, the columns of a query without GROUP BY) run in DuckDB. Each construct here is
one whose DuckDB translation gives PostgreSQL's value (or PostgreSQL's error) for every
input: ``tests/integration/test_translation.py`` runs each of them on both engines over
random values. Where the engines differ, the translation says how it bridges the gap:

- ``int / int`` truncates in PostgreSQL: ``//`` in DuckDB; ``float / 0`` is an error in
  PostgreSQL and infinity in DuckDB: an explicit error; ``numeric / numeric`` picks its
  scale per value in PostgreSQL: refused here (divide after aggregating, where PostgreSQL
  computes the result, or cast to float8);
- ``round(float8)`` rounds half to even in PostgreSQL: ``round_even``;
- ``date_trunc`` of a date is a timestamptz in PostgreSQL: the date is cast first;
- ``x::varchar(n)`` truncates in PostgreSQL: ``left(x, n)``;
- ``LIKE`` escapes with backslash by default in PostgreSQL: ``ESCAPE '\\'``;
- ``substr(s, start, n)`` with ``start < 1`` counts from position 1 in PostgreSQL;
- ``concat`` prints a boolean as ``t``/``f`` in PostgreSQL;
- ``extract(second|epoch ...)`` is an exact numeric in PostgreSQL: computed from
  microseconds as a decimal;
- ``numeric`` without a precision is ``DECIMAL(38,16)`` (see :mod:`.pgtypes`).

Expressions over aggregates (the outputs and HAVING of a grouped query) are not
translated: PostgreSQL evaluates them from the stored aggregate state.
"""

from __future__ import annotations

import re

import sqlglot
from sqlglot import exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.parsers.postgres import PostgresParser

from cdcflow.projections.pgtypes import PgType


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


# Constructs refused anywhere in an incremental definition, and why.
_VOLATILE = (
    exp.CurrentTimestamp,
    exp.CurrentDate,
    exp.CurrentTime,
    exp.Localtimestamp,
    exp.Localtime,
    exp.Rand,
    exp.Uuid,
)
_VOLATILE_NAMES = {
    "now",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "timeofday",
    "random",
    "nextval",
    "currval",
    "setval",
    "gen_random_uuid",
    "uuid_generate_v4",
    "txid_current",
    "pg_current_xact_id",
    "current_setting",
    "localtime",
    "current_user",
    "session_user",
    "pg_backend_pid",
}

# What DuckDB evaluates before aggregation: each has a checked translation.
_ALLOWED = (
    exp.Column,
    exp.Identifier,
    exp.Literal,
    exp.Null,
    exp.Boolean,
    exp.Paren,
    exp.Alias,
    exp.Neg,
    exp.Not,
    exp.And,
    exp.Or,
    exp.EQ,
    exp.NEQ,
    exp.GT,
    exp.GTE,
    exp.LT,
    exp.LTE,
    exp.NullSafeEQ,
    exp.NullSafeNEQ,
    exp.Is,
    exp.In,
    exp.Between,
    exp.Like,
    exp.ILike,
    exp.Add,
    exp.Sub,
    exp.Mul,
    exp.Div,
    exp.Mod,
    exp.DPipe,
    exp.Case,
    exp.If,
    exp.Coalesce,
    exp.Nullif,
    exp.Greatest,
    exp.Least,
    exp.Abs,
    exp.Ceil,
    exp.Floor,
    exp.Round,
    exp.Sign,
    exp.Trunc,
    exp.Lower,
    exp.Upper,
    exp.Length,
    exp.Trim,
    exp.Substring,
    exp.Concat,
    exp.Left,
    exp.Right,
    exp.Replace,
    exp.StrPosition,
    exp.TimestampTrunc,
    exp.Extract,
    DatePart,
    exp.Cast,
    exp.DataType,
    exp.DataTypeParam,
    exp.Var,
    exp.Interval,
    exp.MD5,
)
TRUNC_UNITS = {
    "MICROSECOND",
    "MILLISECOND",
    "SECOND",
    "MINUTE",
    "HOUR",
    "DAY",
    "WEEK",
    "MONTH",
    "QUARTER",
    "YEAR",
    "DECADE",
}
EXTRACT_FIELDS = {
    "YEAR",
    "MONTH",
    "DAY",
    "HOUR",
    "MINUTE",
    "SECOND",
    "DOW",
    "DOY",
    "QUARTER",
    "ISODOW",
    "WEEK",
    "ISOYEAR",
    "DECADE",
    "CENTURY",
    "MILLENNIUM",
    "EPOCH",
}
#: date_part's fields: extract's, and its own fractional ones.
DATE_PART_FIELDS = EXTRACT_FIELDS | {"MILLISECONDS", "MICROSECONDS"}
# Types whose text (::text, ||, concat) is the same in both engines.
_TEXT_SAFE = ("text", "integer", "boolean", "numeric", "date", "timestamp", "timestamptz", "uuid", "json")


def quote(name: str) -> str:
    """An SQL identifier, double-quoted by sqlglot (the same in PostgreSQL and DuckDB)."""
    return exp.to_identifier(name, quoted=True).sql(dialect="postgres")


def parse_pg(text: str) -> exp.Select:
    return sqlglot.parse_one(text, read=PostgresDialect)  # type: ignore[return-value]


def parse_pg_expr(text: str) -> exp.Expr:
    return parse_pg(f"SELECT {text}").expressions[0]


def _name(node: exp.Expr) -> str:
    return node.sql(dialect="postgres")[:60]


def refused_anywhere(node: exp.Expr) -> str | None:
    """Why ``node`` keeps any definition out of the incremental fragment (None: it does not)."""
    if isinstance(node, exp.Window):
        return f"window function {_name(node)} is not in the incremental fragment"
    if isinstance(node, exp.With):
        return "WITH (a common table expression) is not in the incremental fragment: write it as one query"
    if isinstance(node, exp.Subquery) and not isinstance(node.parent, (exp.From, exp.Join)):
        return f"subquery {_name(node)} is not in the incremental fragment (only FROM (... UNION ALL ...))"
    if isinstance(node, (exp.Exists, exp.Lateral, exp.Unnest)):
        return f"{node.key.upper()} is not in the incremental fragment"
    if isinstance(node, exp.In) and node.args.get("query") is not None:
        return f"IN (subquery) {_name(node)} is not in the incremental fragment"
    if isinstance(node, (exp.Intersect, exp.Except)):
        return f"{node.key.upper()} is not in the incremental fragment"
    if isinstance(node, _VOLATILE) or (isinstance(node, exp.Anonymous) and node.name.lower() in _VOLATILE_NAMES):
        return f"{_name(node)} changes with time or between calls, so no result of it can be kept incrementally"
    return None


def _kind(node: exp.Expr) -> str:
    """The type class of an operand PostgreSQL typed for us (``typed_operands``)."""
    t = PgType(node.meta.get("pg_type", ""))
    if t.is_integer:
        return "integer"
    if t.is_float:
        return "float"
    if t.is_numeric:
        return "numeric" if t.name != "numeric" else "free_numeric"
    if t.is_timestamptz:
        return "timestamptz"
    if t.is_timestamp:
        return "timestamp"
    if t.name in ("text", "unknown") or t.name.startswith(("character varying", "name")):
        return "text"
    if t.name.startswith("character("):
        return "char"
    if t.name in ("json", "jsonb"):
        return "json"
    if t.name in ("boolean", "date", "uuid", "interval"):
        return t.name
    if t.name.startswith("time"):
        return "time"
    return t.name or "?"


def refused_before_aggregation(node: exp.Expr) -> str | None:
    """Why DuckDB cannot evaluate ``node`` exactly as PostgreSQL does (types aside)."""
    if isinstance(node, exp.AggFunc) or isinstance(node, exp.Filter) or isinstance(node, exp.Distinct):
        return None  # aggregates are taken apart by the plan, never translated whole
    if isinstance(node, exp.Star) and isinstance(node.parent, exp.Count):
        return None
    if not isinstance(node, _ALLOWED):
        what = node.name if isinstance(node, exp.Anonymous) else node.key
        return f"{what}() in {_name(node)} is not in the incremental fragment (see docs/projections.md for the list)"
    if isinstance(node, exp.In) and not all(
        isinstance(e, (exp.Literal, exp.Null, exp.Neg, exp.Cast, exp.Boolean)) for e in node.expressions
    ):
        return f"IN with expressions {_name(node)}: the fragment takes IN (constant, ...)"
    if isinstance(node, exp.TimestampTrunc):
        unit = node.unit.upper() if isinstance(node.unit, str) else node.args["unit"].name.upper()
        if unit.rstrip("S") not in TRUNC_UNITS or node.args.get("zone") is not None:
            return f"date_trunc unit {unit.lower()} in {_name(node)} is not in the fragment"
    if isinstance(node, exp.Extract):
        field = node.this.name.upper()
        if field not in EXTRACT_FIELDS:
            return f"extract field {field.lower()} in {_name(node)} is not in the fragment"
    if isinstance(node, DatePart):
        field = node.this
        if not (isinstance(field, exp.Literal) and field.is_string and field.name.upper() in DATE_PART_FIELDS):
            return (
                f"{_name(node)}: the fragment takes date_part with a constant field among "
                f"{', '.join(sorted(f.lower() for f in DATE_PART_FIELDS))}"
            )
    if isinstance(node, exp.Interval) and not isinstance(node.parent, (exp.Add, exp.Sub)):
        return f"interval {_name(node)}: the fragment adds or subtracts intervals from dates and timestamps only"
    if isinstance(node, exp.Interval) and interval_text(node) is None:
        return (
            f"interval {_name(node)}: write interval constants as '<n> <unit> ...' with units spelled out "
            "(second, minute, hour, day, week, month, year; no abbreviations or ago)"
        )
    if isinstance(node, exp.Trim) and node.args.get("position") not in (None, "BOTH", "LEADING", "TRAILING"):
        return f"{_name(node)} is not in the fragment"
    if isinstance(node, (exp.Left, exp.Right)) and not _nonnegative_literal(node.expression):
        return f"{_name(node)}: the fragment takes a constant, non-negative length"
    return None


def _nonnegative_literal(e: exp.Expr | None) -> bool:
    return isinstance(e, exp.Literal) and not e.is_string and e.this.isdigit()


#: Nodes whose own PostgreSQL type the translation follows: arithmetic is computed in the
#: type PostgreSQL computes it in (``smallint * 2`` is an integer, ``real + 1`` a double,
#: ``real * real`` a real).
_SELF_TYPED = (
    exp.Add,
    exp.Sub,
    exp.Mul,
    exp.Div,
    exp.Mod,
    exp.Neg,
    exp.Abs,
    exp.Ceil,
    exp.Floor,
    exp.Round,
    exp.Trunc,
    exp.Sign,
    exp.Cast,
    exp.Coalesce,
    exp.Nullif,
    exp.Greatest,
    exp.Least,
    exp.Case,
)


def typed_operands(node: exp.Expr) -> list[exp.Expr]:
    """The nodes (``node`` and its operands) whose PostgreSQL types its translation depends on."""
    own: list[exp.Expr] = [node] if isinstance(node, _SELF_TYPED) else []
    if isinstance(node, (exp.Div, exp.Mod, exp.Add, exp.Sub, exp.Mul, exp.DPipe)):
        return [*own, node.this, node.expression]
    if isinstance(node, (exp.Neg, exp.Abs, exp.Ceil, exp.Floor, exp.Trunc, exp.Sign)):
        return [*own, node.this]
    if isinstance(node, (exp.Round, exp.TimestampTrunc, exp.Cast, exp.Extract, DatePart)):
        return [*own, node.expression if isinstance(node, (exp.Extract, DatePart)) else node.this]
    if isinstance(node, exp.Concat):
        return list(node.expressions)
    if isinstance(node, exp.In):
        return [node.this, *node.expressions]
    return own


def refused_for_types(node: exp.Expr) -> str | None:
    """Why the operand types make ``node`` differ between the engines (after typing)."""
    if isinstance(node, exp.Div):
        kinds = {_kind(node.this), _kind(node.expression)}
        if kinds & {"numeric", "free_numeric"} and "float" not in kinds:
            return (
                f"{_name(node)} divides numeric values, whose result scale PostgreSQL chooses per value: divide "
                "after aggregating (sum(a) / sum(b)), or cast an operand to float8"
            )
    if isinstance(node, (exp.Add, exp.Sub, exp.Mul)):
        kinds = {_kind(node.this), _kind(node.expression)}
        if "interval" in kinds and not isinstance(
            node.this if _kind(node.this) == "interval" else node.expression, exp.Interval
        ):
            return f"{_name(node)}: interval values are not carried; add interval constants to dates and timestamps"
        if isinstance(node, exp.Sub) and kinds <= {"timestamp", "timestamptz"} and kinds:
            return f"{_name(node)}: the difference of timestamps is an interval, which is not carried"
    if isinstance(node, exp.Cast):
        return _cast_refused(node)
    if isinstance(node, (exp.DPipe, exp.Concat)):
        ops = [node.this, node.expression] if isinstance(node, exp.DPipe) else list(node.expressions)
        for op in ops:
            if _text_kind(op) not in _TEXT_SAFE:
                return f"{_name(node)}: the text of a {op.meta.get('pg_type')} value differs between the engines"
    if isinstance(node, exp.Extract):
        kind = _kind(node.expression)
        if kind not in ("date", "timestamp", "timestamptz"):
            return f"{_name(node)}: the fragment extracts fields of dates and timestamps"
        if kind == "date" and node.this.name.upper() in ("HOUR", "MINUTE", "SECOND"):
            return f"{_name(node)}: a date has no {node.this.name.lower()} (PostgreSQL refuses it)"
    if isinstance(node, DatePart):
        if _kind(node.expression) not in ("date", "timestamp", "timestamptz"):
            return f"{_name(node)}: the fragment takes date_part of dates and timestamps"
    return None


def _text_kind(op: exp.Expr) -> str:
    k = _kind(op)
    return {"char": "text", "numeric": "numeric", "free_numeric": "free"}.get(k, k)


def _cast_refused(node: exp.Cast) -> str | None:
    source = _kind(node.this)
    target = PgType(node.to.sql(dialect="postgres").lower())
    to = node.to.this
    if isinstance(node.this, exp.Literal) and node.this.is_string:
        source = "literal"  # a constant written as text: both engines parse ISO forms alike
    name = _name(node)
    if isinstance(node.this, exp.Null) and to not in (exp.DataType.Type.CHAR, exp.DataType.Type.NCHAR):
        return None  # a typed NULL is NULL in both engines
    if to in (exp.DataType.Type.CHAR, exp.DataType.Type.NCHAR):
        return f"{name}: casts to character(n) pad with spaces that compare differently; cast to text"
    if to in exp.DataType.TEXT_TYPES:
        if source not in (*_TEXT_SAFE, "char", "literal"):
            return f"{name}: the text of a {node.this.meta.get('pg_type')} value differs between the engines"
        return None
    if source in ("text", "char") and to not in (
        exp.DataType.Type.UUID,
        exp.DataType.Type.JSON,
        exp.DataType.Type.JSONB,
    ):
        # PostgreSQL and DuckDB read text differently: '1.5'::int is an error in PostgreSQL and
        # 2 in DuckDB, ' yes '::boolean true in PostgreSQL and an error in DuckDB, '1e308'::real
        # an error in PostgreSQL and infinity in DuckDB, '1_000'::numeric depends on the version.
        if to in exp.DataType.INTEGER_TYPES:
            return f"{name}: PostgreSQL refuses text like '1.5' as an integer where DuckDB rounds it"
        if to in (
            exp.DataType.Type.DATE,
            exp.DataType.Type.TIMESTAMP,
            exp.DataType.Type.TIMESTAMPTZ,
            exp.DataType.Type.TIMESTAMPLTZ,
        ):
            return f"{name}: PostgreSQL reads many more date formats than DuckDB"
        return f"{name}: PostgreSQL and DuckDB read text as {target.name} differently; cast text only to text"
    if to in exp.DataType.INTEGER_TYPES:
        return None
    if to in (exp.DataType.Type.DECIMAL, exp.DataType.Type.BIGDECIMAL):
        if source == "float":
            return f"{name}: a float converts to numeric with different digits in each engine"
        return None
    if to in (exp.DataType.Type.DOUBLE, exp.DataType.Type.FLOAT, exp.DataType.Type.BOOLEAN):
        return None
    if to in (
        exp.DataType.Type.DATE,
        exp.DataType.Type.TIMESTAMP,
        exp.DataType.Type.TIMESTAMPTZ,
        exp.DataType.Type.TIMESTAMPLTZ,
    ):
        if node.to.expressions and source in ("timestamp", "timestamptz", "time"):
            return f"{name}: casts to a timestamp of fewer digits round differently; cast to timestamp"
        return None
    return f"{name}: casts to {target.name} are not in the fragment"


# -- translation ------------------------------------------------------------------------

_FREE_DECIMAL = exp.DataType.build("DECIMAL(38, 16)")


def decimal_type(pg_type: str) -> exp.DataType | None:
    """The DuckDB decimal carrying PostgreSQL type ``pg_type``; None unless it is numeric."""
    if pg_type == "numeric":
        return _FREE_DECIMAL.copy()
    if pg_type.startswith("numeric("):
        return exp.DataType.build(pg_type.replace("numeric", "DECIMAL"))
    return None


def as_carried(node: exp.Expr, pg_type: str) -> exp.Expr:
    """``node`` (translated) cast to the decimal of ``pg_type`` when that is numeric.

    Where DuckDB unifies the types of several values (CASE, COALESCE, GREATEST, LEAST,
    UNION ALL), decimals of 38 digits with different scales become DECIMAL(38, 0): 3.5
    turns into 4. PostgreSQL's numeric keeps every value's digits; each value is cast to
    the decimal of the type PostgreSQL gives the result."""
    to = decimal_type(pg_type)
    return node if to is None else exp.Cast(this=node, to=to)


def _unify_decimals(node: exp.Expr) -> None:
    own = _own(node)
    if decimal_type(own) is None:
        return
    if isinstance(node, exp.Case):
        for branch in node.args.get("ifs") or []:
            branch.set("true", as_carried(branch.args["true"], own))
        if node.args.get("default") is not None:
            node.set("default", as_carried(node.args["default"], own))
    elif isinstance(node, (exp.Coalesce, exp.Greatest, exp.Least)):
        node.set("this", as_carried(node.this, own))
        node.set("expressions", [as_carried(e, own) for e in node.expressions])


def rewrite(node: exp.Expr) -> exp.Expr:
    """A copy of an expression of the fragment (typed by the plan), translated for DuckDB."""
    return _rewrite(node.copy())


def to_duckdb(node: exp.Expr) -> str:
    """DuckDB SQL for an expression of the fragment (typed by the plan)."""
    return rewrite(node).sql(dialect="duckdb")


def _rewrite(node: exp.Expr) -> exp.Expr:
    for key, value in list(node.args.items()):
        if isinstance(value, exp.Expr):
            node.set(key, _rewrite(value))
        elif isinstance(value, list):
            node.set(key, [_rewrite(v) if isinstance(v, exp.Expr) else v for v in value])
    return _rewrite_node(node)


def _error(message: str) -> exp.Expr:
    return exp.Anonymous(this="error", expressions=[exp.Literal.string(message)])


def _own(node: exp.Expr) -> str:
    return str(node.meta.get("pg_type", ""))


_INT_TYPES = {"smallint": "SMALLINT", "integer": "INTEGER", "bigint": "BIGINT"}
_ARITHMETIC = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod)


def _scale(op: exp.Expr) -> int | None:
    t = str(op.meta.get("pg_type", ""))
    if t == "numeric":
        return 16
    if t.startswith("numeric("):
        return int(t[len("numeric(") : -1].split(",")[1])
    return None


def _operands_as(node: exp.Expr) -> None:
    """Operands computed in the type PostgreSQL computes ``node`` in: an integer result
    from integers of that width (``smallint * 2`` is an integer in PostgreSQL, a smallint
    that overflows in DuckDB); decimals widened to 38 digits (DuckDB multiplies
    ``numeric(10,2)`` values in 64 bits)."""
    own = _own(node)
    for key in ("this", "expression"):
        op = node.args.get(key)
        if op is None:
            continue
        if own in ("double precision", "real") and isinstance(node, _ARITHMETIC):
            # In double precision (DuckDB divides an integer by a float in single precision);
            # a real result is rounded to a float's value after (pg_f4).
            node.set(key, _typed_cast(op, "DOUBLE", "double precision"))
        elif own in _INT_TYPES and _kind(op) == "integer" and _own(op) != own:
            node.set(key, _typed_cast(op, _INT_TYPES[own], own))
        elif PgType(own).is_numeric and isinstance(node, (exp.Add, exp.Sub, exp.Mul)):
            scale = _scale(op)
            if scale is not None:
                node.set(key, _typed_cast(op, f"DECIMAL(38, {scale})", str(op.meta.get("pg_type"))))


def _typed_cast(op: exp.Expr, duck_type: str, pg_type: str) -> exp.Expr:
    """``CAST(op AS duck_type)``, remembered as PostgreSQL type ``pg_type`` (what the rules
    that follow read)."""
    cast = exp.Cast(this=op, to=exp.DataType.build(duck_type))
    cast.meta["pg_type"] = pg_type
    return cast


def _float_checked(node: exp.Expr, kind: str) -> exp.Expr:
    """A float result with PostgreSQL's range checks (overflow and underflow are errors
    there, infinity and zero in DuckDB), in single precision for a ``real`` result."""
    a, b = node.args["this"].copy(), node.args["expression"].copy()
    macro = {exp.Add: "add", exp.Sub: "add", exp.Mul: "mul", exp.Div: "div"}[type(node)]  # type: ignore[index]
    return exp.Anonymous(this=f"pg_{kind}_{macro}", expressions=[node, a, b])


#: DuckDB macros (created on every DuckDB connection cdcflow opens) that give float
#: arithmetic PostgreSQL's errors: float8pl/mi/mul/div and their float4 forms.
MACROS = [
    "CREATE MACRO pg_f8_add(r, a, b) AS CASE WHEN isinf(r) AND NOT isinf(a) AND NOT isinf(b) "
    "THEN error('value out of range: overflow') ELSE r END",
    "CREATE MACRO pg_f8_mul(r, a, b) AS CASE WHEN isinf(r) AND NOT isinf(a) AND NOT isinf(b) "
    "THEN error('value out of range: overflow') WHEN r = 0 AND a <> 0 AND b <> 0 "
    "THEN error('value out of range: underflow') ELSE r END",
    "CREATE MACRO pg_f8_div(r, a, b) AS CASE WHEN isinf(r) AND NOT isinf(a) "
    "THEN error('value out of range: overflow') WHEN r = 0 AND a <> 0 AND NOT isinf(b) "
    "THEN error('value out of range: underflow') ELSE r END",
    "CREATE MACRO pg_f4(r) AS CASE WHEN r <> 0 AND CAST(r AS FLOAT) = 0 "
    "THEN error('value out of range: underflow') ELSE CAST(r AS FLOAT) END",
    "CREATE MACRO pg_f4_add(r, a, b) AS CASE WHEN isinf(CAST(r AS FLOAT)) AND NOT isinf(a) AND NOT isinf(b) "
    "THEN error('value out of range: overflow') ELSE CAST(r AS FLOAT) END",
    "CREATE MACRO pg_f4_mul(r, a, b) AS CASE WHEN r = 0 AND a <> 0 AND b <> 0 "
    "THEN error('value out of range: underflow') ELSE pg_f4(r) END",
    "CREATE MACRO pg_f4_div(r, a, b) AS CASE WHEN r = 0 AND a <> 0 AND NOT isinf(b) "
    "THEN error('value out of range: underflow') ELSE pg_f4(r) END",
]


def _rewrite_node(node: exp.Expr) -> exp.Expr:
    out = _rewrite_kind(node)
    own = _own(node)
    if own == "real" and not isinstance(out, exp.Anonymous) and not isinstance(node, exp.Column):
        # real is carried as a double holding a float's value; a real result is rounded to one.
        return exp.Anonymous(this="pg_f4", expressions=[out])
    return out


def _rewrite_kind(node: exp.Expr) -> exp.Expr:
    own = _own(node)
    _unify_decimals(node)
    if isinstance(node, _ARITHMETIC):
        _operands_as(node)
    if isinstance(node, exp.Div):
        kinds = {_kind(node.this), _kind(node.expression)}
        if kinds == {"integer"}:
            return exp.IntDiv(this=node.this, expression=node.expression)
        a, b = node.this, node.expression
        guarded = exp.Case(
            ifs=[
                exp.If(this=exp.Is(this=a.copy(), expression=exp.Null()), true=exp.Null()),
                exp.If(
                    this=exp.And(
                        this=exp.EQ(this=b.copy(), expression=exp.Literal.number(0)),
                        expression=exp.Not(this=exp.Anonymous(this="isnan", expressions=[a.copy()])),
                    ),
                    true=_error("division by zero"),
                ),
            ],
            default=b,
        )
        node.set("expression", exp.Paren(this=guarded))
    if isinstance(node, (exp.Add, exp.Sub, exp.Mul, exp.Div)) and own in ("double precision", "real"):
        return _float_checked(node, "f8" if own == "double precision" else "f4")
    if isinstance(node, exp.Round) and _kind(node.this) == "float" and node.args.get("decimals") is None:
        return exp.Anonymous(this="round_even", expressions=[node.this, exp.Literal.number(0)])
    if isinstance(node, exp.TimestampTrunc) and _kind(node.this) == "date":
        node.set("this", exp.Cast(this=node.this, to=exp.DataType.build("TIMESTAMPTZ")))
        return node
    if (
        isinstance(node, exp.In)
        and _own(node.this) == "real"
        and not any(_own(e) == "double precision" for e in node.expressions)
    ):
        # PostgreSQL compares x IN (0.1, ...) in the list's common type, real; x = 0.1 in double.
        node.set("this", exp.Cast(this=node.this, to=exp.DataType.build("FLOAT")))
        node.set("expressions", [exp.Cast(this=e, to=exp.DataType.build("FLOAT")) for e in node.expressions])
        return node
    if isinstance(node, exp.Upper):
        # PostgreSQL's upper leaves ß alone (it has no one-letter capital); DuckDB gives ẞ.
        return exp.Replace(this=node, expression=exp.Literal.string("ẞ"), replacement=exp.Literal.string("ß"))
    if isinstance(node, exp.Interval):
        return exp.Cast(this=exp.Literal.string(interval_text(node) or ""), to=exp.DataType.build("INTERVAL"))
    if isinstance(node, exp.Cast):
        to = node.to
        if to.this in (exp.DataType.Type.DECIMAL, exp.DataType.Type.BIGDECIMAL) and not to.expressions:
            node.set("to", _FREE_DECIMAL.copy())
            return node
        if to.this in exp.DataType.TEXT_TYPES and to.expressions:
            length = to.expressions[0].this if isinstance(to.expressions[0], exp.DataTypeParam) else to.expressions[0]
            text = exp.Cast(this=node.this, to=exp.DataType.build("VARCHAR"))
            return exp.Left(this=text, expression=length.copy())
        if to.this == exp.DataType.Type.FLOAT:
            node.set("to", exp.DataType.build("DOUBLE"))  # then rounded to a float's value (pg_f4)
        return node
    if isinstance(node, (exp.Like, exp.ILike)) and not isinstance(node.parent, exp.Escape):
        return exp.Escape(this=node, expression=exp.Literal.string("\\"))
    if isinstance(node, exp.Substring):
        return _substring(node)
    if isinstance(node, exp.Concat):
        node.set("expressions", [_bool_text(e) for e in node.expressions])
        return node
    if isinstance(node, exp.DPipe):
        for key in ("this", "expression"):
            op = node.args[key]
            if _kind(op) not in ("text", "char", "?"):
                node.set(key, exp.Cast(this=op, to=exp.DataType.build("VARCHAR")))
        return node
    if isinstance(node, DatePart):
        return _date_part(node.this.name.upper(), node.expression)
    if isinstance(node, exp.Extract):
        field = node.this.name.upper()
        if field in ("SECOND", "EPOCH"):
            fn = "microsecond" if field == "SECOND" else "epoch_us"
            micros = exp.Cast(
                this=exp.Anonymous(this=fn, expressions=[node.expression]), to=exp.DataType.build("DECIMAL(38, 0)")
            )
            scale = exp.Cast(this=exp.Literal.number("0.000001"), to=exp.DataType.build("DECIMAL(7, 6)"))
            return exp.Paren(this=exp.Mul(this=micros, expression=scale))
        return node
    return node


def _date_part(field: str, source: exp.Expr) -> exp.Expr:
    """``date_part(field, source)`` in the double precision arithmetic PostgreSQL does
    (``timestamp_part_common``): seconds as ``sec + usec / 1000000.0``, which is not always
    ``extract(second ...)::float8``. A date is read as the timestamp of its midnight."""

    def double(e: exp.Expr) -> exp.Expr:
        return exp.Cast(this=e, to=exp.DataType.build("DOUBLE"))

    def number(v: str) -> exp.Expr:
        return double(exp.Literal.number(v))

    if _kind(source) == "date":
        source = exp.Cast(this=source, to=exp.DataType.build("TIMESTAMP"))
    if field == "EPOCH":
        micros = exp.Anonymous(this="epoch_us", expressions=[source])
        return exp.Paren(this=exp.Div(this=double(micros), expression=number("1000000")))
    if field in ("SECOND", "MILLISECONDS", "MICROSECONDS"):
        within = exp.Anonymous(this="microsecond", expressions=[source])  # microseconds of the minute
        sec = double(exp.IntDiv(this=within, expression=exp.Literal.number(1000000)))
        usec = double(exp.Mod(this=within.copy(), expression=exp.Literal.number(1000000)))
        if field == "SECOND":
            value: exp.Expr = exp.Add(this=sec, expression=exp.Div(this=usec, expression=number("1000000")))
        elif field == "MILLISECONDS":
            value = exp.Add(
                this=exp.Mul(this=sec, expression=number("1000")),
                expression=exp.Div(this=usec, expression=number("1000")),
            )
        else:
            value = exp.Add(this=exp.Mul(this=sec, expression=number("1000000")), expression=usec)
        return exp.Paren(this=value)
    extract = exp.Extract(this=exp.var(field), expression=source)
    return double(_rewrite_node(extract))


_INTERVAL_UNITS = ("microsecond", "millisecond", "second", "minute", "hour", "day", "week", "month", "year")
_INTERVAL_PART = re.compile(r"^(-?\d+(?:\.\d+)?) +(" + "|".join(_INTERVAL_UNITS) + r")s?$")


def interval_text(node: exp.Interval) -> str | None:
    """The interval constant as ``'<n> <unit> ...'`` (full unit names, no ``ago``), or None when
    it is written another way (abbreviations, ISO 8601, '1-2'), which the engines read
    differently."""
    text = node.this.name if isinstance(node.this, exp.Literal) else ""
    unit = node.args.get("unit")
    if unit is not None:
        text = f"{text} {unit.name}"
    words = text.lower().split()
    if not words or len(words) % 2:
        return None
    parts = []
    for n, u in zip(words[::2], words[1::2], strict=True):
        m = _INTERVAL_PART.match(f"{n} {u}")
        if m is None:
            return None
        parts.append(f"{m.group(1)} {m.group(2)}")
    return " ".join(parts)


def _bool_text(e: exp.Expr) -> exp.Expr:
    if _kind(e) != "boolean":
        return e
    return exp.Case(
        ifs=[
            exp.If(this=e.copy(), true=exp.Literal.string("t")),
            exp.If(this=exp.Not(this=e.copy()), true=exp.Literal.string("f")),
        ]
    )


def _substring(node: exp.Substring) -> exp.Expr:
    start, length = node.args.get("start"), node.args.get("length")
    s = node.this
    one = exp.Literal.number(1)
    if length is not None and not _nonnegative_literal(length):
        length = exp.Case(  # PostgreSQL refuses a negative length; DuckDB counts it backwards
            ifs=[
                exp.If(
                    this=exp.LT(this=length.copy(), expression=exp.Literal.number(0)),
                    true=_error("negative substring length not allowed"),
                )
            ],
            default=length,
        )
        node.set("length", length)
    if start is None or (_nonnegative_literal(start) and int(start.this) >= 1):
        return node
    if length is None:
        return exp.Substring(this=s, start=exp.Greatest(this=start, expressions=[one]))
    shortened = exp.Greatest(
        this=exp.Sub(this=exp.Add(this=length.copy(), expression=start.copy()), expression=one.copy()),
        expressions=[exp.Literal.number(0)],
    )
    return exp.Case(
        ifs=[
            exp.If(
                this=exp.GTE(this=start.copy(), expression=one.copy()),
                true=exp.Substring(this=s.copy(), start=start.copy(), length=length.copy()),
            )
        ],
        default=exp.Substring(this=s.copy(), start=one.copy(), length=shortened),
    )

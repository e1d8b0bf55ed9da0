"""The incremental fragment of PostgreSQL expressions: which constructs an incremental
projection accepts, and why it refuses the others.

Expressions evaluated before aggregation run in DuckDB (:mod:`.translate`), so each
construct accepted here is one whose translation gives PostgreSQL's value (or PostgreSQL's
error) for every input. Some depend on their operands' types: the plan asks PostgreSQL for
the types of the nodes :func:`typed_operands` names, writes them in ``node.meta["pg_type"]``,
and then asks :func:`refused_for_types`.
"""

from __future__ import annotations

import re

from sqlglot import exp

from cdcflow.projections.pgsql import DatePart
from cdcflow.projections.pgtypes import PgType

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


def type_class(node: exp.Expr) -> str:
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
    if isinstance(node, (exp.Left, exp.Right)) and not nonnegative_literal(node.expression):
        return f"{_name(node)}: the fragment takes a constant, non-negative length"
    return None


def nonnegative_literal(e: exp.Expr | None) -> bool:
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
        kinds = {type_class(node.this), type_class(node.expression)}
        if kinds & {"numeric", "free_numeric"} and "float" not in kinds:
            return (
                f"{_name(node)} divides numeric values, whose result scale PostgreSQL chooses per value: divide "
                "after aggregating (sum(a) / sum(b)), or cast an operand to float8"
            )
    if isinstance(node, (exp.Add, exp.Sub, exp.Mul)):
        kinds = {type_class(node.this), type_class(node.expression)}
        if "interval" in kinds and not isinstance(
            node.this if type_class(node.this) == "interval" else node.expression, exp.Interval
        ):
            return f"{_name(node)}: interval values are not carried; add interval constants to dates and timestamps"
        if isinstance(node, exp.Sub) and kinds <= {"timestamp", "timestamptz"} and kinds:
            return f"{_name(node)}: the difference of timestamps is an interval, which is not carried"
    if isinstance(node, exp.Cast):
        return _cast_refused(node)
    if isinstance(node, (exp.DPipe, exp.Concat)):
        ops = [node.this, node.expression] if isinstance(node, exp.DPipe) else list(node.expressions)
        for op in ops:
            if _texttype_class(op) not in _TEXT_SAFE:
                return f"{_name(node)}: the text of a {op.meta.get('pg_type')} value differs between the engines"
    if isinstance(node, exp.Extract):
        kind = type_class(node.expression)
        if kind not in ("date", "timestamp", "timestamptz"):
            return f"{_name(node)}: the fragment extracts fields of dates and timestamps"
        if kind == "date" and node.this.name.upper() in ("HOUR", "MINUTE", "SECOND"):
            return f"{_name(node)}: a date has no {node.this.name.lower()} (PostgreSQL refuses it)"
    if isinstance(node, DatePart):
        if type_class(node.expression) not in ("date", "timestamp", "timestamptz"):
            return f"{_name(node)}: the fragment takes date_part of dates and timestamps"
    return None


def _texttype_class(op: exp.Expr) -> str:
    k = type_class(op)
    return {"char": "text", "numeric": "numeric", "free_numeric": "free"}.get(k, k)


def _cast_refused(node: exp.Cast) -> str | None:
    source = type_class(node.this)
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
    for amount, unit_word in zip(words[::2], words[1::2], strict=True):
        match = _INTERVAL_PART.match(f"{amount} {unit_word}")
        if match is None:
            return None
        parts.append(f"{match.group(1)} {match.group(2)}")
    return " ".join(parts)

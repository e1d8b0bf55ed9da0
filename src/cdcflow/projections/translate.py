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

import sqlglot
from sqlglot import exp

from cdcflow.projections.pgtypes import PgType

# Constructs refused anywhere in an incremental definition, and why.
_VOLATILE = (exp.CurrentTimestamp, exp.CurrentDate, exp.CurrentTime, exp.Localtimestamp, exp.Rand)
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
# Types whose text (::text, ||, concat) is the same in both engines.
_TEXT_SAFE = ("text", "integer", "boolean", "numeric", "date", "timestamp", "timestamptz", "float", "uuid", "json")


def quote(name: str) -> str:
    """An SQL identifier, double-quoted by sqlglot (the same in PostgreSQL and DuckDB)."""
    return exp.to_identifier(name, quoted=True).sql(dialect="postgres")


def parse_pg(text: str) -> exp.Select:
    return sqlglot.parse_one(text, read="postgres")  # type: ignore[return-value]


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
    if isinstance(node, exp.Interval) and not isinstance(node.parent, (exp.Add, exp.Sub)):
        return f"interval {_name(node)}: the fragment adds or subtracts intervals from dates and timestamps only"
    if isinstance(node, exp.Trim) and node.args.get("position") not in (None, "BOTH", "LEADING", "TRAILING"):
        return f"{_name(node)} is not in the fragment"
    if isinstance(node, (exp.Left, exp.Right)) and not _nonnegative_literal(node.expression):
        return f"{_name(node)}: the fragment takes a constant, non-negative length"
    return None


def _nonnegative_literal(e: exp.Expr | None) -> bool:
    return isinstance(e, exp.Literal) and not e.is_string and e.this.isdigit()


def typed_operands(node: exp.Expr) -> list[exp.Expr]:
    """The operands of ``node`` whose PostgreSQL types its translation depends on."""
    if isinstance(node, (exp.Div, exp.Mod, exp.Add, exp.Sub, exp.Mul, exp.DPipe)):
        return [node.this, node.expression]
    if isinstance(node, (exp.Round, exp.TimestampTrunc, exp.Cast, exp.Extract)):
        return [node.expression if isinstance(node, exp.Extract) else node.this]
    if isinstance(node, exp.Concat):
        return list(node.expressions)
    return []


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
    if isinstance(node, exp.Extract) and _kind(node.expression) not in ("date", "timestamp", "timestamptz"):
        return f"{_name(node)}: the fragment extracts fields of dates and timestamps"
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
    if to in (exp.DataType.Type.CHAR, exp.DataType.Type.NCHAR):
        return f"{name}: casts to character(n) pad with spaces that compare differently; cast to text"
    if to in exp.DataType.TEXT_TYPES:
        if source not in (*_TEXT_SAFE, "char", "literal"):
            return f"{name}: the text of a {node.this.meta.get('pg_type')} value differs between the engines"
        return None
    if to in exp.DataType.INTEGER_TYPES:
        if source in ("text", "char"):
            return f"{name}: PostgreSQL refuses text like '1.5' as an integer where DuckDB rounds it; cast to numeric"
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
        if source in ("text", "char"):
            return f"{name}: PostgreSQL reads many more date formats than DuckDB"
        return None
    return f"{name}: casts to {target.name} are not in the fragment"


# -- translation ------------------------------------------------------------------------

_FREE_DECIMAL = exp.DataType.build("DECIMAL(38, 16)")


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


def _rewrite_node(node: exp.Expr) -> exp.Expr:
    if isinstance(node, exp.Div):
        kinds = {_kind(node.this), _kind(node.expression)}
        if kinds == {"integer"}:
            return exp.IntDiv(this=node.this, expression=node.expression)
        divisor = node.expression
        guarded = exp.Case(
            ifs=[
                exp.If(
                    this=exp.EQ(this=divisor.copy(), expression=exp.Literal.number(0)), true=_error("division by zero")
                )
            ],
            default=divisor,
        )
        return exp.Div(this=node.this, expression=exp.Paren(this=guarded))
    if isinstance(node, exp.Round) and _kind(node.this) == "float" and node.args.get("decimals") is None:
        return exp.Anonymous(this="round_even", expressions=[node.this, exp.Literal.number(0)])
    if isinstance(node, exp.TimestampTrunc) and _kind(node.this) == "date":
        node.set("this", exp.Cast(this=node.this, to=exp.DataType.build("TIMESTAMPTZ")))
        return node
    if isinstance(node, exp.Cast):
        to = node.to
        if to.this in (exp.DataType.Type.DECIMAL, exp.DataType.Type.BIGDECIMAL) and not to.expressions:
            node.set("to", _FREE_DECIMAL.copy())
            return node
        if to.this in exp.DataType.TEXT_TYPES and to.expressions:
            length = to.expressions[0].this if isinstance(to.expressions[0], exp.DataTypeParam) else to.expressions[0]
            text = exp.Cast(this=node.this, to=exp.DataType.build("VARCHAR"))
            return exp.Left(this=text, expression=length.copy())
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
    if start is None or (_nonnegative_literal(start) and int(start.this) >= 1):
        return node
    s = node.this
    one = exp.Literal.number(1)
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

"""Expressions of the incremental fragment (:mod:`.fragment`), typed by the plan,
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

from sqlglot import exp

from cdcflow.projections.fragment import interval_text, nonnegative_literal, type_class
from cdcflow.projections.pgsql import DatePart
from cdcflow.projections.pgtypes import PgType

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
    own = _pg_type_of(node)
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


def _pg_type_of(node: exp.Expr) -> str:
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
    own = _pg_type_of(node)
    for key in ("this", "expression"):
        op = node.args.get(key)
        if op is None:
            continue
        if own in ("double precision", "real") and isinstance(node, _ARITHMETIC):
            # In double precision (DuckDB divides an integer by a float in single precision);
            # a real result is rounded to a float's value after (pg_f4).
            node.set(key, _typed_cast(op, "DOUBLE", "double precision"))
        elif own in _INT_TYPES and type_class(op) == "integer" and _pg_type_of(op) != own:
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
    own = _pg_type_of(node)
    if own == "real" and not isinstance(out, exp.Anonymous) and not isinstance(node, exp.Column):
        # real is carried as a double holding a float's value; a real result is rounded to one.
        return exp.Anonymous(this="pg_f4", expressions=[out])
    return out


def _rewrite_kind(node: exp.Expr) -> exp.Expr:
    """``node`` (its operands translated already) as DuckDB computes it like PostgreSQL."""
    own = _pg_type_of(node)
    _unify_decimals(node)
    if isinstance(node, _ARITHMETIC):
        _operands_as(node)
        return _arithmetic(node, own)
    if isinstance(node, exp.Round) and type_class(node.this) == "float" and node.args.get("decimals") is None:
        return exp.Anonymous(this="round_even", expressions=[node.this, exp.Literal.number(0)])
    if isinstance(node, exp.TimestampTrunc) and type_class(node.this) == "date":
        node.set("this", exp.Cast(this=node.this, to=exp.DataType.build("TIMESTAMPTZ")))
        return node
    if isinstance(node, exp.In) and _pg_type_of(node.this) == "real":
        return _in_real(node)
    if isinstance(node, exp.Upper):
        # PostgreSQL's upper leaves ß alone (it has no one-letter capital); DuckDB gives ẞ.
        return exp.Replace(this=node, expression=exp.Literal.string("ẞ"), replacement=exp.Literal.string("ß"))
    if isinstance(node, exp.Interval):
        return exp.Cast(this=exp.Literal.string(interval_text(node) or ""), to=exp.DataType.build("INTERVAL"))
    if isinstance(node, exp.Cast):
        return _cast(node)
    if isinstance(node, (exp.Like, exp.ILike)) and not isinstance(node.parent, exp.Escape):
        return exp.Escape(this=node, expression=exp.Literal.string("\\"))
    if isinstance(node, exp.Substring):
        return _substring(node)
    if isinstance(node, exp.Concat):
        node.set("expressions", [_bool_text(e) for e in node.expressions])
        return node
    if isinstance(node, exp.DPipe):
        return _dpipe(node)
    if isinstance(node, DatePart):
        return _date_part(node.this.name.upper(), node.expression)
    if isinstance(node, exp.Extract):
        return _extract(node)
    return node


def _arithmetic(node: exp.Expr, own: str) -> exp.Expr:
    """``+ - * / %`` with PostgreSQL's integer division, its division by zero error, and
    its float range checks."""
    if isinstance(node, exp.Div):
        if {type_class(node.this), type_class(node.expression)} == {"integer"}:
            return exp.IntDiv(this=node.this, expression=node.expression)
        node.set("expression", exp.Paren(this=_zero_divisor_checked(node.this, node.expression)))
    if isinstance(node, (exp.Add, exp.Sub, exp.Mul, exp.Div)) and own in ("double precision", "real"):
        return _float_checked(node, "f8" if own == "double precision" else "f4")
    return node


def _zero_divisor_checked(dividend: exp.Expr, divisor: exp.Expr) -> exp.Expr:
    """The divisor, or PostgreSQL's division by zero error when it is 0 (NULL / 0 is NULL,
    NaN / 0 is NaN)."""
    return exp.Case(
        ifs=[
            exp.If(this=exp.Is(this=dividend.copy(), expression=exp.Null()), true=exp.Null()),
            exp.If(
                this=exp.And(
                    this=exp.EQ(this=divisor.copy(), expression=exp.Literal.number(0)),
                    expression=exp.Not(this=exp.Anonymous(this="isnan", expressions=[dividend.copy()])),
                ),
                true=_error("division by zero"),
            ),
        ],
        default=divisor,
    )


def _in_real(node: exp.In) -> exp.Expr:
    """``x IN (...)`` of a real ``x``: PostgreSQL compares x IN (0.1, ...) in the list's
    common type, real (x = 0.1 compares in double precision)."""
    if any(_pg_type_of(e) == "double precision" for e in node.expressions):
        return node
    node.set("this", exp.Cast(this=node.this, to=exp.DataType.build("FLOAT")))
    node.set("expressions", [exp.Cast(this=e, to=exp.DataType.build("FLOAT")) for e in node.expressions])
    return node


def _cast(node: exp.Cast) -> exp.Expr:
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


def _dpipe(node: exp.DPipe) -> exp.Expr:
    """``a || b``: an operand that is not text is cast to text first."""
    for key in ("this", "expression"):
        operand = node.args[key]
        if type_class(operand) not in ("text", "char", "?"):
            node.set(key, exp.Cast(this=operand, to=exp.DataType.build("VARCHAR")))
    return node


def _extract(node: exp.Extract) -> exp.Expr:
    """``extract(second|epoch ...)`` as an exact decimal computed from microseconds."""
    field = node.this.name.upper()
    if field not in ("SECOND", "EPOCH"):
        return node
    fn = "microsecond" if field == "SECOND" else "epoch_us"
    micros = exp.Cast(
        this=exp.Anonymous(this=fn, expressions=[node.expression]), to=exp.DataType.build("DECIMAL(38, 0)")
    )
    scale = exp.Cast(this=exp.Literal.number("0.000001"), to=exp.DataType.build("DECIMAL(7, 6)"))
    return exp.Paren(this=exp.Mul(this=micros, expression=scale))


def _date_part(field: str, source: exp.Expr) -> exp.Expr:
    """``date_part(field, source)`` in the double precision arithmetic PostgreSQL does
    (``timestamp_part_common``): seconds as ``sec + usec / 1000000.0``, which is not always
    ``extract(second ...)::float8``. A date is read as the timestamp of its midnight."""

    def double(e: exp.Expr) -> exp.Expr:
        return exp.Cast(this=e, to=exp.DataType.build("DOUBLE"))

    def number(v: str) -> exp.Expr:
        return double(exp.Literal.number(v))

    if type_class(source) == "date":
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


def _bool_text(e: exp.Expr) -> exp.Expr:
    if type_class(e) != "boolean":
        return e
    return exp.Case(
        ifs=[
            exp.If(this=e.copy(), true=exp.Literal.string("t")),
            exp.If(this=exp.Not(this=e.copy()), true=exp.Literal.string("f")),
        ]
    )


def _substring(node: exp.Substring) -> exp.Expr:
    start, length = node.args.get("start"), node.args.get("length")
    text = node.this
    one = exp.Literal.number(1)
    if length is not None and not nonnegative_literal(length):
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
    if start is None or (nonnegative_literal(start) and int(start.this) >= 1):
        return node
    if length is None:
        return exp.Substring(this=text, start=exp.Greatest(this=start, expressions=[one]))
    shortened = exp.Greatest(
        this=exp.Sub(this=exp.Add(this=length.copy(), expression=start.copy()), expression=one.copy()),
        expressions=[exp.Literal.number(0)],
    )
    return exp.Case(
        ifs=[
            exp.If(
                this=exp.GTE(this=start.copy(), expression=one.copy()),
                true=exp.Substring(this=text.copy(), start=start.copy(), length=length.copy()),
            )
        ],
        default=exp.Substring(this=text.copy(), start=one.copy(), length=shortened),
    )

"""PostgreSQL column types as incremental projections carry them: Arrow (hence DuckDB)
types, and values rendered back into PostgreSQL array literals.

A type comes from the serving catalog as ``format_type`` prints it (``numeric(18,2)``,
``timestamp without time zone``, ``character varying(20)``). Each supported type maps to
an Arrow type that holds every value of it exactly; a column of any other type stops a
definition with a line naming the column and its type (full recompute, which runs in
PostgreSQL itself, takes every type).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

#: ``numeric`` without a precision: DuckDB's decimals have a fixed scale, so values go in
#: with this one. A value that does not fit exactly stops the cycle with an error (the
#: CSV reader refuses to round); none is ever rounded silently.
FREE_NUMERIC = pa.decimal128(38, 16)
MAX_DECIMAL_PRECISION = 38
LSN = pa.decimal128(25, 0)

_NUMERIC_RE = re.compile(r"^numeric\((\d+),(\d+)\)$")
_TIMESTAMP_RE = re.compile(r"^timestamp(?:\(\d\))? with(out)? time zone$")
_TIME_RE = re.compile(r"^time(?:\(\d\))? without time zone$")
_TEXT_RE = re.compile(r"^(text|character varying(\(\d+\))?|character(\(\d+\))?|name|uuid|jsonb?|citext)$")

_FIXED: dict[str, pa.DataType] = {
    "boolean": pa.bool_(),
    "smallint": pa.int16(),
    "integer": pa.int32(),
    "bigint": pa.int64(),
    "real": pa.float32(),
    "double precision": pa.float64(),
    "date": pa.date32(),
    "numeric": FREE_NUMERIC,
}

SUPPORTED = (
    "boolean, smallint, integer, bigint, real, double precision, numeric(p,s) (p <= 38), numeric, text, "
    "character varying(n), character(n), uuid, json, jsonb, date, time, timestamp, timestamptz"
)


class UnsupportedType(ValueError):
    """A PostgreSQL type incremental projections do not carry."""


@dataclass(frozen=True)
class PgType:
    """One PostgreSQL type, as ``format_type`` prints it."""

    name: str

    @property
    def arrow(self) -> pa.DataType:
        return arrow_type(self.name)

    @property
    def is_integer(self) -> bool:
        return self.name in ("smallint", "integer", "bigint")

    @property
    def is_float(self) -> bool:
        return self.name in ("real", "double precision")

    @property
    def is_numeric(self) -> bool:
        return self.name == "numeric" or self.name.startswith("numeric(")

    @property
    def is_text(self) -> bool:
        return bool(_TEXT_RE.match(self.name)) and self.name not in ("uuid", "json", "jsonb")

    @property
    def is_json(self) -> bool:
        return self.name in ("json", "jsonb")

    @property
    def is_date(self) -> bool:
        return self.name == "date"

    @property
    def is_timestamp(self) -> bool:
        return bool(_TIMESTAMP_RE.match(self.name))

    @property
    def is_timestamptz(self) -> bool:
        return self.is_timestamp and "without" not in self.name

    @property
    def element(self) -> str:
        """The type as an array element in a cast (``bigint`` -> ``bigint[]``)."""
        return self.name


def arrow_type(pg: str) -> pa.DataType:
    """The Arrow type that holds every value of PostgreSQL type ``pg`` exactly."""
    if pg in _FIXED:
        return _FIXED[pg]
    m = _NUMERIC_RE.match(pg)
    if m:
        precision, scale = int(m.group(1)), int(m.group(2))
        if precision > MAX_DECIMAL_PRECISION:
            raise UnsupportedType(f"{pg} (DuckDB's decimals hold at most {MAX_DECIMAL_PRECISION} digits)")
        return pa.decimal128(precision, scale)
    m = _TIMESTAMP_RE.match(pg)
    if m:
        return pa.timestamp("us") if m.group(1) else pa.timestamp("us", tz="UTC")
    if _TIME_RE.match(pg):
        return pa.time64("us")
    if _TEXT_RE.match(pg):
        return pa.string()
    raise UnsupportedType(pg)


def arrow_schema(columns: list[tuple[str, str]]) -> pa.Schema:
    """An Arrow schema for ``(name, PostgreSQL type)`` columns."""
    return pa.schema([(name, arrow_type(pg)) for name, pg in columns])


def _quoted(text: pa.Array) -> pa.Array:
    """Array-literal elements: backslashes and double quotes escaped, then double-quoted."""
    text = pc.replace_substring(text, "\\", "\\\\")
    text = pc.replace_substring(text, '"', '\\"')
    return pc.binary_join_element_wise('"', text, '"', "")


def array_literal(values: pa.Array | pa.ChunkedArray) -> str:
    """Non-NULL ``values`` as a PostgreSQL array literal (``{1,2}``, ``{"a","b\\"c"}``), built
    in Arrow: a cast to ``<type>[]`` in the query gives it its element type."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    values = pc.drop_null(values)
    if len(values) == 0:
        return "{}"
    t = values.type
    if pa.types.is_timestamp(t) and t.tz is not None:
        values = values.cast(pa.timestamp(t.unit))  # the same UTC instants; the session is UTC
    text = values.cast(pa.string())
    if not (pa.types.is_integer(t) or pa.types.is_decimal(t)):
        text = _quoted(text)
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(text)], pa.int32()), text), ",")
    return "{" + joined[0].as_py() + "}"

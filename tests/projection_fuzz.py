"""Differential fuzzer for SQL projections: random schemas, random queries of the
incremental fragment, random workloads; after every cycle each projection table must
equal the same query run on the source PostgreSQL (``/work/shared/PROJECTIONS.md``,
"How it is proven").

A *scenario* is one random schema (2-4 tables with int/bigint keys, sometimes two-column
keys, foreign-key-like columns, NULLs, varied types), its initial rows, a few random
queries (one projection file each: a *case*) and a random workload in cycles (inserts,
updates that move join and group keys, deletes, transactions across tables, rolled-back
transactions). Expected values come only from running each query on the source.

Generation draws nothing but bounded integers, through a :class:`Draw`:

- :class:`RandomDraw` (a seed): the CI's fixed seeds and the long runs. It records its
  draws, which are exactly a hypothesis choice sequence of the same generator run by
- :class:`HypothesisDraw` (hypothesis strategies, :func:`scenarios`): so a failing seed
  shrinks with hypothesis (:func:`shrink_seed`) to a minimal query and workload.

Two ways of running a scenario:

- :func:`run_scenario`: the engine's cycles in process against real PostgreSQL (staging
  with the real ingest worker, :class:`tests.stager.Stager`), compared after every cycle;
- :func:`run_scenario_pipeline`: ``cdcflow run`` as a subprocess, SIGKILLed at random
  moments and restarted while the workload runs; compared at quiescence.

The engine bugs it found have minimal reproductions (:data:`REGRESSIONS`); what the engine
refuses or cannot carry fails with one clear line (:data:`LIMITS`).

CLI (the long run)::

    python -m tests.projection_fuzz --cases 10000 --seed 1 [--server system|embedded]
        [--pipeline-every 25] [--json counts.json]
    python -m tests.projection_fuzz --show 1000017            # the scenario of a seed
    python -m tests.projection_fuzz --replay 1000017 [--pipeline]   # run it, verbose
    python -m tests.projection_fuzz --shrink 1000017          # minimal reproduction (minutes)
    python -m tests.projection_fuzz --repros                  # REGRESSIONS and LIMITS

Seeds of a run are ``seed * 1000000 + n``; the system server is CDCFLOW_TEST_PG_DSN (or
postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from tests.pgutil import drop_slot

T = TypeVar("T")

# -- draws ------------------------------------------------------------------------------


class Draw:
    """Bounded integers; everything else is derived from them. 0 is always the simplest
    choice (hypothesis shrinks towards it): the first option, "no", the lower bound."""

    size = 0  # roughly hypothesis' measure of the choices so far (it refuses > 8 KiB)

    def int(self, lo: int, hi: int) -> int:
        raise NotImplementedError

    def _count(self, v: int) -> int:
        self.size += 2 + abs(v).bit_length() // 8
        return v

    def chance(self, p: float) -> bool:
        if p <= 0:
            return False
        return self.int(0, 99) >= 100 - round(p * 100)

    def pick(self, items: Sequence[T]) -> T:
        return items[self.int(0, len(items) - 1)] if len(items) > 1 else items[0]

    def weighted(self, options: Sequence[tuple[float, T]]) -> T:
        options = [(w, v) for w, v in options if w > 0]
        if len(options) == 1:
            return options[0][1]
        scale = [max(1, round(w * 10)) for w, _ in options]
        v = self.int(0, sum(scale) - 1)
        for s, (_, value) in zip(scale, options, strict=True):
            if v < s:
                return value
            v -= s
        raise AssertionError("unreachable")

    def sub(self, fn: Callable[[Draw], T]) -> T:
        """``fn(draw)``: for hypothesis, a span of its own (the shrinker deletes spans)."""
        return fn(self)

    def many(self, lo: int, hi: int, p: float, item: Callable[[Draw, int], T | None]) -> list[T]:
        """At least ``lo`` items, one more while a draw says so, at most ``hi``; each item
        with its "one more?" draw is one span. ``item`` returning None ends the list."""
        out: list[T] = []
        while len(out) < hi:
            i = len(out)

            def one(d: Draw, i: int = i) -> Any:
                if i >= lo and not d.chance(p):
                    return _STOP
                return item(d, i)

            v = self.sub(one)
            if v is _STOP or v is None:
                break
            out.append(v)
        return out

    def repeat(self, lo: int, hi: int, p: float) -> int:
        """lo, then one more while a draw says so (at most hi)."""
        n = lo
        while n < hi and self.chance(p):
            n += 1
        return n


_STOP = object()


class RandomDraw(Draw):
    def __init__(self, seed: int | str) -> None:
        self.rng = random.Random(seed)
        self.choices: list[int] = []

    def int(self, lo: int, hi: int) -> int:
        v = self.rng.randint(lo, hi)
        self.choices.append(v)
        return self._count(v)


class HypothesisDraw(Draw):
    def __init__(self, draw: Callable[[Any], Any]) -> None:
        self.draw = draw

    def int(self, lo: int, hi: int) -> int:
        from hypothesis import strategies as st

        return self._count(self.draw(st.integers(lo, hi)))

    def sub(self, fn: Callable[[Draw], T]) -> T:
        from hypothesis import strategies as st

        parent = self

        @st.composite
        def span(draw: Callable[[Any], Any]) -> Any:
            child = HypothesisDraw(draw)
            child.size = parent.size
            try:
                return fn(child)
            finally:
                parent.size = child.size

        return self.draw(span())


# -- schemas ----------------------------------------------------------------------------

KINDS = ("int", "num", "float", "text", "bool", "date", "ts", "tstz")
CAST_TYPE = {
    "int": "integer",
    "num": "numeric",
    "float": "double precision",
    "text": "text",
    "bool": "boolean",
    "date": "date",
    "ts": "timestamp",
    "tstz": "timestamptz",
}
TEXTS = ["a", "b", "ab", "A", "", "ba", "x y", "abc", "é", "B", " b", "a%", "it's", "zz", "ß"]
DAY0 = dt.date(2024, 2, 26)
TS0 = dt.datetime(2024, 2, 28, 22, 0)
LIKE_PATTERNS = ["a%", "%b", "_", "%", "A%", "a\\%%", "%y%"]
ZONES = [dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)), dt.timezone(dt.timedelta(hours=-8))]


@dataclass
class Col:
    name: str
    type: str
    kind: str
    nullable: bool = True
    ref: str | None = None  # FK-like: the table it references
    ref_col: str | None = None
    big: bool = False  # bigint with large values
    scale: int = 0
    digits: int = 0  # numeric: digits before the point
    length: int = 0  # varchar(n)

    @property
    def is_key_like(self) -> bool:
        return self.ref is not None


@dataclass
class Table:
    name: str
    cols: list[Col]
    key: list[str]

    def col(self, name: str) -> Col:
        return next(c for c in self.cols if c.name == name)

    @property
    def others(self) -> list[Col]:
        return [c for c in self.cols if c.name not in self.key]

    def ddl(self) -> str:
        body = [f"{c.name} {c.type}{'' if c.nullable else ' NOT NULL'}" for c in self.cols]
        body.append(f"PRIMARY KEY ({', '.join(self.key)})")
        return f"CREATE TABLE {self.name} ({', '.join(body)})"


@dataclass
class Schema:
    tables: list[Table]

    def table(self, name: str) -> Table:
        return next(t for t in self.tables if t.name == name)


def gen_schema(d: Draw) -> Schema:
    tables: list[Table] = []
    for i in range(2 + d.int(0, 2)):
        key_type = d.weighted([(3, "integer"), (1, "bigint")])
        cols = [Col("id", key_type, "int", nullable=False)]
        key = ["id"]
        if d.chance(0.2):
            cols.append(Col("k2", "smallint", "int", nullable=False))
            key.append("k2")
        tables.append(Table(f"t{i + 1}", cols, key))
    for t in tables:
        for _ in range(d.weighted([(2, 0), (4, 1), (2, 2)])):
            target = d.pick(tables)
            suffix = ""
            while any(c.name == f"r{target.name[1:]}{suffix}_id" for c in t.cols):
                suffix += "x"
            for kc in target.key:
                ktype = target.col(kc).type
                if d.chance(0.25):
                    ktype = d.pick(["integer", "bigint", "smallint"])
                t.cols.append(Col(f"r{target.name[1:]}{suffix}_{kc}", ktype, "int", ref=target.name, ref_col=kc))
        counters: collections.Counter[str] = collections.Counter()
        for _ in range(d.repeat(2, 6, 0.55)):
            t.cols.append(gen_col(d, counters))
    return Schema(tables)


def gen_col(d: Draw, counters: collections.Counter[str]) -> Col:
    kind = d.weighted(
        [(4, "int"), (3, "num"), (3, "text"), (2, "bool"), (1, "date"), (2, "ts"), (1, "tstz"), (0.6, "float")]
    )
    prefix = {"int": "i", "num": "n", "float": "f", "text": "s", "bool": "b", "date": "d", "ts": "ts", "tstz": "tz"}[
        kind
    ]
    counters[prefix] += 1
    name = f"{prefix}{counters[prefix]}"
    nullable = not d.chance(0.2)
    if kind == "int":
        typ = d.weighted([(3, "integer"), (1, "smallint"), (1.5, "bigint")])
        return Col(name, typ, kind, nullable, big=typ == "bigint" and d.chance(0.4))
    if kind == "num":
        if d.chance(0.1):
            return Col(name, "numeric", kind, nullable, scale=2, digits=6)
        digits, scale = 2 + d.int(0, 4), d.int(0, 3)
        return Col(name, f"numeric({digits + scale},{scale})", kind, nullable, scale=scale, digits=digits)
    if kind == "text":
        if d.chance(0.45):
            n = 1 + d.int(0, 7)
            return Col(name, f"varchar({n})", kind, nullable, length=n)
        return Col(name, "text", kind, nullable)
    return Col(
        name,
        {"float": "double precision", "bool": "boolean", "date": "date", "ts": "timestamp", "tstz": "timestamptz"}[
            kind
        ],
        kind,
        nullable,
    )


def _text(d: Draw) -> str:
    s = d.pick(TEXTS)
    return "NULL" if s == "zz" else s  # text that reads as NULL in a careless CSV parse


def gen_value(d: Draw, col: Col) -> Any:
    if col.nullable and d.chance(0.15):
        return None
    if col.ref is not None:
        if col.ref_col == "k2":
            return 1 + d.int(0, 1) if not d.chance(0.05) else 3
        return 1 + d.int(0, 11) if not d.chance(0.06) else 100 + d.int(0, 2)
    k = col.kind
    if k == "int":
        if col.type == "smallint":
            return d.int(-3, 9)
        if col.big and d.chance(0.4):
            return d.int(-(10**12), 10**12)
        return d.int(-5, 20) if not d.chance(0.05) else d.int(-1000, 1000)
    if k == "num":
        if d.chance(0.6):
            v = Decimal(d.int(-2, 8))
            if col.scale and d.chance(0.5):
                v += Decimal("0.5")
            return v
        limit = min(10 ** (col.digits + col.scale) - 1, 10 ** (col.scale + 2))
        return Decimal(d.int(-(limit // 4), limit)).scaleb(-col.scale)
    if k == "float":
        v = d.int(-40, 40) / 4
        return float("nan") if v == 10 else v
    if k == "text":
        s = _text(d)
        return s[: col.length] if col.length else s
    if k == "bool":
        return d.int(0, 1) == 1
    if k == "date":
        return DAY0 + dt.timedelta(days=d.int(0, 6))
    v = TS0 + dt.timedelta(minutes=13 * d.int(0, 60))
    if d.chance(0.2):
        v += dt.timedelta(seconds=d.int(0, 59), microseconds=d.int(0, 999_999) if d.chance(0.3) else 0)
    if k == "ts":
        return v
    return v.replace(tzinfo=dt.UTC).astimezone(d.pick(ZONES))


# -- expressions -------------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    sql: str
    kind: str
    type: str


@dataclass(frozen=True)
class E:
    sql: str
    kind: str
    free: bool = False  # a numeric without a typmod (its text is not carried)


def q_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _ts_literal(d: Draw) -> str:
    return (TS0 + dt.timedelta(minutes=13 * d.int(0, 60))).strftime("%Y-%m-%d %H:%M:%S")


class ExprGen:
    """Random scalar expressions of the fragment over ``scope`` (the columns in scope)."""

    def __init__(self, d: Draw, scope: list[Ref], max_depth: int = 2, features: set[str] | None = None) -> None:
        self.d = d
        self.scope = scope
        self.max_depth = max_depth
        self.features = features if features is not None else set()

    def kinds(self) -> list[str]:
        return sorted({r.kind for r in self.scope}, key=KINDS.index)

    def col(self, kind: str) -> Ref | None:
        cols = [r for r in self.scope if r.kind == kind]
        return self.d.pick(cols) if cols else None

    def any_kind(self, exclude: Sequence[str] = ()) -> str:
        kinds = [k for k in self.kinds() if k not in exclude]
        return self.d.pick(kinds) if kinds else "int"

    def lit(self, kind: str) -> E:
        d = self.d
        if kind == "int":
            return E(str(d.int(-2, 12)), kind)
        if kind == "num":
            return E(d.pick(["1.5", "0.5", "2", "2.25", "-1.5", "3.0", "10"]), kind, free=True)
        if kind == "float":
            return E(f"CAST({d.pick(['0.5', '2', '-1.25', '3.75', '0'])} AS double precision)", kind)
        if kind == "text":
            return E(q_str(_text(d)), kind)
        if kind == "bool":
            return E(d.pick(["TRUE", "FALSE"]), kind)
        if kind == "date":
            return E(f"DATE '{(DAY0 + dt.timedelta(days=d.int(0, 6))).isoformat()}'", kind)
        if kind == "ts":
            return E(f"TIMESTAMP '{_ts_literal(d)}'", kind)
        return E(f"TIMESTAMPTZ '{_ts_literal(d)}+00'", kind)

    def typed_null(self, kind: str) -> str:
        """A NULL of ``kind``."""
        return f"CAST(NULL AS {CAST_TYPE[kind]})"

    def leaf(self, kind: str) -> E:
        c = self.col(kind)
        if kind == "bool" and (c is None or self.d.chance(0.5)):
            return self._simple_compare()
        if c is None or self.d.chance(0.12):
            return self.lit(kind)
        free = kind == "num" and c.type in ("numeric", "?")
        return E(c.sql, kind, free=free)

    def expr(self, kind: str, depth: int = 0, compound: bool = False) -> E:
        if depth >= self.max_depth or not (compound or self.d.chance(0.4 if depth == 0 else 0.25)):
            return self.leaf(kind)
        options = getattr(self, f"_{kind}")(depth + 1)
        make = self.d.weighted(options)
        e = make()
        return e if e is not None else self.leaf(kind)

    # one option list per kind: (weight, thunk) -----------------------------------------

    def _have(self, kind: str) -> bool:
        return any(r.kind == kind for r in self.scope)

    def _int(self, n: int) -> list[tuple[float, Callable[[], E | None]]]:
        d, x = self.d, lambda: self.expr("int", n)
        return [
            (3, lambda: E(f"({x().sql} {d.pick(['+', '-'])} {x().sql})", "int")),
            (1.5, lambda: E(f"({x().sql} * {d.int(2, 5)})", "int")),
            (0.7, lambda: self._mul_cols()),
            (1.5, lambda: E(f"({x().sql} / {d.pick(['2', '3', '-2', '4'])})", "int")),
            (1, lambda: E(f"({x().sql} % {d.pick(['2', '3', '5'])})", "int")),
            (0.7, lambda: E(f"abs({x().sql})", "int")),
            (0.4, lambda: E(f"(- {x().sql})", "int")),
            (1, lambda: E(f"length({self.expr('text', n).sql})", "int") if self._have("text") else None),
            (
                0.5,
                lambda: (
                    E(f"strpos({self.expr('text', n).sql}, {q_str(d.pick(['a', 'b', ' ']))})", "int")
                    if self._have("text")
                    else None
                ),
            ),
            (1.5, lambda: E(f"coalesce({x().sql}, {x().sql})", "int")),
            (0.5, lambda: E(f"nullif({x().sql}, {self.lit('int').sql})", "int")),
            (0.7, lambda: E(f"{d.pick(['greatest', 'least'])}({x().sql}, {x().sql})", "int")),
            (1.5, lambda: self._case("int", n)),
            (1, lambda: self._cast_to_int(n)),
            (
                0.4,
                lambda: (
                    E(f"({self.expr('date', n).sql} - {self.expr('date', n).sql})", "int")
                    if self._have("date")
                    else None
                ),
            ),
        ]

    def _mul_cols(self) -> E | None:
        cols = [r for r in self.scope if r.kind == "int" and r.type in ("integer", "smallint")]
        if not cols:
            return None
        return E(f"({self.d.pick(cols).sql} * {self.d.pick(cols).sql})", "int")

    def _cast_to_int(self, n: int) -> E | None:
        src = self.d.pick([k for k in ("num", "float", "bool", "int") if self._have(k)] or ["int"])
        target = {"int": "bigint", "num": "bigint"}.get(src, "integer")
        return E(f"CAST({self.expr(src, n).sql} AS {target})", "int")

    def _num(self, n: int) -> list[tuple[float, Callable[[], E | None]]]:
        d, x = self.d, lambda: self.expr("num", n)

        def other() -> E:
            return self.expr(d.pick(["num", "int"]), n)

        return [
            (3, lambda: E(f"({x().sql} {d.pick(['+', '-'])} {other().sql})", "num", True)),
            (1.5, lambda: E(f"({x().sql} * {d.pick(['2', '0.5', '3', '-1'])})", "num", True)),
            (0.7, lambda: E(f"({x().sql} * {self.expr('int', n).sql})", "num", True)),
            (1, lambda: E(f"round({x().sql}, {d.int(0, 2)})", "num", True)),
            (0.5, lambda: E(f"round({x().sql})", "num", True)),
            (0.7, lambda: E(f"{d.pick(['ceil', 'floor', 'abs'])}({x().sql})", "num", True)),
            (1.5, lambda: E(f"coalesce({x().sql}, {self.lit('num').sql})", "num", True)),
            (1, lambda: self._case("num", n)),
            (1.5, lambda: E(f"CAST({other().sql} AS numeric(14,{d.int(0, 3)}))", "num")),
            (1.5, lambda: self._extract(n)),
            (0.5, lambda: E(f"{d.pick(['greatest', 'least'])}({x().sql}, {other().sql})", "num", True)),
        ]

    def _extract(self, n: int) -> E | None:
        kinds = [k for k in ("date", "ts", "tstz") if self._have(k)]
        if not kinds:
            return None
        k = self.d.pick(kinds)
        fields = ["year", "month", "day", "dow", "doy", "quarter", "week", "isodow", "epoch"]
        if k != "date":
            fields += ["hour", "minute", "second", "epoch"]
        return E(f"extract({self.d.pick(fields)} FROM {self.expr(k, n).sql})", "num", True)

    def _date_part(self, n: int) -> E | None:
        """date_part: double precision (extract is numeric), seconds with their fraction."""
        kinds = [k for k in ("date", "ts", "tstz") if self._have(k)]
        if not kinds:
            return None
        k = self.d.pick(kinds)
        fields = ["year", "month", "dow", "epoch", "hour", "second", "milliseconds", "microseconds"]
        return E(f"date_part('{self.d.pick(fields)}', {self.expr(k, n).sql})", "float")

    def _float(self, n: int) -> list[tuple[float, Callable[[], E | None]]]:
        d, x = self.d, lambda: self.expr("float", n)
        return [
            (2, lambda: E(f"({x().sql} {d.pick(['+', '-'])} {x().sql})", "float")),
            (1, lambda: E(f"({x().sql} * {d.pick(['2', '0.5', '-3'])})", "float")),
            (1, lambda: E(f"({x().sql} / {d.pick(['2', '4', '-8'])})", "float")),
            (1.5, lambda: E(f"CAST({self.expr(d.pick(['int', 'num']), n).sql} AS double precision)", "float")),
            (0.7, lambda: E(f"{d.pick(['abs', 'round', 'floor', 'ceil'])}({x().sql})", "float")),
            (1, lambda: E(f"coalesce({x().sql}, {self.lit('float').sql})", "float")),
            (0.7, lambda: self._case("float", n)),
            (0.7, lambda: self._date_part(n)),
        ]

    def _text(self, n: int) -> list[tuple[float, Callable[[], E | None]]]:
        d, x = self.d, lambda: self.expr("text", n)
        return [
            (2, lambda: E(f"{d.pick(['lower', 'upper'])}({x().sql})", "text")),
            (2, lambda: E(f"({x().sql} || {x().sql})", "text")),
            (1.5, lambda: self._text_of(n, "||")),
            (0.7, lambda: self._text_of(n, "concat")),
            (1.5, lambda: E(f"coalesce({x().sql}, {self.lit('text').sql})", "text")),
            (0.7, lambda: E(f"substr({x().sql}, {d.int(0, 2)}, {d.int(1, 3)})", "text")),
            (0.7, lambda: E(f"{d.pick(['left', 'right'])}({x().sql}, {d.int(0, 3)})", "text")),
            (0.5, lambda: E(f"trim({x().sql})", "text")),
            (0.5, lambda: E(f"replace({x().sql}, 'a', 'xy')", "text")),
            (1.5, lambda: self._text_of(n, "cast")),
            (0.7, lambda: E(f"CAST({x().sql} AS varchar({d.int(1, 3)}))", "text")),
            (1, lambda: self._case("text", n)),
            (0.2, lambda: E(f"md5({x().sql})", "text")),
        ]

    def _text_of(self, n: int, how: str) -> E | None:
        kinds = [
            k for k in ("int", "num", "bool", "date", "ts", "tstz", "float") if self._have(k) and k != "float"
        ]  # the text of a float is refused (outside the fragment)
        if not kinds:
            return None
        k = self.d.pick(kinds)
        e = self.expr(k, n)
        if k == "num" and e.free:
            e = E(f"CAST({e.sql} AS numeric(14,2))", "num")
        if how == "cast":
            return E(f"CAST({e.sql} AS text)", "text")
        if how == "concat":
            return E(f"concat({self.expr('text', n).sql}, {e.sql})", "text")
        return E(f"({self.expr('text', n).sql} || {e.sql})", "text")

    def _bool(self, n: int) -> list[tuple[float, Callable[[], E | None]]]:
        d, x = self.d, lambda: self.expr("bool", n)
        return [
            (5, lambda: self._compare(n)),
            (2, lambda: E(f"({self.expr(self.any_kind(), n).sql} IS {d.pick(['', 'NOT '])}NULL)", "bool")),
            (2, lambda: self._in(n)),
            (2, lambda: E(f"({x().sql} {d.pick(['AND', 'OR'])} {x().sql})", "bool")),
            (1, lambda: E(f"(NOT {x().sql})", "bool")),
            (0.7, lambda: self._between(n)),
            (
                0.7,
                lambda: (
                    E(
                        f"({self.expr('text', n).sql} {d.pick(['LIKE', 'ILIKE', 'NOT LIKE'])} "
                        f"{q_str(d.pick(LIKE_PATTERNS))})",
                        "bool",
                    )
                    if self._have("text")
                    else None
                ),
            ),
            (0.7, lambda: self._distinct(n)),
            (0.7, lambda: E(f"coalesce({x().sql}, {d.pick(['TRUE', 'FALSE'])})", "bool")),
            (0.5, lambda: E(f"({x().sql} IS {d.pick(['', 'NOT '])}{d.pick(['TRUE', 'FALSE'])})", "bool")),
            (0.5, lambda: self._case("bool", n)),
        ]

    def _simple_compare(self) -> E:
        """A column compared with a constant (a leaf of kind bool)."""
        d = self.d
        cols = [r for r in self.scope if r.kind != "bool"]
        if not cols:
            return self.lit("bool")
        c = d.pick(cols)
        if d.chance(0.2):
            return E(f"({c.sql} IS {d.pick(['', 'NOT '])}NULL)", "bool")
        return E(f"({c.sql} {d.pick(['=', '<>', '<', '<=', '>', '>='])} {self.lit(c.kind).sql})", "bool")

    def _comparable(self) -> str:
        return self.any_kind()

    def _compare(self, n: int) -> E:
        d = self.d
        k = self._comparable()
        a = self.expr(k, n)
        if k == "bool":
            b = self.expr("bool", n)
            return E(f"({a.sql} {d.pick(['=', '<>'])} {b.sql})", "bool")
        if d.chance(0.55):
            b = self.lit(k)
            if k in ("ts", "date") and d.chance(0.3):  # an untyped literal: typed by the other side
                b = E(q_str(_ts_literal(d) if k == "ts" else (DAY0 + dt.timedelta(days=d.int(0, 6))).isoformat()), k)
        else:
            other = {
                "int": ["int", "num"],
                "num": ["num", "int"],
                "date": ["date", "date", "ts"],
                "ts": ["ts", "ts", "tstz", "date"],
                "tstz": ["tstz", "ts"],
            }.get(k, [k])
            b = self.expr(d.pick(other), n)
        return E(f"({a.sql} {d.pick(['=', '<>', '<', '<=', '>', '>='])} {b.sql})", "bool")

    def _in(self, n: int) -> E:
        d = self.d
        k = self.any_kind(exclude=("bool", "float"))
        items = [self.lit(k).sql for _ in range(d.repeat(1, 4, 0.5))]
        if d.chance(0.12):
            items.append("NULL")
        return E(f"({self.expr(k, n).sql} {d.pick(['IN', 'NOT IN'])} ({', '.join(items)}))", "bool")

    def _between(self, n: int) -> E:
        k = self.any_kind(exclude=("bool",))
        lo, hi = sorted([self.lit(k).sql, self.lit(k).sql])
        return E(f"({self.expr(k, n).sql} {self.d.pick(['', 'NOT '])}BETWEEN {lo} AND {hi})", "bool")

    def _distinct(self, n: int) -> E:
        k = self.any_kind()
        return E(f"({self.expr(k, n).sql} IS {self.d.pick(['', 'NOT '])}DISTINCT FROM {self.expr(k, n).sql})", "bool")

    def _date(self, n: int) -> list[tuple[float, Callable[[], E | None]]]:
        d, x = self.d, lambda: self.expr("date", n)
        return [
            (2, lambda: E(f"CAST({self.expr('ts', n).sql} AS date)", "date") if self._have("ts") else None),
            (1.5, lambda: E(f"({x().sql} {d.pick(['+', '-'])} {d.int(1, 3)})", "date")),
            (1, lambda: E(f"coalesce({x().sql}, {self.lit('date').sql})", "date")),
            (1, lambda: self._case("date", n)),
            (0.5, lambda: E(f"{d.pick(['greatest', 'least'])}({x().sql}, {x().sql})", "date")),
        ]

    def _interval(self) -> str:
        return self.d.pick(
            [
                "INTERVAL '1 hour'",
                "INTERVAL '90 minutes'",
                "INTERVAL '1 day'",
                "INTERVAL '1 month'",
                "INTERVAL '30 seconds'",
            ]
        )

    def _unit(self) -> str:
        return self.d.pick(["hour", "day", "minute", "month", "week", "year", "quarter"])

    def _ts(self, n: int) -> list[tuple[float, Callable[[], E | None]]]:
        d, x = self.d, lambda: self.expr("ts", n)
        return [
            (3, lambda: E(f"date_trunc('{self._unit()}', {x().sql})", "ts")),
            (1.5, lambda: E(f"({x().sql} {d.pick(['+', '-'])} {self._interval()})", "ts")),
            (1, lambda: E(f"CAST({self.expr('date', n).sql} AS timestamp)", "ts") if self._have("date") else None),
            (
                0.7,
                lambda: E(f"({self.expr('date', n).sql} + {self._interval()})", "ts") if self._have("date") else None,
            ),
            (0.7, lambda: E(f"CAST({self.expr('tstz', n).sql} AS timestamp)", "ts") if self._have("tstz") else None),
            (1, lambda: E(f"coalesce({x().sql}, {self.lit('ts').sql})", "ts")),
            (0.7, lambda: self._case("ts", n)),
        ]

    def _tstz(self, n: int) -> list[tuple[float, Callable[[], E | None]]]:
        d, x = self.d, lambda: self.expr("tstz", n)
        return [
            (3, lambda: E(f"date_trunc('{self._unit()}', {x().sql})", "tstz")),
            (1.5, lambda: E(f"({x().sql} {d.pick(['+', '-'])} {self._interval()})", "tstz")),
            (1, lambda: E(f"CAST({self.expr('ts', n).sql} AS timestamptz)", "tstz") if self._have("ts") else None),
            (
                0.7,
                lambda: (
                    E(f"date_trunc('{self._unit()}', {self.expr('date', n).sql})", "tstz")
                    if self._have("date")
                    else None
                ),
            ),
            (1, lambda: E(f"coalesce({x().sql}, {self.lit('tstz').sql})", "tstz")),
        ]

    def _case(self, kind: str, n: int) -> E:
        d = self.d
        whens = " ".join(
            f"WHEN {self.expr('bool', n).sql} THEN {self.expr(kind, n).sql}" for _ in range(d.repeat(1, 2, 0.3))
        )
        default = f" ELSE {self.expr(kind, n).sql}" if d.chance(0.7) else ""
        return E(f"CASE {whens}{default} END", kind, free=kind == "num")


# -- queries -----------------------------------------------------------------------------


@dataclass
class Query:
    name: str
    text: str  # the whole file
    shape: str
    features: set[str] = field(default_factory=set)
    tables: set[str] = field(default_factory=set)

    @property
    def table(self) -> str:
        return f"proj_{self.name}"


@dataclass
class FromClause:
    sql: str
    aliases: list[tuple[str, Table]]
    kinds: list[str]  # join kinds, one per joined alias
    scope: list[Ref]


ALIASES = ["a", "b", "c", "d"]


def _refs(alias: str, t: Table) -> list[Ref]:
    return [Ref(f"{alias}.{c.name}", c.kind, c.type) for c in t.cols]


def _links(
    schema: Schema, e_alias: str, e: Table, x: Table, m2o_only: bool
) -> list[tuple[float, list[tuple[str, str]], str]]:
    """Ways to join a new alias of ``x`` to an earlier alias ``e``: (weight, [(x column,
    e column)], what)."""
    out: list[tuple[float, list[tuple[str, str]], str]] = []
    # e references x: many-to-one on x's whole key
    groups = collections.defaultdict(list)
    for c in e.cols:
        if c.ref == x.name:
            groups[c.name.rsplit("_", 1)[0]].append(c)
    for cols in groups.values():
        out.append((5, [(c.ref_col, c.name) for c in cols], "m2o"))  # type: ignore[misc]
    if m2o_only:
        return out
    groups = collections.defaultdict(list)
    for c in x.cols:
        if c.ref == e.name:
            groups[c.name.rsplit("_", 1)[0]].append(c)
    for cols in groups.values():
        out.append((3, [(c.name, c.ref_col) for c in cols], "o2m"))  # type: ignore[misc]
    for cx in x.cols:
        for ce in e.cols:
            if cx.ref and cx.ref == ce.ref and cx.ref_col == ce.ref_col == "id":
                out.append((1, [(cx.name, ce.name)], "m2m"))
    same = [
        (cx.name, ce.name)
        for cx in x.others
        for ce in e.others
        if cx.kind == ce.kind and not cx.ref and not ce.ref and cx.kind in ("int", "text", "num", "date", "bool")
    ]
    if same:
        out.append((1, [same[0]], "m2m"))
        out.append((1, [same[-1]], "m2m"))
    out.append((0.7, [("id", "id")], "key"))
    return out


def gen_from(
    d: Draw,
    schema: Schema,
    features: set[str],
    max_items: int = 4,
    m2o_only: bool = False,
) -> FromClause:
    drive = d.pick(schema.tables)
    aliases = [(ALIASES[0], drive)]
    parts = [f"{drive.name} {ALIASES[0]}"]
    kinds: list[str] = []
    n_more = d.weighted([(3, 0), (4, 1), (2.5, 2), (1, 3)])
    for i in range(1, 1 + min(n_more, max_items - 1)):
        alias = ALIASES[i]
        options = []
        for e_alias, e in aliases:
            for x in schema.tables:
                for w, pairs, what in _links(schema, e_alias, e, x, m2o_only):
                    options.append((w, (e_alias, e, x, pairs, what)))
        if not options:
            break
        e_alias, e, x, pairs, what = d.weighted(options)
        if m2o_only:
            kind = d.weighted([(1, "inner"), (1, "left")])
        else:
            kind = d.weighted([(4, "inner"), (4, "left"), (1.5, "right"), (1.5, "full")])
        conds = [f"{alias}.{xc} = {e_alias}.{ec}" for xc, ec in pairs]
        features.add(f"join:{kind}")
        features.add(f"link:{what}")
        if any(t is x for _, t in aliases):
            features.add("self-join")
        if i >= 2 and d.chance(0.15):
            o_alias, o = d.pick(aliases[:-1]) if len(aliases) > 1 else aliases[0]
            same = [(cx.name, co.name) for cx in x.cols for co in o.cols if cx.kind == co.kind == "int"]
            if same and o_alias != e_alias:
                xc, oc = d.pick(same)
                conds.append(f"{alias}.{xc} = {o_alias}.{oc}")
                features.add("join:two-edges")
        if d.chance(0.2):
            side_alias, side = (alias, x) if d.chance(0.6) else d.pick(aliases)
            g = ExprGen(d, _refs(side_alias, side), max_depth=1)
            conds.append(g.leaf("bool").sql if d.chance(0.6) else g._compare(1).sql)
            features.add("join:filter")
        join_kw = {"inner": "JOIN", "left": "LEFT JOIN", "right": "RIGHT JOIN", "full": "FULL JOIN"}[kind]
        parts.append(f"{join_kw} {x.name} {alias} ON {' AND '.join(conds)}")
        aliases.append((alias, x))
        kinds.append(kind)
    scope = [r for a, t in aliases for r in _refs(a, t)]
    return FromClause(" ".join(parts), aliases, kinds, scope)


def _where(d: Draw, scope: list[Ref], features: set[str], p: float = 0.5) -> str:
    if not d.chance(p):
        return ""
    features.add("where")
    return " WHERE " + ExprGen(d, scope, max_depth=3).expr("bool", 0, compound=True).sql


def _outputs(d: Draw, scope: list[Ref], n: int, prefix: str = "e") -> list[str]:
    g = ExprGen(d, scope)
    out = []
    for i in range(n):
        kind = g.any_kind() if d.chance(0.6) else d.pick(KINDS)
        out.append(f"{g.expr(kind).sql} AS {prefix}{i}")
    return out


def _key_cols(aliases: list[tuple[str, Table]]) -> list[tuple[str, str]]:
    return [(f"{a}.{k}", f"{a}_{k}") for a, t in aliases for k in t.key]


def gen_rows(d: Draw, schema: Schema, features: set[str]) -> tuple[str, str, list[str] | None]:
    """A query without GROUP BY: (shape, SQL, declared key or None)."""
    mode = d.weighted([(3, "drive"), (3, "all"), (1.2, "union"), (0.4, "star")])
    if mode == "star":
        t = d.pick(schema.tables)
        return "rows/star", f"SELECT * FROM {t.name}" + _where(d, _refs(t.name, t), features), None
    if mode == "union":
        return gen_rows_union(d, schema, features)
    f = gen_from(d, schema, features, m2o_only=mode == "drive")
    keys = _key_cols(f.aliases[:1] if mode == "drive" else f.aliases)
    items = [f"{s} AS {n}" for s, n in keys] + _outputs(d, f.scope, d.repeat(1, 4, 0.5))
    if d.chance(0.2):
        i = d.int(0, len(items) - 1)
        items.insert(i, items.pop())  # the key need not come first
    declared = [n for _, n in keys] if d.chance(0.35) else None
    return f"rows/{mode}", f"SELECT {', '.join(items)} FROM {f.sql}" + _where(d, f.scope, features), declared


def _slot_kind(d: Draw, froms: list[FromClause], allowed: Sequence[str]) -> str:
    """A kind for a UNION ALL column: one the branches have columns of, mostly."""
    kinds = [k for k in allowed if all(any(r.kind == k for r in f.scope) for f in froms)]
    some = [k for k in allowed if any(r.kind == k for r in froms[0].scope)]
    return d.pick(kinds or some or ["int"]) if d.chance(0.9) else d.pick(list(allowed))


def gen_rows_union(d: Draw, schema: Schema, features: set[str]) -> tuple[str, str, list[str] | None]:
    nb = d.repeat(2, 3, 0.3)
    froms = [gen_from(d, schema, features, max_items=2) for _ in range(nb)]
    nkeys = max(len(_key_cols(f.aliases)) for f in froms)
    slots = [_slot_kind(d, froms, KINDS) for _ in range(d.repeat(1, 3, 0.5))]
    branches = []
    for bi, f in enumerate(froms):
        keys = [s for s, _ in _key_cols(f.aliases)]
        keys += ["0"] * (nkeys - len(keys))
        g = ExprGen(d, f.scope)
        vals = [g.expr(k).sql if d.chance(0.9) else g.typed_null(k) for k in slots]
        cols = [f"{bi + 1}", *keys, *vals]
        if bi == 0:
            names = ["br", *(f"k{i}" for i in range(nkeys)), *(f"e{i}" for i in range(len(slots)))]
            cols = [f"{c} AS {n}" for c, n in zip(cols, names, strict=True)]
        branches.append(f"SELECT {', '.join(cols)} FROM {f.sql}" + _where(d, f.scope, features))
    features.add("union")
    return "rows/union", " UNION ALL ".join(branches), ["br", *(f"k{i}" for i in range(nkeys))]


AGG_ARG_KINDS = {
    "count": KINDS,
    "count_distinct": KINDS,
    "sum": ("int", "num", "float"),
    "avg": ("int", "num", "float"),
    "min": ("int", "num", "text", "date", "ts", "tstz", "float"),
    "max": ("int", "num", "text", "date", "ts", "tstz", "float"),
    "bool_and": ("bool",),
    "bool_or": ("bool",),
}


def _agg_kind(fn: str, arg: str) -> str:
    if fn in ("count", "count_star", "count_distinct"):
        return "int"
    if fn == "sum":
        return arg
    if fn == "avg":
        return "float" if arg == "float" else "num"
    if fn in ("bool_and", "bool_or"):
        return "bool"
    return arg


class AggGen:
    """Aggregates (and expressions over them) over ``scope``."""

    def __init__(self, d: Draw, scope: list[Ref], features: set[str], group_exprs: list[E]) -> None:
        self.d = d
        self.g = ExprGen(d, scope, max_depth=2)
        self.features = features
        self.args: list[E] = []
        self.group_exprs = group_exprs

    def agg(self) -> E:
        d, g = self.d, self.g
        fn = d.weighted(
            [
                (3, "count_star"),
                (2, "count"),
                (4, "sum"),
                (2, "avg"),
                (2.5, "min"),
                (2.5, "max"),
                (2, "count_distinct"),
                (1, "bool_and"),
                (1, "bool_or"),
            ]
        )
        self.features.add(f"agg:{fn}")
        if fn == "count_star":
            call, kind = "count(*)", "int"
        else:
            allowed = AGG_ARG_KINDS[fn]
            reuse = [a for a in self.args if a.kind in allowed]
            if reuse and d.chance(0.3):
                arg = d.pick(reuse)
            else:
                kinds = [k for k in g.kinds() if k in allowed] or list(allowed)
                arg = g.expr(d.pick(kinds), 1 if d.chance(0.6) else 0)
                self.args.append(arg)
            if fn == "avg" and arg.kind == "num" and arg.free:
                # The engine refuses avg of a numeric without a typmod (its result scale
                # depends on the inputs' scales): outside the fragment, as documented.
                arg = E(f"CAST({arg.sql} AS numeric(20,4))", "num")
            kind = _agg_kind(fn, arg.kind)
            if fn == "count_distinct":
                call = f"count(DISTINCT {arg.sql})"
            else:
                call = f"{fn}({arg.sql})"
        if d.chance(0.2):
            call += f" FILTER (WHERE {g.expr('bool', 1).sql})"
            self.features.add("agg:filter")
        return E(call, kind, free=True)

    def output(self) -> E:
        d = self.d
        a = self.agg()
        if not d.chance(0.3):
            return a
        self.features.add("post-aggregate")
        options: list[tuple[float, Callable[[], E | None]]] = [
            (1, lambda: E(f"CASE WHEN {a.sql} IS NULL THEN 0 ELSE 1 END", "int")),
            (0.5, lambda: E(f"({a.sql} IS NULL)", "bool")),
        ]
        if a.kind in ("int", "num", "float"):
            options += [
                (2, lambda: E(f"({a.sql} {d.pick(['+', '-', '*'])} {d.int(1, 3)})", a.kind)),
                (1.5, lambda: E(f"coalesce({a.sql}, 0)", a.kind)),
                (1.5, lambda: E(f"({a.sql} / nullif(count(*), 0))", "num" if a.kind == "int" else a.kind)),
                (1, lambda: E(f"({a.sql} - count(*))", a.kind)),
                (1, lambda: E(f"round({a.sql}, 2)", "num") if a.kind == "num" else None),
            ]
            ints = [x for x in self.group_exprs if x.kind == "int"]
            if ints:
                options.append((1, lambda: E(f"({d.pick(ints).sql} + {a.sql})", a.kind)))
        if a.kind == "text":
            options += [
                (1.5, lambda: E(f"coalesce({a.sql}, '-')", "text")),
                (1, lambda: E(f"({a.sql} || '!')", "text")),
            ]
        e = d.weighted(options)()
        return e if e is not None else a

    def having(self) -> str:
        d = self.d

        def one() -> str:
            a = self.agg()
            if a.kind in ("int", "num", "float") and d.chance(0.8):
                return f"{a.sql} {d.pick(['>', '>=', '<', '=', '<>'])} {d.int(0, 3)}"
            if a.kind == "bool":
                return a.sql if d.chance(0.5) else f"NOT {a.sql}"
            return f"{a.sql} IS {d.pick(['', 'NOT '])}NULL"

        parts = [one()]
        while len(parts) < 3 and d.chance(0.3):
            parts.append(f"{d.pick(['AND', 'OR'])} {one()}")
        ints = [x for x in self.group_exprs if x.kind == "int"]
        if ints and d.chance(0.1):
            parts.append(f"AND {d.pick(ints).sql} IS NOT NULL")
        self.features.add("having")
        return " ".join(parts)


def gen_groups(d: Draw, schema: Schema, features: set[str]) -> tuple[str, str, None]:
    mode = d.weighted([(5, "plain"), (1.5, "global"), (2, "union")])
    if mode == "union":
        return gen_groups_union(d, schema, features)
    f = gen_from(d, schema, features)
    where = _where(d, f.scope, features)
    g = ExprGen(d, f.scope, max_depth=1)
    keys: list[E] = []
    if mode == "plain":
        for _ in range(d.weighted([(4, 1), (3, 2), (1, 3)])):
            keys.append(_group_key(d, g, g.any_kind()))
    aggs = AggGen(d, f.scope, features, keys)
    return _grouped(
        d, f"FROM {f.sql}", keys, aggs, features, f"groups/{mode}", mode == "plain", where=where, aliases=f.aliases
    )


def _group_key(d: Draw, g: ExprGen, kind: str) -> E:
    e = g.expr(kind, 0) if d.chance(0.4) else g.leaf(kind)
    c = g.col(kind)
    if c is not None and not re.search(r"\b[a-du]\.\w", e.sql):
        e = E(c.sql, kind)  # a constant is no group key (GROUP BY 2 is a position)
    return e


def _grouped(
    d: Draw,
    from_sql: str,
    keys: list[E],
    aggs: AggGen,
    features: set[str],
    shape: str,
    grouped: bool,
    where: str = "",
    aliases: list[tuple[str, Table]] | None = None,
) -> tuple[str, str, None]:
    items: list[str] = []
    group_by: list[str] = []
    for i, k in enumerate(keys):
        if d.chance(0.85):
            items.append(f"{k.sql} AS g{i}")
            how = d.weighted([(8, "expr"), (1, "alias"), (1, "position")])
            group_by.append({"expr": k.sql, "alias": f"g{i}", "position": str(len(items))}[how])
        else:
            group_by.append(k.sql)
            features.add("hidden-group-key")
    outs = [f"{aggs.output().sql} AS a{i}" for i in range(d.repeat(1, 5, 0.55))]
    if d.chance(0.2):
        # aggregates first: positions in GROUP BY count from the start
        shift = len(outs)
        group_by = [str(int(x) + shift) if x.isdigit() else x for x in group_by]
        items = outs + items
    else:
        items = items + outs
    having = f" HAVING {aggs.having()}" if d.chance(0.3 if grouped else 0.1) else ""
    text = f"SELECT {', '.join(items)} {from_sql}{where}"
    if grouped:
        text += f" GROUP BY {', '.join(group_by)}"
    return shape, text + having, None


def gen_groups_union(d: Draw, schema: Schema, features: set[str]) -> tuple[str, str, None]:
    nb = d.repeat(2, 3, 0.3)
    froms = [gen_from(d, schema, features, max_items=2) for _ in range(nb)]
    key_slots = [_slot_kind(d, froms, ("int", "text", "date", "ts", "bool", "num")) for _ in range(d.repeat(0, 2, 0.7))]
    val_slots = [
        _slot_kind(d, froms, ("int", "num", "float", "text", "bool", "ts")) for _ in range(d.repeat(1, 3, 0.5))
    ]
    slots = key_slots + val_slots
    names = [f"k{i}" for i in range(len(key_slots))] + [f"v{i}" for i in range(len(val_slots))]
    branches = []
    for bi, f in enumerate(froms):
        g = ExprGen(d, f.scope, max_depth=1)
        cols = []
        for k in slots:
            if d.chance(0.1):
                cols.append(g.typed_null(k) if bi == 0 else "NULL")
            elif k == "int" and d.chance(0.15):
                cols.append(str(d.int(0, 2)))
            else:
                cols.append(g.expr(k, 0 if d.chance(0.5) else 1).sql)
        if bi == 0:
            cols = [f"{c} AS {n}" for c, n in zip(cols, names, strict=True)]
        head = f"SELECT {', '.join(cols)} FROM {f.sql}"
        branches.append(head + _where(d, f.scope, features, 0.35))
    scope = [Ref(f"u.{n}", k, CAST_TYPE[k] if k != "num" else "?") for n, k in zip(names, slots, strict=True)]
    g = ExprGen(d, scope, max_depth=1)
    keys = [E(f"u.k{i}", k) if d.chance(0.75) else _group_key(d, g, k) for i, k in enumerate(key_slots)]
    aggs = AggGen(d, scope, features, keys)
    where = _where(d, scope, features, 0.2)
    features.add("union")
    return _grouped(
        d,
        f"FROM ({' UNION ALL '.join(branches)}) u",
        keys,
        aggs,
        features,
        "groups/union" if keys else "groups/union-global",
        bool(keys),
        where=where,
    )


def gen_query(d: Draw, schema: Schema, name: str) -> Query:
    features: set[str] = set()
    if d.chance(0.4):
        shape, text, key = gen_rows(d, schema, features)
    else:
        shape, text, key = gen_groups(d, schema, features)
    header = f"-- {name}: generated by tests/projection_fuzz.py\n"
    if key:
        header += f"-- key: {', '.join(key)}\n"
        features.add("declared-key")
    tables = set(re.findall(r"\b(t[1-4])\b", text))
    return Query(name, header + text, shape, features, tables)


# -- workloads ---------------------------------------------------------------------------


@dataclass
class Op:
    kind: str  # insert, update, delete, bulk_update, bulk_delete
    table: int
    sel: int = 0  # which row (modulo the live rows), or which deleted key to reuse
    reuse: bool = False  # insert: a key deleted before
    values: dict[str, Any] = field(default_factory=dict)  # insert/update: column -> value; bulk: SET
    move_key: bool = False  # update: give the row a new primary key
    where: tuple[str, Any] | None = None  # bulk: column = value


@dataclass
class Cycle:
    txns: list[tuple[list[Op], bool]]  # (ops, rolled back)
    skip: set[int] = field(default_factory=set)  # queries whose projection does not run this cycle
    rebuild: set[int] = field(default_factory=set)  # queries rebuilt from staging this cycle
    replan: bool = False  # plan every projection again (a restart)


@dataclass
class Scenario:
    schema: Schema
    initial: dict[str, list[dict[str, Any]]]  # table -> rows (all columns)
    queries: list[Query]
    cycles: list[Cycle]
    reader: bool  # the parallel-read path (a second connection)
    seed: int | None = None

    def describe(self) -> str:
        return (
            f"scenario seed={self.seed}: {len(self.schema.tables)} tables, {len(self.queries)} queries, "
            f"{len(self.cycles)} cycles, reader={self.reader}"
        )


BUDGET = 5500  # hypothesis replays at most 8 KiB of choices: keep a scenario well under it


def gen_row(d: Draw, t: Table, key: dict[str, Any]) -> dict[str, Any]:
    row = dict(key)
    for c in t.others:
        row[c.name] = gen_value(d, c)
    return row


def gen_op(d: Draw, schema: Schema) -> Op:
    ti = d.int(0, len(schema.tables) - 1)
    t = schema.tables[ti]
    kind = d.weighted([(4, "update"), (3, "insert"), (2, "delete"), (0.5, "bulk_update"), (0.3, "bulk_delete")])
    if kind == "insert":
        reuse = d.chance(0.3)
        values = gen_row(d, t, {"k2": 1 + d.int(0, 1)} if "k2" in t.key else {})
        return Op(kind, ti, d.int(0, 255), reuse, values)
    if kind == "delete":
        return Op(kind, ti, d.int(0, 255))
    others = t.others
    if kind in ("bulk_update", "bulk_delete"):
        if not others:
            return Op("delete", ti, d.int(0, 255))
        refs = [c for c in others if c.ref] or others
        w = d.pick(refs)
        where = (
            w.name,
            gen_value(d, Col(w.name, w.type, w.kind, False, w.ref, w.ref_col, w.big, w.scale, w.digits, w.length)),
        )
        if kind == "bulk_delete":
            return Op(kind, ti, where=where)
        c = d.pick(refs) if d.chance(0.6) else d.pick(others)
        return Op(kind, ti, values={c.name: gen_value(d, c)}, where=where)
    sel = d.int(0, 255)
    values = {}
    if others:
        for _ in range(d.repeat(1, 3, 0.35)):
            c = d.pick(others)
            values[c.name] = gen_value(d, c)
    move = d.chance(0.08) or not others
    return Op("update", ti, sel, values=values, move_key=move)


def gen_scenario(d: Draw, seed: int | None = None) -> Scenario:
    schema = gen_schema(d)
    initial = {}
    for t in schema.tables:

        def row(d: Draw, i: int, t: Table = t) -> dict[str, Any]:
            key = {"id": i + 1}
            if "k2" in t.key:
                key["k2"] = 1 + d.int(0, 1)
            return gen_row(d, t, key)

        initial[t.name] = d.many(0, 10, 0.85, row)
    queries = d.many(1, 7, 0.85, lambda d, i: gen_query(d, schema, f"q{i}"))
    reader = d.chance(0.3)

    def txn(d: Draw, i: int) -> tuple[list[Op], bool]:
        ops = d.many(1, 6, 0.6, lambda d, i: gen_op(d, schema))
        return ops, d.chance(0.05)

    def cycle(d: Draw, i: int) -> Cycle | None:
        if d.size > BUDGET:
            return None
        c = Cycle(d.many(1, 4, 0.5, txn))
        for qi in range(len(queries)):
            if d.chance(0.12):
                c.skip.add(qi)
            elif d.chance(0.04):
                c.rebuild.add(qi)
        c.replan = d.chance(0.1)
        return c

    cycles = d.many(1, 6, 0.75, cycle)
    return Scenario(schema, initial, queries, cycles, reader, seed)


def scenario_for_seed(seed: int) -> tuple[Scenario, list[int]]:
    d = RandomDraw(seed)
    sc = gen_scenario(d, seed)
    return sc, d.choices


def scenarios():
    """The hypothesis strategy of scenarios (the same generator, drawn by hypothesis)."""
    from hypothesis import strategies as st

    @st.composite
    def build(draw):
        return gen_scenario(HypothesisDraw(draw))

    return build()


# -- applying a workload to the source ----------------------------------------------------


class Model:
    """The live primary keys of each source table (values live in the source only)."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.live: dict[str, list[tuple]] = {t.name: [] for t in schema.tables}
        self.deleted: dict[str, list[tuple]] = {t.name: [] for t in schema.tables}
        self.next_id: dict[str, int] = {t.name: 1 for t in schema.tables}

    def copy(self) -> Model:
        m = Model(self.schema)
        m.live = {k: list(v) for k, v in self.live.items()}
        m.deleted = {k: list(v) for k, v in self.deleted.items()}
        m.next_id = dict(self.next_id)
        return m

    def add(self, table: str, key: tuple) -> None:
        self.live[table].append(key)
        self.live[table].sort()
        if key in self.deleted[table]:
            self.deleted[table].remove(key)
        self.next_id[table] = max(self.next_id[table], key[0] + 1)

    def remove(self, table: str, key: tuple) -> None:
        self.live[table].remove(key)
        self.deleted[table].append(key)


@dataclass
class Statement:
    cycle: int
    txn: int
    table: str
    sql: str
    rolled_back: bool = False


class Applier:
    """Runs the workload on the source, logging every statement (with its values)."""

    def __init__(self, conn: psycopg.Connection, schema: Schema) -> None:
        self.conn = conn
        self.schema = schema
        self.model = Model(schema)
        self.log: list[Statement] = []
        self.changes = 0
        self.txns = 0
        self.rollbacks = 0
        self._mog = psycopg.ClientCursor(conn)

    def _x(self, cycle: int, txn: int, table: str, query: str, params: Sequence[Any] = ()) -> psycopg.Cursor:
        text = self._mog.mogrify(query, params)
        self.log.append(Statement(cycle, txn, table, text))
        cur = self.conn.execute(text)  # type: ignore[arg-type]
        self.changes += max(cur.rowcount, 0)
        return cur

    def insert_rows(self, cycle: int, table: Table, rows: list[dict[str, Any]], txn: int = 0) -> None:
        for row in rows:
            cols = list(row)
            self._x(
                cycle,
                txn,
                table.name,
                f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})",
                [row[c] for c in cols],
            )
            self.model.add(table.name, tuple(row[k] for k in table.key))

    def initial(self, rows: dict[str, list[dict[str, Any]]]) -> None:
        with self.conn.transaction():
            for t in self.schema.tables:
                self.insert_rows(0, t, rows[t.name])

    def cycle(self, index: int, cycle: Cycle) -> None:
        for ops, rolled_back in cycle.txns:
            self.txns += 1
            txn = self.txns
            before = self.model.copy()
            start = len(self.log)
            try:
                with self.conn.transaction():
                    for op in ops:
                        self.op(index, txn, op)
                    if rolled_back:
                        raise _Rollback
            except _Rollback:
                self.model = before
                self.rollbacks += 1
                for s in self.log[start:]:
                    s.rolled_back = True

    def op(self, cycle: int, txn: int, op: Op) -> None:
        t = self.schema.tables[op.table]
        live = self.model.live[t.name]
        key_where = " AND ".join(f"{k} = %s" for k in t.key)
        if op.kind == "insert" or (op.kind in ("update", "delete") and not live):
            if op.kind != "insert":
                return
            reusable = [k for k in self.model.deleted[t.name] if k not in live]
            if op.reuse and reusable:
                key = reusable[op.sel % len(reusable)]
            else:
                key = (self.model.next_id[t.name], *([op.values["k2"]] if "k2" in t.key else []))
            row = {**dict(zip(t.key, key, strict=True)), **{c: v for c, v in op.values.items() if c not in t.key}}
            for c in t.others:
                row.setdefault(c.name, None)
            self.insert_rows(cycle, t, [row], txn)
            return
        if op.kind == "delete":
            key = live[op.sel % len(live)]
            self._x(cycle, txn, t.name, f"DELETE FROM {t.name} WHERE {key_where}", key)
            self.model.remove(t.name, key)
            return
        if op.kind == "update":
            key = live[op.sel % len(live)]
            sets = dict(op.values)
            new_key = key
            if op.move_key:
                new_key = (self.model.next_id[t.name], *key[1:])
                sets["id"] = new_key[0]
            if not sets:
                return
            self._x(
                cycle,
                txn,
                t.name,
                f"UPDATE {t.name} SET {', '.join(f'{c} = %s' for c in sets)} WHERE {key_where}",
                [*sets.values(), *key],
            )
            if new_key != key:
                self.model.remove(t.name, key)
                self.model.add(t.name, new_key)
            return
        assert op.where is not None
        col, value = op.where
        keys = ", ".join(t.key)
        if op.kind == "bulk_update":
            sets = ", ".join(f"{c} = %s" for c in op.values)
            self._x(
                cycle,
                txn,
                t.name,
                f"UPDATE {t.name} SET {sets} WHERE {col} = %s RETURNING {keys}",
                [*op.values.values(), value],
            )
        else:
            gone = self._x(
                cycle, txn, t.name, f"DELETE FROM {t.name} WHERE {col} = %s RETURNING {keys}", [value]
            ).fetchall()
            for key in gone:
                self.model.remove(t.name, tuple(key))


class _Rollback(Exception):
    pass


# -- comparing ---------------------------------------------------------------------------


class Mismatch(AssertionError):
    """A projection differs from its query on the source."""


class EngineError(Exception):
    """The engine failed while maintaining a projection it had accepted."""


@dataclass
class Failure:
    seed: int | None
    query: Query
    kind: str  # mismatch, columns, crash, key
    cycle: int
    message: str
    repro: str = ""

    def line(self) -> str:
        return (
            f"seed={self.seed} {self.query.name} [{self.query.shape}] cycle {self.cycle}: {self.kind}: "
            f"{self.message.splitlines()[0][:200]}"
        )


def _norm(v: Any) -> Any:
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return repr(v)
        return float(f"{v:.10g}") + 0.0
    if isinstance(v, Decimal):
        return v.normalize() if v.is_finite() else str(v)
    return v


def _sort_key(row: tuple) -> tuple:
    return tuple(
        (v is None, type(v).__name__, repr(v) if not isinstance(v, int | float | Decimal) else float(v)) for v in row
    )


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def diff_rows(want: list[tuple], got: list[tuple]) -> str | None:
    """None when the multisets are equal (floats within a relative 1e-9)."""
    w = collections.Counter(tuple(_norm(v) for v in r) for r in want)
    g = collections.Counter(tuple(_norm(v) for v in r) for r in got)
    if w == g:
        return None
    missing = sorted((w - g).elements(), key=_sort_key)
    extra = sorted((g - w).elements(), key=_sort_key)
    if len(missing) == len(extra) and all(
        len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
        for a, b in zip(missing, extra, strict=True)
    ):
        return None
    return (
        f"{len(want)} expected rows, {len(got)} rows in the projection\n"
        f"  expected, missing from the projection ({len(missing)}): {missing[:6]}\n"
        f"  in the projection, not expected ({len(extra)}): {extra[:6]}"
    )


def user_columns(conn: psycopg.Connection, table: str) -> list[str]:
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum",
        (table,),
    ).fetchall()
    return [r[0] for r in rows if not r[0].startswith("__")]


def compare(src: psycopg.Connection, serving: psycopg.Connection, q: Query) -> tuple[str, str] | None:
    """(kind, message) when proj_<name> differs from the query on the source."""
    cur = src.execute(q.text)  # type: ignore[arg-type]
    want = cur.fetchall()
    want_cols = [(c.name, c.type_code) for c in cur.description or []]
    cols = user_columns(serving, q.table)
    if not cols:
        serving.rollback()
        return "columns", f"{q.table} has no user columns (expected {[n for n, _ in want_cols]})"
    cur = serving.execute(f"SELECT {', '.join(chr(34) + c + chr(34) for c in cols)} FROM {q.table}")
    got = cur.fetchall()
    got_cols = [(c.name, c.type_code) for c in cur.description or []]
    serving.rollback()
    if got_cols != want_cols:
        return "columns", f"columns {got_cols} (name, type oid), expected {want_cols}"
    problem = diff_rows(want, got)
    return ("mismatch", problem) if problem else None


# -- statistics --------------------------------------------------------------------------


@dataclass
class Stats:
    scenarios: int = 0
    cases: int = 0
    accepted: int = 0
    refused: int = 0
    source_errors: int = 0
    engine_cycles: int = 0
    self_checks: int = 0
    comparisons: int = 0
    cycles: int = 0
    txns: int = 0
    rollbacks: int = 0
    changes: int = 0
    kills: int = 0
    pipeline_scenarios: int = 0
    shapes: collections.Counter[str] = field(default_factory=collections.Counter)
    features: collections.Counter[str] = field(default_factory=collections.Counter)
    refusals: collections.Counter[str] = field(default_factory=collections.Counter)
    refusal_examples: dict[str, str] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    failing_seeds: dict[int, list[str]] = field(default_factory=dict)
    seconds: float = 0.0

    def add_failure(self, f: Failure) -> None:
        self.failures.append(f)
        if f.seed is not None:
            self.failing_seeds.setdefault(f.seed, []).append(f"{f.query.name} {f.kind}")

    def report(self) -> str:
        lines = [
            f"scenarios {self.scenarios} ({self.pipeline_scenarios} through the cdcflow run pipeline, "
            f"{self.kills} SIGKILLs)",
            f"cases (queries) {self.cases}: accepted {self.accepted}, refused {self.refused}, "
            f"invalid on the source {self.source_errors}",
            f"workload cycles {self.cycles}, transactions {self.txns} ({self.rollbacks} rolled back), "
            f"row changes {self.changes}",
            f"engine cycles {self.engine_cycles} ({self.self_checks} with the self-check), "
            f"comparisons {self.comparisons}",
            f"failures {len(self.failures)} in {len(self.failing_seeds)} scenarios",
            "queries by shape: " + ", ".join(f"{k} {v}" for k, v in sorted(self.shapes.items())),
            "features: " + ", ".join(f"{k} {v}" for k, v in sorted(self.features.items())),
        ]
        if self.refusals:
            lines.append("refusals: " + "; ".join(f"{v}x {k}" for k, v in self.refusals.most_common(10)))
        for f in self.failures[:50]:
            lines.append("  FAIL " + f.line())
        if self.failing_seeds:
            lines.append("failing seeds: " + json.dumps(sorted(self.failing_seeds)))
        lines.append(f"time {self.seconds:.1f} s")
        return "\n".join(lines)


# -- the reproduction of a failure ----------------------------------------------------------


def repro_text(sc: Scenario, q: Query, log: list[Statement], upto: int, detail: str) -> str:
    used = [t for t in sc.schema.tables if t.name in q.tables]
    out = ["-- schema (source)"] + [t.ddl() + ";" for t in used]
    out.append(f"-- {q.table}.sql")
    out.append(q.text.rstrip() + ";")
    txns: dict[tuple[int, int], list[Statement]] = {}
    for s in log:
        if s.table in q.tables and s.cycle <= upto:
            txns.setdefault((s.cycle, s.txn), []).append(s)
    for (c, _), stmts in txns.items():
        out.append(f"-- {'initial rows (before the snapshot)' if c == 0 else f'cycle {c}'}")
        out += ["BEGIN;", *(s.sql + ";" for s in stmts), "ROLLBACK;" if stmts[0].rolled_back else "COMMIT;"]
    out.append(f"-- after cycle {upto} (projection cycle after each cycle): {detail}")
    return "\n".join(out)


# -- running a scenario in process ----------------------------------------------------------


class Lane:
    """One source/serving database pair, reused by scenario after scenario (creating and
    dropping databases costs more than a scenario): :meth:`reset` drops everything a
    scenario made (tables, publication, slot, staging, control and projection tables)."""

    def __init__(self, server) -> None:
        from tests.conftest import make_databases

        self.server = server
        self.dbs = make_databases(server)
        self.settings = self.dbs.settings
        with server.admin() as admin:
            for dsn in (self.dbs.source_dsn, self.dbs.serving_dsn):
                # The engine's statements run with enable_seqscan = off (index_plans), which
                # inflates their estimated cost past jit_above_cost: with JIT on, every
                # statement of a cycle pays tens of milliseconds of compiling. Off for speed.
                admin.execute(f'ALTER DATABASE "{_dbname(dsn)}" SET jit = off')
            # Serving commits need not wait for the WAL flush (the server does not crash
            # here). Not on the source: there an asynchronous commit can lie beyond
            # pg_current_wal_lsn(), the position Stager.stage_all waits for.
            admin.execute(f'ALTER DATABASE "{_dbname(self.dbs.serving_dsn)}" SET synchronous_commit = off')
        self.dirty = False

    def reset(self) -> None:
        if not self.dirty:
            return
        with self.server.admin() as admin:
            drop_slot(admin, self.settings.slot)
            for dsn in (self.dbs.source_dsn, self.dbs.serving_dsn):
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                    "AND pid <> pg_backend_pid()",
                    (_dbname(dsn),),
                )
        for dsn in (self.dbs.source_dsn, self.dbs.serving_dsn):
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute(f'DROP PUBLICATION IF EXISTS "{self.settings.publication}"')
                c.execute("DROP SCHEMA public CASCADE")
                c.execute("CREATE SCHEMA public")
        self.dirty = False

    def close(self) -> None:
        from tests.conftest import drop_databases

        drop_databases(self.dbs)


def _dbname(dsn: str) -> str:
    return psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]


@contextlib.contextmanager
def _lane(target):
    """``target`` itself when it is a Lane (reset first); else a Lane of its own."""
    if isinstance(target, Lane):
        target.reset()
        target.dirty = True
        yield target
        return
    lane = Lane(target)
    lane.dirty = True
    try:
        yield lane
    finally:
        lane.close()


def _setup(lane: Lane, sc: Scenario) -> tuple[psycopg.Connection, Applier, Any]:
    from cdcflow.bootstrap import bootstrap

    src = psycopg.connect(lane.dbs.source_dsn, autocommit=True)
    src.execute("SET TimeZone = 'UTC'")
    for t in sc.schema.tables:
        src.execute(t.ddl())  # type: ignore[arg-type]
    applier = Applier(src, sc.schema)
    applier.initial(sc.initial)
    settings = lane.settings.replace(
        capture_tables=tuple(f"public.{t.name}" for t in sc.schema.tables),
        enable_proj_orders_kpi=False,
        enable_proj_orders_latest=False,
        projections_dir=None,
    )
    bootstrap(settings).source.close()
    return src, applier, settings


def _write_definitions(folder: str, queries: list[Query]) -> None:
    for q in queries:
        Path(folder, f"{q.name}.sql").write_text(q.text + "\n")


def _plan_all(
    settings, conn: psycopg.Connection, queries: list[Query], stats: Stats
) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """The projection of every query the engine accepts; refusal messages of the others;
    and the errors of those whose planning failed otherwise (an engine failure)."""
    from cdcflow import projections
    from cdcflow.errors import DefinitionError

    built, refused, crashed = {}, {}, {}
    by_name = {d.name: d for d in projections.definitions(settings).enabled}
    for q in queries:
        try:
            built[q.name] = projections.build(by_name[q.table], conn, settings)
        except DefinitionError as exc:
            refused[q.name] = str(exc)
            stats.refused += 1
            stats.refusals[_refusal_class(str(exc))] += 1
            stats.refusal_examples.setdefault(_refusal_class(str(exc)), f"{q.text}\n  -> {exc}")
        except Exception as exc:  # planning a query PostgreSQL accepts must not fail like this
            crashed[q.name] = f"{type(exc).__name__} while planning: {exc}\n{traceback.format_exc(limit=-3)}"
        finally:
            conn.rollback()
    return built, refused, crashed


def _refusal_class(message: str) -> str:
    why = message.split("): ", 1)[-1]
    why = re.sub(r"'[^']*'|\"[^\"]*\"|\b[a-z]\.\w+|\d+", "_", why)
    return why[:110]


def _source_ok(src: psycopg.Connection, q: Query) -> str | None:
    try:
        src.execute(q.text).fetchall()  # type: ignore[arg-type]
        return None
    except psycopg.Error as exc:
        return str(exc).splitlines()[0]


def run_scenario(
    target, sc: Scenario, stats: Stats | None = None, *, stop_on_failure: bool = False, verbose: bool = False
) -> list[Failure]:
    """The scenario's cycles, the engine in process; every projection compared with its
    query on the source after each cycle. Returns the failures (raises the first one as
    Mismatch / EngineError with ``stop_on_failure``, for hypothesis). ``target``: a
    :class:`Lane` (reused) or a server (a lane of its own)."""
    with _lane(target) as lane:
        return _run_scenario(lane, sc, stats, stop_on_failure=stop_on_failure, verbose=verbose)


def _run_scenario(
    lane: Lane, sc: Scenario, stats: Stats | None, *, stop_on_failure: bool, verbose: bool
) -> list[Failure]:
    from cdcflow.projections import base
    from tests.stager import Stager

    stats = stats if stats is not None else Stats()
    started = time.monotonic()
    stats.scenarios += 1
    for q in sc.queries:
        stats.cases += 1
        stats.shapes[q.shape] += 1
        stats.features.update(q.features)
    failures: list[Failure] = []
    src, applier, settings = _setup(lane, sc)
    folder = tempfile.mkdtemp(prefix="cdcflow-fuzz-")
    stager = conn = reader = duck = None
    try:
        _write_definitions(folder, sc.queries)
        settings = settings.replace(projections_dir=folder)
        stager = Stager(settings)
        duck = base.open_duckdb()
        conn = base.open_connection(settings.serving_dsn)
        reader = base.snapshot_connection(settings.serving_dsn) if sc.reader else None
        projs, refused, crashed = _plan_all(settings, conn, sc.queries, stats)
        live = []
        planning_failed = []
        for q in sc.queries:
            if q.name in refused:
                if verbose:
                    print(f"refused {q.name}: {refused[q.name]}")
                continue
            bad = _source_ok(src, q)
            if bad:
                stats.source_errors += 1
                stats.refusals["(source) " + _refusal_class(bad)] += 1
                stats.refusal_examples.setdefault("(source) " + _refusal_class(bad), f"{q.text}\n  -> {bad}")
                if verbose:
                    print(f"invalid on the source {q.name}: {bad}")
                continue
            stats.accepted += 1
            live.append(q)
            if q.name in crashed:
                planning_failed.append(q)
        stager.stage_all()

        def fail(q: Query, kind: str, cycle: int, message: str) -> None:
            f = Failure(sc.seed, q, kind, cycle, message, repro_text(sc, q, applier.log, cycle, message))
            failures.append(f)
            stats.add_failure(f)
            live.remove(q)
            if verbose:
                print(f.line())
                print(f.repro)
            if stop_on_failure:
                raise (Mismatch if kind in ("mismatch", "columns") else EngineError)(
                    f"{f.line()}\n{sc.describe()}\n{f.repro}"
                )

        def engine_cycle(index: int, cycle: Cycle | None) -> None:
            nonlocal projs
            if cycle is not None and cycle.replan:
                projs, _, _ = _plan_all(settings, conn, [q for q in live], Stats())
            for q in list(live):
                qi = sc.queries.index(q)
                if cycle is not None and qi in cycle.skip:
                    continue
                p = projs[q.name]
                check = index % 3 == 2  # the engine's self-check too, now and then
                restated = 0
                try:
                    if cycle is not None and qi in cycle.rebuild:
                        base.rebuild(conn, duck, p, settings)
                    else:
                        restated = base.run_cycle(conn, duck, p, settings, reader=reader, self_check=check).restated
                        stats.self_checks += check
                    conn.commit()
                except Exception as exc:  # the engine's failure is the finding
                    conn.rollback()
                    if reader is not None:
                        reader.rollback()
                    kind = "key" if "is not unique in the result" in str(exc) else "crash"
                    fail(q, kind, index, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-4)}")
                    continue
                stats.engine_cycles += 1
                problem = compare(src, conn, q)
                stats.comparisons += 1
                if problem:
                    fail(q, problem[0], index, problem[1])
                elif restated:
                    fail(
                        q,
                        "self-check",
                        index,
                        f"the engine's self-check restated {restated} rows: incremental "
                        "maintenance had them wrong (the projection now equals the query)",
                    )

        for q in planning_failed:
            fail(q, "plan-crash", 0, crashed[q.name])
        engine_cycle(0, None)
        for i, cycle in enumerate(sc.cycles, start=1):
            if not live:
                break
            applier.cycle(i, cycle)
            stats.cycles += 1
            stager.stage_all()
            engine_cycle(i, cycle)
        if live and sc.cycles and any(sc.queries.index(q) in sc.cycles[-1].skip for q in live):
            engine_cycle(len(sc.cycles), None)  # every projection ends up to date and compared
    finally:
        stats.changes += applier.changes
        stats.txns += applier.txns
        stats.rollbacks += applier.rollbacks
        for c in (reader, conn):
            if c is not None:
                c.close()
        if duck is not None:
            duck.close()
        if stager is not None:
            stager.close()
        src.close()
        shutil.rmtree(folder, ignore_errors=True)
        stats.seconds += time.monotonic() - started
    return failures


# -- a hand-written case (the minimal reproductions of the report) ----------------------------


@dataclass
class SqlCase:
    """One query over hand-written tables and changes: ``cycles[i]`` is a list of
    transactions (each a list of statements) run before the i-th engine cycle after the
    first (the first builds the projection from the snapshot of ``setup``)."""

    name: str
    ddl: list[str]
    setup: list[str]
    query: str
    cycles: list[list[list[str]]] = field(default_factory=list)
    reader: bool = False
    bug: str = ""  # what the engine did wrong (a regression) or cannot do (a limit)
    expect: str = ""  # a limit: what the one failure must say


_T1 = "CREATE TABLE t1 (id integer PRIMARY KEY, x integer, f double precision, n numeric(6,2), s text)"
_T2 = "CREATE TABLE t2 (id integer PRIMARY KEY, y integer)"
_ROWS = [
    "INSERT INTO t1 VALUES (1, 1, 1.0, 1.50, 'a'), (2, NULL, 0, NULL, 'b'), (3, 1, 2.5, 2.25, 'c')",
    "INSERT INTO t2 VALUES (1, 5), (2, NULL)",
]
_CHANGES = [
    [
        ["INSERT INTO t1 VALUES (4, 2, -1.0, 3.00, 'd')", "UPDATE t1 SET x = 2 WHERE id = 1"],
        ["DELETE FROM t2 WHERE id = 1", "DELETE FROM t1 WHERE id = 3"],
    ]
]


def _repro(name: str, query: str, bug: str, expect: str = "") -> SqlCase:
    return SqlCase(name, [_T1, _T2], list(_ROWS), query, _CHANGES, bug=bug, expect=expect)


_W = (
    "CREATE TABLE w (id integer PRIMARY KEY, g integer, v numeric(38,4), n numeric, f double precision, "
    "ts timestamp, tz timestamptz, d date, s text)"
)
_T3 = "CREATE TABLE t3 (id integer PRIMARY KEY, m numeric(8,0), big bigint)"


#: Minimal reproductions of the engine bugs the fuzzer found, each with what was wrong; all
#: fixed, so each projection must equal its query after every cycle
#: (tests/integration/test_projection_fuzz.py::test_regressions; python -m tests.projection_fuzz --repros).
REGRESSIONS = [
    _repro(
        "group_by_position",
        "SELECT a.x AS g, count(*) AS n FROM t1 a GROUP BY 1",
        "GROUP BY <position>: planning failed with a PostgreSQL error (aggregate functions are not allowed in "
        "GROUP BY)",
    ),
    _repro(
        "group_by_alias",
        "SELECT a.x AS g, count(*) AS n FROM t1 a GROUP BY g",
        "GROUP BY <output name>: planning failed (column g0 does not exist)",
    ),
    _repro(
        "group_by_same_key_twice",
        "SELECT a.x AS g, count(*) AS n FROM t1 a GROUP BY a.x, a.x",
        "the same expression twice in GROUP BY: the first cycle failed (DuplicateColumn)",
    ),
    _repro(
        "count_of_a_table_without_columns",
        "SELECT count(*) AS n FROM t1",
        "a table of which the query uses no column: the first cycle failed (min() arg is an empty sequence)",
    ),
    _repro(
        "union_branch_without_columns",
        "SELECT count(*) AS n, sum(u.v) AS s FROM (SELECT a.x AS v FROM t1 a UNION ALL SELECT 8 FROM t2 b) u",
        "a UNION ALL branch SELECT 8 FROM t2: the first cycle failed (KeyError)",
    ),
    _repro(
        "upper_of_sharp_s",
        "SELECT a.id, upper(a.s || 'ß') AS u FROM t1 a",
        "upper('ß'): PostgreSQL keeps 'ß', DuckDB gave 'ẞ' (U+1E9E)",
    ),
    SqlCase(
        "text_that_reads_as_null",
        [_W],
        ["INSERT INTO w (id, g, s) VALUES (1, 1, 'NULL'), (2, 1, 'N/A'), (3, 1, 'nan'), (4, 1, NULL), (5, 1, 'ok')"],
        "SELECT w.id, w.s, length(w.s) AS n FROM w",
        [[["UPDATE w SET s = 'null' WHERE id = 5"]]],
        bug="the text values 'NULL', 'N/A', 'nan' ... became NULL (pyarrow's default CSV null_values)",
    ),
    SqlCase(
        "text_that_reads_as_null_grouped",
        [_W],
        ["INSERT INTO w (id, g, s) VALUES (1, 1, 'NULL'), (2, 1, NULL), (3, 1, 'x')"],
        "SELECT w.s AS k, count(*) AS c, count(w.s) AS nn FROM w GROUP BY w.s",
        [[["UPDATE w SET s = 'NULL' WHERE id = 3"]]],
        bug="the text 'NULL' grouped with NULL",
    ),
    SqlCase(
        "float_nan",
        [_W],
        ["INSERT INTO w (id, g, f) VALUES (1, 1, 'NaN'), (2, 1, 'Infinity'), (3, 1, 1)"],
        "SELECT w.g, sum(w.f) AS s, max(w.f) AS mx, count(DISTINCT w.f) AS d FROM w GROUP BY w.g",
        [[["DELETE FROM w WHERE id = 3"]]],
        bug="a double precision NaN became NULL",
    ),
    SqlCase(
        "float_sum_after_a_nan_or_an_infinity_leaves",
        [_W],
        ["INSERT INTO w (id, g, f) VALUES (1, 1, 4.5), (2, 1, 0), (3, 1, -1.25), (4, 2, 1), (5, 2, 2)"],
        "SELECT w.g, sum(w.f) AS s, avg(w.f) AS a, count(*) AS n FROM w GROUP BY w.g",
        [
            [["UPDATE w SET f = 'NaN' WHERE id = 3", "UPDATE w SET f = 'Infinity' WHERE id = 4"]],
            [["DELETE FROM w WHERE id = 3", "UPDATE w SET f = '-Infinity' WHERE id = 5"]],
            [["DELETE FROM w WHERE id = 4"]],
            [["UPDATE w SET f = 2 WHERE id = 5"]],
        ],
        bug="seed 6000423: a float sum stayed NaN after the NaN row left (the running sum cannot subtract it); "
        "the self-check restated it",
    ),
    _repro(
        "typed_null_in_a_branch",
        "-- key: br, k\nSELECT 1 AS br, a.id AS k, a.x AS v FROM t1 a "
        "UNION ALL SELECT 2, b.id, CAST(NULL AS integer) FROM t2 b",
        "CAST(NULL AS integer) was refused as a cast from text",
    ),
    _repro(
        "avg_filter_of_a_numeric_column",
        "SELECT a.x AS g, avg(a.n) FILTER (WHERE a.id > 1) AS av FROM t1 a GROUP BY a.x",
        "avg(x) FILTER (...) of a numeric(p,s) column was refused (the FILTER's CASE lost the precision)",
    ),
    _repro(
        "case_of_numerics_of_different_scales",
        "SELECT a.x AS g, sum(CASE WHEN a.id > 1 THEN floor(CAST(a.n AS numeric)) ELSE CAST(a.n AS numeric) END) "
        "AS s, max(coalesce(CAST(NULL AS numeric), round(CAST(a.n AS numeric)), CAST(a.n AS numeric))) AS m "
        "FROM t1 a GROUP BY a.x",
        "seed 1000807: CASE/COALESCE of numerics with different scales: DuckDB unified DECIMAL(38,0) and "
        "DECIMAL(38,16) as DECIMAL(38,0), 1.5 became 2",
    ),
    _repro(
        "union_of_numerics_of_different_scales",
        "SELECT count(*) AS n, sum(u.v) AS s FROM (SELECT round(CAST(a.n AS numeric)) AS v FROM t1 a "
        "UNION ALL SELECT CAST(a.n AS numeric(20,4)) FROM t1 a) u",
        "a UNION ALL column of numerics with different scales (the same DuckDB unification)",
    ),
    SqlCase(
        "join_lookup_beyond_the_column_type",
        [_T1, _T3],
        [*_ROWS[:1], "INSERT INTO t3 VALUES (1, 2, 1)"],
        "-- key: br, cid, aid\nSELECT 1 AS br, c.id AS cid, a.id AS aid, a.n FROM t3 c JOIN t1 a ON a.n = c.m "
        "UNION ALL SELECT 2, c.id, a.id, a.n FROM t3 c JOIN t1 a ON a.x = c.big",
        [
            [["INSERT INTO t3 VALUES (2, 100000, 4294967296)", "UPDATE t1 SET n = 2 WHERE id = 2"]],
            [["UPDATE t3 SET m = 3, big = 2 WHERE id = 2"]],
        ],
        bug="seed 1001646: a changed row's join values were looked up cast to the other side's column type: "
        "100000 as numeric(6,2) failed the cycle (numeric field overflow)",
    ),
]

#: Constructs whose values the engine cannot carry: each must fail with a line that says so
#: (what, and '-- mode: full'), never write a wrong value (test_limits).
LIMITS = [
    _repro(
        "text_of_a_float",
        "SELECT a.id, CAST(a.f AS text) AS ft, a.s || a.f AS sf FROM t1 a",
        "the text of a double precision value: '1' in PostgreSQL, '1.0' in DuckDB",
        expect="the text of a double precision value differs between the engines",
    ),
    SqlCase(
        "numeric_nan_and_infinity",
        [_W],
        ["INSERT INTO w (id, n) VALUES (1, 'NaN'), (2, 'Infinity'), (3, 1.5)"],
        "SELECT w.id, w.n FROM w",
        [],
        bug="numeric 'NaN' became NULL; numeric 'Infinity' failed every cycle with ArrowInvalid",
        expect="column 'n' holds a value the incremental engine cannot carry",
    ),
    SqlCase(
        "timestamp_infinity_and_bc",
        [_W],
        [
            "INSERT INTO w (id, ts, tz, d) VALUES (1, 'infinity', '-infinity', "
            "'infinity'), (2, '0001-01-01 00:00 BC', now(), '0044-03-15 BC'), (3, now(), now(), now())"
        ],
        "SELECT w.id, w.ts, w.tz, w.d FROM w",
        [],
        bug="timestamp/date 'infinity' and BC values failed every cycle with ArrowInvalid",
        expect="holds a value the incremental engine cannot carry",
    ),
    SqlCase(
        "sum_of_wide_numerics",
        [_W],
        [
            "INSERT INTO w (id, g, v) VALUES "
            "(1, 1, 9999999999999999999999999999999999), (2, 1, 9999999999999999999999999999999999)"
        ],
        "SELECT w.g, sum(w.v) AS s FROM w GROUP BY w.g",
        [],
        bug="sum() of numeric(38,4) beyond 38 digits: DuckDB's Overflow in HUGEINT addition",
        expect="DuckDB's decimals have at most 38 digits",
    ),
]


def check_sql_case(target, case: SqlCase) -> str | None:
    """What is wrong with ``case``'s outcome (None: as it must be). A regression must
    produce the query's result; a limit must fail with its line, and only with it."""
    problems = run_sql_case(target, case)
    if not case.expect:
        return "\n".join(problems) or None
    if len(problems) == 1 and case.expect in problems[0] and "-- mode: full" in problems[0]:
        return None
    return f"expected one failure saying {case.expect!r} and '-- mode: full', got: {problems or 'none'}"


def run_sql_case(target, case: SqlCase, *, verbose: bool = False) -> list[str]:
    """Problems found (empty: the projection equals the query after every cycle)."""
    with _lane(target) as lane:
        return _run_sql_case(lane, case, verbose=verbose)


def _run_sql_case(lane: Lane, case: SqlCase, *, verbose: bool) -> list[str]:
    from cdcflow.bootstrap import bootstrap
    from cdcflow.projections import base
    from tests.stager import Stager

    dbs = lane.dbs
    folder = tempfile.mkdtemp(prefix="cdcflow-fuzz-")
    problems: list[str] = []
    src = psycopg.connect(dbs.source_dsn, autocommit=True)
    conn = reader = duck = stager = None
    try:
        src.execute("SET TimeZone = 'UTC'")
        tables = []
        for stmt in case.ddl:
            src.execute(stmt)  # type: ignore[arg-type]
            tables += re.findall(r"CREATE TABLE (\w+)", stmt)
        with src.transaction():
            for stmt in case.setup:
                src.execute(stmt)  # type: ignore[arg-type]
        settings = lane.settings.replace(
            capture_tables=tuple(f"public.{t}" for t in tables),
            enable_proj_orders_kpi=False,
            enable_proj_orders_latest=False,
        )
        bootstrap(settings).source.close()
        q = Query(case.name, case.query, "manual", tables=set(tables))
        _write_definitions(folder, [q])
        settings = settings.replace(projections_dir=folder)
        stager = Stager(settings)
        duck = base.open_duckdb()
        conn = base.open_connection(settings.serving_dsn)
        reader = base.snapshot_connection(settings.serving_dsn) if case.reader else None
        built, refused, crashed = _plan_all(settings, conn, [q], Stats())
        if q.name not in built:
            return [refused.get(q.name) or crashed[q.name]]
        stager.stage_all()
        for i in range(len(case.cycles) + 1):
            if i:
                for txn in case.cycles[i - 1]:
                    with src.transaction():
                        for stmt in txn:
                            src.execute(stmt)  # type: ignore[arg-type]
                stager.stage_all()
            try:
                base.run_cycle(conn, duck, built[q.name], settings, reader=reader)
                conn.commit()
            except Exception as exc:
                conn.rollback()
                problems.append(f"cycle {i}: {type(exc).__name__}: {exc}")
                break
            problem = compare(src, conn, q)
            if problem:
                problems.append(f"cycle {i}: {problem[0]}: {problem[1]}")
                break
        if verbose:
            print("\n".join(problems) or "ok")
        return problems
    finally:
        for c in (reader, conn):
            if c is not None:
                c.close()
        if duck is not None:
            duck.close()
        if stager is not None:
            stager.close()
        src.close()
        shutil.rmtree(folder, ignore_errors=True)


# -- running a scenario through `cdcflow run`, killed at random ------------------------------


def _last_build(serving_dsn: str) -> dt.datetime:
    with psycopg.connect(serving_dsn, autocommit=True) as conn:
        value = conn.execute("SELECT max(built_at) FROM ctl_projection_metadata").fetchone()[0]
    return value or dt.datetime.min.replace(tzinfo=dt.UTC)


def _settled(settings, names: list[str], timeout: float) -> dict[str, tuple[str, str | None]]:
    """Wait until ingestion caught up and every projection in ``names`` is OK as of the
    lowest watermark; returns {name: (status, error)} of those that did not get there."""
    from cdcflow.status import wait_caught_up

    if not wait_caught_up(settings, timeout):
        with psycopg.connect(settings.serving_dsn, autocommit=True) as conn:
            captures = conn.execute(
                "SELECT capture_instance, state, last_lsn, last_error FROM ctl_ingestion_watermarks "
                "WHERE source_name = %s ORDER BY 1",
                (settings.source_name,),
            ).fetchall()
        raise EngineError(f"ingestion did not catch up with the source in time; captures: {captures}")
    deadline = time.monotonic() + timeout
    with psycopg.connect(settings.serving_dsn, autocommit=True) as conn:
        target = conn.execute(
            "SELECT min(last_lsn) FROM ctl_ingestion_watermarks WHERE source_name = %s", (settings.source_name,)
        ).fetchone()[0]
        while True:
            rows = {
                r[0]: (r[1], r[2], r[3])
                for r in conn.execute(
                    "SELECT projection_name, status, as_of_lsn, last_error FROM ctl_projection_metadata "
                    "WHERE projection_name = ANY(%s)",
                    (names,),
                )
            }
            behind = {
                n: (rows[n][0], rows[n][2]) if n in rows else ("MISSING", None)
                for n in names
                if n not in rows or rows[n][0] != "OK" or rows[n][1] is None or rows[n][1] < target
            }
            if not behind or time.monotonic() > deadline:
                return behind
            time.sleep(0.1)


def run_scenario_pipeline(
    target, sc: Scenario, stats: Stats | None = None, *, kill_seed: int = 0, verbose: bool = False
) -> list[Failure]:
    """The workload with ``cdcflow run`` live in a subprocess, SIGKILLed at random moments
    and restarted; at quiescence every accepted projection equals its query on the source."""
    with _lane(target) as lane:
        return _run_scenario_pipeline(lane, sc, stats, kill_seed=kill_seed, verbose=verbose)


def _run_scenario_pipeline(
    lane: Lane, sc: Scenario, stats: Stats | None, *, kill_seed: int, verbose: bool
) -> list[Failure]:
    dbs = lane.dbs

    stats = stats if stats is not None else Stats()
    started = time.monotonic()
    rng = random.Random(kill_seed)
    stats.scenarios += 1
    stats.pipeline_scenarios += 1
    for q in sc.queries:
        stats.cases += 1
        stats.shapes[q.shape] += 1
        stats.features.update(q.features)
    failures: list[Failure] = []
    src, applier, settings = _setup(lane, sc)
    folder = tempfile.mkdtemp(prefix="cdcflow-fuzz-")
    scratch = tempfile.mkdtemp(prefix="cdcflow-fuzz-plan-")
    proc: subprocess.Popen | None = None
    logfile = open(Path(folder).parent / f"{Path(folder).name}.log", "wb")  # noqa: SIM115
    try:
        from cdcflow.projections import base

        _write_definitions(scratch, sc.queries)
        with base.open_connection(settings.serving_dsn) as conn:
            _, refused, crashed = _plan_all(settings.replace(projections_dir=scratch), conn, sc.queries, stats)
        live = []
        for q in sc.queries:
            if q.name in refused or q.name in crashed:
                continue
            if _source_ok(src, q):
                stats.source_errors += 1
                continue
            stats.accepted += 1
            live.append(q)
        _write_definitions(folder, live)
        env = dbs.env(
            CAPTURE_TABLES=",".join(settings.capture_tables),
            PROJECTIONS_DIR=folder,
            ENABLE_PROJ_ORDERS_KPI="false",
            ENABLE_PROJ_ORDERS_LATEST="false",
            PROJECTION_INTERVAL_SECONDS="0.2",
            POLL_INTERVAL_SECONDS="0.1",
            PROJECTION_PARALLEL_READS="true" if sc.reader else "false",
            LOG_LEVEL="warning",
            PROJECTION_SELF_CHECK_SECONDS="1",
        )

        def start() -> subprocess.Popen:
            return subprocess.Popen(
                [sys.executable, "-m", "cdcflow", "run"], env=env, stdout=logfile, stderr=subprocess.STDOUT
            )

        proc = start()
        for i, cycle in enumerate(sc.cycles, start=1):
            applier.cycle(i, cycle)
            stats.cycles += 1
            time.sleep(rng.uniform(0, 0.3))
            if rng.random() < 0.5:
                if rng.random() < 0.5:  # once a projection has committed again: while it works
                    seen = _last_build(settings.serving_dsn)
                    deadline = time.monotonic() + 5
                    while _last_build(settings.serving_dsn) <= seen and time.monotonic() < deadline:
                        time.sleep(0.02)
                time.sleep(rng.uniform(0, 0.6))
                if proc.poll() is not None:
                    raise EngineError(f"cdcflow run exited with {proc.returncode} (log: {logfile.name})")
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                stats.kills += 1
                proc = start()
        names = [q.table for q in live]
        behind = _settled(settings, names, timeout=90)
        if proc.poll() is not None:
            raise EngineError(f"cdcflow run exited with {proc.returncode} (log: {logfile.name})")
        last = len(sc.cycles)
        for q in list(live):
            if q.table in behind:
                with psycopg.connect(settings.serving_dsn, autocommit=True) as c:
                    err = c.execute(
                        "SELECT last_error FROM ctl_projection_metadata WHERE projection_name = %s", (q.table,)
                    ).fetchone()
                msg = f"not OK at quiescence: {behind[q.table]}: {err[0] if err else 'no metadata'}"
                f = Failure(sc.seed, q, "pipeline", last, msg, repro_text(sc, q, applier.log, last, msg))
                failures.append(f)
                stats.add_failure(f)
                continue
            with psycopg.connect(settings.serving_dsn) as serving:
                serving.execute("SET TimeZone = 'UTC'")
                problem = compare(src, serving, q)
            stats.comparisons += 1
            if problem:
                f = Failure(
                    sc.seed,
                    q,
                    f"pipeline-{problem[0]}",
                    last,
                    problem[1],
                    repro_text(sc, q, applier.log, last, problem[1]),
                )
                failures.append(f)
                stats.add_failure(f)
        if verbose:
            for f in failures:
                print(f.line())
                print(f.repro)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        logfile.close()
        stats.changes += applier.changes
        stats.txns += applier.txns
        stats.rollbacks += applier.rollbacks
        src.close()
        for p in (folder, scratch):
            shutil.rmtree(p, ignore_errors=True)
        if not failures and sys.exc_info()[0] is None:
            with contextlib.suppress(OSError):
                os.unlink(logfile.name)
        elif sys.exc_info()[0] is not None:
            print(f"cdcflow run's log kept: {logfile.name}\n" + Path(logfile.name).read_text(errors="replace")[-6000:])
        stats.seconds += time.monotonic() - started
    return failures


# -- seeds, hypothesis, shrinking --------------------------------------------------------------


def run_seeds(
    server,
    seeds: Sequence[int],
    stats: Stats,
    *,
    pipeline_every: int = 0,
    verbose: bool = False,
    progress: Callable[[int, Stats], None] | None = None,
) -> list[Failure]:
    failures = []
    lane = server if isinstance(server, Lane) else Lane(server)
    try:
        for n, seed in enumerate(seeds):
            sc, _ = scenario_for_seed(seed)
            if pipeline_every and n % pipeline_every == pipeline_every - 1:
                failures += run_scenario_pipeline(lane, sc, stats, kill_seed=seed, verbose=verbose)
            else:
                failures += run_scenario(lane, sc, stats, verbose=verbose)
            if progress is not None:
                progress(n, stats)
    finally:
        if lane is not server:
            lane.close()
    return failures


def hypothesis_settings(**overrides: Any):
    from hypothesis import HealthCheck, settings

    base = dict(
        deadline=None, database=None, derandomize=True, print_blob=False, suppress_health_check=list(HealthCheck)
    )
    base.update(overrides)
    return settings(**base)


def replay_choices(choices: Sequence[int]) -> Scenario:
    """The scenario hypothesis generates from ``choices`` (for instance a seed's draws):
    what lets :func:`shrink_seed` start hypothesis from a seed's scenario."""
    from hypothesis import Phase, given
    from hypothesis.database import InMemoryExampleDatabase, choices_to_bytes

    db = InMemoryExampleDatabase()
    db.save(b"replay.secondary", choices_to_bytes(tuple(choices)))
    seen: list[Scenario] = []

    @hypothesis_settings(database=db, derandomize=False, phases=[Phase.reuse], max_examples=1)
    @given(scenarios())
    def replay(sc: Scenario) -> None:
        seen.append(sc)
        raise _Replayed

    replay._hypothesis_internal_database_key = b"replay"  # type: ignore[attr-defined]
    with contextlib.suppress(_Replayed):
        replay()
    if not seen:
        raise AssertionError("hypothesis replayed no scenario from the choices")
    return seen[0]


class _Replayed(Exception):
    """Raised by the first replayed example: hypothesis keeps interesting (failing) ones only."""


def shrink_seed(server, seed: int, *, max_shrinks: int = 400) -> str:
    """The minimal failure hypothesis finds from seed ``seed``'s scenario (replayed as a
    choice sequence from the seed's draws), as text."""
    from hypothesis import Phase, given
    from hypothesis.database import InMemoryExampleDatabase, choices_to_bytes

    _, choices = scenario_for_seed(seed)
    lane = server if isinstance(server, Lane) else Lane(server)
    db = InMemoryExampleDatabase()
    key = f"cdcflow-fuzz-{seed}".encode()
    db.save(key + b".secondary", choices_to_bytes(tuple(choices)))
    runs = [0]

    @hypothesis_settings(
        database=db,
        derandomize=False,
        phases=[Phase.reuse, Phase.shrink],
        max_examples=max_shrinks,
        report_multiple_bugs=False,
    )
    @given(scenarios())
    def check(sc: Scenario) -> None:
        runs[0] += 1
        run_scenario(lane, sc, Stats(), stop_on_failure=True)

    check._hypothesis_internal_database_key = key  # type: ignore[attr-defined]
    try:
        check()
    except (Mismatch, EngineError) as exc:
        return f"minimal failure after {runs[0]} runs:\n{exc}"
    finally:
        if lane is not server:
            lane.close()
    return f"seed {seed}: no failure reproduced ({runs[0]} runs)"


# -- the CLI ------------------------------------------------------------------------------------


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _server(name: str):
    from tests.conftest import PgServer, _embedded

    if name == "embedded":
        return _embedded()
    return PgServer("system", os.environ.get("CDCFLOW_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.projection_fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=1000, help="stop after this many queries (cases)")
    ap.add_argument("--seed", type=int, default=1, help="scenario seeds are seed * 1000000 + 0, 1, 2, ...")
    ap.add_argument("--server", choices=("system", "embedded"), default="system")
    ap.add_argument(
        "--pipeline-every",
        type=int,
        default=25,
        help="every Nth scenario runs through 'cdcflow run' with SIGKILLs (0: none)",
    )
    ap.add_argument("--replay", type=int, nargs="*", help="run these scenario seeds (verbose)")
    ap.add_argument("--pipeline", action="store_true", help="with --replay: through 'cdcflow run'")
    ap.add_argument("--shrink", type=int, help="shrink this failing scenario seed with hypothesis")
    ap.add_argument("--show", type=int, help="print this seed's scenario (schema, queries) and exit")
    ap.add_argument("--json", help="write the counts and failures to this file")
    ap.add_argument("--repros", action="store_true", help="run the reproductions of the bugs found, and the limits")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)
    logging.getLogger("cdcflow").setLevel(logging.CRITICAL)
    if args.show is not None:
        sc, choices = scenario_for_seed(args.show)
        print(sc.describe(), f"({len(choices)} draws)")
        for t in sc.schema.tables:
            print(t.ddl() + ";", f"-- {len(sc.initial[t.name])} rows")
        for q in sc.queries:
            print(f"-- {q.name} [{q.shape}]\n{q.text}\n")
        return 0
    server = _server(args.server)
    if args.shrink is not None:
        print(shrink_seed(server, args.shrink))
        return 0
    if args.repros:
        lane = Lane(server)
        try:
            failing = 0
            for case in [*REGRESSIONS, *LIMITS]:
                problem = check_sql_case(lane, case)
                failing += problem is not None
                print(f"== {case.name}: {'FAILS' if problem else 'ok'} ({case.bug})\n{case.query}")
                if problem:
                    print("   " + problem.replace("\n", "\n   "))
        finally:
            lane.close()
        return 1 if failing else 0
    stats = Stats()
    if args.replay:
        lane = Lane(server)
        try:
            for seed in args.replay:
                sc, _ = scenario_for_seed(seed)
                print(sc.describe())
                if args.pipeline:
                    run_scenario_pipeline(lane, sc, stats, kill_seed=seed, verbose=True)
                else:
                    run_scenario(lane, sc, stats, verbose=True)
        finally:
            lane.close()
        print(stats.report())
        return 1 if stats.failures else 0
    n = 0
    last = time.monotonic()
    signal.signal(signal.SIGTERM, _interrupt)  # a stopped run still reports and drops its databases
    lane = Lane(server)
    try:
        while stats.cases < args.cases:
            seed = args.seed * 1_000_000 + n
            sc, _ = scenario_for_seed(seed)
            try:
                if args.pipeline_every and n % args.pipeline_every == args.pipeline_every - 1:
                    run_scenario_pipeline(lane, sc, stats, kill_seed=seed)
                else:
                    run_scenario(lane, sc, stats)
            except Exception as exc:  # the harness itself failed: record it, go on
                stats.refusals[f"(harness) {type(exc).__name__}: {str(exc)[:80]}"] += 1
                print(f"seed {seed}: harness error {type(exc).__name__}: {exc}", file=sys.stderr)
                lane.dirty = True
            n += 1
            if time.monotonic() - last > 30:
                last = time.monotonic()
                print(
                    f"... {n} scenarios, {stats.cases} cases, {len(stats.failures)} failures, {stats.seconds:.0f} s",
                    flush=True,
                )
    except KeyboardInterrupt:
        print("interrupted")
    finally:
        lane.close()
    print(stats.report())
    for why, example in stats.refusal_examples.items():
        print(f"\n==== refused: {why}\n{example}")
    for f in stats.failures:
        print(f"\n==== {f.line()}\n{f.repro}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "scenarios": stats.scenarios,
                    "cases": stats.cases,
                    "accepted": stats.accepted,
                    "refused": stats.refused,
                    "source_errors": stats.source_errors,
                    "cycles": stats.cycles,
                    "engine_cycles": stats.engine_cycles,
                    "self_checks": stats.self_checks,
                    "comparisons": stats.comparisons,
                    "txns": stats.txns,
                    "rollbacks": stats.rollbacks,
                    "changes": stats.changes,
                    "kills": stats.kills,
                    "pipeline_scenarios": stats.pipeline_scenarios,
                    "shapes": stats.shapes,
                    "features": stats.features,
                    "refusals": stats.refusals,
                    "refusal_examples": stats.refusal_examples,
                    "failing_seeds": stats.failing_seeds,
                    "seconds": stats.seconds,
                    "failures": [{"line": f.line(), "repro": f.repro} for f in stats.failures],
                },
                indent=1,
                default=str,
            )
        )
    return 1 if stats.failures else 0


if __name__ == "__main__":
    sys.exit(main())

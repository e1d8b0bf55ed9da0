"""Positions of changes: ``(lsn, seqval)`` as integers, parsed and printed per engine.

PostgreSQL LSNs are 64-bit (``16/B374D848``); SQL Server LSNs and seqvals are 10-byte
big-endian values (``0x0000002A000001F80003``). Both are held as Python ints and stored
as ``numeric(25,0)`` in the serving database, so they always compare as numbers.
"""

from __future__ import annotations

import re
from typing import NamedTuple

MSSQL_LSN_BYTES = 10
MAX_MSSQL_LSN = (1 << (8 * MSSQL_LSN_BYTES)) - 1
MAX_PG_LSN = (1 << 64) - 1

_PG_LSN_RE = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
_MSSQL_LSN_RE = re.compile(r"^0x([0-9A-Fa-f]{20})$")


class Position(NamedTuple):
    """A change's place in the source's history: commit LSN, then order inside it."""

    lsn: int
    seqval: int = 0


def parse_pg_lsn(text: str) -> int:
    """``'16/B374D848'`` -> int. Raises ValueError naming the bad text."""
    m = _PG_LSN_RE.match(text.strip())
    if not m:
        raise ValueError(f"not a PostgreSQL LSN (expected like 16/B374D848): {text!r}")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


def format_pg_lsn(value: int) -> str:
    if not 0 <= value <= MAX_PG_LSN:
        raise ValueError(f"PostgreSQL LSN out of range: {value}")
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def mssql_lsn_from_bytes(raw: bytes) -> int:
    """SQL Server ``binary(10)`` -> int (big-endian, so byte order == numeric order)."""
    if len(raw) != MSSQL_LSN_BYTES:
        raise ValueError(f"SQL Server LSN must be {MSSQL_LSN_BYTES} bytes, got {len(raw)}")
    return int.from_bytes(raw, "big")


def mssql_lsn_to_bytes(value: int) -> bytes:
    if not 0 <= value <= MAX_MSSQL_LSN:
        raise ValueError(f"SQL Server LSN out of range: {value}")
    return value.to_bytes(MSSQL_LSN_BYTES, "big")


def parse_mssql_lsn(text: str) -> int:
    m = _MSSQL_LSN_RE.match(text.strip())
    if not m:
        raise ValueError(f"not a SQL Server LSN (expected 0x + 20 hex digits): {text!r}")
    return int(m.group(1), 16)


def format_mssql_lsn(value: int) -> str:
    return "0x" + mssql_lsn_to_bytes(value).hex().upper()


#: Each engine's (print, parse) of positions, by the engine name control rows store
#: (``ctl_ingestion_watermarks.engine``). Code with a source calls its ``format_position``.
_BY_ENGINE = {"postgres": (format_pg_lsn, parse_pg_lsn), "sqlserver": (format_mssql_lsn, parse_mssql_lsn)}


def format_lsn(engine: str, value: int | None) -> str:
    """Print an LSN the way the named engine's users read it; ``-`` for none."""
    if value is None:
        return "-"
    return _BY_ENGINE.get(engine, _BY_ENGINE["postgres"])[0](value)


def parse_lsn(engine: str, text: str) -> int:
    return _BY_ENGINE.get(engine, _BY_ENGINE["postgres"])[1](text)

"""The FAKE SQL Server's data: pymssql-shaped errors, LSN helpers, tables, change rows,
capture instances and sys.types (see tests/fakes/fake_mssql.py)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any


class Error(Exception):
    """pymssql.Error's shape: ``args = ((number, message bytes),)``, as pymssql 2.4 raises."""

    def __init__(self, number: int, message: bytes) -> None:
        super().__init__((number, message))


class InterfaceError(Error):
    pass


class DatabaseError(Error):
    pass


class OperationalError(DatabaseError):
    pass


class ProgrammingError(DatabaseError):
    pass


LSN_START = 0x0000002A000001F80001
ZERO = bytes(10)


def lsn_bytes(value: int) -> bytes:
    return value.to_bytes(10, "big")


def lsn_int(raw: bytes | None) -> int:
    return int.from_bytes(raw, "big") if raw else 0


def error_313(instance: str) -> OperationalError:
    return OperationalError(
        313,
        b"An insufficient number of arguments were supplied for the procedure or function "
        + f"cdc.fn_cdc_get_all_changes_{instance}.".encode(),
    )


@dataclass
class FakeColumn:
    name: str
    type_name: str
    precision: int | None = None
    scale: int | None = None
    is_key: bool = False


@dataclass
class FakeChange:
    lsn: int
    seqval: int
    op: int
    values: tuple
    command_id: int = 1


@dataclass
class FakeTable:
    schema: str
    name: str
    columns: list[FakeColumn]
    rows: dict[Any, tuple] = field(default_factory=dict)
    next_id: int = 1

    @property
    def key_index(self) -> int:
        return next(i for i, c in enumerate(self.columns) if c.is_key)


@dataclass
class FakeCapture:
    instance: str
    table: FakeTable
    start_lsn: int | None  # NULL until the capture job first processes the instance
    changes: list[FakeChange] = field(default_factory=list)
    role_name: str | None = None  # the gating role (sp_cdc_enable_table @role_name)
    #: The captured columns (cdc.captured_columns): the table's columns when the instance
    #: was created. DDL never changes them: an added column is not captured, a dropped
    #: one stays, NULL from then on.
    columns: list[FakeColumn] = field(default_factory=list)

    def project(self, table: FakeTable, row: tuple | None) -> tuple | None:
        """A source-table row as this instance's change table holds it."""
        if row is None:
            return None
        by_name = {c.name: v for c, v in zip(table.columns, row, strict=True)}
        return tuple(by_name.get(c.name) for c in self.columns)


@dataclass
class FakeDdl:
    """A row of cdc.ddl_history: DDL on a captured table, per capture instance."""

    instance: str
    lsn: int
    command: str
    required_column_update: bool = False


_TS = ("datetime2", 26, 6)
DEMO_TABLES = {  # the demo schema of sql/sqlserver/bootstrap/10_schema.sql: (name, type, precision, scale, key)
    "customers": [
        ("customer_id", "bigint", 19, 0, True),
        ("segment", "nvarchar", 0, 0, False),
        ("is_active", "bit", 1, 0, False),
        ("updated_at", *_TS, False),
    ],
    "orders": [
        ("order_id", "bigint", 19, 0, True),
        ("customer_id", "bigint", 19, 0, False),
        ("amount", "numeric", 18, 2, False),
        ("status", "nvarchar", 0, 0, False),
        ("created_at", *_TS, False),
        ("updated_at", *_TS, False),
    ],
    "payments": [
        ("payment_id", "bigint", 19, 0, True),
        ("order_id", "bigint", 19, 0, False),
        ("paid_amount", "numeric", 18, 2, False),
        ("paid_at", *_TS, False),
    ],
}


# sys.types (https://learn.microsoft.com/sql/relational-databases/system-catalog-views/sys-types-transact-sql):
# name -> (system_type_id, user_type_id). System types have user_type_id = system_type_id;
# the CLR types geography, geometry and hierarchyid share system_type_id 240 and differ by
# user_type_id, so TYPE_NAME(system_type_id) (TYPE_NAME takes a user_type_id) is NULL for them.
SYS_TYPES = {
    "hierarchyid": (240, 128),
    "geometry": (240, 129),
    "geography": (240, 130),
}
CLR_SYSTEM_TYPE_ID = 240


def _type_name(declared: str, joins_types: bool) -> str | None:
    """What the capture_columns query answers for a column declared with this type: with
    the join to sys.types on user_type_id, the type's own name for a CLR (assembly) type;
    otherwise TYPE_NAME(system_type_id), NULL for a CLR type."""
    system_type_id, _user_type_id = SYS_TYPES.get(declared, (None, None))
    if system_type_id != CLR_SYSTEM_TYPE_ID:
        return declared
    return declared if joins_types else None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)  # the fake server's local time is UTC

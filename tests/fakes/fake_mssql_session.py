"""The FAKE SQL Server's transactions, connections and cursors (see tests/fakes/fake_mssql.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tests.fakes.fake_mssql_model import FakeChange, FakeTable, InterfaceError

if TYPE_CHECKING:
    from tests.fakes.fake_mssql import FakeCdcServer


class FakeTransaction:
    """Changes to fake tables, committed together at one LSN on ``with`` exit."""

    def __init__(self, server: FakeCdcServer) -> None:
        self.server = server
        # table, op, after, before, split: one entry per row operation, in the order run
        self.ops: list[tuple[FakeTable, int, tuple, tuple | None, bool]] = []

    def __enter__(self) -> FakeTransaction:
        return self

    def __exit__(self, exc_type, *_: object) -> None:
        if exc_type is None:
            self.commit()

    def _table(self, name: str) -> FakeTable:
        schema, _, table = name.rpartition(".")
        return self.server.tables[(schema or "dbo", table)]

    def insert(self, table: str, **values: Any) -> Any:
        t = self._table(table)
        key_col = t.columns[t.key_index].name
        if key_col not in values:
            values[key_col] = t.next_id
        t.next_id = max(t.next_id, int(values[key_col]) + 1)
        row = tuple(values.get(c.name) for c in t.columns)
        self.ops.append((t, 2, row, None, False))
        return values[key_col]

    def update(self, table: str, key: Any, **changes: Any) -> None:
        """An UPDATE recorded as an op 3/4 pair. Changing the key column this way is what a
        singleton update of a unique key does under trace flag 8207 (the old key is then
        only in the op 3 row)."""
        self._update(table, key, changes, split=False)

    def change_key(self, table: str, key: Any) -> Any:
        """:meth:`update` of the key column to a new value (the table's next id); returns it."""
        t = self._table(table)
        new_key = t.next_id
        self.update(table, key, **{t.columns[t.key_index].name: new_key})
        return new_key

    def split_update(self, table: str, key: Any, **changes: Any) -> None:
        """An UPDATE recorded as a delete plus an insert, the insert with the lower seqval
        (KB 3030352): MERGE, an update of a unique-index column, a clustered-index move."""
        self._update(table, key, changes, split=True)

    def _update(self, table: str, key: Any, changes: dict, split: bool) -> None:
        t = self._table(table)
        before = self._current(t, key)
        after = tuple(changes.get(c.name, before[i]) for i, c in enumerate(t.columns))
        k = t.key_index
        if after[k] != key and (after[k] in t.rows or after[k] in self.live_keys(table)):
            raise KeyError(f"duplicate key {after[k]!r} in fake table {t.name}")
        t.next_id = max(t.next_id, int(after[k]) + 1) if isinstance(after[k], int) else t.next_id
        self.ops.append((t, 4, after, before, split))

    def delete(self, table: str, key: Any) -> None:
        t = self._table(table)
        self.ops.append((t, 1, self._current(t, key), None, False))

    def live_keys(self, table: str) -> list[Any]:
        """Keys that exist as this transaction sees them (its own writes included)."""
        t = self._table(table)
        keys = dict.fromkeys(t.rows)
        for tt, op, after, before, _split in self.ops:
            if tt is not t:
                continue
            gone = after if op == 1 else before  # a delete's row, an update's old key
            if gone is not None:
                keys.pop(gone[t.key_index], None)
            if op != 1:
                keys[after[t.key_index]] = None
        return list(keys)

    def _current(self, t: FakeTable, key: Any) -> tuple:
        row = t.rows.get(key)
        for table, op, after, before, _split in self.ops:  # read your own writes
            if table is not t:
                continue
            if before is not None and before[t.key_index] == key:
                row = None  # updated away from this key (or to it, below)
            if after[t.key_index] == key:
                row = None if op == 1 else after
        if row is None:
            raise KeyError(f"no row {key!r} in fake table {t.name}")
        return row

    def commit(self) -> int | None:
        srv = self.server
        if not self.ops:
            return None
        lsn = srv._next_lsn()
        routed: list[tuple[str, FakeChange]] = []
        command = 0
        for t, op, after, before, split in self.ops:
            k = t.key_index
            if before is not None:
                t.rows.pop(before[k], None)
            if op == 1:
                t.rows.pop(after[k], None)
            else:
                t.rows[after[k]] = after
            changes: list[FakeChange] = []
            command += 1
            if split:  # the delete first by command id, the insert first by seqval (KB 3030352)
                changes.append(FakeChange(lsn, srv._seq + 2, 1, before, command))  # type: ignore[arg-type]
                command += 1
                changes.append(FakeChange(lsn, srv._seq + 1, 2, after, command))
                srv._seq += 2
            else:
                srv._seq += 1
                if op == 4:  # an update is a 3/4 pair sharing one seqval and command id
                    changes.append(FakeChange(lsn, srv._seq, 3, before, command))  # type: ignore[arg-type]
                changes.append(FakeChange(lsn, srv._seq, op, after, command))
            for cap in srv.captures.values():
                if cap.table is t:
                    routed.extend(
                        (cap.instance, FakeChange(c.lsn, c.seqval, c.op, cap.project(t, c.values), c.command_id))
                        for c in changes
                    )
        srv.pending.append((lsn, routed))
        if srv.auto_harvest:
            srv.harvest()
        self.ops = []
        return lsn


class FakeConnection:
    def __init__(self, server: FakeCdcServer, kwargs: dict[str, Any]) -> None:
        self.server = server
        self.kwargs = kwargs
        self.closed = False
        self.view: dict | None = None

    def cursor(self) -> FakeCursor:
        if self.closed:
            raise InterfaceError(0, b"Connection is closed.")
        return FakeCursor(self)

    def close(self) -> None:
        self.closed = True


class FakeCursor:
    def __init__(self, conn: FakeConnection) -> None:
        self.conn = conn
        self.description: list[tuple] | None = None
        self._rows: Iterator[tuple] = iter(())

    def execute(self, text: str, params: dict | None = None) -> None:
        names, rows = self.conn.server.execute(self.conn, text, params)
        self.description = [(n,) for n in names] if names is not None else None
        self._rows = iter(rows)  # fetched as the client iterates, as a server streams a result

    def fetchall(self) -> list[tuple]:
        rows, self._rows = list(self._rows), iter(())
        return rows

    def __iter__(self) -> Iterator[tuple]:
        yield from self._rows

    def close(self) -> None:
        self._rows = iter(())

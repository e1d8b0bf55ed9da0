"""One window of a SQL Server capture instance's changes, in the documented order, as
staging lines.

Source: the change table ``cdc.<capture_instance>_CT`` read directly (as Debezium does),
not ``cdc.fn_cdc_get_all_changes_<ci>``: the function does not return ``__$command_id``,
and Microsoft's change-table page
(https://learn.microsoft.com/sql/relational-databases/system-tables/cdc-capture-instance-ct-transact-sql)
says ``__$seqval`` must not be used to order the changes of a transaction, ``__$command_id``
must. An update recorded as a delete plus an insert (MERGE, an update of a unique-index
column, a row moving in the clustered index) can have the insert at the lower seqval
(KB 3030352); ordered by seqval, the delete would be the row's last version.

Order: ``(__$start_lsn, __$command_id, __$seqval, __$operation)``. The staged ``__seqval``
is the change's position (1, 2, ...) in that order inside its commit LSN, so the
projections' latest-version rule (``__lsn DESC, __seqval DESC``) follows it. Positions are
stable across re-reads: a read never splits an LSN (``TOP ... WITH TIES``), the capture job
writes a transaction's rows before ``max_lsn`` covers it, and the cleanup job removes
whole LSNs below its low water mark (a removal during a read is caught by the min-LSN
check after it, see :mod:`cdcflow.sources.sqlserver`). Op 3 rows (update, old values) take
a position too, so positions do not depend on what is staged.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from cdcflow.positions import mssql_lsn_from_bytes
from cdcflow.sources.base import ChangeSink, copy_line

OP_DELETE, OP_INSERT, OP_UPDATE_OLD, OP_UPDATE_NEW = 1, 2, 3, 4
#: Leading columns of the ``changes`` query before the captured columns.
HEAD = 5  # __$start_lsn, __$seqval, __$operation, __$command_id, commit_time


def lsn(raw: Any) -> int:
    """binary(10) from the driver -> int; NULL -> 0 (what the functions answer for "none")."""
    return mssql_lsn_from_bytes(bytes(raw)) if raw is not None else 0


@dataclass
class WindowStats:
    fetched: int = 0  # change-table rows read (what TOP counted)
    rows: int = 0  # staging lines
    transactions: int = 0
    last_lsn: int = 0
    last_time: dt.datetime | None = None


class ChangeStager:
    """Turns change-table rows (the ``changes`` query, in its order) into staging lines.

    An update is an op 3 row (old values) followed by an op 4 row (new values) with the same
    ``__$seqval`` and ``__$command_id``. Op 3 is not staged, except when the pair changed the
    row's key (a singleton update of a unique key under trace flag 8207 is recorded this
    way rather than as delete + insert): then the old key is staged as a delete (op 1) at
    the op 3 row's position, so it does not stay live in serving.
    """

    def __init__(self, capture: str, sink: ChangeSink, after_lsn: int, key_indexes: tuple[int, ...]) -> None:
        self.capture = capture
        self.sink = sink
        self.stats = WindowStats(last_lsn=after_lsn)
        self.key_indexes = key_indexes
        self._position = 0
        self._old: tuple[int, tuple] | None = None  # (position, row) of an op 3 awaiting its op 4

    def add(self, row: tuple) -> None:
        commit_lsn = lsn(row[0])
        if commit_lsn != self.stats.last_lsn:
            self.stats.transactions += 1
            self.stats.last_lsn = commit_lsn
            self.stats.last_time = row[4]
            self._position = 0
        self._position += 1
        self.stats.fetched += 1
        op = int(row[2])
        old, self._old = self._old, None
        if op == OP_UPDATE_OLD:
            self._old = (self._position, row)  # the old values of an update: staged only on a key change
            return
        if op == OP_UPDATE_NEW and old is not None and self._same_update(old[1], row):
            old_values, new_values = old[1][HEAD:], row[HEAD:]
            if any(old_values[i] != new_values[i] for i in self.key_indexes):
                self._stage(commit_lsn, old[0], OP_DELETE, row[4], old_values)
        self._stage(commit_lsn, self._position, op, row[4], row[HEAD:])

    @staticmethod
    def _same_update(old: tuple, new: tuple) -> bool:
        """Same commit LSN, seqval and command id: the two rows of one update."""
        return (bytes(old[0]), bytes(old[1]), old[3]) == (bytes(new[0]), bytes(new[1]), new[3])

    def _stage(self, commit_lsn: int, position: int, op: int, commit_time: Any, values: tuple) -> None:
        self.sink.add_line(self.capture, copy_line(commit_lsn, position, op, commit_time, values))
        self.stats.rows += 1

    def finish(self) -> WindowStats:
        return self.stats

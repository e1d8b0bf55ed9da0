"""The live load of a fault run: tests/workload.py's Workload, writing from a thread
directly to the source (not through a proxy), surviving source restarts.

The expected record stays exact although transactions die mid-way: each transaction's
changes are recorded into a private Recorder and merged into the run's record only when
the transaction is known to be committed. Each transaction also inserts its id into a
marker table (not captured, not published) in the same transaction; when anything goes
wrong after BEGIN -- including a connection lost during COMMIT, whose outcome is
unknown -- the load reconnects and asks the source whether the marker exists. A
transaction is then recorded if and only if it committed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import psycopg

from tests.workload import TABLES, Recorder, Workload

MARKER_DDL = "CREATE TABLE IF NOT EXISTS fault_txn_marker (txn_id bigint PRIMARY KEY, at timestamptz DEFAULT now())"


class SampledWorkload(Workload):
    """tests/workload.py's Workload, picking keys from an index range instead of reading every
    key of the table per statement (which slows the load down as the tables grow)."""

    def _ids(self, table: str) -> list[int]:
        key = TABLES[table][0]
        query = (
            f"SELECT {key} FROM {table} WHERE {key} >= (SELECT min({key}) + floor(random() * "  # noqa: S608
            f"(max({key}) - min({key}) + 1)) FROM {table}) ORDER BY {key} LIMIT 64"
        )
        return [r[0] for r in self.conn.execute(query).fetchall()]


@dataclass
class LoadStats:
    committed: int = 0
    bulk_committed: int = 0
    failed_before_commit: int = 0  # error before COMMIT was sent: rolled back, checked by marker anyway
    commit_unknown_committed: int = 0  # connection lost during COMMIT, marker found: recorded
    commit_unknown_rolled_back: int = 0  # connection lost during COMMIT, no marker: not recorded
    reconnects: int = 0
    other_errors: list[str] = field(default_factory=list)


class ResilientLoad:
    def __init__(self, dsn: str, seed: int, rate: float, bulk_every: int, bulk_rows: int) -> None:
        self.dsn = dsn
        self.rate = rate  # transactions per second (upper bound)
        self.bulk_every = bulk_every
        self.bulk_rows = bulk_rows
        self.rec = Recorder()
        self.stats = LoadStats()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._seed = seed
        self._txn_id = 0
        self._thread = threading.Thread(target=self._run, name="fault-load", daemon=True)
        self._conn: psycopg.Connection | None = None
        self._wl: Workload | None = None

    def start(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(MARKER_DDL)
        self._thread.start()

    def finish(self, timeout: float = 120) -> None:
        self.stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError("the load thread did not stop in time")
        if self.error is not None:
            raise AssertionError(f"the load failed: {self.error!r}") from self.error

    # -- connection -----------------------------------------------------------------

    def _connect(self, deadline_seconds: float = 120) -> psycopg.Connection:
        deadline = time.monotonic() + deadline_seconds
        delay = 0.05
        while True:
            try:
                conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=3)
                conn.execute("SET statement_timeout = '30s'")
                return conn
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(1.0, delay * 2)

    def _reset_connection(self) -> psycopg.Connection:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # already broken
                pass
        self.stats.reconnects += 1
        self._conn = self._connect()
        assert self._wl is not None
        self._wl.conn = self._conn
        return self._conn

    def _committed(self, txn_id: int) -> bool:
        """Did transaction ``txn_id`` commit? Asked on a fresh connection (bounded retries)."""
        for _ in range(200):
            conn = self._reset_connection()
            try:
                row = conn.execute("SELECT 1 FROM fault_txn_marker WHERE txn_id = %s", (txn_id,)).fetchone()
                return row is not None
            except psycopg.OperationalError:
                time.sleep(0.1)
        raise AssertionError(f"could not learn whether transaction {txn_id} committed")

    # -- one transaction -----------------------------------------------------------

    def _merge(self, part: Recorder, bulk: bool) -> None:
        for key, changes in part.changes.items():
            self.rec.changes[key].extend(changes)
        self.rec.count += part.count
        self.rec.transactions += 1
        self.stats.committed += 1
        self.stats.bulk_committed += int(bulk)

    def _one(self) -> None:
        assert self._wl is not None and self._conn is not None
        wl = self._wl
        self._txn_id += 1
        txn_id = self._txn_id
        bulk = self.bulk_every > 0 and txn_id % self.bulk_every == 0
        part = Recorder()
        wl.rec = part
        phase = "begin"
        try:
            conn = self._conn
            conn.execute("BEGIN")
            phase = "statements"
            if bulk:
                wl._exec(
                    "orders",
                    2,
                    "INSERT INTO orders (customer_id, amount, status) "
                    "SELECT NULL, g, 'BULK' FROM generate_series(1, %s) g",
                    (self.bulk_rows,),
                )
                wl._exec("orders", 4, "UPDATE orders SET status = 'BULK2' WHERE status = 'BULK'")
            else:
                for _ in range(wl.rng.randint(1, 4)):
                    wl.one_statement()
            conn.execute("INSERT INTO fault_txn_marker (txn_id) VALUES (%s)", (txn_id,))
            phase = "commit"
            conn.execute("COMMIT")
        except psycopg.Error as exc:
            if not isinstance(exc, psycopg.OperationalError):
                self.stats.other_errors.append(f"{phase}: {type(exc).__name__}: {exc}"[:300])
                if len(self.stats.other_errors) > 20:
                    raise
            if self._committed(txn_id):
                if phase != "commit":  # cannot happen: the marker is only committed by COMMIT
                    raise AssertionError(f"transaction {txn_id} committed although it failed in {phase}") from exc
                self.stats.commit_unknown_committed += 1
                self._merge(part, bulk)
            elif phase == "commit":
                self.stats.commit_unknown_rolled_back += 1
            else:
                self.stats.failed_before_commit += 1
            return
        self._merge(part, bulk)

    def _run(self) -> None:
        try:
            self._conn = self._connect()
            self._wl = SampledWorkload(self._conn, self._seed, Recorder())
            interval = 1.0 / self.rate if self.rate > 0 else 0.0
            next_at = time.monotonic()
            while not self.stop.is_set():
                self._one()
                next_at += interval
                pause = next_at - time.monotonic()
                if pause > 0:
                    self.stop.wait(pause)
                else:
                    next_at = time.monotonic()  # behind (a restart): do not burst to catch up
        except BaseException as exc:  # surfaced by finish()
            self.error = exc
        finally:
            if self._conn is not None:
                try:
                    self._conn.close()
                except Exception:  # already broken
                    pass

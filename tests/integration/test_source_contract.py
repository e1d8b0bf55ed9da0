"""The source protocol's contract, one suite for every engine.

Engines:
- ``postgres``: a real PostgreSQL source (embedded; and the system server when
  CDCFLOW_TEST_PG_DSN is set), bootstrapped with ``cdcflow.bootstrap.bootstrap``.
- ``sqlserver-fake``: the SQL Server source against the FAKE in tests/fakes/fake_mssql.py.
- ``sqlserver``: a real SQL Server at CDCFLOW_TEST_MSSQL_DSN (a scratch database: the
  suite creates the demo tables there and enables CDC; SQL Server Agent must run).
  Skipped, with that reason in the summary, when the variable is not set.

Every engine stages into the real serving PostgreSQL, so the type mapping meets real COPY.
The suite reads the customers capture only and checks: its description, the initial
snapshot, whole transactions under a row cap smaller than the transaction, update and
delete operation codes, no re-delivery after the watermark, idle advance, and gap
detection.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import psycopg
import pytest

from cdcflow.errors import GapError
from cdcflow.serving import schema
from cdcflow.serving.staging import StagingWriter
from cdcflow.sources.base import TableSpec
from tests.conftest import Databases

MSSQL_ENV = "CDCFLOW_TEST_MSSQL_DSN"
READ_DEADLINE = 60.0  # a real SQL Server's capture job harvests every few seconds


class Lines:
    """A sink that keeps the lines and forwards them to a staging writer (text format: the
    PostgreSQL source streams in text unless told the serving version, which this does not)."""

    copy_format = "text"

    def __init__(self, writer: StagingWriter | None = None) -> None:
        self.writer = writer
        self.rows: list[tuple[int, int, int, list[bytes]]] = []

    def add_line(self, capture: str, line: bytes) -> None:
        parts = line.rstrip(b"\n").split(b"\t")
        self.rows.append((int(parts[0]), int(parts[1]), int(parts[2]), parts[4:]))
        if self.writer is not None:
            self.writer.add_line(capture, line)

    def add_lines(self, capture: str, lines: list[bytes], nbytes: int) -> None:
        for line in lines:
            self.add_line(capture, line)


class Harness:
    engine: str
    capture: str
    source: object

    def __init__(self, dbs: Databases) -> None:
        self.dbs = dbs
        self.source_name = dbs.settings.source_name

    # engine-specific ----------------------------------------------------------------
    def insert_customers(self, segments: list[str]) -> list[int]:
        raise NotImplementedError

    def update_customer(self, key: int, segment: str) -> None:
        raise NotImplementedError

    def delete_customer(self, key: int) -> None:
        raise NotImplementedError

    def split_update_customer(self, key: int, segment: str) -> None:
        """An update SQL Server records as a delete plus an insert (an update of a column in
        a unique index: KB 238254); elsewhere a plain update."""
        raise NotImplementedError

    def change_customer_key(self, key: int) -> int | None:
        """Give the row a new key; returns it, or None where the engine cannot (an IDENTITY
        column on a real SQL Server)."""
        raise NotImplementedError

    def touch_other(self) -> None:
        """A committed change this source does not deliver."""
        raise NotImplementedError

    def source_customers(self) -> dict[int, str]:
        raise NotImplementedError

    def force_gap(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.source.close()  # type: ignore[attr-defined]

    # shared ----------------------------------------------------------------------------
    def spec(self) -> TableSpec:
        return next(s for s in self.source.describe_tables() if s.capture == self.capture)  # type: ignore[attr-defined]

    def prepare_serving(self, specs: list[TableSpec], engine: str) -> None:
        with psycopg.connect(self.dbs.serving_dsn) as conn:
            schema.run_scripts(conn, "serving")
            for spec in specs:
                schema.ensure_staging(conn, spec)
            schema.ensure_control_rows(conn, self.source_name, engine, specs)
            conn.commit()

    def watermark(self) -> int:
        with psycopg.connect(self.dbs.serving_dsn) as c:
            row = c.execute(
                "SELECT last_lsn FROM ctl_ingestion_watermarks WHERE source_name = %s AND capture_instance = %s",
                (self.source_name, self.capture),
            ).fetchone()
        assert row is not None
        return int(row[0])

    def read_until(self, after: int, max_rows: int, done, stage: bool = True) -> tuple[Lines, int]:
        """Read batches from ``after`` (staging them) until ``done(lines, end_lsn)``."""
        lines = Lines()
        deadline = time.monotonic() + READ_DEADLINE
        with psycopg.connect(self.dbs.serving_dsn) as conn:
            while True:
                writer = StagingWriter(conn, {self.capture: self.spec()}, self.source_name)
                batch = Lines(writer if stage else None)
                result = self.source.read_batch(after, max_rows, batch, 0.5)  # type: ignore[attr-defined]
                for row in batch.rows:
                    assert after < row[0] <= result.end_lsn, "a line outside (after, end_lsn]"
                assert result.end_lsn >= after
                if stage:
                    writer.commit(result.end_lsn, [self.capture], result.last_commit_time, expected=[after])
                else:
                    writer.rollback()
                lines.rows.extend(batch.rows)
                lines_in_batch = {r[0] for r in batch.rows}
                if batch.rows:
                    # Whole transactions: every LSN in this batch is absent from earlier ones.
                    assert not lines_in_batch & {r[0] for r in lines.rows[: len(lines.rows) - len(batch.rows)]}
                after = result.end_lsn
                if done(lines, after) or time.monotonic() > deadline:
                    return lines, after

    def staged_latest(self) -> dict[int, str]:
        with psycopg.connect(self.dbs.serving_dsn) as c:
            rows = c.execute(
                "SELECT DISTINCT ON (customer_id) customer_id, __op, segment FROM stg_cdc_customers "
                "WHERE __op <> 3 ORDER BY customer_id, __lsn DESC, __seqval DESC"
            ).fetchall()
        return {int(k): s for k, op, s in rows if op != 1}


class PostgresHarness(Harness):
    engine = "postgres"
    capture = "public_customers"

    def __init__(self, dbs: Databases) -> None:
        super().__init__(dbs)
        from cdcflow.bootstrap import bootstrap

        self.source = bootstrap(dbs.settings, demo=True).source
        self.source.skip_captures.update({"public_orders", "public_payments"})
        with dbs.source() as c:
            c.execute("CREATE TABLE contract_noise (id int)")  # not published

    def _run(self, query: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.dbs.source_dsn) as c:
            cur = c.execute(query, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def insert_customers(self, segments):
        values = ", ".join(["(%s)"] * len(segments))
        return [
            r[0]
            for r in self._run(
                f"INSERT INTO customers (segment) VALUES {values} RETURNING customer_id",  # noqa: S608
                tuple(segments),
            )
        ]

    def update_customer(self, key, segment):
        self._run("UPDATE customers SET segment = %s WHERE customer_id = %s", (segment, key))

    def delete_customer(self, key):
        self._run("DELETE FROM customers WHERE customer_id = %s", (key,))

    def touch_other(self):
        self._run("INSERT INTO contract_noise VALUES (1)")

    def split_update_customer(self, key, segment):
        self.update_customer(key, segment)

    def change_customer_key(self, key):
        new = self._run("SELECT max(customer_id) + 1000 FROM customers")[0][0]
        self._run("UPDATE customers SET customer_id = %s WHERE customer_id = %s", (new, key))
        return new

    def source_customers(self):
        return dict(self._run("SELECT customer_id, segment FROM customers"))

    def force_gap(self):
        self.source.close_stream()
        self.source.drop_slot()


class SqlServerHarness(Harness):
    """A SQL Server source (real or fake) reading the dbo_customers capture instance."""

    engine = "sqlserver"
    capture = "dbo_customers"

    def __init__(self, dbs: Databases, dsn: str, driver=None, fake=None) -> None:
        super().__init__(dbs)
        from cdcflow.sources.sqlserver import SqlServerSource, stage_initial_snapshot

        self.fake = fake
        self.dsn = dsn
        root = SqlServerSource(dsn, ["dbo.customers", "dbo.orders", "dbo.payments"], driver=driver)
        root.prepare(demo=True)
        specs = root.describe_tables()
        root.close()
        self.source = root.per_capture()[0]
        self.prepare_serving(specs, "sqlserver")
        deadline = time.monotonic() + READ_DEADLINE
        with psycopg.connect(dbs.serving_dsn) as conn:
            while True:  # a new capture instance starts when the capture job first reaches it
                try:
                    stage_initial_snapshot(self.source, conn, self.source_name)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1)

    def _conn(self):
        return self.source.conn()  # type: ignore[attr-defined]

    def _run(self, query: str, params: tuple = ()) -> list[tuple]:
        if self.fake is not None:
            raise AssertionError("the fake harness changes data through the fake's API")
        cur = self._conn().cursor()
        cur.execute(query, params)
        rows = cur.fetchall() if cur.description else []
        cur.close()
        return rows

    def insert_customers(self, segments):
        if self.fake is not None:
            with self.fake.transaction() as tx:
                return [tx.insert("customers", segment=s, is_active=True) for s in segments]
        values = ", ".join(["(%s)"] * len(segments))
        return [
            r[0]
            for r in self._run(  # one statement: one transaction
                f"INSERT INTO dbo.customers (segment) OUTPUT inserted.customer_id VALUES {values}",  # noqa: S608
                tuple(segments),
            )
        ]

    def update_customer(self, key, segment):
        if self.fake is not None:
            with self.fake.transaction() as tx:
                tx.update("customers", key, segment=segment)
            return
        self._run("UPDATE dbo.customers SET segment = %s WHERE customer_id = %s", (segment, key))

    def delete_customer(self, key):
        if self.fake is not None:
            with self.fake.transaction() as tx:
                tx.delete("customers", key)
            return
        self._run("DELETE FROM dbo.customers WHERE customer_id = %s", (key,))

    def split_update_customer(self, key, segment):
        if self.fake is not None:
            with self.fake.transaction() as tx:
                tx.split_update("customers", key, segment=segment)
            return
        # segment is in a unique index: SQL Server runs the update as a delete plus an insert.
        self._run(
            "IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = N'ux_contract_segment') "
            "CREATE UNIQUE INDEX ux_contract_segment ON dbo.customers (segment, customer_id)"
        )
        self.update_customer(key, segment)

    def change_customer_key(self, key):
        if self.fake is not None:
            with self.fake.transaction() as tx:
                return tx.change_key("customers", key)
        return None  # customer_id is an IDENTITY column: SQL Server does not update it

    def touch_other(self):
        if self.fake is not None:
            with self.fake.transaction() as tx:
                tx.insert("orders", customer_id=1, status="NEW")
            return
        self._run("INSERT INTO dbo.orders (customer_id, amount) VALUES (1, 1.00)")

    def source_customers(self):
        if self.fake is not None:
            return {k: r[1] for k, r in self.fake.tables[("dbo", "customers")].rows.items()}
        return dict(self._run("SELECT customer_id, segment FROM dbo.customers"))

    def force_gap(self):
        """What the cleanup job does: move the low water mark to the newest LSN."""
        w = self.watermark()
        self.insert_customers(["GAP"])
        deadline = time.monotonic() + READ_DEADLINE
        while self.source.bounds()[1] <= w:  # type: ignore[attr-defined]  # wait for the capture job
            assert time.monotonic() < deadline, "the capture job did not harvest the change"
            time.sleep(0.5)
        mark = self.source.bounds()[1]  # type: ignore[attr-defined]
        if self.fake is not None:
            self.fake.cleanup(self.capture, mark)
            return
        from cdcflow import sqlfiles
        from cdcflow.positions import mssql_lsn_to_bytes

        self._run(
            sqlfiles.queries("sqlserver/enable_cdc.sql")["cleanup_change_table"],
            {"capture": self.capture, "low_water_mark": mssql_lsn_to_bytes(mark)},
        )  # type: ignore[arg-type]


@pytest.fixture(params=["postgres", "sqlserver-fake", "sqlserver"])
def engine(request: pytest.FixtureRequest) -> str:
    """Which source; set up before ``dbs`` so a skipped engine costs no databases."""
    if request.param == "sqlserver" and not os.environ.get(MSSQL_ENV):
        pytest.skip(
            f"{MSSQL_ENV} is not set: no real SQL Server under test (the SQL Server source is tested "
            "against the FAKE: tests/unit/test_sqlserver_fake.py, tests/unit/test_sqlserver_ingest_fake.py)"
        )
    return request.param


@pytest.fixture
def harness(engine: str, dbs: Databases) -> Iterator[Harness]:
    h: Harness
    if engine == "postgres":
        h = PostgresHarness(dbs)
    elif engine == "sqlserver-fake":
        from tests.fakes.fake_mssql import FakeCdcServer

        fake = FakeCdcServer(seed=11)
        h = SqlServerHarness(dbs, "mssql://sa:Fake-Pw-2@fake-host:1433/demo", driver=fake.driver(), fake=fake)
    else:
        h = SqlServerHarness(dbs, os.environ[MSSQL_ENV])
    try:
        yield h
    finally:
        h.close()


# -- the contract ---------------------------------------------------------------------------


def test_describes_the_table_with_postgresql_types_and_key(harness):
    spec = harness.spec()
    assert spec.name == "customers" and spec.key_columns == ("customer_id",)
    assert [(c.name, c.type_sql) for c in spec.columns] == [
        ("customer_id", "bigint"),
        ("segment", "text"),
        ("is_active", "boolean"),
        ("updated_at", "timestamp without time zone" if harness.engine == "sqlserver" else "timestamp with time zone"),
    ]


def test_initial_snapshot_is_staged_and_bounds_cover_the_watermark(harness):
    assert harness.staged_latest() == harness.source_customers()
    low, high = harness.source.bounds()
    assert 0 <= low <= high
    assert harness.watermark() <= high


def test_a_transaction_bigger_than_the_cap_comes_whole_once(harness):
    w = harness.watermark()
    keys = harness.insert_customers([f"BULK{i}" for i in range(6)])

    def mine(lines: Lines) -> list[tuple]:
        return [r for r in lines.rows if int(r[3][0]) in keys]

    lines, end = harness.read_until(w, 2, lambda lines, end: len(mine(lines)) >= 6)
    assert len(mine(lines)) == 6, "the transaction did not arrive whole"
    assert len({r[0] for r in mine(lines)}) == 1 and {r[2] for r in mine(lines)} == {2}
    assert sorted(int(r[3][0]) for r in mine(lines)) == sorted(keys)
    again, _ = harness.read_until(end, 2, lambda lines, e: True, stage=False)
    assert again.rows == []  # nothing at or below the watermark is handed over twice
    assert harness.staged_latest() == harness.source_customers()


def test_update_and_delete_carry_their_operation_codes(harness):
    w = harness.watermark()
    key = harness.insert_customers(["BEFORE"])[0]
    harness.update_customer(key, "AFTER")
    harness.delete_customer(key)
    lines, _ = harness.read_until(w, 100, lambda lines, end: any(r[2] == 1 for r in lines.rows))
    mine = [r for r in lines.rows if int(r[3][0]) == key]
    ops = [r[2] for r in sorted(mine)]
    assert ops[0] == 2 and ops[-1] == 1 and 4 in ops
    assert [r[3][1] for r in mine if r[2] == 4] == [b"AFTER"]
    assert len({r[0] for r in mine}) == 3  # three transactions, three commit LSNs
    assert key not in harness.staged_latest()
    assert harness.staged_latest() == harness.source_customers()


def test_an_update_recorded_as_delete_plus_insert_keeps_the_row(harness):
    """KB 3030352 (https://support.microsoft.com/help/3030352): the insert of an update
    recorded as delete + insert can have the lower __$seqval; ordered by __$command_id
    (cdc.<capture_instance>_CT page) the row stays live."""
    w = harness.watermark()
    key = harness.insert_customers(["SPLIT-BEFORE"])[0]
    harness.split_update_customer(key, "SPLIT-AFTER")
    harness.read_until(w, 100, lambda lines, end: any(r[3][1] == b"SPLIT-AFTER" for r in lines.rows))
    assert harness.staged_latest().get(key) == "SPLIT-AFTER"
    assert harness.staged_latest() == harness.source_customers()


def test_a_key_change_leaves_no_old_key_live(harness):
    """An update of the key (recorded by SQL Server as an op 3/4 pair under trace flag 8207,
    KB 238254): the old key is gone from serving, the new one live."""
    w = harness.watermark()
    key = harness.insert_customers(["RENUMBER"])[0]
    new = harness.change_customer_key(key)
    if new is None:
        pytest.skip("the demo table's key is an IDENTITY column here: it cannot be updated")
    harness.read_until(w, 100, lambda lines, end: any(int(r[3][0]) == new for r in lines.rows))
    latest = harness.staged_latest()
    assert key not in latest and latest[new] == "RENUMBER"
    assert latest == harness.source_customers()


def test_idle_capture_advances_its_watermark(harness):
    w = harness.watermark()
    harness.touch_other()
    lines, end = harness.read_until(w, 100, lambda lines, end: end > w)
    assert lines.rows == [] and end > w
    assert harness.watermark() == end


def test_gap_is_an_error_never_an_empty_batch(harness):
    w = harness.watermark()
    harness.force_gap()
    with pytest.raises(GapError) as info:
        harness.read_until(w, 100, lambda lines, end: end > w, stage=False)
    assert info.value.gap_from == w
    assert harness.watermark() == w

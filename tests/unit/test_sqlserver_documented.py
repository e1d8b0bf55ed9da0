"""The SQL Server source against documented behaviour of a real server that the FAKE
(tests/fakes/fake_mssql.py) once left out. Each test names the behaviour and the page it
comes from; the fake models it, and the source must handle it. What only a real server can
show is listed in docs/sqlserver.md.
"""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from cdcflow.errors import GapError, SchemaDriftError, SourceConfigError, TransientError
from cdcflow.serving import schema
from cdcflow.serving.staging import StagingWriter
from cdcflow.sources.sqlserver import SqlServerSource, stage_initial_snapshot
from tests.fakes.fake_mssql import FakeCdcServer, FakeColumn, demo_server

DSN = "mssql://sa:Fake-Pw-7@fake-host:1433/demo"
DEMO = ("public.customers", "public.orders", "public.payments")
CT_PAGE = "https://learn.microsoft.com/sql/relational-databases/system-tables/cdc-capture-instance-ct-transact-sql"
KB_3030352 = "https://support.microsoft.com/help/3030352"


class ListSink:
    def __init__(self) -> None:
        self.lines: list[list[bytes]] = []

    def add_line(self, capture: str, line: bytes) -> None:
        self.lines.append(line.rstrip(b"\n").split(b"\t"))

    def latest(self, key_index: int = 0) -> dict[int, list[bytes] | None]:
        """Each key's latest version by (lsn, seqval), as the projections take it; None if deleted."""
        out: dict[int, tuple[tuple[int, int], list[bytes] | None]] = {}
        for parts in self.lines:
            pos = (int(parts[0]), int(parts[1]))
            key = int(parts[4 + key_index])
            if key not in out or out[key][0] < pos:
                out[key] = (pos, None if parts[2] == b"1" else parts[4:])
        return {k: v for k, (_, v) in out.items()}


@pytest.fixture
def fake() -> FakeCdcServer:
    return demo_server(3, DSN)


def customers(srv: FakeCdcServer) -> SqlServerSource:
    return SqlServerSource(DSN, ["public.customers"], driver=srv.driver())


def read_all(source: SqlServerSource, after: int, max_rows: int = 100) -> tuple[ListSink, int]:
    sink = ListSink()
    while True:
        result = source.read_batch(after, max_rows, sink, 0)
        if result.end_lsn == after:
            return sink, after
        after = result.end_lsn


def test_split_update_with_the_insert_first_by_seqval_leaves_the_row_live(fake):
    """An update recorded as delete + insert whose insert has the lower __$seqval (KB 3030352,
    https://support.microsoft.com/help/3030352: MERGE, unique-index or clustered-index
    updates) stays live: the change-table page (cdc.<capture_instance>_CT,
    https://learn.microsoft.com/sql/relational-databases/system-tables/cdc-capture-instance-ct-transact-sql)
    says to order by __$command_id, not __$seqval."""
    source = customers(fake)
    w = source.snapshot(ListSink()).end_lsn
    with fake.transaction() as tx:
        tx.split_update("customers", 2, segment="MOVED")
        tx.update("customers", 3, segment="PLAIN")
        tx.split_update("customers", 3, segment="MOVED-AGAIN")  # after a 3/4 update in the same transaction
    recorded = [c for c in fake.captures["dbo_customers"].changes if c.lsn > w]
    split = [c for c in recorded if c.values[0] == 2]
    assert [c.op for c in sorted(split, key=lambda c: c.seqval)] == [2, 1]  # the model: insert first by seqval
    assert [c.op for c in sorted(split, key=lambda c: c.command_id)] == [1, 2]
    sink, _ = read_all(source, w, max_rows=2)
    latest = sink.latest()
    assert latest[2] is not None and latest[2][1] == b"MOVED"
    assert latest[3] is not None and latest[3][1] == b"MOVED-AGAIN"
    assert len({(int(p[0]), int(p[1]), int(p[2])) for p in sink.lines}) == len(sink.lines)  # staging's primary key


def test_change_table_without_command_id_says_which_update_is_missing(fake):
    """Change tables have __$command_id only since the cumulative updates of KB 3030352
    (https://support.microsoft.com/help/3030352); a server without them answers error 207,
    "Invalid column name" (https://learn.microsoft.com/sql/relational-databases/errors-events/database-engine-events-and-errors).
    cdcflow cannot order a transaction's changes without it: one line saying so and what to
    install, not a retry."""
    source = customers(fake)
    w = source.snapshot(ListSink()).end_lsn
    with fake.transaction() as tx:
        tx.update("customers", 2, segment="X")
    fake.command_id_column = False
    with pytest.raises(SourceConfigError) as info:
        read_all(source, w, max_rows=10)
    msg = str(info.value)
    assert "__$command_id" in msg and "KB 3030352" in msg and "cumulative update" in msg and "\n" not in msg


def test_key_change_recorded_as_update_old_and_new_deletes_the_old_key(fake):
    """An update that changes the key can be recorded as an op 3/4 pair (old values, new
    values: cdc.<capture_instance>_CT page, __$operation 3 and 4,
    https://learn.microsoft.com/sql/relational-databases/system-tables/cdc-capture-instance-ct-transact-sql;
    trace flag 8207 records singleton updates of a unique key this way, KB 238254,
    https://learn.microsoft.com/troubleshoot/sql/database-engine/replication/update-statements-replicated-as-delete-insert).
    The old key must not stay live in serving."""
    source = customers(fake)
    w = source.snapshot(ListSink()).end_lsn
    with fake.transaction() as tx:
        tx.update("customers", 2, customer_id=50, segment="RENUMBERED")
        tx.update("customers", 3, segment="SAME-KEY")
    with fake.transaction() as tx:
        tx.update("customers", 50, customer_id=51)
        tx.insert("customers", customer_id=2, segment="REUSED", is_active=True)  # the old key, live again
    ops = [(c.op, c.values[0]) for c in fake.captures["dbo_customers"].changes if c.lsn > w]
    assert ops[:2] == [(3, 2), (4, 50)]  # the model: the old key is only in the op 3 row
    sink, _ = read_all(source, w)
    latest = sink.latest()
    assert 50 not in latest or latest[50] is None
    assert latest[51] is not None and latest[51][1] == b"RENUMBERED"
    assert latest[2] is not None and latest[2][1] == b"REUSED"
    assert latest[3] is not None and latest[3][1] == b"SAME-KEY"
    assert {k: v is not None for k, v in latest.items()} == {
        k: k in fake.tables[("dbo", "customers")].rows for k in latest
    }
    assert [int(p[2]) for p in sink.lines].count(1) == 2  # one delete per key change, none for the same-key update


def test_cleanup_during_a_read_is_a_gap_not_a_silent_loss(fake):
    """The cleanup job moves a capture instance's low endpoint while changes are read
    (sys.fn_cdc_get_min_lsn page: check ranges against it because cleanup changes it,
    https://learn.microsoft.com/sql/relational-databases/system-functions/sys-fn-cdc-get-min-lsn-transact-sql;
    the change functions check their range once, at the start, and the change table not at
    all). Rows removed during the read are a gap, never a batch that looks whole."""
    source = customers(fake)
    w = source.snapshot(ListSink()).end_lsn
    lsns = []
    for i in range(3):
        with fake.transaction() as tx:
            tx.insert("customers", segment=f"T{i}", is_active=True)
        lsns.append(fake.last_lsn)
    fake.cleanup_during_next_read("dbo_customers", after_rows=1, low_water_mark=lsns[2])
    sink = ListSink()
    with pytest.raises(GapError) as info:
        source.read_batch(w, 100, sink, 0)
    assert info.value.gap_from == w and info.value.gap_to == lsns[2]
    assert "while they were read" in str(info.value) and "resync" in str(info.value)
    assert [int(p[0]) for p in sink.lines] == [lsns[0], lsns[2]]  # the second transaction went missing


@pytest.mark.parametrize("clr_type", ["geography", "geometry", "hierarchyid"])
def test_clr_type_columns_stop_start_up_with_one_line_naming_the_column(fake, clr_type):
    """geography, geometry and hierarchyid are CLR types that share system_type_id 240 and
    differ by user_type_id (sys.types page,
    https://learn.microsoft.com/sql/relational-databases/system-catalog-views/sys-types-transact-sql;
    TYPE_NAME takes a type id and answers NULL for 240,
    https://learn.microsoft.com/sql/t-sql/functions/type-name-transact-sql). A captured
    column of such a type is a one-line configuration error, not an AttributeError."""
    fake.create_table("dbo", "places", [FakeColumn("id", "int", 10, 0, True), FakeColumn("spot", clr_type)])
    fake.enable_table("dbo", "places")
    with pytest.raises(SourceConfigError) as info:
        SqlServerSource(DSN, ["dbo.places"], driver=fake.driver()).describe_tables()
    message = str(info.value)
    assert "\n" not in message
    assert f"dbo.places.spot has type {clr_type} (a CLR type)" in message
    assert "@captured_column_list" in message and "dbo_places" in message


def test_datetime_types_stage_without_a_time_zone_datetimeoffset_with_its_offset(edbs):
    """datetime, datetime2 and smalldatetime carry no time zone offset, datetimeoffset does
    (https://learn.microsoft.com/sql/t-sql/data-types/datetime2-transact-sql,
    https://learn.microsoft.com/sql/t-sql/data-types/datetimeoffset-transact-sql): a server
    writing local time (GETDATE()) must come through as the same wall-clock value, not
    shifted by a time zone cdcflow assumed; a datetimeoffset keeps its instant."""
    fake = FakeCdcServer(seed=5)
    fake.create_table(
        "dbo",
        "events",
        [
            FakeColumn("id", "int", 10, 0, True),
            FakeColumn("at_dt", "datetime", 23, 3),
            FakeColumn("at_dt2", "datetime2", 27, 7),
            FakeColumn("at_small", "smalldatetime", 16, 0),
            FakeColumn("at_offset", "datetimeoffset", 34, 7),
        ],
    )
    local = dt.datetime(2026, 3, 1, 9, 30, 15)  # what GETDATE() gives on a server in UTC+1
    stamped = dt.datetime(2026, 3, 1, 9, 30, 15, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    with fake.transaction() as tx:
        tx.insert("events", id=1, at_dt=local, at_dt2=local, at_small=local, at_offset=stamped)
    source = SqlServerSource(DSN, ["dbo.events"], driver=fake.driver())
    source.prepare(demo=False)
    (spec,) = source.describe_tables()
    with psycopg.connect(edbs.serving_dsn) as conn:
        schema.run_scripts(conn, "serving")
        schema.ensure_staging(conn, spec)
        schema.ensure_control_rows(conn, "mssql1", "sqlserver", [spec])
        conn.commit()
        w = stage_initial_snapshot(source, conn, "mssql1")
        with fake.transaction() as tx:
            tx.update("events", 1, at_dt2=local + dt.timedelta(minutes=1))
        writer = StagingWriter(conn, {spec.capture: spec}, "mssql1")
        result = source.read_batch(w, 100, writer, 0)
        writer.commit(result.end_lsn, [spec.capture], result.last_commit_time, expected=[w])
        conn.execute("SET TimeZone = 'Asia/Tokyo'")  # a reader's session zone changes nothing
        rows = conn.execute("SELECT at_dt, at_dt2, at_small, at_offset FROM stg_cdc_events ORDER BY __lsn").fetchall()
    assert rows[0] == (local, local, local, stamped)
    assert rows[1] == (local, local + dt.timedelta(minutes=1), local, stamped)
    assert [c.type_sql for c in spec.columns[1:]] == ["timestamp without time zone"] * 3 + ["timestamp with time zone"]


def test_min_lsn_zero_for_a_login_outside_the_gating_role_says_so_and_is_not_retried(fake):
    """sys.fn_cdc_get_min_lsn answers 0x00... "when the caller is not authorized to access
    the change data" and reading it needs membership in the capture instance's gating role
    (https://learn.microsoft.com/sql/relational-databases/system-functions/sys-fn-cdc-get-min-lsn-transact-sql).
    That is a configuration error naming the role, not "the capture job is behind"."""
    fake.create_table("dbo", "secret", [FakeColumn("id", "int", 10, 0, True), FakeColumn("v", "int", 10, 0)])
    fake.enable_table("dbo", "secret", role_name="cdc_reader")
    source = SqlServerSource("mssql://reader:Fake-Pw-7@fake-host:1433/demo", ["dbo.secret"], driver=fake.driver())
    for attempt in (lambda: source.snapshot(ListSink()), lambda: source.read_batch(fake.max_lsn(), 10, ListSink(), 0)):
        with pytest.raises(SourceConfigError) as info:
            attempt()
        assert "ALTER ROLE [cdc_reader] ADD MEMBER [reader]" in str(info.value) and "\n" not in str(info.value)
    fake.role_members["cdc_reader"] = {"reader"}
    assert source.snapshot(ListSink()).end_lsn == fake.max_lsn()


def test_capture_instance_the_capture_job_has_not_processed_is_waited_for(fake):
    """cdc.change_tables.start_lsn is NULL until the capture job processes a new capture
    instance, and sys.fn_cdc_get_min_lsn answers 0x00... meanwhile (sys.fn_cdc_get_min_lsn
    returns start_lsn, https://learn.microsoft.com/sql/relational-databases/system-functions/sys-fn-cdc-get-min-lsn-transact-sql;
    cdc.change_tables, https://learn.microsoft.com/sql/relational-databases/system-tables/cdc-change-tables-transact-sql).
    That is worth retrying (TransientError), in the snapshot and in a read."""
    fake.auto_harvest = False  # the capture job lags
    fake.create_table("dbo", "late", [FakeColumn("id", "int", 10, 0, True)])
    fake.enable_table("dbo", "late")
    assert fake.captures["dbo_late"].start_lsn is None
    source = SqlServerSource(DSN, ["dbo.late"], driver=fake.driver())
    for attempt in (lambda: source.read_batch(fake.max_lsn(), 10, ListSink(), 0), lambda: source.snapshot(ListSink())):
        with pytest.raises(TransientError, match="has not been processed by the CDC capture job"):
            attempt()
    fake.harvest()
    assert source.snapshot(ListSink()).end_lsn == fake.max_lsn()


def test_stopped_capture_job_is_reported_not_taken_for_caught_up(fake):
    """A stopped capture job (SQL Server Agent) freezes sys.fn_cdc_get_max_lsn, and
    sys.dm_cdc_log_scan_sessions shows no log scan session since
    (https://learn.microsoft.com/sql/relational-databases/system-dynamic-management-views/change-data-capture-sys-dm-cdc-log-scan-sessions).
    A caught-up reader says so in one line instead of looking caught up."""
    source = customers(fake)
    w = source.snapshot(ListSink()).end_lsn
    assert source.read_batch(w, 10, ListSink(), 0).end_lsn == w  # idle, job running: caught up, no error
    fake.stop_capture_job(seconds_ago=900)
    with fake.transaction() as tx:
        tx.insert("customers", segment="NEVER-HARVESTED", is_active=True)
    stopped = customers(fake)
    with pytest.raises(TransientError) as info:
        stopped.read_batch(w, 10, ListSink(), 0)
    assert "capture job has not scanned the log for 9" in str(info.value) and "sp_cdc_start_job" in str(info.value)


@pytest.mark.parametrize(
    ("version", "edition", "accepted"),
    [(16, 3, True), (15, 2, True), (14, 3, True), (13, 3, True), (12, 5, True), (12, 8, True), (12, 3, False)],
)
def test_versions_2016_and_newer_and_azure_sql_reporting_12_are_accepted(version, edition, accepted):
    """SERVERPROPERTY('ProductMajorVersion') is 12 on Azure SQL Database and Managed
    Instance, told apart by SERVERPROPERTY('EngineEdition') 5 and 8
    (https://learn.microsoft.com/sql/t-sql/functions/serverproperty-transact-sql). SQL Server
    2016 (13) to 2022 (16) and Azure SQL are read; SQL Server 2014 (12, on premises) is
    refused with one line."""
    srv = FakeCdcServer(version=version, engine_edition=edition)
    source = SqlServerSource(DSN, DEMO, driver=srv.driver())
    if accepted:
        source.check()
    else:
        with pytest.raises(SourceConfigError, match="major version 12: cdcflow needs SQL Server 2016"):
            source.check()


def test_column_added_to_the_table_is_reported_as_not_captured(fake, caplog):
    """DDL does not reach a capture instance: a column added to the source table is not in
    cdc.captured_columns and is not captured (About change data capture, "Handling changes
    to source tables", https://learn.microsoft.com/sql/relational-databases/track-changes/about-change-data-capture-sql-server;
    cdc.ddl_history records the DDL,
    https://learn.microsoft.com/sql/relational-databases/system-tables/cdc-ddl-history-transact-sql).
    cdcflow says so, at start-up and when it reads past the DDL, and keeps reading."""
    source = customers(fake)
    w = source.snapshot(ListSink()).end_lsn
    fake.add_column("dbo", "customers", FakeColumn("tier", "nvarchar", 0, 0))
    with fake.transaction() as tx:
        tx.update("customers", 1, segment="AFTER-ADD", tier="GOLD")
    with caplog.at_level("WARNING"):
        sink, end = read_all(source, w)
        assert SqlServerSource(DSN, ["public.customers"], driver=fake.driver()).describe_tables()
    assert end == fake.max_lsn() and sink.latest()[1][1] == b"AFTER-ADD"
    lines = [r.getMessage() for r in caplog.records if "tier" in r.getMessage()]
    assert len(lines) == 2 and all(
        "dbo.customers.tier is not captured by capture instance dbo_customers" in m for m in lines
    )


def test_column_dropped_from_the_table_pauses_the_capture_at_the_ddl_instead_of_staging_nulls(fake):
    """A captured column dropped from the source table stays in the capture instance and
    reads as NULL from then on (About change data capture, "Handling changes to source
    tables", https://learn.microsoft.com/sql/relational-databases/track-changes/about-change-data-capture-sql-server);
    the DDL is in cdc.ddl_history
    (https://learn.microsoft.com/sql/relational-databases/system-tables/cdc-ddl-history-transact-sql).
    Every change before the DDL is staged; then the capture pauses with one line."""
    source = customers(fake)
    w = source.snapshot(ListSink()).end_lsn
    with fake.transaction() as tx:
        tx.update("customers", 1, is_active=False)
    before = fake.last_lsn
    ddl = fake.drop_column("dbo", "customers", "is_active")
    with fake.transaction() as tx:
        tx.update("customers", 2, segment="AFTER-DROP")
    sink = ListSink()
    first = source.read_batch(w, 100, sink, 0)
    assert first.end_lsn == ddl - 1 and {int(p[0]) for p in sink.lines} == {before}
    assert sink.lines[0][6] == b"f"  # is_active staged with its value, before the drop
    with pytest.raises(SchemaDriftError) as info:
        source.read_batch(first.end_lsn, 100, ListSink(), 0)
    message = str(info.value)
    assert "\n" not in message and "is_active dropped" in message and "DROP COLUMN [is_active]" in message
    assert "capture dbo_customers is paused" in message and "resync" in message


def test_second_capture_instance_takes_over_when_the_first_is_disabled_after_the_reader_reached_it(fake):
    """A table may have two capture instances; the switch for a changed table is: create the
    second, let readers reach its start, disable the first (About change data capture,
    "Handling changes to source tables",
    https://learn.microsoft.com/sql/relational-databases/track-changes/about-change-data-capture-sql-server;
    sys.sp_cdc_enable_table allows two capture instances per table,
    https://learn.microsoft.com/sql/relational-databases/system-stored-procedures/sys-sp-cdc-enable-table-transact-sql).
    The reader moves to the second without a gap; disabled too early, it says what to do."""
    source = customers(fake)
    w = source.snapshot(ListSink()).end_lsn
    with fake.transaction() as tx:
        tx.update("customers", 1, segment="BEFORE-V2")
    second = fake.enable_table("dbo", "customers", "dbo_customers_v2")
    with fake.transaction() as tx:
        tx.update("customers", 2, segment="IN-BOTH")
    sink, w = read_all(source, w)
    assert w >= second.start_lsn
    fake.disable_table("dbo_customers")
    with fake.transaction() as tx:
        tx.update("customers", 3, segment="V2-ONLY")
    more, end = read_all(source, w)
    assert end == fake.max_lsn() and [p[5] for p in more.lines] == [b"V2-ONLY"]
    assert source._single()[1] == "dbo_customers_v2"

    early = FakeCdcServer(seed=4)
    root = SqlServerSource(DSN, DEMO, driver=early.driver())
    root.prepare(demo=True)
    late = customers(early)
    w = late.snapshot(ListSink()).end_lsn
    with early.transaction() as tx:
        tx.update("customers", 1, segment="NOT-IN-V2")
    early.enable_table("dbo", "customers", "dbo_customers_v2")
    early.disable_table("dbo_customers")  # before the reader reached the second's start
    with pytest.raises(SourceConfigError, match="no longer exists.*now dbo_customers_v2.*resync"):
        late.read_batch(w, 100, ListSink(), 0)

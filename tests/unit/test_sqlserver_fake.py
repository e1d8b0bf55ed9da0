"""The SQL Server source against a FAKE SQL Server (tests/fakes/fake_mssql.py).

No SQL Server runs on these machines. The fake implements the documented behaviour of
the CDC functions; these tests check the source's logic against it: whole LSNs under a
row cap, idle advance, gap detection (cleanup before or during a read), error
classification and redaction. Behaviour the fake once left out is tested in
tests/unit/test_sqlserver_documented.py. What the T-SQL itself does is checked only
against a real server.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import pytest

from cdcflow.config import Settings
from cdcflow.errors import GapError, SourceConfigError, TerminalError, TransientError
from cdcflow.redact import REDACTOR
from cdcflow.sources.sqlserver import SqlServerSource
from tests.fakes.fake_mssql import FakeCdcServer, FakeColumn, demo_server

PASSWORD = "Fake-Pw-9f3a!"
DSN = f"mssql://sa:{PASSWORD}@fake-host:1433/demo"
DEMO = ("public.customers", "public.orders", "public.payments")


class ListSink:
    def __init__(self) -> None:
        self.lines: list[tuple[str, bytes]] = []

    def add_line(self, capture: str, line: bytes) -> None:
        self.lines.append((capture, line))

    def positions(self) -> list[tuple[int, int, int]]:
        return [tuple(int(x) for x in line.split(b"\t", 3)[:3]) for _, line in self.lines]  # type: ignore[misc]


@pytest.fixture
def fake() -> FakeCdcServer:
    return demo_server(7, DSN)


def customers_source(srv: FakeCdcServer, **kw) -> SqlServerSource:
    return SqlServerSource(DSN, ["public.customers"], driver=srv.driver(), **kw)


def add_customers(srv: FakeCdcServer, n: int) -> int:
    with srv.transaction() as tx:
        for i in range(n):
            tx.insert("customers", segment=f"S{i}", is_active=True)
    return srv.last_lsn


# -- the fake itself ------------------------------------------------------------------


def test_fake_lsns_increase_and_increment_is_next_value(fake):
    a = add_customers(fake, 2)
    b = add_customers(fake, 1)
    assert a < b == fake.max_lsn()
    assert fake.increment_lsn(a) == a + 1
    assert fake.min_lsn("dbo_customers") < a
    assert fake.min_lsn("") == 0 and fake.min_lsn("nope") == 0


def test_fake_update_is_a_3_4_pair_sharing_seqval(fake):
    with fake.transaction() as tx:
        tx.update("customers", 1, segment="NEW")
    lsn = fake.max_lsn()
    old = fake.all_changes("dbo_customers", lsn, lsn, "all update old")
    assert [c.op for c in old] == [3, 4] and old[0].seqval == old[1].seqval
    assert old[0].values[1] != "NEW" and old[1].values[1] == "NEW"
    assert [c.op for c in fake.all_changes("dbo_customers", lsn, lsn, "all")] == [4]


def test_fake_raises_313_outside_min_max(fake):
    lo, hi = fake.min_lsn("dbo_customers"), fake.max_lsn()
    for window in ((lo - 1, hi), (lo, hi + 1), (hi, lo)):
        with pytest.raises(Exception) as info:
            fake.all_changes("dbo_customers", *window)
        assert info.value.args[0][0] == 313


def test_fake_cleanup_raises_min_lsn_and_drops_changes(fake):
    add_customers(fake, 3)
    mark = fake.max_lsn()
    add_customers(fake, 1)
    assert fake.cleanup("dbo_customers", mark) == mark
    assert fake.min_lsn("dbo_customers") == mark
    assert all(c.lsn >= mark for c in fake.captures["dbo_customers"].changes)


# -- reading: whole LSNs, caps, idle --------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_fake_row_cap_never_splits_an_lsn_and_reads_everything_once(fake, seed):
    rng = random.Random(seed)
    source = customers_source(fake)
    w = source.snapshot(ListSink()).end_lsn
    for _ in range(25):
        with fake.transaction() as tx:
            for _ in range(rng.choice([1, 2, 3, 7, 15])):
                keys = tx.live_keys("customers")
                r = rng.random()
                if r < 0.5 or not keys:
                    tx.insert("customers", segment="I", is_active=True)
                elif r < 0.8:
                    tx.update("customers", rng.choice(keys), segment=f"U{rng.random():.3f}")
                else:
                    tx.delete("customers", rng.choice(keys))
        if rng.random() < 0.2:
            fake.idle_scan()
    expected_per_lsn = Counter(c.lsn for c in fake.captures["dbo_customers"].changes if c.op != 3 and c.lsn > w)
    seen: list[tuple[int, int, int]] = []
    for _ in range(500):
        sink = ListSink()
        cap = rng.choice([1, 2, 3, 5])
        result = source.read_batch(w, cap, sink, 0)
        got = Counter(p[0] for p in sink.positions())
        for lsn, n in got.items():
            assert n == expected_per_lsn[lsn], "a batch ended inside an LSN"
            assert w < lsn <= result.end_lsn
        if got:
            assert result.end_lsn == max(got) or not result.more_pending
        seen.extend(sink.positions())
        assert result.end_lsn >= w
        if result.end_lsn == w:
            break
        w = result.end_lsn
    assert w == fake.max_lsn()
    assert len(seen) == len(set(seen)) == sum(expected_per_lsn.values())
    assert {p[2] for p in seen} <= {1, 2, 4}


def test_fake_idle_capture_advances_to_max_lsn(fake):
    source = customers_source(fake)
    w = source.snapshot(ListSink()).end_lsn
    with fake.transaction() as tx:  # a change to another capture only
        tx.insert("orders", customer_id=1, status="NEW")
    fake.idle_scan()
    sink = ListSink()
    result = source.read_batch(w, 100, sink, 0)
    assert sink.lines == [] and result.rows == 0
    assert result.end_lsn == fake.max_lsn() > w


def test_fake_caught_up_read_waits_then_returns_new_changes(fake):
    source = customers_source(fake)
    w = source.snapshot(ListSink()).end_lsn
    calls = []

    def sleep(seconds: float) -> None:  # a commit lands while the reader waits
        calls.append(seconds)
        if len(calls) == 2:
            add_customers(fake, 2)

    waiting = customers_source(fake, sleep=sleep)
    sink = ListSink()
    result = waiting.read_batch(w, 100, sink, 5.0)
    assert len(calls) == 2 and result.rows == 2 and result.end_lsn == fake.max_lsn()


def test_fake_caught_up_read_returns_watermark_after_wait(fake):
    source = customers_source(fake)
    w = source.snapshot(ListSink()).end_lsn
    assert source.read_batch(w, 100, ListSink(), 0.05).end_lsn == w


# -- gaps -----------------------------------------------------------------------------


def test_fake_cleanup_past_watermark_is_a_gap_not_an_empty_batch(fake):
    source = customers_source(fake)
    w = source.snapshot(ListSink()).end_lsn
    add_customers(fake, 3)
    add_customers(fake, 1)
    mark = fake.cleanup("dbo_customers")  # the cleanup job ran: min LSN passes our watermark
    with pytest.raises(GapError) as info:
        source.read_batch(w, 100, ListSink(), 0)
    assert info.value.gap_from == w and info.value.gap_to == mark
    assert "resync" in str(info.value) and "0x" in str(info.value)


def test_fake_cleanup_between_bounds_and_read_is_a_gap(fake):
    """sys.fn_cdc_get_min_lsn page: the low endpoint moves when cleanup runs, so check a
    range against it (https://learn.microsoft.com/sql/relational-databases/system-functions/sys-fn-cdc-get-min-lsn-transact-sql).
    A change-table read checks no range itself: the min LSN read after it sees the cleanup."""
    source = customers_source(fake)
    w = source.snapshot(ListSink()).end_lsn
    add_customers(fake, 2)
    real_execute = fake.execute

    def cleanup_between_bounds_and_read(conn, text, params):
        if "_CT]" in text:
            fake.cleanup("dbo_customers")
        return real_execute(conn, text, params)

    fake.execute = cleanup_between_bounds_and_read  # type: ignore[method-assign]
    with pytest.raises(GapError) as info:
        source.read_batch(w, 100, ListSink(), 0)
    assert info.value.gap_from == w and "while they were read" in str(info.value)


def test_fake_never_snapshotted_watermark_zero_is_a_gap(fake):
    with pytest.raises(GapError, match="never been snapshotted"):
        customers_source(fake).read_batch(0, 100, ListSink(), 0)


def test_fake_min_lsn_is_asked_with_the_capture_name_never_empty(fake):
    source = customers_source(fake)
    source.read_batch(source.snapshot(ListSink()).end_lsn, 10, ListSink(), 0)
    assert fake.statements and all(
        "fn_cdc_get_min_lsn(%(capture)s)" in s for s in fake.statements if "fn_cdc_get_min_lsn" in s
    )


def test_fake_unknown_capture_instance_is_a_config_error(fake):
    source = customers_source(fake)
    source.describe_tables()
    del fake.captures["dbo_customers"]  # disabled behind our back: min LSN answers 0x00...
    with pytest.raises(SourceConfigError, match="no longer exists.*sp_cdc_enable_table"):
        source.read_batch(1, 10, ListSink(), 0)


# -- snapshot ---------------------------------------------------------------------------


def test_fake_snapshot_with_capture_lag_overlaps_but_loses_nothing(fake):
    fake.auto_harvest = False
    add_customers(fake, 2)  # committed, not yet harvested by the capture job
    source = customers_source(fake)
    sink = ListSink()
    result = source.snapshot(sink)
    assert result.end_lsn < fake.last_lsn  # W is the harvested max, before the lagging commit
    assert result.rows == len(fake.tables[("dbo", "customers")].rows) == 7
    fake.harvest()
    again = ListSink()
    source.read_batch(result.end_lsn, 100, again, 0)
    assert len(again.lines) == 2  # the overlap: staged again as changes, ordered after the snapshot


def test_fake_snapshot_waits_for_a_capture_instance_that_has_not_started(fake):
    fake.create_table("dbo", "late", [FakeColumn("id", "int", 10, 0, True)])
    fake.enable_table("dbo", "late")
    cap = fake.captures["dbo_late"]
    cap.start_lsn = fake.max_lsn() + 50  # the capture job has not reached it yet
    with pytest.raises(TransientError, match="capture job is behind"):
        SqlServerSource(DSN, ["dbo.late"], driver=fake.driver()).snapshot(ListSink())


def test_fake_snapshot_falls_back_to_read_committed():
    srv = FakeCdcServer(snapshot_isolation=False)
    SqlServerSource(DSN, DEMO, driver=srv.driver()).prepare(demo=True)
    result = customers_source(srv).snapshot(ListSink())
    assert result.rows == 5
    assert any("READ COMMITTED" in s and "BEGIN TRANSACTION" in s for s in srv.statements)


# -- metadata, errors, secrets -------------------------------------------------------------


def test_fake_describe_maps_types_to_postgresql(fake):
    spec = customers_source(fake).describe_tables()[0]
    assert spec.capture == "dbo_customers" and spec.key_columns == ("customer_id",)
    assert [c.type_sql for c in spec.columns] == ["bigint", "text", "boolean", "timestamp without time zone"]


def test_fake_unsupported_type_and_missing_key_are_config_errors(fake):
    fake.create_table("dbo", "geo", [FakeColumn("id", "int", 10, 0, True), FakeColumn("shape", "geography")])
    fake.enable_table("dbo", "geo")
    with pytest.raises(SourceConfigError, match="geography"):
        SqlServerSource(DSN, ["dbo.geo"], driver=fake.driver()).describe_tables()
    fake.create_table("dbo", "nokey", [FakeColumn("id", "int", 10, 0)])
    fake.enable_table("dbo", "nokey")
    with pytest.raises(SourceConfigError, match="no key"):
        SqlServerSource(DSN, ["dbo.nokey"], driver=fake.driver()).describe_tables()


def test_fake_not_enabled_table_says_how_to_enable(fake):
    fake.create_table("dbo", "plain", [FakeColumn("id", "int", 10, 0, True)])
    with pytest.raises(SourceConfigError, match="sp_cdc_enable_table"):
        SqlServerSource(DSN, ["dbo.plain"], driver=fake.driver()).describe_tables()


def test_fake_one_ingestor_per_capture(fake):
    multi = SqlServerSource(DSN, DEMO, driver=fake.driver())
    with pytest.raises(TerminalError, match="per_capture"):
        multi.read_batch(1, 10, ListSink(), 0)
    assert multi.current_lsn() == fake.max_lsn()  # status works on the whole source
    parts = multi.per_capture()
    assert [[s.capture for s in p.describe_tables()] for p in parts] == [
        ["dbo_customers"],
        ["dbo_orders"],
        ["dbo_payments"],
    ]


def test_fake_deadlock_is_transient_and_reconnects(fake):
    source = customers_source(fake)
    w = source.snapshot(ListSink()).end_lsn
    fake.fail_next(1205, "Transaction was deadlocked")
    with pytest.raises(TransientError, match="1205"):
        source.read_batch(w, 10, ListSink(), 0)
    assert source._conn is None  # dropped; the next read connects again
    source.read_batch(w, 10, ListSink(), 0)


def test_fake_server_down_is_transient_login_failure_terminal(fake):
    fake.down = True
    with pytest.raises(TransientError, match="fake-host:1433/demo"):
        customers_source(fake).bounds()
    fake.down = False
    drv = fake.driver()

    def refuse(**kw):
        raise drv.OperationalError(18456, f"Login failed for user 'sa' password {PASSWORD}".encode())

    drv.connect = refuse
    with pytest.raises(TerminalError) as info:
        SqlServerSource(DSN, ["public.customers"], driver=drv).bounds()
    assert PASSWORD not in str(info.value)


def test_fake_password_never_in_errors(fake):
    fake.fail_next(50000, f"something quoted the DSN {DSN}")
    with pytest.raises(TerminalError) as info:
        customers_source(fake).bounds()
    assert PASSWORD not in str(info.value)
    assert REDACTOR(f"pw={PASSWORD}") == "pw=***"


def test_fake_make_source_chooses_engine_by_dsn_scheme():
    from cdcflow.bootstrap import make_source
    from cdcflow.sources.postgres import PostgresSource

    for scheme in ("mssql", "sqlserver", "MSSQL"):
        src = make_source(Settings(source_dsn=f"{scheme}://u:p@h/db", serving_dsn="postgresql://x@y/z"))
        assert isinstance(src, SqlServerSource) and src.tables[0] == ("dbo", "customers")
    pg = make_source(Settings(source_dsn="postgresql://u@h/db", serving_dsn="postgresql://x@y/z"))
    assert isinstance(pg, PostgresSource)


def test_fake_statements_are_known_blocks_with_quoted_identifiers(fake):
    source = customers_source(fake)
    source.read_batch(source.snapshot(ListSink()).end_lsn, 10, ListSink(), 0)
    add_customers(fake, 1)
    source.read_batch(source.snapshot(ListSink()).end_lsn - 1, 10, ListSink(), 0)
    texts = defaultdict(int)
    for s in fake.statements:
        if "_CT]" in s:
            texts["changes"] += 1
            assert "FROM [cdc].[dbo_customers_CT]" in s
            assert "[c].[customer_id], [c].[segment]" in s
    assert texts["changes"] >= 1

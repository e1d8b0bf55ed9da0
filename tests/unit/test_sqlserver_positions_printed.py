"""A SQL Server source's positions print in SQL Server's form (``0x`` and 20 hex digits)
wherever cdcflow shows one: ``cdcflow status``, the projection worker's log line, and
``cdcflow resync``'s output. A FAKE SQL Server (its driver put in place of pytds), the
REAL serving PostgreSQL (embedded), and the real bootstrap, workers and commands.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import logging
import re
import threading
from contextlib import redirect_stdout
from decimal import Decimal

import psycopg
import pytest

from cdcflow import cli, projections, status
from cdcflow.bootstrap import bootstrap
from cdcflow.ingest import IngestWorker
from cdcflow.sources import mssql_support
from tests.fakes.fake_mssql import demo_server

DSN = "mssql://sa:Fake-Pw-1@fake-host:1433/demo"
MSSQL_POSITION = re.compile(r"^0x[0-9A-F]{20}$")
IN_TEXT = re.compile(r"0x[0-9A-F]{20}")
PG_POSITION = re.compile(r"\b[0-9A-F]{1,8}/[0-9A-F]{1,8}\b")


@pytest.fixture
def mssql(edbs, monkeypatch):
    """Settings of a bootstrapped SQL Server source (initial snapshots staged) and its fake."""
    fake = demo_server(11, DSN)
    monkeypatch.setattr(mssql_support, "load_driver", fake.driver)
    settings = edbs.settings.replace(source_dsn=DSN, source_name="mssql1", poll_interval_seconds=0.01)
    bootstrap(settings).source.close()
    return settings, fake


def test_status_prints_sqlserver_positions(mssql):
    settings, _ = mssql
    st = status.collect(settings)
    assert st.slot is None and st.captures
    for c in st.captures:
        assert MSSQL_POSITION.match(c.source_position), c
        assert MSSQL_POSITION.match(c.watermark), c
    text = status.render_text(st)
    assert IN_TEXT.search(text) and not PG_POSITION.search(text), text
    data = json.loads(status.render_json(st))
    assert all(MSSQL_POSITION.match(c["source_position"]) for c in data["captures"])


def test_projection_worker_logs_sqlserver_positions(mssql, caplog):
    settings, fake = mssql
    stop = threading.Event()
    now = dt.datetime(2026, 1, 1, 12, 0)
    with fake.transaction() as tx:
        tx.insert("customers", segment="SMB", is_active=True, updated_at=now)
        tx.insert("orders", customer_id=1, amount=Decimal("5.00"), status="PAID", created_at=now, updated_at=now)
    fake.harvest()
    root = bootstrap(settings, snapshot_now=False).source
    with psycopg.connect(settings.serving_dsn) as lease_conn:
        for stream in root.streams():
            resource = stream.lease_resource(settings.source_name)
            worker = IngestWorker(settings, stream.source, settings.serving_dsn, stop, owner="test", resource=resource)
            worker.lease.acquire(lease_conn)
            worker.cycle()
            worker._drop_connections()
    root.close()
    workers = projections.build_workers(settings, settings.serving_dsn, stop, threading.Event())
    assert workers
    with caplog.at_level(logging.INFO, logger="cdcflow.projections.worker"):
        for w in workers:
            w.listen = False
            w.cycle()
            w.close()
    lines = [r.getMessage() for r in caplog.records if "applied changes up to" in r.getMessage()]
    assert lines, [r.getMessage() for r in caplog.records]
    for line in lines:
        assert IN_TEXT.search(line) and not PG_POSITION.search(line), line


def test_resync_prints_a_sqlserver_position(mssql):
    settings, _ = mssql
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.cmd_resync(argparse.Namespace(captures=["dbo_orders"]), settings) == 0
    text = out.getvalue()
    assert "streaming from 0x" in text and IN_TEXT.search(text) and not PG_POSITION.search(text), text


def test_metrics_sampler_reads_a_sqlserver_position(mssql):
    """The sampler asks the source for its position through the source protocol, whatever
    the engine: here the fake's newest LSN, kept open between samples; no slot figure."""
    from cdcflow.metrics import Metrics, Sampler

    settings, fake = mssql
    sampler = Sampler(settings, Metrics(), threading.Event(), [])
    try:
        sampler.sample_source()
        first = fake.max_lsn()
        assert sampler.clock.latest == first > 0
        assert fake.idle_scan() > first  # the capture job's end-of-scan mark moves max_lsn
        sampler.sample_source()
        assert sampler.clock.latest == fake.max_lsn() > first
        assert sampler.metrics.database_up.labels("source")._value.get() == 1
        assert sampler.metrics.slot_retained_wal._metrics == {}  # SQL Server has no slot
    finally:
        sampler._close("source")

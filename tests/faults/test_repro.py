"""Minimal, deterministic reproductions of what the fault runs found.

An open bug is marked ``xfail(strict=True)``: when cdcflow is fixed the test passes,
strict xfail turns that into a failure, and the mark is removed. The unmarked tests are
bugs this suite found and that are fixed.
"""

from __future__ import annotations

import contextlib
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from cdcflow.bootstrap import bootstrap
from cdcflow.config import Settings
from tests.faults.checks import wait_caught_up
from tests.faults.harness import Plan, _pipeline_env
from tests.faults.proxy import Proxy


class Started:
    """A ``cdcflow run`` on fresh databases, both reached through proxies."""

    def __init__(self, fault_servers, tmp_path, name: str) -> None:
        self.source, self.serving = fault_servers
        self.name = name
        self.src_dsn = self.source.fresh_database(f"{name}_src")
        self.srv_dsn = self.serving.fresh_database(f"{name}_srv")
        self.settings = Settings(
            source_dsn=self.src_dsn,
            serving_dsn=self.srv_dsn,
            source_name=name,
            slot_name=f"cdcflow_{name}",
            publication_name=f"cdcflow_{name}",
        )
        self.source.drop_slot(self.settings.slot)
        bootstrap(self.settings, demo=True).source.close()
        self.src_proxy = Proxy("source", self.source.socket_path)
        self.srv_proxy = Proxy("serving", self.serving.socket_path)
        plan = Plan(duration=0, kills=0, serving_restarts=0, source_restarts=0, serving_cuts=0, source_cuts=0)
        self.env = _pipeline_env(plan, self.settings, self.src_proxy.start(), self.srv_proxy.start())
        self.env.update(
            SOURCE_NAME=name,
            SOURCE_DSN=self.env["SOURCE_DSN"].replace("faults_src", f"{name}_src"),
            SERVING_DSN=self.env["SERVING_DSN"].replace("faults_srv", f"{name}_srv"),
        )
        self.log_path = tmp_path / "pipeline.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cdcflow", "run"],
                env=self.env,  # noqa: S603
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def assert_running(self) -> None:
        assert self.proc is not None
        rc = self.proc.poll()
        assert rc is None, f"cdcflow run exited with {rc}; its log ends: {self.log_path.read_text()[-1500:]}"

    def write_and_wait(self, timeout: float = 30) -> None:
        with psycopg.connect(self.src_dsn, autocommit=True) as src:
            src.execute("INSERT INTO customers (segment) VALUES ('SMB')")
        wait_caught_up(self.src_dsn, self.srv_dsn, self.name, timeout)

    @contextlib.contextmanager
    def writing(self, pause: float, *, through_restarts: bool = False) -> Iterator[None]:
        """One-row transactions on the source every ``pause`` seconds while the block runs;
        ``through_restarts``: a lost connection is opened again (else it ends the writes)."""
        stop = threading.Event()

        def writes() -> None:
            while not stop.is_set():
                try:
                    with psycopg.connect(self.src_dsn, autocommit=True) as src:
                        while not stop.is_set():
                            src.execute("INSERT INTO customers (segment) VALUES ('SMB')")
                            time.sleep(pause)
                except psycopg.OperationalError:
                    if not through_restarts:
                        raise
                    time.sleep(0.5)  # the server restarts: write again once it is back

        writer = threading.Thread(target=writes, daemon=True)
        writer.start()
        try:
            yield
        finally:
            stop.set()
            writer.join(10)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.src_proxy.stop()
        self.srv_proxy.stop()
        self.source.drop_slot(self.settings.slot)


@pytest.fixture
def started(fault_servers, tmp_path, request):
    name = re.sub(r"[^a-z0-9_]", "", request.node.name.lower().replace("[", "_"))[-20:].strip("_")
    run = Started(fault_servers, tmp_path, "r_" + name)
    yield run
    run.close()


@pytest.mark.faults
def test_run_survives_a_source_blip_right_after_the_startup_wait(started):
    # The start-up wait's connection goes through; the next ones (bootstrap's) are
    # refused for 2 s: a source restarting, or a network blip, at the wrong moment.
    started.src_proxy.refuse_after(1, 2.0)
    started.start()
    time.sleep(4)
    started.assert_running()
    started.write_and_wait()


@pytest.mark.faults
def test_busy_run_survives_serving_connection_cuts(started):
    started.start()
    started.write_and_wait()
    # Tiny transactions: the ingest worker loops fast, often between cycles.
    with started.writing(pause=0.003):
        for _ in range(60):
            time.sleep(random.uniform(0.2, 0.4))
            started.srv_proxy.cut()
            started.assert_running()
    time.sleep(1)
    started.assert_running()
    started.write_and_wait()


@pytest.mark.faults
def test_source_connection_cut_is_a_transient_error(started):
    started.start()
    started.write_and_wait()
    for _ in range(3):
        started.src_proxy.cut()
        time.sleep(1.0)
        started.write_and_wait()
    started.assert_running()
    errors = [line for line in started.log_path.read_text().splitlines() if " ERROR " in line]
    assert not errors, errors[:3]


@pytest.mark.faults
@pytest.mark.slow
def test_silent_source_partition_is_noticed(started):
    """The replication stream answers none of our keepalive requests: reconnect."""
    started.start()
    started.write_and_wait()
    assert started.src_proxy.blackhole() > 0
    # New connections get through: a pipeline that gives up on the dead ones recovers.
    started.write_and_wait(timeout=90)


@pytest.mark.faults
@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="a silently partitioned serving connection (no FIN/RST, and a peer that still ACKs, "
    "as this proxy does) stalls ingestion: no client-side statement timeout; /healthz "
    "turns unhealthy on freshness, but nothing reconnects",
)
def test_silent_serving_partition_is_noticed(started):
    started.start()
    started.write_and_wait()
    assert started.srv_proxy.blackhole() > 0
    started.write_and_wait(timeout=30)


@pytest.mark.faults
@pytest.mark.parametrize("pause", [0.05, 0.0], ids=["light-load", "busy"])
def test_source_restarts_never_leave_a_false_gap(started, pause):
    """A clean shutdown of the source asks the walsender's client for its position; the
    client must answer with what the ingestion worker confirmed and nothing more (the slot
    then starts where the serving watermark says, and the next start sees no GAP). Six fast
    restarts, under a light load (ingestion often idle between transactions) and under a
    busy one (a batch confirmed just before the shutdown keepalive): no GAP, and every
    change staged once (the final check of ``write_and_wait``)."""
    started.start()
    started.write_and_wait()
    with started.writing(pause=pause, through_restarts=True):
        for _ in range(6):
            time.sleep(random.uniform(1.0, 2.0))
            started.source.restart("fast")
            time.sleep(1.0)
            started.assert_running()
    started.write_and_wait(timeout=60)
    log = started.log_path.read_text()
    gaps = [line for line in log.splitlines() if "GAP" in line]
    assert not gaps, gaps[:3]
    with psycopg.connect(started.src_dsn) as src, psycopg.connect(started.srv_dsn) as srv:
        want = src.execute("SELECT count(*) FROM customers").fetchone()[0]
        staged = srv.execute("SELECT count(*), count(DISTINCT customer_id) FROM stg_cdc_customers").fetchone()
    assert want > 100 and staged == (want, want), (want, staged)  # inserts only: one staged row each

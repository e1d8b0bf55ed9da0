"""Starting, supervising and stopping workers.

Workers are threads (DuckDB and the drivers release the GIL for their heavy work).
SIGTERM or SIGINT sets the stop event: each worker finishes its current batch or cycle
and exits; the process exits 0. A second signal exits at once (every commit is atomic,
so that is safe too, as is SIGKILL). Handlers are installed by a context manager that
restores the previous ones.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cdcflow import backfill, compaction, metrics, projections
from cdcflow import bootstrap as boot
from cdcflow.config import Settings
from cdcflow.ingest import IngestWorker
from cdcflow.worker import Worker

log = logging.getLogger(__name__)


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT: first one stops gracefully, the second exits immediately."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("%s received: finishing the current batch, then stopping", signal.Signals(signum).name)
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    import cdcflow

    if cdcflow.EARLY_SIGNALS:  # arrived during start-up
        log.info("%s received during start-up: stopping", signal.Signals(cdcflow.EARLY_SIGNALS[0]).name)
        stop.set()
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@dataclass(frozen=True)
class Hooks:
    """Callbacks a program that runs cdcflow (a test's entry point) installs in the workers."""

    #: Called by an ingest worker with a position its serving transaction committed, right
    #: before that position is confirmed to the source.
    before_confirm: Callable[[int], None] | None = None


class Runtime:
    """The workers of one ``cdcflow run``."""

    def __init__(self, settings: Settings, *, hooks: Hooks | None = None) -> None:
        confirm = (hooks or Hooks()).before_confirm
        self.settings = settings
        self.stop = threading.Event()
        self.staged = threading.Event()
        _, serving_dsn = settings.require_dsns()
        # One ingestor per stream of the source (PostgreSQL: its slot; SQL Server: each capture
        # instance), each under its own lease, and a backfill worker beside a stream that can
        # copy tables while it runs (tables added to it, or resynced alone).
        self.workers: list[Worker] = []
        for stream in boot.make_source(settings).streams():
            ingest = IngestWorker(
                settings,
                stream.source,
                serving_dsn,
                self.stop,
                self.staged,
                before_confirm=confirm,
                resource=stream.lease_resource(settings.source_name),
            )
            self.workers.append(ingest)
            if stream.backfills:
                self.workers.append(backfill.BackfillWorker(settings, serving_dsn, self.stop, ingest))
        self.workers.extend(projections.build_workers(settings, serving_dsn, self.stop, self.staged))
        self.workers.extend(compaction.build_workers(settings, self.stop))
        self.threads: list[threading.Thread] = []
        self.failed = False  # a worker died of an unexpected error
        self.telemetry = metrics.Telemetry(settings, self.workers, self.stop)  # hooks; /metrics, /healthz

    def start(self) -> None:
        self.threads.extend(self.telemetry.start())
        for w in self.workers:
            t = threading.Thread(target=self._guard, args=(w,), name=w.name, daemon=True)
            t.start()
            self.threads.append(t)
        log.info("started %d workers: %s", len(self.workers), ", ".join(w.name for w in self.workers))

    def _guard(self, worker: Worker) -> None:
        try:
            worker.run()
        except BaseException:
            log.exception("worker %s crashed; stopping the process (exit 1) so a supervisor restarts it", worker.name)
            self.failed = True
            self.stop.set()

    def join(self, timeout: float = 30.0) -> bool:
        for t in self.threads:
            t.join(timeout)
        return not any(t.is_alive() for t in self.threads)

    def run_until_stopped(self, duration: float | None = None) -> None:
        with stop_on_signals(self.stop):  # nested inside the CLI's: same handler, restored after
            self.start()
            self.stop.wait(duration)
            self.stop.set()
            if not self.join():
                log.warning("some workers did not stop in time")

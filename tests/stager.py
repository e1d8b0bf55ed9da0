"""Ingestion driven by hand: stage everything the source has committed, then return.

For tests that drive projection cycles in process: the real ingest worker (its lease
held by the test), cycled until every capture's watermark covers the source's position.
"""

from __future__ import annotations

import threading
import time

import psycopg

from cdcflow.config import Settings


class Stager:
    def __init__(self, settings: Settings) -> None:
        from cdcflow.bootstrap import make_source
        from cdcflow.ingest import IngestWorker

        self.settings = settings
        self.worker = IngestWorker(
            settings, make_source(settings), settings.serving_dsn, threading.Event(), owner="test-stager"
        )
        self._lease_conn = psycopg.connect(settings.serving_dsn)
        self.worker.lease.acquire(self._lease_conn)
        self._serving = psycopg.connect(settings.serving_dsn, autocommit=True)

    def _position(self) -> int:
        return self.worker.source.current_lsn()

    def _watermark(self) -> int:
        row = self._serving.execute(
            "SELECT min(last_lsn) FROM ctl_ingestion_watermarks WHERE source_name = %s", (self.settings.source_name,)
        ).fetchone()
        return int(row[0] or 0)

    def stage_all(self, timeout: float = 30.0) -> int:
        """Stage every change the source committed before this call; the watermark reached."""
        target = self._position()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.worker.lease.due():
                self.worker.lease.acquire(self._lease_conn)  # renewed as the worker's keeper would
            self.worker.cycle()
            if self._watermark() + 1 >= target and self.worker._follow is None:
                # Between calls nobody reads the stream: close it (the next call opens it again
                # from the confirmed position) rather than leave the server waiting on it.
                self.worker.source.close_stream()
                return self._watermark()
        raise AssertionError(f"staging did not reach the source position {target} in {timeout}s")

    def close(self) -> None:
        self.worker._drop_connections()
        self._lease_conn.close()
        self._serving.close()

    def __enter__(self) -> Stager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""The loop every worker runs: wait, take one step, handle its failure, until stopped.

A worker is a thread's target (:meth:`Worker.run`). Subclasses say what one step is
(:meth:`Worker.step`, which returns how long to wait for work before the next) and how a
failed step is handled (:meth:`Worker.failed`, which returns how long to wait before
trying again, or re-raises what the worker does not handle). Everything else is here:

- waiting, in one place (:meth:`Worker.wait_for_work`): until ``stop``, the worker's
  ``wake`` event (or another signal a subclass listens for, :meth:`Worker.signalled`), or
  the timeout; a wait after a failure ends only at ``stop`` or its timeout;
- a worker that owns its work through a lease (:mod:`cdcflow.leases`) renews it in a
  keeper thread and stands by while another instance holds it (:meth:`Worker.stand_by`);
- ``alive`` (true while the loop runs) and ``last_error`` (the last failure's message,
  until a step succeeds), which health and the ``cdcflow_worker_alive`` metric read; the
  ``backoff`` a failure handler draws its delays from, reset by each successful step;
- events for metrics go to the worker's :class:`Observer` objects (:meth:`Worker.observe`).
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from cdcflow import db, leases

if TYPE_CHECKING:
    from cdcflow.projections.base import CycleResult
    from cdcflow.sources.base import BatchResult

log = logging.getLogger(__name__)
#: How often a wait on ``wake`` looks at ``stop`` (and a subclass's other signals).
SLICE_SECONDS = 0.05


class Observer:
    """Told of a worker's events right after them, in the thread that saw them (for a
    queued ingestion commit, the staging lane's). Each method does nothing here: an
    observer overrides those it wants. What one raises is logged at DEBUG and dropped: it
    never reaches the worker."""

    def errored(self, worker: Worker, exc: Exception) -> None:
        """``worker`` handled ``exc``: it retries, or it recorded the failure."""

    def batch_staged(self, worker: Worker, result: BatchResult, seconds: float) -> None:
        """An ingest worker committed a batch, ``seconds`` after it started reading it."""

    def cycle_done(self, worker: Worker, projection: str, result: CycleResult, seconds: float) -> None:
        """A projection worker committed a cycle of ``projection`` that took ``seconds``."""

    def compacted(self, worker: Worker, capture: str, rows: int) -> None:
        """A compaction pass is done with ``capture``, having removed ``rows`` staged rows."""


class Worker(abc.ABC):
    """One worker's loop (see the module docstring). Run :meth:`run` in a thread."""

    def __init__(
        self,
        name: str,
        stop: threading.Event,
        *,
        wake: threading.Event | None = None,
        lease: leases.Lease | None = None,
        serving_dsn: str | None = None,
        backoff: db.Backoff | None = None,
    ) -> None:
        self.name = name
        self.stop = stop
        #: Set by another worker when there is work (None: the worker waits for its timeout).
        self.wake = wake
        self.lease = lease
        self.keeper: leases.LeaseKeeper | None = None
        if lease is not None:
            assert serving_dsn, "a lease is kept on the serving database: its DSN is needed"
            self.keeper = leases.LeaseKeeper(lease, serving_dsn)
        self.backoff = backoff or db.Backoff(initial=0.2, maximum=10.0)
        self.alive = False
        self.last_error: str | None = None
        self.observers: list[Observer] = []

    # -- what a worker does -------------------------------------------------------

    @abc.abstractmethod
    def step(self, token: int | None) -> float:
        """Do one unit of work; returns how long to wait for work before the next.
        ``token``: the lease's token this step runs under (None without a lease)."""

    def failed(self, exc: Exception) -> float:
        """Handle a failed step; returns how long to wait before the next one. Here:
        nothing is handled, the exception ends the loop."""
        raise exc

    def initial_wait(self) -> float:
        """How long to wait before the first step."""
        return 0.0

    def standing_by(self) -> None:  # noqa: B027 - an optional hook: nothing to do by default
        """Called each time the worker stands by for its lease (ingestion lets go of its stream)."""

    def finish(self) -> None:  # noqa: B027 - an optional hook: nothing to do by default
        """Called once when the loop ends, before the lease is given up: release what the worker holds."""

    def stopped_message(self) -> str | None:
        """The line logged when the loop has ended (None: nothing)."""
        return None

    # -- observers ----------------------------------------------------------------

    def observe(self, observer: Observer) -> None:
        self.observers.append(observer)

    def notify(self, event: Callable[[Observer], None]) -> None:
        """Tell every observer of an event: ``event(observer)`` calls the observer's method."""
        for observer in self.observers:
            try:
                event(observer)
            except Exception:  # an observer's bug must not stop the worker
                log.debug("%s: observer %r failed", self.name, observer, exc_info=True)

    def errored(self, exc: Exception, message: str | None = None) -> None:
        """A failure the worker handles: ``last_error`` says it (``message``, else the
        exception's text) until a step succeeds, and the observers are told."""
        self.last_error = str(exc) if message is None else message
        self.notify(lambda o: o.errored(self, exc))

    # -- waiting ------------------------------------------------------------------

    def signalled(self, seconds: float) -> str | None:
        """Wait at most ``seconds`` for a sign of work; what it was, or None."""
        assert self.wake is not None
        return "wake" if self.wake.wait(seconds) else None

    def wait_for_work(self, timeout: float) -> str:
        """Block until wake (or another signal of :meth:`signalled`), stop or ``timeout``;
        returns which one ("interval" for the timeout)."""
        if self.wake is None:
            return "stop" if self.stop.wait(timeout) else "interval"
        deadline = time.monotonic() + timeout
        while not self.stop.is_set():
            if self.wake.is_set():
                return "wake"
            left = deadline - time.monotonic()
            if left <= 0:
                return "interval"
            got = self.signalled(min(SLICE_SECONDS, left))
            if got is not None:
                return got
        return "stop"

    def stand_by(self) -> None:
        """Another instance holds the lease (or it is being renewed): wait a little for the
        keeper to gain it."""
        assert self.keeper is not None and self.lease is not None
        self.standing_by()
        self.keeper.changed.wait(min(1.0, self.lease.ttl / 10))
        self.keeper.changed.clear()

    # -- the loop -----------------------------------------------------------------

    def _turn(self) -> tuple[float, bool]:
        """One turn of the loop: (seconds to wait next, whether work may end that wait early)."""
        try:
            token = None
            if self.lease is not None:
                token = self.lease.token  # read once: the keeper's thread changes it
                if token is None or not self.lease.held:
                    self.stand_by()
                    return 0.0, False
            pause = self.step(token)
        except Exception as exc:
            return self.failed(exc), False
        self.backoff.reset()
        self.last_error = None
        return pause, True

    def _wait(self, seconds: float, wakeable: bool) -> bool:
        """Wait before the next turn; whether to stop."""
        if wakeable:
            self.wait_for_work(seconds)
        elif seconds > 0:
            self.stop.wait(seconds)
        return self.stop.is_set()

    def run(self) -> None:
        self.alive = True
        if self.keeper is not None:
            self.keeper.start()
        try:
            pause, wakeable = self.initial_wait(), False
            while not self._wait(pause, wakeable):
                pause, wakeable = self._turn()
        finally:
            try:
                self.finish()
            finally:
                if self.keeper is not None:
                    self.keeper.stop_and_release(10)  # after the last commit: another instance takes over at once
                self.alive = False
            message = self.stopped_message()
            if message:
                log.info("%s", message)

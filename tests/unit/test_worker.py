"""The worker skeleton without databases: steps, waits, failures, observers."""

from __future__ import annotations

import threading
import time

import pytest

from cdcflow import db
from cdcflow.worker import Observer, Worker


class Steps(Worker):
    """Fails its second step, stops after its fourth; records what the loop did."""

    def __init__(self, stop: threading.Event, wake: threading.Event | None = None) -> None:
        super().__init__("steps", stop, wake=wake, backoff=db.Backoff(initial=0.01, maximum=0.01))
        self.steps = 0
        self.seen: list[tuple[int, bool, str | None]] = []  # (step, alive, last_error) at each step
        self.finished = False

    def step(self, token: int | None) -> float:
        self.steps += 1
        self.seen.append((self.steps, self.alive, self.last_error))
        if self.steps == 2:
            raise ValueError("second")
        if self.steps == 4:
            self.stop.set()
        return 0.0

    def failed(self, exc: Exception) -> float:
        if not isinstance(exc, ValueError):
            raise exc
        self.errored(exc)
        return self.backoff.next_delay()

    def finish(self) -> None:
        self.finished = True


class Errors(Observer):
    def __init__(self) -> None:
        self.errors: list[str] = []

    def errored(self, worker: Worker, exc: Exception) -> None:
        self.errors.append(f"{worker.name}: {exc}")


def test_the_loop_steps_handles_failures_and_tells_observers():
    worker = Steps(threading.Event())
    errors = Errors()
    worker.observe(errors)
    worker.run()
    assert worker.seen == [(1, True, None), (2, True, None), (3, True, "second"), (4, True, None)]
    assert errors.errors == ["steps: second"]
    assert worker.finished and not worker.alive and worker.last_error is None


def test_an_unhandled_failure_ends_the_loop():
    class Broken(Steps):
        def step(self, token: int | None) -> float:
            raise KeyError("x")

    worker = Broken(threading.Event())
    with pytest.raises(KeyError):
        worker.run()
    assert worker.finished and not worker.alive


def test_waiting_for_work_ends_at_wake_stop_or_timeout():
    stop, wake = threading.Event(), threading.Event()
    worker = Steps(stop, wake)
    assert worker.wait_for_work(0.05) == "interval"
    wake.set()
    assert worker.wait_for_work(10) == "wake"
    wake.clear()
    threading.Timer(0.05, stop.set).start()
    started = time.monotonic()
    assert worker.wait_for_work(10) == "stop"
    assert time.monotonic() - started < 5
    assert Steps(threading.Event()).wait_for_work(0.01) == "interval"  # no wake event: the timeout alone

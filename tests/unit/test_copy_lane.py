"""The staging lane: jobs run in order on one thread; a failure stops the rest and is
raised in the caller's thread, never dropped."""

import threading

import pytest

from cdcflow.serving.staging import CopyLane


def test_jobs_run_in_order_on_one_thread():
    lane = CopyLane(max_items=2, name="ingest[x]:copy")
    seen, threads = [], set()

    def job(i):
        def run():
            seen.append(i)
            threads.add(threading.current_thread().name)

        return run

    for i in range(20):
        lane.submit(job(i))  # more jobs than the queue holds: submit waits, nothing is lost
    lane.wait()
    lane.close()
    assert seen == list(range(20))
    assert threads == {"ingest[x]:copy"}


def test_a_failure_skips_later_jobs_and_is_raised_until_reset():
    lane = CopyLane()
    ran = []
    gate = threading.Event()

    def fail():
        gate.wait(5)
        raise ValueError("commit failed")

    lane.submit(fail)
    lane.submit(lambda: ran.append("after"))  # queued behind the failing job
    gate.set()
    with pytest.raises(ValueError, match="commit failed"):
        lane.wait()
    assert ran == []  # what followed the failure did not run
    with pytest.raises(ValueError):
        lane.submit(lambda: ran.append("new"))  # still failed: the caller must roll back first
    with pytest.raises(ValueError):
        lane.check()
    lane.reset()
    lane.submit(lambda: ran.append("new"))
    lane.wait()
    lane.close()
    assert ran == ["new"]
    assert not lane.busy

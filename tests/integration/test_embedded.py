"""The embedded server applies the settings it is given, restarting when one needs it, and
is stopped by the handle that started it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psycopg

from cdcflow.embedded import EmbeddedPostgres, postmaster_pid
from tests.conftest import ROOT


def _show(pg: EmbeddedPostgres, name: str) -> str:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        return str(conn.execute(f"SHOW {name}").fetchone()[0])


def test_settings_are_applied_and_a_restart_happens_only_when_needed():
    data_dir = ROOT / ".cdcflow" / f"test-pg-settings-{os.getpid()}"
    try:
        pg = EmbeddedPostgres(data_dir, {"shared_buffers": "144MB", "work_mem": "5MB"})
        assert (_show(pg, "shared_buffers"), _show(pg, "work_mem")) == ("144MB", "5MB")
        assert _show(pg, "wal_level") == "logical"  # cdcflow's own settings stay
        started = pg._server.get_pid()
        pg = EmbeddedPostgres(data_dir, {"work_mem": "6MB"})  # reloadable: no restart
        assert _show(pg, "work_mem") == "6MB" and pg._server.get_pid() == started
        pg = EmbeddedPostgres(data_dir, {"shared_buffers": "160MB"})  # only a restart applies it
        assert _show(pg, "shared_buffers") == "160MB" and pg._server.get_pid() != started
        pg = EmbeddedPostgres(data_dir)  # no settings: the data dir keeps what it has
        assert _show(pg, "shared_buffers") == "160MB"
    finally:
        EmbeddedPostgres.wipe(data_dir)


def test_release_stops_a_server_it_started_and_leaves_one_that_ran_before():
    data_dir = (ROOT / ".cdcflow" / f"test-pg-release-{os.getpid()}").resolve()
    try:
        first = EmbeddedPostgres(data_dir)
        second = EmbeddedPostgres(data_dir)  # this process again: shares the server
        assert first.started and not second.started
        assert not second.release() and postmaster_pid(data_dir) is not None  # first still uses it
        assert first.release() and postmaster_pid(data_dir) is None
        # Started by a process that has exited (as the demo leaves its server): left running.
        start = f"from cdcflow.embedded import EmbeddedPostgres; EmbeddedPostgres({str(data_dir)!r})"
        subprocess.run([sys.executable, "-c", start], check=True, timeout=120)
        attached = EmbeddedPostgres(data_dir)
        assert not attached.started
        assert not attached.release() and postmaster_pid(data_dir) is not None
        assert EmbeddedPostgres.stop_data_dir(data_dir) and postmaster_pid(data_dir) is None
        assert not EmbeddedPostgres.stop_data_dir(data_dir)
    finally:
        EmbeddedPostgres.wipe(data_dir)


def test_a_process_exits_while_another_holds_pgservers_lock():
    """pgserver guards its list of a server's holders with a machine-wide lock file, and its
    own exit hook waits for that lock with no deadline. cdcflow's hook waits at most
    LOCK_SECONDS (1 s in the child here), then exits and leaves its pid on the list, where a
    dead pid counts for nothing. This test process holds the lock while a child that holds
    a handle exits."""
    import fasteners

    data_dir = (ROOT / ".cdcflow" / f"test-pg-exit-{os.getpid()}").resolve()
    try:
        pg = EmbeddedPostgres(data_dir)
        script = (
            "import sys, cdcflow.embedded as e\n"
            f"handle = e.EmbeddedPostgres({str(data_dir)!r})\n"
            "e.LOCK_SECONDS = 1.0\n"
            "print('attached', flush=True)\n"
            "sys.stdin.readline()\n"
        )
        child = subprocess.Popen(
            [sys.executable, "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "attached"
            lock = fasteners.InterProcessLock(pg._server.lock_path)
            assert lock.acquire(timeout=30)
            try:
                started = time.monotonic()
                _, err = child.communicate("\n", timeout=60)  # the child exits now
                took = time.monotonic() - started
            finally:
                lock.release()
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(10)
        assert child.returncode == 0, err
        assert took < 15, f"the child took {took:.1f}s to exit"
        assert "held pgserver's lock" in err, err
        assert child.pid in pg._server.global_process_id_list._get()  # left there, and dead
        assert pg.release() and postmaster_pid(data_dir) is None  # a dead holder holds nothing
    finally:
        EmbeddedPostgres.wipe(data_dir)

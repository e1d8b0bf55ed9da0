"""Who may see the console: bound beyond loopback it needs a token, or it refuses to start."""

from __future__ import annotations

from tests.e2e.test_cli import base_env, cdcflow, error_line

UNREACHABLE = "postgresql://cdcflow@127.0.0.1:1/none?connect_timeout=1"


def test_non_loopback_without_a_token_refuses_to_start_with_one_line():
    env = base_env(SOURCE_DSN=UNREACHABLE, SERVING_DSN=UNREACHABLE, METRICS_ADDRESS="0.0.0.0")
    for command in (["run"], ["demo", "--no-live", "--duration", "1"]):
        proc = cdcflow(*command, env=env, timeout=60)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        line = error_line(proc)
        assert proc.stderr.strip() == line  # one line, nothing else
        assert "METRICS_ADDRESS=0.0.0.0" in line and "CONSOLE_TOKEN" in line and "CONSOLE_ENABLED=false" in line
        assert "embedded PostgreSQL" not in proc.stdout  # refused before anything started


def test_non_loopback_starts_with_a_token_or_with_the_console_off():
    # Past the check, the unreachable databases are what stops it (exit 1, after STARTUP_WAIT_SECONDS).
    env = base_env(SOURCE_DSN=UNREACHABLE, SERVING_DSN=UNREACHABLE, METRICS_ADDRESS="0.0.0.0", STARTUP_WAIT_SECONDS="0")
    token = "t0ken-" + "x" * 20
    for extra in ({"CONSOLE_TOKEN": token}, {"CONSOLE_ENABLED": "false"}):
        proc = cdcflow("run", env={**env, **extra}, timeout=60)
        assert proc.returncode == 1, proc.stderr
        assert "CONSOLE_TOKEN" not in proc.stderr and token not in proc.stderr
    # On loopback (the default) no token is needed either.
    proc = cdcflow("run", env={**env, "METRICS_ADDRESS": "127.0.0.1"}, timeout=60)
    assert proc.returncode == 1 and "CONSOLE_TOKEN" not in proc.stderr, proc.stderr


def test_a_bad_token_is_one_line_and_not_echoed():
    proc = cdcflow("status", env=base_env(CONSOLE_TOKEN="short secret"), timeout=60)
    assert proc.returncode == 2
    line = error_line(proc)
    assert "CONSOLE_TOKEN" in line and "16 to 256" in line and "short secret" not in proc.stderr

from psycopg.conninfo import conninfo_to_dict

from cdcflow import db
from cdcflow.errors import TerminalError, TransientError


def test_liveness_settings_are_added_but_never_override_the_dsn():
    params = conninfo_to_dict(db.with_liveness("postgresql://u@h:5432/d?keepalives_idle=60"))
    assert params["keepalives_idle"] == "60"  # the user's choice stands
    assert params["tcp_user_timeout"] == "30000" and params["keepalives"] == "1"
    assert params["host"] == "h" and params["dbname"] == "d"


def test_wrong_password_is_terminal_and_refused_connection_transient():
    assert isinstance(
        db.wrap_connect_error("source", Exception('password authentication failed for user "x"')), TerminalError
    )
    assert isinstance(db.wrap_connect_error("source", Exception("Connection refused")), TransientError)


def test_backoff_grows_with_jitter_and_caps():
    b = db.Backoff(initial=0.2, maximum=1.0)
    delays = [b.next_delay() for _ in range(8)]
    assert all(0.1 <= d <= 1.0 for d in delays)
    assert max(delays[4:]) > max(delays[:1])
    b.reset()
    assert b.next_delay() <= 0.2

import pytest

from cdcflow.config import Settings, documented_variables
from cdcflow.errors import ConfigError


def test_defaults_are_the_seeds():
    s = Settings.from_env({})
    assert s.source_name == "source1"
    assert s.poll_interval_seconds == 5
    assert s.cdc_batch_max_rows == 5000
    assert s.projection_interval_seconds == 15
    assert s.projection_recompute_window_minutes == 15
    assert s.enable_proj_orders_kpi is True
    assert s.enable_proj_orders_latest is False
    assert s.log_level == "info"
    assert s.capture_tables == ("public.customers", "public.orders", "public.payments")
    assert s.slot == "cdcflow_source1" and s.publication == "cdcflow_source1"


def test_values_parse():
    s = Settings.from_env(
        {
            "POLL_INTERVAL_SECONDS": "0.5",
            "CDC_BATCH_MAX_ROWS": "100",
            "ENABLE_PROJ_ORDERS_LATEST": "yes",
            "CAPTURE_TABLES": "orders, sales.items",
            "LOG_LEVEL": "DEBUG",
        }
    )
    assert s.poll_interval_seconds == 0.5
    assert s.cdc_batch_max_rows == 100
    assert s.enable_proj_orders_latest is True
    assert s.capture_tables == ("public.orders", "sales.items")
    assert s.log_level == "debug"


BAD = [
    ("SOURCE_NAME", "has space", "letters, digits"),
    ("POLL_INTERVAL_SECONDS", "soon", "number of seconds"),
    ("POLL_INTERVAL_SECONDS", "-1", "number of seconds"),
    ("CDC_BATCH_MAX_ROWS", "0", "whole number"),
    ("CDC_BATCH_MAX_ROWS", "5k", "whole number"),
    ("PROJECTION_INTERVAL_SECONDS", "x", "number of seconds"),
    ("PROJECTION_RECOMPUTE_WINDOW_MINUTES", "1.5", "whole number"),
    ("ENABLE_PROJ_ORDERS_KPI", "maybe", "true or false"),
    ("ENABLE_PROJ_ORDERS_LATEST", "2", "true or false"),
    ("PROJECTION_PARALLEL_READS", "sometimes", "true or false"),
    ("PROJECTIONS_DIR", "/no/such/folder", "existing folder"),
    ("LOG_LEVEL", "loud", "one of"),
    ("LOG_FORMAT", "xml", "one of"),
    ("CAPTURE_TABLES", "a.b.c", "[schema.]table"),
    ("CAPTURE_TABLES", "orders,orders", "listed twice"),
    ("STARTUP_WAIT_SECONDS", "forever", "number of seconds"),
    ("SOURCE_SLOT_NAME", "bad-name", "letters, digits"),
    ("SOURCE_PUBLICATION", "1pub", "letters, digits"),
    ("PROJECTION_SELF_CHECK_SECONDS", "hourly", "number of seconds"),
    ("METRICS_ADDRESS", "not an address!", "IP address"),
    ("METRICS_PORT", "70000", "whole number"),
    ("HEALTH_MAX_FRESHNESS_SECONDS", "0", "number of seconds"),
    ("STAGING_RETENTION", "1 fortnight", "duration"),
    ("STAGING_RETENTION", "400d", "at most 365d"),
    ("COMPACTION_INTERVAL_SECONDS", "-3", "number of seconds"),
    ("COMPACTION_BATCH_ROWS", "10", "whole number"),
    ("LEASE_SECONDS", "0", "number of seconds"),
    ("SNAPSHOT_CHUNK_ROWS", "10", "whole number"),
    ("SNAPSHOT_WORKERS", "0", "whole number"),
    ("CONSOLE_ENABLED", "maybe", "true or false"),
]


@pytest.mark.parametrize("name,value,expected", BAD)
def test_bad_value_names_variable_value_and_expectation(name, value, expected):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    msg = str(info.value)
    assert name in msg and repr(value) in msg and expected in msg
    assert "\n" not in msg


def test_every_variable_has_a_bad_value_case():
    # A new variable must come with its validation test.
    tested = {name for name, _, _ in BAD} | {"SOURCE_DSN", "SERVING_DSN", "CONSOLE_TOKEN"}
    assert set(documented_variables()) == tested


@pytest.mark.parametrize("value", ["too-short", "has a space in it, long enough", "x" * 257, "amp&ersand-0123456789"])
def test_a_bad_console_token_is_refused_without_being_echoed(value):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"CONSOLE_TOKEN": value})
    msg = str(info.value)
    assert msg.startswith("CONSOLE_TOKEN='***' is not valid: expected 16 to 256") and value not in msg
    assert Settings.from_env({"CONSOLE_TOKEN": "a1B2-c3D4.e5F6_g7~"}).console_token == "a1B2-c3D4.e5F6_g7~"


def test_operate_settings_parse():
    s = Settings.from_env({"STAGING_RETENTION": "7d", "METRICS_PORT": "0", "METRICS_ADDRESS": "::1"})
    assert s.staging_retention == 7 * 86400 and s.metrics_port == 0 and s.metrics_address == "::1"
    assert Settings.from_env({"STAGING_RETENTION": "90"}).staging_retention == 90
    assert Settings.from_env({"STAGING_RETENTION": "30m"}).staging_retention == 1800
    assert Settings.from_env({"STAGING_RETENTION": "0"}).staging_retention == 0
    d = Settings.from_env({})
    assert d.metrics_address == "127.0.0.1" and d.staging_retention == 86400


def test_bad_dsn_value_is_redacted():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SOURCE_DSN": "   "})
    assert "SOURCE_DSN" in str(info.value)


def test_missing_dsn_says_what_to_do():
    with pytest.raises(ConfigError, match="SOURCE_DSN is not set"):
        Settings.from_env({}).require_dsns()

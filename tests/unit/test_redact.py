import logging

from cdcflow.redact import REDACTOR, RedactingFilter, Redactor, redact_dsn


def test_uri_password_masked():
    assert redact_dsn("postgresql://bob:s3cr3t@db:5432/x") == "postgresql://bob:***@db:5432/x"


def test_keyword_password_masked():
    out = redact_dsn("host=db user=bob password=s3cr3t dbname=x")
    assert "s3cr3t" not in out and "password=***" in out
    out = redact_dsn("host=db password='s3 cr3t' dbname=x")
    assert "cr3t" not in out


def test_query_string_password_masked():
    assert "s3cr3t" not in redact_dsn("postgresql://db/x?user=bob&password=s3cr3t")


def test_registered_secret_masked_anywhere():
    r = Redactor()
    r.add_dsn("postgresql://bob:hunter22@db/x")
    assert r('FATAL: password authentication failed for user "bob" (hunter22)') == (
        'FATAL: password authentication failed for user "bob" (***)'
    )


def test_logging_filter_masks_message_and_traceback():
    REDACTOR.add_secret("topsecret99")
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed with %s", ("topsecret99",), None)
    try:
        raise RuntimeError("dsn password=topsecret99")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    RedactingFilter().filter(record)
    assert "topsecret99" not in record.getMessage()
    assert "topsecret99" not in (record.exc_text or "")

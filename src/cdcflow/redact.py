"""Keep secrets out of everything cdcflow prints (invariant 8).

Passwords can reach output through a DSN we print, or through a driver error that
quotes its connection string. ``redact_dsn`` masks a DSN we know is one; ``Redactor``
masks every registered secret in any text, and is installed as a logging filter by the
CLI so no log line, error or status output carries one.
"""

from __future__ import annotations

import logging
import re
import threading

_URI_PW_RE = re.compile(r"(?P<pre>[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)(?P<pw>[^@/?#\s]*)(?P<post>@)", re.I)
_KV_PW_RE = re.compile(r"(?P<pre>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|[^\s]+)", re.I)
_QS_PW_RE = re.compile(r"(?P<pre>[?&]password=)(?P<pw>[^&\s]+)", re.I)
MASK = "***"


def redact_dsn(text: str) -> str:
    """Mask the password in anything that looks like a libpq URI or key=value DSN."""
    text = _URI_PW_RE.sub(lambda m: m["pre"] + (MASK if m["pw"] else "") + m["post"], text)
    text = _KV_PW_RE.sub(lambda m: m["pre"] + MASK, text)
    return _QS_PW_RE.sub(lambda m: m["pre"] + MASK, text)


def dsn_password(dsn: str) -> str | None:
    """The password a DSN carries, if any (libpq's own parser)."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        pw = conninfo_to_dict(dsn).get("password")
    except Exception:  # a DSN libpq cannot parse carries nothing we can find this way
        return None
    return str(pw) if pw else None


class Redactor:
    """Masks every registered secret (and DSN-shaped passwords) in text."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add_dsn(self, dsn: str | None) -> None:
        if dsn:
            pw = dsn_password(dsn)
            if pw:
                self.add_secret(pw)

    def add_secret(self, secret: str) -> None:
        if len(secret) >= 3:
            with self._lock:
                self._secrets.add(secret)

    def __call__(self, text: str) -> str:
        text = redact_dsn(text)
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, MASK)
        return text


REDACTOR = Redactor()


class RedactingFilter(logging.Filter):
    """Logging filter that renders the message and masks secrets in it and its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = REDACTOR(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            import traceback

            record.exc_text = REDACTOR("".join(traceback.format_exception(*record.exc_info)).rstrip())
            record.exc_info = None
        return True

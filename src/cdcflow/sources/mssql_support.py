"""SQL Server helpers with no driver in them: DSN parsing, identifier quoting, type mapping,
error classification, and the T-SQL loader.

The driver (pymssql) is imported lazily by :func:`load_driver`, so cdcflow works without
it when the source is PostgreSQL. Tests pass a fake driver module with the same shape
(``connect(**kwargs)`` and ``Error``); see ``tests/fakes/fake_mssql.py``.

DSN format (documented in docs/sqlserver.md)::

    mssql://user:password@host:1433/database?login_timeout=10&timeout=60&encryption=require
    sqlserver://...   (same thing)

User and password are percent-decoded (``%40`` for ``@``). The password is registered
with the redactor as soon as the DSN is parsed, so no log line or error can carry it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from cdcflow import sqlfiles
from cdcflow.errors import CdcflowError, ConfigError, SourceConfigError, TerminalError, TransientError
from cdcflow.redact import REDACTOR

SCHEMES = ("mssql", "sqlserver")
DEFAULT_PORT = 1433
QUERIES = "sqlserver/queries.sql"
BOOTSTRAP_FOLDER = "sqlserver/bootstrap"

#: Error 313: what ``cdc.fn_cdc_get_all_changes_<ci>`` raises when its LSN window is not
#: inside ``[min_lsn(ci), max_lsn()]``, e.g. after the cleanup job removed the changes.
ERROR_INSUFFICIENT_ARGUMENTS = 313
#: Error 207: "Invalid column name" (a change table without ``__$command_id``).
ERROR_INVALID_COLUMN = 207
#: Lost connections, timeouts, deadlocks, snapshot conflicts, failover: retried.
TRANSIENT_ERRORS = frozenset(
    {-2, 233, 1205, 3960, 10053, 10054, 10060, 40197, 40501, 40613, 20003, 20004, 20006, 20009, 20017, 20020, 20047}
)
#: Login refused, database missing or not accessible: retrying will not help.
LOGIN_ERRORS = frozenset({4060, 18452, 18456, 18470, 18486, 18487, 18488})

# Capture instance names: sp_cdc_enable_table allows at most 100 characters; cdcflow's
# default (<schema>_<table>) and every name we accept are plain identifiers.
_CAPTURE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
_PLACEHOLDER_RE = re.compile(r"\{([a-z_]+)\}")


def is_sqlserver_dsn(dsn: str) -> bool:
    return dsn.strip().lower().startswith(tuple(s + "://" for s in SCHEMES))


@dataclass(frozen=True)
class MssqlDsn:
    host: str
    port: int
    database: str
    user: str | None
    password: str | None = field(default=None, repr=False)
    options: dict[str, str] = field(default_factory=dict)

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``pymssql.connect``."""
        kw: dict[str, Any] = {
            "server": self.host,
            "port": str(self.port),
            "database": self.database,
            "user": self.user,
            "password": self.password,
            "login_timeout": int(self.options.get("login_timeout", "10")),
            "timeout": int(self.options.get("timeout", "0")),
            "appname": self.options.get("appname", "cdcflow"),
            "autocommit": True,
        }
        # TDS 7.3+ returns date, time and datetime2 as Python values, not strings.
        kw["tds_version"] = self.options.get("tds_version", "7.4")
        if "encryption" in self.options:
            kw["encryption"] = self.options["encryption"]
        return kw

    def describe(self) -> str:
        """``host:port/database`` — never the password."""
        return f"{self.host}:{self.port}/{self.database}"


_OPTIONS = ("login_timeout", "timeout", "appname", "tds_version", "encryption")


def parse_dsn(dsn: str) -> MssqlDsn:
    """Parse ``mssql://user:password@host:port/database?option=value``."""
    parts = urlsplit(dsn.strip())
    if parts.scheme.lower() not in SCHEMES:
        raise ConfigError(f"SOURCE_DSN: expected mssql://user:password@host:1433/database, got scheme {parts.scheme!r}")
    password = unquote(parts.password) if parts.password else None
    if password:
        REDACTOR.add_secret(password)
    database = unquote(parts.path.lstrip("/"))
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ConfigError("SOURCE_DSN: the port of a mssql:// DSN must be a number") from None
    if not parts.hostname or not database:
        raise ConfigError("SOURCE_DSN: expected mssql://user:password@host:1433/database (host and database required)")
    options = dict(parse_qsl(parts.query))
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ConfigError(f"SOURCE_DSN: unknown option {unknown[0]!r}; known: {', '.join(_OPTIONS)}")
    for name in ("login_timeout", "timeout"):
        if name in options and not options[name].isdigit():
            raise ConfigError(f"SOURCE_DSN: option {name} must be a whole number of seconds")
    if options.get("encryption", "off") not in ("off", "request", "require"):
        raise ConfigError("SOURCE_DSN: option encryption must be off, request or require")
    return MssqlDsn(
        parts.hostname, port, database, unquote(parts.username) if parts.username else None, password, options
    )


def load_driver() -> ModuleType:
    try:
        import pymssql
    except ImportError:  # pragma: no cover - it is a dependency; this is for broken installs
        raise SourceConfigError(
            "SOURCE_DSN is a SQL Server DSN but the pymssql driver is not installed: pip install pymssql"
        ) from None
    return pymssql


# -- identifiers ---------------------------------------------------------------------


class Quoted(str):
    """T-SQL text made only by this module's quoting functions (never raw input)."""


def quote_ident(name: str) -> Quoted:
    """``[name]`` with ``]`` doubled, as QUOTENAME does. Rejects empty and over-long names."""
    if not name or len(name) > 128 or "\x00" in name:
        raise ValueError(f"not a valid SQL Server identifier: {name!r}")
    return Quoted("[" + name.replace("]", "]]") + "]")


def check_capture_instance(name: str) -> str:
    """A capture instance name we accept: letters, digits, _ (never empty: an empty name
    makes ``sys.fn_cdc_get_min_lsn`` answer 0x00..., which reads as "everything is gone")."""
    if not _CAPTURE_RE.match(name or ""):
        raise SourceConfigError(
            f"capture instance {name!r} is not a plain name (letters, digits and _, at most 100): "
            "cdcflow does not quote such names into function calls"
        )
    return name


def changes_function(capture_instance: str) -> Quoted:
    """``[cdc].[fn_cdc_get_all_changes_<capture_instance>]``, validated and quoted."""
    check_capture_instance(capture_instance)
    return Quoted(quote_ident("cdc") + "." + quote_ident("fn_cdc_get_all_changes_" + capture_instance))


def change_table(capture_instance: str) -> Quoted:
    """``[cdc].[<capture_instance>_CT]``, the capture instance's change table, validated and quoted."""
    check_capture_instance(capture_instance)
    return Quoted(quote_ident("cdc") + "." + quote_ident(capture_instance + "_CT"))


def column_list(columns: tuple[str, ...] | list[str], alias: str | None = None) -> Quoted:
    prefix = (quote_ident(alias) + ".") if alias else ""
    return Quoted(", ".join(prefix + quote_ident(c) for c in columns))


def render(text: str, **identifiers: Quoted) -> str:
    """Fill ``{name}`` placeholders of a T-SQL block with quoted identifier text."""

    def sub(m: re.Match[str]) -> str:
        value = identifiers.get(m.group(1))
        if not isinstance(value, Quoted):
            raise KeyError(f"placeholder {{{m.group(1)}}} needs a quoted identifier")
        return value

    return _PLACEHOLDER_RE.sub(sub, text)


def query(name: str, **identifiers: Quoted) -> str:
    try:
        text = sqlfiles.queries(QUERIES)[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in sql/{QUERIES}") from None
    return render(text, **identifiers)


def script_batches(text: str) -> list[str]:
    """Split a T-SQL script on ``GO`` lines (a client-side separator, as sqlcmd does)."""
    batches: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.strip().upper() == "GO":
            batches.append("\n".join(current))
            current = []
        else:
            current.append(line)
    batches.append("\n".join(current))
    return [
        b.strip()
        for b in batches
        if b.strip() and not all(ln.strip().startswith("--") or not ln.strip() for ln in b.splitlines())
    ]


def bootstrap_scripts(demo: bool) -> list[tuple[str, list[str]]]:
    """``(name, batches)`` of the SQL Server bootstrap scripts; schema and seed only for the demo."""
    out = []
    for name, text in sqlfiles.scripts(BOOTSTRAP_FOLDER):
        if name.startswith(("10_", "20_")) and not demo:
            continue
        out.append((name, script_batches(text)))
    return out


# -- types ---------------------------------------------------------------------------

_SIMPLE_TYPES = {
    "bigint": "bigint",
    "int": "integer",
    "smallint": "smallint",
    "tinyint": "smallint",
    "bit": "boolean",
    "float": "double precision",
    "real": "real",
    "money": "numeric(19,4)",
    "smallmoney": "numeric(10,4)",
    "char": "text",
    "varchar": "text",
    "nchar": "text",
    "nvarchar": "text",
    "text": "text",
    "ntext": "text",
    "sysname": "text",
    "xml": "text",
    "date": "date",
    "time": "time without time zone",
    # datetime, datetime2 and smalldatetime carry no offset (a server may write local time,
    # GETDATE()): staged as they are, without a time zone. datetimeoffset carries one.
    "datetime": "timestamp without time zone",
    "datetime2": "timestamp without time zone",
    "smalldatetime": "timestamp without time zone",
    "datetimeoffset": "timestamp with time zone",
    "binary": "bytea",
    "varbinary": "bytea",
    "image": "bytea",
    "timestamp": "bytea",
    "rowversion": "bytea",
    "uniqueidentifier": "uuid",
}


#: CLR types (sys.types.is_assembly_type = 1): no PostgreSQL staging type.
CLR_TYPES = frozenset({"geography", "geometry", "hierarchyid"})


def unsupported_type_message(column: str, type_name: str | None, instance: str) -> str:
    """One line for a captured column cdcflow cannot stage: what, where, what to do."""
    fix = (
        f"re-create capture instance {instance} with an @captured_column_list that leaves it out "
        "(sys.sp_cdc_disable_table, then sys.sp_cdc_enable_table)"
    )
    if type_name is None:
        return f"column {column} has a type cdcflow cannot identify (no name in sys.types): {fix}"
    kind = " (a CLR type)" if type_name.lower() in CLR_TYPES else ""
    return f"column {column} has type {type_name}{kind}, which cdcflow cannot stage: {fix}"


def pg_type(type_name: str, precision: int | None, scale: int | None) -> str | None:
    """The PostgreSQL type (as ``format_type`` prints it) for a SQL Server type; None if unsupported."""
    t = type_name.lower()
    if t in ("decimal", "numeric"):
        return f"numeric({int(precision or 18)},{int(scale or 0)})"
    return _SIMPLE_TYPES.get(t)


# -- errors --------------------------------------------------------------------------


def _number_and_text(exc: BaseException) -> tuple[int | None, str | None]:
    """pymssql raises ``OperationalError((number, b"message"),)``; ``_mssql`` errors carry
    ``.number``; some code passes ``(number, message)`` flat. Accept all three."""
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    if len(args) == 1 and isinstance(args[0], tuple):
        args = args[0]
    number = getattr(exc, "number", None)
    if not isinstance(number, int):
        number = args[0] if args and isinstance(args[0], int) else None
    text = None
    if len(args) >= 2 and isinstance(args[0], int):
        raw = args[1]
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes | bytearray) else str(raw)
    return number, text


def error_number(exc: BaseException) -> int | None:
    """SQL Server's (or DB-Lib's) error number from a pymssql error, if it has one."""
    return _number_and_text(exc)[0]


def describe(exc: BaseException) -> str:
    """One line, redacted: ``error N: message``."""
    number, text = _number_and_text(exc)
    if text is not None:
        text = f"error {number}: {text}"
    else:
        text = str(exc) or type(exc).__name__
    return REDACTOR(" ".join(text.split()))


def wrap_error(what: str, exc: BaseException) -> CdcflowError:
    if isinstance(exc, CdcflowError):
        return exc
    number = error_number(exc)
    msg = f"{what}: {describe(exc)}"
    if number in TRANSIENT_ERRORS or (number is None and type(exc).__name__ in ("OperationalError", "InterfaceError")):
        return TransientError(msg)
    if isinstance(exc, OSError):
        return TransientError(msg)
    return TerminalError(msg)


def wrap_connect_error(where: str, exc: BaseException) -> CdcflowError:
    number = error_number(exc)
    text = describe(exc)
    if number in LOGIN_ERRORS or "login failed" in text.lower():
        return TerminalError(f"cannot connect to the source SQL Server {where}: {text}")
    return TransientError(f"cannot connect to the source SQL Server {where}: {text}")

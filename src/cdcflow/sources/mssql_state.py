"""SQL Server states that look alike from the LSN functions, told apart, each with one
line saying what it is and what to do.

* Which servers cdcflow reads: SQL Server 2016 (major version 13) or newer, and Azure SQL
  Database / Managed Instance, which report major version 12 whatever their engine is
  (``SERVERPROPERTY('EngineEdition')`` 5 and 8).
* ``sys.fn_cdc_get_min_lsn`` answers 0x00... "when the capture instance does not exist or
  when the caller is not authorized to access the change data"
  (https://learn.microsoft.com/sql/relational-databases/system-functions/sys-fn-cdc-get-min-lsn-transact-sql),
  and for an instance the capture job has not processed yet (``cdc.change_tables.start_lsn``
  NULL). Only the last is worth waiting for: :func:`zero_min_lsn_error` reads
  ``cdc.change_tables`` to say which it is.
* A stopped capture job (SQL Server Agent stopped, or the job itself) freezes the max LSN,
  so the source looks caught up. :class:`CaptureJobWatch` reads when the job last ended a
  log scan session (``sys.dm_cdc_log_scan_sessions``,
  https://learn.microsoft.com/sql/relational-databases/system-dynamic-management-views/change-data-capture-sys-dm-cdc-log-scan-sessions)
  while a reader finds nothing new.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from cdcflow.errors import CdcflowError, SourceConfigError, TerminalError, TransientError
from cdcflow.sources import mssql_support as ms

log = logging.getLogger(__name__)

Run = Callable[..., list[tuple]]

MIN_MAJOR_VERSION = 13
#: SERVERPROPERTY('EngineEdition') of Azure SQL Database and Azure SQL Managed Instance.
AZURE_EDITIONS = frozenset({5, 8})
#: The capture job scans the log every 5 s by default (sys.sp_cdc_change_job @pollinginterval);
#: no scan session for this long means it is not running.
CAPTURE_JOB_STALE_SECONDS = 300
#: How often a caught-up reader asks when the capture job last scanned.
CAPTURE_JOB_CHECK_SECONDS = 60.0


def check_version(major: int | None, engine_edition: int | None) -> None:
    """SQL Server 2016 or newer, or Azure SQL (which reports 12); else one line."""
    if engine_edition in AZURE_EDITIONS or major is None or int(major) >= MIN_MAJOR_VERSION:
        return
    raise SourceConfigError(
        f"source SQL Server major version {major}: cdcflow needs SQL Server 2016 (13) or newer, "
        "or Azure SQL Database / Managed Instance"
    )


def zero_min_lsn_error(run: Run, instance: str, schema: str, table: str, user: str | None) -> CdcflowError:
    """Why ``sys.fn_cdc_get_min_lsn(instance)`` answered 0x00..., as an error to raise:
    TransientError only when waiting helps (the capture job has not processed it yet)."""
    rows = run("reading cdc.change_tables", ms.query("capture_state"), {"capture": instance})
    if not rows:
        return _missing_instance_error(run, instance, schema, table)
    start_lsn, role_name, in_role = rows[0]
    if start_lsn is None:
        return TransientError(
            f"capture instance {instance} of {schema}.{table} has not been processed by the CDC capture job yet "
            "(cdc.change_tables.start_lsn is NULL); retrying. If this lasts, check that the capture job runs "
            "(SQL Server Agent; EXEC sys.sp_cdc_start_job @job_type = N'capture')"
        )
    login = f"[{user}]" if user else "this login"
    if role_name and not in_role:
        fix = f"add it to the gating role: ALTER ROLE [{role_name}] ADD MEMBER {login}"
    else:
        fix = f"grant it SELECT on the captured columns of {schema}.{table} (or make it db_owner)"
    return SourceConfigError(
        f"sys.fn_cdc_get_min_lsn(N'{instance}') answered 0x00... although the capture instance exists: "
        f"{login} may not read its changes; {fix}"
    )


def _missing_instance_error(run: Run, instance: str, schema: str, table: str) -> SourceConfigError:
    rows = run("reading cdc.change_tables", ms.query("capture_instances"), {"schema": schema, "table": table})
    others = [r[0] for r in rows if r[0] != instance]
    if others:
        return SourceConfigError(
            f"capture instance {instance} of {schema}.{table} no longer exists (disabled); the table's capture "
            f"instance is now {others[0]}: restart cdcflow to read it, then run 'cdcflow resync' for "
            f"{schema}.{table} if it started after the watermark"
        )
    return SourceConfigError(
        f"capture instance {instance} of {schema}.{table} no longer exists (CDC was disabled on the table): "
        f"EXEC sys.sp_cdc_enable_table @source_schema=N'{schema}', @source_name=N'{table}', @role_name=NULL, "
        f"then run 'cdcflow resync' for {schema}.{table}"
    )


class CaptureJobWatch:
    """While a reader is caught up, asks at most every :data:`CAPTURE_JOB_CHECK_SECONDS`
    when the capture job last ended a log scan session; raises a TransientError when that
    was more than :data:`CAPTURE_JOB_STALE_SECONDS` ago. A login without VIEW DATABASE
    STATE cannot ask: logged once, then not asked again."""

    def __init__(self, run: Run, clock: Callable[[], float] = time.monotonic) -> None:
        self._run = run
        self._clock = clock
        self._next = 0.0
        self._enabled = True

    def check(self) -> None:
        now = self._clock()
        if not self._enabled or now < self._next:
            return
        self._next = now + CAPTURE_JOB_CHECK_SECONDS
        try:
            rows = self._run("reading sys.dm_cdc_log_scan_sessions", ms.query("capture_job_scan"))
        except TerminalError as exc:
            self._enabled = False
            log.warning("cannot tell whether the CDC capture job runs (needs VIEW DATABASE STATE): %s", exc)
            return
        seconds = rows[0][0] if rows else None
        if seconds is not None and int(seconds) > CAPTURE_JOB_STALE_SECONDS:
            raise TransientError(
                f"the CDC capture job has not scanned the log for {int(seconds)} s (sys.dm_cdc_log_scan_sessions): "
                "it or SQL Server Agent is stopped, so no change reaches cdcflow; start it "
                "(EXEC sys.sp_cdc_start_job @job_type = N'capture'); retrying"
            )

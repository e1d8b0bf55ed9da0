"""Catch-up benchmark: how fast cdcflow stages a backlog, against raw decoding of the same WAL.

With the pipeline stopped, slots are created, then at least ``changes`` row changes are
generated in the source (inserts, updates and deletes on customers, orders, payments;
set-based SQL in ``sql/bench/catchup_generate.sql``, ~240 changes per transaction by default). Then,
one after the other, each stage reads the same WAL from its own slot created at the same
point, up to the same target LSN:

- ``raw``: ``pg_recvlogical`` with pgoutput to /dev/null (the server's decoding speed);
- ``read``: psycopg2's replication cursor, messages read and dropped (the client library);
- ``decode``: plus cdcflow's pgoutput decoder to COPY lines, dropped (Python decoding);
- ``cdcflow``: the real ingestion worker: decode, COPY into staging, watermarks, confirm.

The figure is ``cdcflow changes/s`` and its ratio to ``raw`` (target >= 0.5). ``--profile``
runs the cdcflow stage under cProfile (slower: use its figures for where time goes, not for
the rate). ``--serving separate`` puts the serving database on a server of its own, as in a
deployment (the source's walsender then reads only the source's WAL; on this machine kind
it made no measurable difference). Results: ``catchup.json`` (and ``catchup.prof`` /
``catchup_profile.txt``) in the output folder, by default ``benchmarks/results/<timestamp>/``.

    cdcflow bench catchup --changes 1000000     (or: python benchmarks/catchup.py ...)
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import inspect
import io
import json
import math
import os
import platform
import pstats
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import sql

from cdcflow.config import Settings
from cdcflow.positions import format_pg_lsn, parse_pg_lsn
from cdcflow.redact import redact_dsn

ROOT = Path.cwd()  # the project folder when run from a checkout: git info, data dir, results
SRC_DB, SRV_DB = "cdcflow_bench_source", "cdcflow_bench_serving"
SLOT_PREFIX = "cdcflow_bench_"
STAGES = ("raw", "read", "decode", "cdcflow", "raw_after")
#: Not run by default: cdcflow with every batch committed before the next is read (no
#: queued commits), for an A/B of what overlapping the serving commit buys; and
#: pg_recvlogical in pgoutput's text mode whatever cdcflow uses (shown, never the baseline).
EXTRA_STAGES = ("cdcflow_serial", "raw_text")
#: The baseline runs first and again last; the ratio takes the faster of the two, so a
#: baseline slowed by whatever ran before it cannot flatter cdcflow.
RAW_STAGES = ("raw", "raw_after")
STAGE_TIMEOUT = 1800.0
SERVING_DATA_DIR = ROOT / ".cdcflow" / "bench-pg-serving"  # --serving separate, embedded

Progress = Callable[[str], None]


def _dsn(base: str, dbname: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(base)
    params["dbname"] = dbname
    return make_conninfo(**params)


def _code_version() -> dict:
    """Which cdcflow was measured (read-only git queries)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", "src"))}


def _lsn(conn: psycopg.Connection) -> int:
    return parse_pg_lsn(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])


class Server:
    """Where the benchmark runs: the embedded server (default) or the one at ``dsn``."""

    def __init__(self, dsn: str | None, data_dir: Path, recvlogical: str | None) -> None:
        self.embedded = None
        if dsn is None:
            from cdcflow.embedded import EmbeddedPostgres

            self.embedded = EmbeddedPostgres(data_dir)
            self.admin_dsn = self.embedded.dsn("postgres")
            self.recvlogical = [str(self.embedded.bin_path / "pg_recvlogical")]
        else:
            self.admin_dsn = dsn
            binary = recvlogical or shutil.which("pg_recvlogical") or "pg_recvlogical"
            # Debian's PostgreSQL binaries refuse to run as root, and peer auth wants the postgres user.
            as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
            self.recvlogical = [*as_postgres, binary]

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.admin_dsn, autocommit=True)

    def describe(self) -> dict:
        with self.admin() as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            settings = dict(
                conn.execute(
                    "SELECT name, setting FROM pg_settings WHERE name IN "
                    "('shared_buffers','logical_decoding_work_mem','fsync','synchronous_commit','max_wal_size')"
                ).fetchall()
            )
        return {
            "server": "embedded" if self.embedded else redact_dsn(self.admin_dsn),
            "version": version,
            "settings": settings,
        }


def _drop_bench(server: Server, databases: tuple[str, ...] = (SRC_DB, SRV_DB)) -> None:
    with server.admin() as conn:
        for pid in conn.execute(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name LIKE %s AND active_pid IS NOT NULL",
            (SLOT_PREFIX + "%",),
        ).fetchall():
            conn.execute("SELECT pg_terminate_backend(%s)", pid)
        for _ in range(50):
            busy = conn.execute(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE %s AND active_pid IS NOT NULL",
                (SLOT_PREFIX + "%",),
            ).fetchone()[0]
            if not busy:
                break
            time.sleep(0.1)
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE %s",
            (SLOT_PREFIX + "%",),
        )
        for name in databases:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


class CpuSampler:
    """CPU seconds per server process kind (walsender, client backend) and of this process, for one stage.

    Wall time on a shared 2-core machine depends on what else runs; CPU seconds say what the
    work cost. Server processes are found in pg_stat_activity and read from /proc (Linux).
    """

    def __init__(self, admin_dsns: list[str], databases: list[str]) -> None:
        # Processes of a second server (a separate serving server) are labelled "serving ...".
        self.admin_dsns = admin_dsns
        self.databases = databases
        self.seen: dict[int, tuple[str, float]] = {}
        self.stop = threading.Event()
        self.tick = os.sysconf("SC_CLK_TCK")
        self.thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def _cpu(self, pid: int) -> float | None:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / self.tick

    def _sample(self, conn: psycopg.Connection, label: str = "") -> None:
        rows = conn.execute(
            "SELECT pid, backend_type FROM pg_stat_activity WHERE datname = ANY(%s) AND pid <> pg_backend_pid()",
            (self.databases,),
        ).fetchall()
        for pid, backend_type in rows:
            kind = label + backend_type
            cpu = self._cpu(pid)
            if cpu is not None:
                self.seen[pid] = (kind, max(cpu, self.seen.get(pid, (kind, 0.0))[1]))

    def sample_all(self) -> None:
        for n, dsn in enumerate(self.admin_dsns):
            with psycopg.connect(dsn, autocommit=True) as conn:
                self._sample(conn, "serving " if n else "")

    def _run(self) -> None:
        conns = [psycopg.connect(dsn, autocommit=True) for dsn in self.admin_dsns]
        try:
            while not self.stop.is_set():
                for n, conn in enumerate(conns):
                    self._sample(conn, "serving " if n else "")
                self.stop.wait(0.1)
            for n, conn in enumerate(conns):
                self._sample(conn, "serving " if n else "")
        finally:
            for conn in conns:
                conn.close()

    def __enter__(self) -> CpuSampler:
        self.own = os.times()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        now = os.times()
        self.self_cpu = (now.user - self.own.user) + (now.system - self.own.system)
        self.children_cpu = (now.children_user - self.own.children_user) + (
            now.children_system - self.own.children_system
        )

    def summary(self, baseline: dict[int, tuple[str, float]]) -> dict[str, float]:
        """CPU seconds by kind, counting only what a process used after ``baseline`` was taken."""
        out: dict[str, float] = {}
        for pid, (kind, cpu) in self.seen.items():
            used = cpu - baseline.get(pid, (kind, 0.0))[1]
            out[kind] = round(out.get(kind, 0.0) + used, 2)
        out["client process"] = round(self.self_cpu + self.children_cpu, 2)
        return out


# -- generation -------------------------------------------------------------------------


def generate(source_dsn: str, changes: int, unit: int, progress: Progress) -> dict:
    """Make at least ``changes`` row changes; returns exact counts and timing."""
    per_txn = unit * 2.4
    chunk = max(1, int(50_000 / per_txn))  # transactions per CALL (a progress line each)
    ins = upd = dele = txns = 0
    started = time.monotonic()
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")  # generation speed only; decoding is unaffected
        from cdcflow import sqlfiles

        conn.execute(sqlfiles.read_text("bench/catchup_generate.sql"))
        last = started
        while ins + upd + dele < changes:
            n = max(1, min(chunk, math.ceil((changes - ins - upd - dele) / per_txn)))
            row = conn.execute("CALL cdcflow_bench_generate(%s, %s, 0, 0, 0)", (n, unit)).fetchone()
            ins, upd, dele, txns = ins + row[0], upd + row[1], dele + row[2], txns + n
            if time.monotonic() - last >= 3:
                last = time.monotonic()
                progress(
                    f"  generated {ins + upd + dele:,d} changes in {txns:,d} transactions "
                    f"({(ins + upd + dele) / (last - started):,.0f}/s)"
                )
        conn.execute("DROP PROCEDURE cdcflow_bench_generate")
    elapsed = time.monotonic() - started
    total = ins + upd + dele
    return {
        "changes": total,
        "inserts": ins,
        "updates": upd,
        "deletes": dele,
        "transactions": txns,
        "seconds": round(elapsed, 3),
        "changes_per_second": round(total / elapsed),
    }


# -- stages -----------------------------------------------------------------------------


def stage_raw(server: Server, source_dsn: str, slot: str, publication: str, target: int, binary: bool) -> float:
    """pg_recvlogical, pgoutput (binary mode when cdcflow streams in it too), to /dev/null,
    until ``target``; returns seconds."""
    cmd = [
        *server.recvlogical,
        "-d",
        source_dsn,
        "-S",
        slot,
        "--start",
        "--no-loop",
        "-f",
        "/dev/null",
        "-o",
        "proto_version=1",
        "-o",
        f"publication_names={publication}",
        *(["-o", "binary=true"] if binary else []),
        "-E",
        format_pg_lsn(target),
        "-s",
        "1",
        "-F",
        "0",
    ]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=STAGE_TIMEOUT)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"pg_recvlogical failed ({proc.returncode}): {redact_dsn(proc.stderr.strip())}")
    return elapsed


def stage_python(source_dsn: str, slot: str, publication: str, target: int, decode: bool) -> tuple[float, int]:
    """psycopg2 replication stream until ``target``; with ``decode`` also cdcflow's decoder."""
    import psycopg2
    import psycopg2.extras

    from cdcflow.sources.pgoutput import PgOutputDecoder
    from cdcflow.sources.postgres import PostgresSource

    source = PostgresSource(source_dsn, Settings().capture_tables, slot, publication)
    specs = {(s.schema, s.name): s for s in source.describe_tables()}
    source.close()
    # The decoder either calls an ``emit`` callback per row or buffers rows until drained.
    if "emit" in inspect.signature(PgOutputDecoder.__init__).parameters:
        dec = PgOutputDecoder(specs, lambda capture, line, unchanged: None)  # type: ignore[call-arg]
    else:
        dec = PgOutputDecoder(specs)
    drain = getattr(dec, "drain", None)
    started = time.monotonic()
    conn = psycopg2.connect(source_dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection)
    messages = 0
    try:
        cur = conn.cursor()
        cur.start_replication(
            slot_name=slot, decode=False, start_lsn=0, options={"proto_version": "1", "publication_names": publication}
        )
        read_message, feed = cur.read_message, dec.feed
        deadline = started + STAGE_TIMEOUT
        last_ping = 0.0
        while time.monotonic() < deadline:
            msg = read_message()
            if msg is not None:
                messages += 1
                if decode and feed(msg.payload) == 67 and drain is not None and dec.buffered_bytes >= 1 << 20:
                    drain(_NullSink)
                continue
            if cur.wal_end >= target:
                break
            now = time.monotonic()
            if now - last_ping > 0.2:
                cur.send_feedback(reply=True)
                last_ping = now
            select.select([conn], [], [], 0.05)
        else:
            raise RuntimeError(f"stage did not reach {format_pg_lsn(target)} in {STAGE_TIMEOUT:g}s")
    finally:
        conn.close()
    return time.monotonic() - started, dec.rows if decode else messages


class _NullSink:
    """Drops staging rows (decode-only stage)."""

    copy_format = "text"

    @staticmethod
    def add_lines(capture: str, lines: list[bytes], size: int) -> None:
        pass

    @staticmethod
    def add_line(capture: str, line: bytes) -> None:
        pass

    @staticmethod
    def add_unchanged(capture: str, position: tuple[int, int, int], columns: tuple[str, ...]) -> None:
        pass


def stage_cdcflow(
    settings: Settings, target: int, profile_to: Path | None, queue_commits: bool = True, binary: bool = True
) -> dict:
    """The ingestion worker in a thread, until every watermark covers ``target``."""
    from cdcflow.bootstrap import make_source
    from cdcflow.ingest import IngestWorker
    from cdcflow.serving.control import read_watermarks

    assert settings.serving_dsn
    stop = threading.Event()
    source = make_source(settings)
    source.allow_binary = binary
    worker = IngestWorker(settings, source, settings.serving_dsn, stop, queue_commits=queue_commits)
    prof = cProfile.Profile() if profile_to else None

    def body() -> None:
        if prof is not None:
            prof.runcall(worker.run)
        else:
            worker.run()

    with psycopg.connect(settings.serving_dsn, autocommit=True) as conn:
        started = time.monotonic()
        thread = threading.Thread(target=body, name="bench-ingest", daemon=True)
        thread.start()
        deadline = started + STAGE_TIMEOUT
        while True:
            wms = [w for w in read_watermarks(conn, settings.source_name).values() if w.active]
            if wms and min(w.last_lsn for w in wms) + 1 >= target:
                break
            if time.monotonic() > deadline or not thread.is_alive():
                stop.set()
                raise RuntimeError(f"cdcflow did not catch up to {format_pg_lsn(target)}: {worker.last_error}")
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        stop.set()
        thread.join(60)
        staged = 0
        for table in ("stg_cdc_customers", "stg_cdc_orders", "stg_cdc_payments"):
            staged += conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE __op <> 5").format(sql.Identifier(table))
            ).fetchone()[0]
    out = {
        "seconds": round(elapsed, 3),
        "rows_staged": staged,
        "batches": worker.batches,
        "batch_max_rows": settings.cdc_batch_max_rows,
    }
    if prof is not None and profile_to is not None:
        prof.dump_stats(profile_to / "catchup.prof")
        text = io.StringIO()
        stats = pstats.Stats(prof, stream=text)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(25)
        (profile_to / "catchup_profile.txt").write_text(text.getvalue())
        out["profile"] = str(profile_to / "catchup_profile.txt")
    return out


def _run_stage(
    stage: str,
    server: Server,
    settings: Settings,
    source_dsn: str,
    slot: str,
    target: int,
    total: int,
    out: Path,
    profile: bool,
    restage: bool = False,
    binary: bool = False,
) -> dict:
    if stage in RAW_STAGES or stage == "raw_text":
        binary = binary and stage != "raw_text"
        return {"seconds": round(stage_raw(server, source_dsn, slot, settings.publication, target, binary), 3)}
    if stage in ("read", "decode"):
        secs, count = stage_python(source_dsn, slot, settings.publication, target, stage == "decode")
        return {"seconds": round(secs, 3), "rows" if stage == "decode" else "messages": count}
    if stage in ("cdcflow", "cdcflow_serial"):
        if restage:  # not the bootstrap slot, or staged already by another stage: start from this stage's slot
            _restage_from_slot(settings, slot)
        settings = settings.replace(slot_name=slot)
        info = stage_cdcflow(
            settings, target, out if profile else None, queue_commits=stage == "cdcflow", binary=binary
        )
        if info["rows_staged"] != total:
            raise RuntimeError(f"cdcflow staged {info['rows_staged']} changes, the source made {total}")
        return info
    raise ValueError(f"unknown stage {stage!r}: expected some of {', '.join(STAGES + EXTRA_STAGES)}")


def _transfer(settings: Settings) -> tuple[bool, str]:
    """Whether cdcflow's stream will be in pgoutput's binary mode here (and why)."""
    from cdcflow.bootstrap import make_source

    assert settings.serving_dsn
    source = make_source(settings)
    try:
        with psycopg.connect(settings.serving_dsn) as conn:
            source.serving_version = conn.info.server_version
        return source.binary_transfer()
    finally:
        source.close()


def _restage_from_slot(settings: Settings, slot: str) -> None:
    """Empty staging and move the watermarks to where ``slot`` starts, for a second cdcflow run."""
    assert settings.source_dsn and settings.serving_dsn
    with psycopg.connect(settings.source_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        start = parse_pg_lsn(row.fetchone()[0])
    with psycopg.connect(settings.serving_dsn, autocommit=True) as conn:
        for (table,) in conn.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'stg_cdc_%'").fetchall():
            conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(table)))
        conn.execute(
            "UPDATE ctl_ingestion_watermarks SET last_lsn = %s, rows_staged = 0 WHERE source_name = %s",
            (start - 1, settings.source_name),
        )


# -- the benchmark ----------------------------------------------------------------------


def _servers(
    dsn: str | None,
    data_dir: Path | str,
    recvlogical: str | None,
    serving_dsn: str | None,
    serving_data_dir: Path | str | None,
) -> tuple[Server, Server]:
    """The source's server and the serving database's (the same one unless asked
    otherwise), each with a fresh benchmark database."""
    server = Server(dsn, Path(data_dir), recvlogical)
    if serving_dsn is not None or serving_data_dir is not None:
        # The serving database on a server of its own, as in a deployment: the source's
        # walsender then reads only the source's WAL, as pg_recvlogical's does.
        serving = Server(serving_dsn, Path(serving_data_dir or SERVING_DATA_DIR), None)
    else:
        serving = server
    _drop_bench(server)
    if serving is not server:
        _drop_bench(serving, (SRV_DB,))
    with server.admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SRC_DB)))
    with serving.admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SRV_DB)))
    return server, serving


def _backlog(
    settings: Settings, stages: tuple[str, ...], changes: int, unit: int, result: dict, progress: Progress
) -> int:
    """Bootstrap, create each stage's slot, and generate the backlog (into ``result``); the
    position every stage decodes up to."""
    from cdcflow.bootstrap import bootstrap

    assert settings.source_dsn
    source_dsn = settings.source_dsn
    progress("bootstrapping the demo schema, publication and cdcflow's slot ...")
    bootstrap(settings, demo=True).source.close()
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        for stage in stages:
            if stage != "cdcflow" and stage in STAGES + EXTRA_STAGES:
                conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (SLOT_PREFIX + stage,))
        start_lsn = _lsn(conn)
    progress(f"slots created at {format_pg_lsn(start_lsn)}; generating changes ...")
    result["generated"] = generate(source_dsn, changes, unit, progress)
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        # The backlog was written with synchronous_commit off: flush it all before
        # reading the target, or the last commits could lie beyond it.
        conn.execute("CHECKPOINT")
        target = _lsn(conn)
        # Not during the timed stages: autovacuum of the fresh rows, and its checkpoint.
        conn.execute("VACUUM (ANALYZE)")
        conn.execute("CHECKPOINT")
    result["wal_bytes"] = target - start_lsn
    result["target_lsn"] = format_pg_lsn(target)
    progress(
        f"generated {result['generated']['changes']:,d} changes ({result['wal_bytes'] / 1e6:,.0f} MB of WAL) in "
        f"{result['generated']['seconds']:.1f}s; decoding up to {format_pg_lsn(target)}"
    )
    return target


def _run_stages(
    stages: tuple[str, ...],
    server: Server,
    serving: Server,
    settings: Settings,
    target: int,
    total: int,
    out: Path,
    profile: bool,
    binary: bool,
    progress: Progress,
) -> dict:
    """Each stage timed, with the CPU seconds of the processes it used."""
    assert settings.source_dsn
    out_stages: dict = {}
    staged_once = False
    for stage in stages:
        progress(f"stage {stage} ...")
        slot = SLOT_PREFIX + stage
        admins = [server.admin_dsn] + ([serving.admin_dsn] if serving is not server else [])
        baseline = CpuSampler(admins, [SRC_DB, SRV_DB])
        baseline.sample_all()  # backends that exist already (their earlier CPU is not this stage's)
        with CpuSampler(admins, [SRC_DB, SRV_DB]) as sampler:
            info = _run_stage(
                stage,
                server,
                settings,
                settings.source_dsn,
                slot,
                target,
                total,
                out,
                profile,
                restage=staged_once or stage != "cdcflow",
                binary=binary,
            )
        staged_once = staged_once or stage.startswith("cdcflow")
        info["cpu_seconds"] = sampler.summary(baseline.seen)
        info["changes_per_second"] = round(total / info["seconds"])
        info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        out_stages[stage] = info
        cpu = ", ".join(f"{k} {v:.1f}s" for k, v in info["cpu_seconds"].items())
        progress(
            f"  {stage:8s} {info['seconds']:8.2f}s  {info['changes_per_second']:>10,d} changes/s  (CPU seconds: {cpu})"
        )
    return out_stages


def _compare(result: dict, profile: bool, progress: Progress) -> None:
    """cdcflow against the faster raw baseline, in throughput and CPU seconds (into ``result``)."""
    raws = [s for s in RAW_STAGES if s in result["stages"]]
    if not raws or "cdcflow" not in result["stages"]:
        return
    best = min(raws, key=lambda s: result["stages"][s]["seconds"])
    result["baseline_stage"] = best
    result["ratio_cdcflow_to_raw"] = round(
        result["stages"]["cdcflow"]["changes_per_second"] / result["stages"][best]["changes_per_second"], 3
    )
    cpu_raw, cpu_cdc = (
        sum(v for k, v in result["stages"][s]["cpu_seconds"].items() if not k.startswith("autovacuum"))
        for s in (best, "cdcflow")
    )
    # Load-independent view: CPU seconds the same WAL cost each way (2 cores shared by all of it).
    result["cpu_seconds_raw"], result["cpu_seconds_cdcflow"] = round(cpu_raw, 2), round(cpu_cdc, 2)
    result["cpu_ratio_raw_to_cdcflow"] = round(cpu_raw / cpu_cdc, 3) if cpu_cdc else None
    progress(
        f"CPU seconds: pg_recvlogical path {cpu_raw:.1f}, cdcflow path {cpu_cdc:.1f} "
        f"(ratio {result['cpu_ratio_raw_to_cdcflow']})"
    )
    progress(
        f"cdcflow / pg_recvlogical = {result['ratio_cdcflow_to_raw']:.2f} against the faster "
        f"baseline ({best}; target >= 0.5)" + ("  [profiled run: not representative]" if profile else "")
    )


def run(
    out_dir: Path | str,
    changes: int = 1_000_000,
    progress: Progress = print,
    *,
    dsn: str | None = None,
    data_dir: Path | str = ROOT / ".cdcflow" / "bench-pg",
    recvlogical: str | None = None,
    unit: int = 100,
    batch_rows: int = 5000,
    stages: tuple[str, ...] = STAGES,
    profile: bool = False,
    keep: bool = False,
    text_only: bool = False,
    serving_dsn: str | None = None,
    serving_data_dir: Path | str | None = None,
) -> dict:
    """Run the catch-up benchmark; write ``catchup.json`` into ``out_dir``; return the results."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    progress(f"catch-up benchmark: {changes:,d} changes, stages {', '.join(stages)}")
    if os.getloadavg()[0] > 1.0:
        progress(
            f"  note: load average is {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs: "
            "other work on this machine skews the figures"
        )
    server, serving = _servers(dsn, data_dir, recvlogical, serving_dsn, serving_data_dir)
    settings = Settings(
        source_dsn=_dsn(server.admin_dsn, SRC_DB),
        serving_dsn=_dsn(serving.admin_dsn, SRV_DB),
        source_name="bench",
        slot_name=SLOT_PREFIX + "cdcflow",
        publication_name="cdcflow_bench",
        poll_interval_seconds=0.2,
        cdc_batch_max_rows=batch_rows,
        enable_proj_orders_kpi=False,
        enable_proj_orders_latest=False,
    )
    result: dict = {
        "benchmark": "catchup",
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "command": "python benchmarks/catchup.py " + " ".join(sys.argv[1:]) if __name__ == "__main__" else None,
        "profiled": profile,
        "code": _code_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        result["server"] = server.describe()
        result["serving_server"] = "the source's server" if serving is server else serving.describe()
        target = _backlog(settings, stages, changes, unit, result, progress)
        binary, why = _transfer(settings) if not text_only else (False, "text transfer: --text")
        result["transfer"] = why
        progress(f"{why} (pg_recvlogical is given the same pgoutput options)")
        total = result["generated"]["changes"]
        result["stages"] = _run_stages(stages, server, serving, settings, target, total, out, profile, binary, progress)
        _compare(result, profile, progress)
    finally:
        if not keep:
            _drop_bench(server)
            if serving is not server:
                _drop_bench(serving, (SRV_DB,))
    (out / "catchup.json").write_text(json.dumps(result, indent=2) + "\n")
    progress(f"results: {out / 'catchup.json'}")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--changes", type=int, default=1_000_000, help="row changes to pre-generate (default 1,000,000)")
    p.add_argument("--dsn", default=None, help="admin DSN of another server (default: embedded, .cdcflow/bench-pg)")
    p.add_argument("--data-dir", default=str(ROOT / ".cdcflow" / "bench-pg"), help="embedded server data dir")
    p.add_argument("--recvlogical", default=None, help="pg_recvlogical binary for --dsn (run as postgres if root)")
    p.add_argument("--unit", type=int, default=100, help="orders per generated transaction (~2.4x changes)")
    p.add_argument("--batch-rows", type=int, default=5000, help="CDC_BATCH_MAX_ROWS for the cdcflow stage")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {', '.join(STAGES + EXTRA_STAGES)}")
    p.add_argument("--profile", action="store_true", help="run the cdcflow stage under cProfile")
    p.add_argument("--keep", action="store_true", help="keep the benchmark databases and slots")
    p.add_argument("--text", action="store_true", help="pgoutput text mode for every stage (A/B of binary transfer)")
    p.add_argument(
        "--serving",
        choices=("same", "separate"),
        default="same",
        help="serving database on the source's server (default), or on a server of its own (embedded: "
        ".cdcflow/bench-pg-serving; with --dsn: --serving-dsn)",
    )
    p.add_argument("--serving-dsn", default=None, help="admin DSN of the serving server (with --dsn)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results/<timestamp>)")
    args = p.parse_args(argv)
    if args.serving == "same" and args.serving_dsn:
        p.error("--serving-dsn names a separate serving server: drop --serving same")
    if args.serving_dsn:
        args.serving = "separate"
    if args.dsn and args.serving == "separate" and not args.serving_dsn:
        p.error("--dsn with a separate serving server needs --serving-dsn (or --serving same)")
    out = (
        Path(args.out)
        if args.out
        else ROOT / "benchmarks" / "results" / dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    )
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    run(
        out,
        args.changes,
        dsn=args.dsn,
        data_dir=args.data_dir,
        recvlogical=args.recvlogical,
        unit=args.unit,
        batch_rows=args.batch_rows,
        stages=stages,
        profile=args.profile,
        keep=args.keep,
        text_only=args.text,
        serving_dsn=args.serving_dsn,
        serving_data_dir=SERVING_DATA_DIR if args.serving == "separate" and not args.dsn else None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Catch-up benchmark: how fast cdcflow stages a backlog, against raw decoding of the same WAL.

With the pipeline stopped, slots are created, then at least ``changes`` row changes are
generated in the source (inserts, updates and deletes on customers, orders, payments;
set-based SQL in ``sql/bench/catchup_generate.sql``, ~240 changes per transaction by default). Then,
one after the other, each stage reads the same WAL from its own slot created at the same
point, up to the same target LSN:

- ``raw``: ``pg_recvlogical`` with pgoutput to /dev/null (the server's decoding speed);
- ``read``: cdcflow's replication connection (libpq), messages read and dropped (the client side);
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
import os
import platform
import pstats
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
from psycopg import sql

from cdcflow.bench.catchup_measure import CpuSampler, Progress, generate, summarize
from cdcflow.bench.catchup_server import (
    ROOT,
    SLOT_PREFIX,
    SRC_DB,
    SRV_DB,
    Server,
    _code_version,
    _drop_bench,
    _dsn,
    _lsn,
)
from cdcflow.config import Settings
from cdcflow.positions import format_pg_lsn, parse_pg_lsn
from cdcflow.redact import redact_dsn

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
    """The replication stream until ``target``; with ``decode`` also cdcflow's decoder."""
    from cdcflow.sources.pg_replication import ReplicationConnection
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
    conn = ReplicationConnection(source_dsn)
    messages = 0
    try:
        conn.start(slot, 0, {"proto_version": "1", "publication_names": publication})
        read_message, feed = conn.read, dec.feed
        deadline = started + STAGE_TIMEOUT
        last_ping = 0.0
        while time.monotonic() < deadline:
            msg = read_message()
            if msg is not None:
                messages += 1
                if decode and feed(msg) == 67 and drain is not None and dec.buffered_bytes >= 1 << 20:
                    drain(_NullSink)
                continue
            if conn.wal_end >= target:
                break
            now = time.monotonic()
            if now - last_ping > 0.2:
                conn.send_status(reply=True)
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
    from cdcflow.ingest import IngestWorker
    from cdcflow.serving.control import read_watermarks
    from cdcflow.sources.postgres import PostgresSource

    assert settings.serving_dsn
    stop = threading.Event()
    source = PostgresSource.from_settings(settings, binary=binary)  # binary=False: the text-transfer run
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
    from cdcflow.sources.postgres import PostgresSource

    assert settings.serving_dsn
    source = PostgresSource.from_settings(settings)
    try:
        with psycopg.connect(settings.serving_dsn) as conn:
            source.use_serving_version(conn.info.server_version)
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
    from cdcflow.bootstrap import bootstrap

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    progress(f"catch-up benchmark: {changes:,d} changes, stages {', '.join(stages)}")
    if os.getloadavg()[0] > 1.0:
        progress(
            f"  note: load average is {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs: "
            "other work on this machine skews the figures"
        )
    server = Server(dsn, Path(data_dir), recvlogical)
    serving = server
    try:  # the servers this run started are stopped whatever happens (Server.close)
        if serving_dsn is not None or serving_data_dir is not None:
            # The serving database on a server of its own, as in a deployment: the source's
            # walsender then reads only the source's WAL, as pg_recvlogical's does.
            serving = Server(serving_dsn, Path(serving_data_dir or SERVING_DATA_DIR), None)
        _drop_bench(server)
        if serving is not server:
            _drop_bench(serving, (SRV_DB,))
        with server.admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SRC_DB)))
        with serving.admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SRV_DB)))
        source_dsn = _dsn(server.admin_dsn, SRC_DB)
        settings = Settings(
            source_dsn=source_dsn,
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
        result["server"] = server.describe()
        result["serving_server"] = "the source's server" if serving is server else serving.describe()
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
        total = result["generated"]["changes"]
        result["wal_bytes"] = target - start_lsn
        result["target_lsn"] = format_pg_lsn(target)
        progress(
            f"generated {total:,d} changes ({result['wal_bytes'] / 1e6:,.0f} MB of WAL) in "
            f"{result['generated']['seconds']:.1f}s; decoding up to {format_pg_lsn(target)}"
        )
        binary, why = _transfer(settings) if not text_only else (False, "text transfer: --text")
        result["transfer"] = why
        progress(f"{why} (pg_recvlogical is given the same pgoutput options)")
        result["stages"] = {}
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
                    source_dsn,
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
            result["stages"][stage] = info
            cpu = ", ".join(f"{k} {v:.1f}s" for k, v in info["cpu_seconds"].items())
            progress(
                f"  {stage:8s} {info['seconds']:8.2f}s  {info['changes_per_second']:>10,d} changes/s  "
                f"(CPU seconds: {cpu})"
            )
        summarize(result, RAW_STAGES, profile, progress)
    finally:
        try:
            if not keep:
                _drop_bench(server)
                if serving is not server:
                    _drop_bench(serving, (SRV_DB,))
        finally:
            server.close()
            if serving is not server:
                serving.close()
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

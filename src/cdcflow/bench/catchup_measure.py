"""What the catch-up benchmark measures besides the stages themselves: the generated
backlog, the CPU seconds each stage cost, and the ratios reported at the end."""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

Progress = Callable[[str], None]


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


def summarize(result: dict, raw_stages: tuple[str, ...], profile: bool, progress: Progress) -> None:
    """Add cdcflow's rate and CPU cost against the faster ``raw_stages`` baseline to ``result``."""
    raws = [s for s in raw_stages if s in result["stages"]]
    if raws and "cdcflow" in result["stages"]:
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

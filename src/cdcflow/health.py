"""The HTTP endpoint of ``cdcflow run``: ``/metrics`` (Prometheus) and ``/healthz``.

Bound to ``METRICS_ADDRESS`` (127.0.0.1 by default) on ``METRICS_PORT`` (0: off).
``/healthz`` answers 200 ``{"status": "ok"}`` only while every enabled worker runs and
every enabled projection's freshness is under ``HEALTH_MAX_FRESHNESS_SECONDS``; else 503
with a one-line JSON reason. A port already in use is logged and the pipeline runs
without the endpoint (metrics must never stop ingestion).
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cdcflow.redact import REDACTOR

log = logging.getLogger(__name__)


def check(telemetry: Any) -> tuple[bool, str]:
    """(healthy, reason): workers alive, then projection freshness under the threshold."""
    for w in telemetry.workers:
        if not getattr(w, "alive", False):
            return False, f"worker {w.name} is not running"
    limit = telemetry.settings.health_max_freshness_seconds
    sampler = telemetry.sampler
    for name in sampler.projection_names:
        fresh = sampler.freshness(name)
        if fresh > limit:
            return False, f"projection {name} is {fresh:.1f}s behind the source (limit {limit:g}s)"
    return True, "ok"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    telemetry: Any
    thread: threading.Thread


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "cdcflow"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body = REDACTOR(generate_latest(self.server.telemetry.metrics.registry).decode()).encode()
            self._send(200, CONTENT_TYPE_LATEST, body)
        elif path == "/healthz":
            ok, reason = check(self.server.telemetry)
            data = {"status": "ok"} if ok else {"status": "failing", "reason": REDACTOR(reason)}
            self._send(200 if ok else 503, "application/json", (json.dumps(data) + "\n").encode())
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics or /healthz\n")

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        log.debug("http: " + format, *args)


def serve(telemetry: Any, address: str, port: int, stop: threading.Event) -> _Server | None:
    """Bind now; the returned server's ``thread`` (not started) serves until ``stop``."""
    try:
        server = _Server((address, port), _Handler)
    except OSError as exc:
        log.warning(
            "metrics endpoint disabled: cannot listen on %s:%d (%s); set METRICS_PORT to a free port, "
            "or 0 to turn it off",
            address,
            port,
            exc,
            extra={"action": "http_listen"},
        )
        return None
    server.telemetry = telemetry
    host, bound_port = str(server.server_address[0]), int(server.server_address[1])
    name = f"http[{host}:{bound_port}]"

    def loop() -> None:
        log.info(
            "serving /metrics and /healthz on http://%s:%d",
            host,
            bound_port,
            extra={"action": "http_listen", "worker": name},
        )
        server.timeout = 0.2
        try:
            while not stop.is_set():
                server.handle_request()
        finally:
            server.server_close()

    server.thread = threading.Thread(target=loop, name=name, daemon=True)
    return server

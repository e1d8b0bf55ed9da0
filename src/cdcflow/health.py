"""The HTTP listener of ``cdcflow run``: ``/metrics`` (Prometheus), ``/healthz`` and the
web console (:mod:`cdcflow.console`).

Bound to ``METRICS_ADDRESS`` (127.0.0.1 by default) on ``METRICS_PORT`` (0: off); a
Starlette app served by uvicorn in a thread of its own (the event stream needs an
asynchronous server; the standard library's would need SSE, routing and static files
written by hand).
``/healthz`` answers 200 ``{"status": "ok"}`` only while every enabled worker runs and
every enabled projection's freshness is under ``HEALTH_MAX_FRESHNESS_SECONDS``; else 503
with a one-line JSON reason. A port already in use is logged and the pipeline runs
without the endpoint (metrics must never stop ingestion).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from cdcflow.redact import REDACTOR

if TYPE_CHECKING:
    from cdcflow.metrics import Telemetry

log = logging.getLogger(__name__)


def check(telemetry: Telemetry) -> tuple[bool, str]:
    """(healthy, reason): workers alive, then projection freshness under the threshold."""
    for w in telemetry.workers:
        if not w.alive:
            return False, f"worker {w.name} is not running"
    limit = telemetry.settings.health_max_freshness_seconds
    sampler = telemetry.sampler
    for name in sampler.projection_names:
        fresh = sampler.freshness(name)
        if fresh > limit:
            return False, f"projection {name} is {fresh:.1f}s behind the source (limit {limit:g}s)"
    return True, "ok"


def _metrics(request: Request) -> Response:
    page = generate_latest(request.app.state.telemetry.metrics.registry).decode()
    return Response(REDACTOR(page), media_type=CONTENT_TYPE_LATEST)


def _healthz(request: Request) -> Response:
    ok, reason = check(request.app.state.telemetry)
    data = {"status": "ok"} if ok else {"status": "failing", "reason": REDACTOR(reason)}
    return Response(json.dumps(data) + "\n", status_code=200 if ok else 503, media_type="application/json")


async def _not_found(request: Request, exc: Exception) -> Response:
    where = "/ (the console), /metrics or /healthz" if request.app.state.telemetry.console else "/metrics or /healthz"
    return PlainTextResponse(f"not found: try {where}\n", status_code=404)


def build_app(telemetry: Telemetry, stop: threading.Event) -> Starlette:
    """/metrics and /healthz, and the console's routes when it is on."""
    routes: list[Any] = [Route("/metrics", _metrics, methods=["GET"]), Route("/healthz", _healthz, methods=["GET"])]
    console = telemetry.console
    if console is not None:
        from cdcflow.console import web

        routes += web.routes(console.feed, console.history, telemetry.settings.console_token, stop)
    app = Starlette(routes=routes, exception_handlers={404: _not_found})
    app.state.telemetry = telemetry
    return app


class Listener:
    """The bound socket, the uvicorn server on it, and the thread (not started) that runs it."""

    def __init__(self, server: uvicorn.Server, sock: socket.socket, stop: threading.Event) -> None:
        self.server = server
        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.server_address = (str(host), int(port))
        self.name = f"http[{host}:{port}]"
        self.thread = threading.Thread(target=self._run, args=(stop,), name=self.name, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server_address
        if host in ("0.0.0.0", "::"):
            host = socket.gethostname()
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def _run(self, stop: threading.Event) -> None:
        def on_stop() -> None:
            stop.wait()
            self.server.should_exit = True

        threading.Thread(target=on_stop, name=self.name + "-stop", daemon=True).start()
        log.info("serving %s on %s", _what(self.server.config.app), self.url, extra={"action": "http_listen"})
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.sock.close()
            log.info("%s stopped: %.2f s of CPU", self.name, time.thread_time(), extra={"action": "http_listen"})


def _what(app: Any) -> str:
    return "the console (/), /metrics and /healthz" if app.state.telemetry.console else "/metrics and /healthz"


def serve(telemetry: Telemetry, address: str, port: int, stop: threading.Event) -> Listener | None:
    """Bind now; the returned listener's ``thread`` (not started) serves until ``stop``."""
    try:
        family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        sock = socket.create_server((address, port), family=family, backlog=64)
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
    try:
        app = build_app(telemetry, stop)
    except Exception:
        sock.close()
        raise
    config = uvicorn.Config(
        app,
        log_config=None,  # the process's logging (and its redaction) stays as the CLI set it
        access_log=False,
        lifespan="off",
        loop="asyncio",
        http="h11",
        ws="none",
        timeout_graceful_shutdown=2,
    )
    return Listener(uvicorn.Server(config), sock, stop)

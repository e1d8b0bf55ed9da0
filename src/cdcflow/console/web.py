"""The console's routes: the page, its static files and its event stream; all GET only.

With ``CONSOLE_TOKEN`` set, a viewer opens ``/?token=...`` once: the answer sets a
cookie (a digest of the token, HttpOnly, SameSite=Strict) and redirects to ``/``, so the
token leaves the address bar; scripts may send ``Authorization: Bearer <token>``.
``/metrics`` and ``/healthz`` never need it (Prometheus and probes).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from cdcflow.console.feed import HISTORY_SECONDS, Feed, History, event

COOKIE = "cdcflow_console"
KEEPALIVE_SECONDS = 15
HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'"
    ),
}


def static_dir() -> Path:
    return Path(str(resources.files("cdcflow.console").joinpath("static")))


class Auth:
    """Who may read the console: anyone (no token configured) or holders of the token."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self.cookie = hmac.new(token.encode(), b"cdcflow-console", hashlib.sha256).hexdigest() if token else ""

    def allows(self, request: Request) -> bool:
        if self.token is None:
            return True
        given = request.cookies.get(COOKIE, "")
        if given and hmac.compare_digest(given, self.cookie):
            return True
        header = request.headers.get("authorization", "")
        return header.startswith("Bearer ") and hmac.compare_digest(header[7:].encode(), self.token.encode())

    def offers(self, request: Request) -> bool:
        given = request.query_params.get("token", "")
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    @staticmethod
    def refuse() -> Response:
        return PlainTextResponse(
            "the console needs its token: open /?token=<CONSOLE_TOKEN> once, or send Authorization: Bearer <token>\n",
            status_code=401,
            headers=HEADERS,
        )


class Guarded:
    """An ASGI app behind the token."""

    def __init__(self, app: ASGIApp, auth: Auth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.auth.allows(Request(scope)):
            await self.auth.refuse()(scope, receive, send)
            return
        await self.app(scope, receive, send)


def routes(feed: Feed, history: History, token: str | None, stop: threading.Event) -> list[Any]:
    auth = Auth(token)

    async def page(request: Request) -> Response:
        if auth.offers(request):
            answer = RedirectResponse("/", status_code=303, headers=HEADERS)
            answer.set_cookie(COOKIE, auth.cookie, httponly=True, samesite="strict")
            return answer
        if not auth.allows(request):
            return auth.refuse()
        return FileResponse(static_dir() / "index.html", headers=HEADERS)

    async def events(request: Request) -> Response:
        if not auth.allows(request):
            return auth.refuse()
        return StreamingResponse(
            stream(feed, history, request.query_params.get("rows"), stop),
            media_type="text/event-stream",
            headers={**HEADERS, "X-Accel-Buffering": "no"},
        )

    return [
        Route("/", page, methods=["GET"]),
        Route("/events", events, methods=["GET"]),
        Mount("/static", app=Guarded(StaticFiles(directory=static_dir()), auth)),
    ]


async def stream(feed: Feed, history: History, rows: str | None, stop: threading.Event):
    """One viewer's events: the history once, then every tick and its chosen rows."""
    viewer = feed.subscribe(rows)
    try:
        yield "retry: 2000\n\n"
        yield event("history", {"seconds": HISTORY_SECONDS, "step": history.step, "points": history.since(0)})
        seq, quiet = 0, 0.0
        while not stop.is_set():
            tick = await feed.next_tick(seq, 1.0)
            if tick is None:
                quiet += 1.0
                if quiet >= KEEPALIVE_SECONDS:  # a comment line keeps proxies from closing it
                    quiet = 0.0
                    yield ": keep-alive\n\n"
                continue
            seq, quiet = tick.seq, 0.0
            yield tick.status
            chosen = tick.rows.get(viewer.rows or tick.default_rows or "")
            if chosen:
                yield chosen
    finally:
        feed.unsubscribe(viewer)

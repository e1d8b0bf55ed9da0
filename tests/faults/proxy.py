"""A TCP proxy the fault suite controls: 127.0.0.1:<port> -> a PostgreSQL Unix socket.

The pipeline reaches each database only through one of these. ``cut()`` aborts every
open connection (both sides, at once: the client sees a reset, the server a vanished
peer) and can refuse new ones for a moment (accepted, then closed at once, as a
restarting server or a broken network does). Loopback and Unix sockets only.

The proxy runs its own asyncio loop in a daemon thread; every public method is safe to
call from any thread and bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass

_CHUNK = 64 * 1024


@dataclass
class ProxyStats:
    accepted: int = 0
    refused: int = 0
    upstream_failures: int = 0
    cuts: int = 0
    connections_cut: int = 0
    blackholed: int = 0


class Proxy:
    def __init__(self, name: str, upstream_socket: str) -> None:
        self.name = name
        self.upstream_socket = upstream_socket
        self.port = 0
        self.stats = ProxyStats()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"proxy[{name}]", daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task] = set()
        self._refuse_until = 0.0
        self._refuse_after: tuple[int, float] | None = None
        self._holes: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()

    # -- public, any thread -------------------------------------------------------

    def start(self) -> int:
        self._thread.start()
        self.port = self._call(self._start())
        return self.port

    def cut(self, refuse_seconds: float = 0.0) -> int:
        """Abort every open connection; refuse new ones for ``refuse_seconds``. Returns how many were cut."""
        return self._call(self._cut(refuse_seconds))

    def blackhole(self) -> int:
        """Stop forwarding on every open connection without closing it (a silent network partition:
        no FIN, no RST; only timeouts can notice). New connections work. Returns how many."""
        return self._call(self._blackhole())

    def refuse_after(self, connections: int, seconds: float) -> None:
        """Let ``connections`` more connections through, then refuse new ones for ``seconds``."""
        self._loop.call_soon_threadsafe(setattr, self, "_refuse_after", (self.stats.accepted + connections, seconds))

    def open_connections(self) -> int:
        return len(self._pairs)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    # -- loop side ----------------------------------------------------------------

    def _call(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def _cut(self, refuse_seconds: float) -> int:
        self._refuse_until = time.monotonic() + refuse_seconds
        pairs = list(self._pairs)
        for client, upstream in pairs:
            _abort(client)
            _abort(upstream)
        self._pairs.clear()
        self.stats.cuts += 1
        self.stats.connections_cut += len(pairs)
        return len(pairs)

    async def _blackhole(self) -> int:
        pairs = list(self._pairs)
        for pair in pairs:
            self._holes.add(pair)
        self.stats.blackholed += len(pairs)
        return len(pairs)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut(0.0)
        for task in list(self._tasks):
            task.cancel()

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        if self._refuse_after is not None and self.stats.accepted >= self._refuse_after[0]:
            self._refuse_until = time.monotonic() + self._refuse_after[1]
            self._refuse_after = None
        if time.monotonic() < self._refuse_until:
            self.stats.refused += 1
            _abort(c_writer)
            return
        try:
            u_reader, u_writer = await asyncio.wait_for(asyncio.open_unix_connection(self.upstream_socket), 5)
        except (OSError, TimeoutError):
            self.stats.upstream_failures += 1
            _abort(c_writer)
            return
        self.stats.accepted += 1
        pair = (c_writer, u_writer)
        self._pairs.add(pair)
        tasks = [
            asyncio.create_task(self._pipe(c_reader, u_writer, pair)),
            asyncio.create_task(self._pipe(u_reader, c_writer, pair)),
        ]
        self._tasks.update(tasks)
        try:
            # Either direction ending ends the connection (PostgreSQL has no half-closed use).
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
                self._tasks.discard(t)
            self._pairs.discard(pair)
            self._holes.discard(pair)
            _abort(c_writer)
            _abort(u_writer)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pair: tuple) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError, ConnectionError):
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    if pair in self._holes:  # a partition hides the peer's close too
                        await asyncio.sleep(3600)
                    return
                if pair in self._holes:
                    continue  # dropped on the floor
                writer.write(data)
                await writer.drain()


def _abort(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    if not transport.is_closing():
        transport.abort()

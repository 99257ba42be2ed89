"""The gateway's HTTP/1.1 server on 127.0.0.1: Cryo's requests in, the handler's replies out.

Our own server rather than aiohttp's, for the reason `upstream` gives: CPU per proxied request.
httptools parses; this file keeps connections and answers each connection's requests in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast
from urllib.parse import parse_qsl

import httptools

from ..errors import redact

log = logging.getLogger("cryo_ingest.gateway")
STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: bytes
    keep_alive: bool


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"


Handler = Callable[[Request], Awaitable[Response]]


class Listener:
    """Serves `handler` until `stop`; a request whose client hangs up is cancelled, not answered."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.sessions: set[_Session] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self, host: str = "127.0.0.1") -> int:
        """Listen on a free port of `host`; returns the port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Session(self), host, 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        """No new connections; the requests in progress are cancelled (their partitions are over)."""
        if self._server is None:
            return
        self._server.close()
        tasks = [s.task for s in self.sessions if s.task is not None]
        for session in list(self.sessions):
            session.close()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        await self._server.wait_closed()


class _Session(asyncio.Protocol):
    """One client connection. HTTP/1.1 lets a client send its next request before the answer to
    the last (pipelining): requests are queued and answered in the order they came."""

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._body: list[bytes] = []
        self._queue: deque[Request] = deque()
        self.task: asyncio.Task[None] | None = None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # ---- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not its subclasses
        self._listener.sessions.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._queue.clear()
            self._write(Response(400, b"bad request", "text/plain"), keep_alive=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener.sessions.discard(self)
        self._queue.clear()
        if self.task is not None:
            self.task.cancel()

    # ---- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url, self._body = b"", []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"expect" and value.lower() == b"100-continue" and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        url = httptools.parse_url(self._url)
        request = Request(
            method=self._parser.get_method().decode(),
            path=url.path.decode("latin-1"),
            query=dict(parse_qsl(url.query.decode("latin-1"))) if url.query else {},
            body=b"".join(self._body),
            keep_alive=self._parser.should_keep_alive(),
        )
        if self.task is None:
            self._serve(request)
        else:
            self._queue.append(request)

    # ---- answering ------------------------------------------------------------------------------

    def _serve(self, request: Request) -> None:
        self.task = asyncio.get_running_loop().create_task(self._answer(request))

    async def _answer(self, request: Request) -> None:
        try:
            response = await self._listener.handler(request)
        except Exception as exc:  # a bug of ours: the client gets a 500, the log says what
            log.error("gateway: %s on %s: %s", type(exc).__name__, request.method, redact(str(exc)))
            response = Response(500, b"internal error", "text/plain")
        self.task = None
        self._write(response, request.keep_alive)
        if request.keep_alive and self._queue:
            self._serve(self._queue.popleft())

    def _write(self, response: Response, keep_alive: bool) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        head = b"%sContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n" % (
            STATUS_LINES[response.status],
            response.content_type.encode(),
            len(response.body),
            b"" if keep_alive else b"Connection: close\r\n",
        )
        self._transport.writelines((head, response.body))
        if not keep_alive:
            self._transport.close()

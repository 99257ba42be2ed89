"""HTTP/1.1 POSTs to one endpoint over kept-alive connections.

Our own client rather than aiohttp's: where the node runs on the same host or LAN (an own archive
node), the gateway's CPU per request bounds the whole run, and aiohttp's client and server took
about 0.35 ms of CPU per proxied request, five times this client and `listener` together
(docs/benchmarks.md). httptools (llhttp, the parser of Node.js and uvicorn) parses the replies;
this file only keeps connections, which a JSON-RPC POST needs no more of: no redirects, cookies
or proxies (aiohttp did not read proxy settings either).
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import socket
import ssl
import time
import zlib
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from functools import cache
from typing import cast
from urllib.parse import unquote, urlsplit

import httptools

# An idle connection older than this is closed rather than reused: servers close theirs after
# 5-60 s, and a request sent as the server closes is lost with the connection.
KEEPALIVE_SECONDS = 15.0
# A connection idle at least this long that closes before answering was closed by the server's idle
# timeout as we sent: the request goes again on a new connection. Closed sooner: a fault, retried
# by the pool and counted.
STALE_SECONDS = 1.0


class ConnectFailed(OSError):
    """No connection to the endpoint (refused, unreachable, TLS handshake)."""


class ConnectionFailed(OSError):
    """The connection broke or the reply was not HTTP."""


@dataclass
class Answer:
    status: int
    body: bytes
    retry_after: str | None
    limit: float | None = None  # requests a second the endpoint's headers say it allows (advertised)


def retry_after_seconds(value: str | None) -> float:
    """Retry-After in seconds, at most 30: a number of seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):  # neither: hold the endpoint a second
            return 1.0
    return min(30.0, max(0.0, seconds))


def advertised(headers: dict[bytes, bytes]) -> float | None:
    """Requests a second an endpoint's rate-limit headers allow, where they say over what window:
    IETF RateLimit-Policy (draft-ietf-httpapi-ratelimit-headers: `"name";q=20;w=1` from draft 08,
    `20;w=1` before; the strictest policy), or X-RateLimit-Limit (TheRPC, nodewell) / RateLimit-Limit
    with its Reset (a Unix time, or seconds from now) at most 2 s away: a window of a second told in
    whole seconds. A Reset further away is a longer window (Fiews: credits over 300 s), not read."""
    policy = headers.get(b"ratelimit-policy")
    if policy is not None:
        rates = []
        for item in policy.decode("latin-1").split(","):
            quota = re.search(r";\s*q=(\d+(?:\.\d+)?)", item) or re.match(r"\s*(\d+(?:\.\d+)?)", item)
            window = re.search(r";\s*w=(\d+(?:\.\d+)?)", item)
            if quota and window and float(window[1]) > 0:
                rates.append(float(quota[1]) / float(window[1]))
        if rates:
            return min(rates)
    limit = headers.get(b"x-ratelimit-limit") or headers.get(b"ratelimit-limit")
    reset = headers.get(b"x-ratelimit-reset") or headers.get(b"ratelimit-reset")
    if limit is None or reset is None:
        return None
    try:
        allowed, at = float(limit), float(reset)
    except ValueError:
        return None
    seconds = at - time.time() if at > 1e9 else at
    return allowed if allowed > 0 and seconds <= 2.0 else None


@cache
def _tls() -> ssl.SSLContext:
    """Made on the first https endpoint only: loading the system's certificates costs 0.1 s."""
    return ssl.create_default_context()


class Client:
    """POSTs to one URL. The URL (and any key in it) stays in this object, never in an error."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or ""
        self._tls = parts.scheme == "https"
        self._port = parts.port or (443 if self._tls else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rpartition("@")[2]
        head = [f"POST {target} HTTP/1.1", f"Host: {host}", "User-Agent: cryo-ingest", "Content-Type: application/json"]
        head.append("Accept: application/json")  # some providers' firewalls turn away a request without these two
        if parts.username is not None:
            user = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            head.append("Authorization: Basic " + base64.b64encode(user.encode()).decode())
        if self._tls:  # a provider's replies shrink 5-10 times; a node over plain http (own, on a LAN) need not spend CPU
            head.append("Accept-Encoding: gzip, deflate")
        self._head = ("\r\n".join(head) + "\r\nContent-Length: ").encode()
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self.resent = 0  # requests sent again after a stale connection closed on them

    async def post(self, body: bytes) -> Answer:
        """One request and its reply. A connection idle for STALE_SECONDS or more that closes before
        answering is replaced; cancelled (a timeout, a hedge lost), the connection is closed."""
        message = self._head + str(len(body)).encode() + b"\r\n\r\n" + body
        while True:
            conn, idle = await self._connection()
            try:
                answer = await conn.exchange(message)
            except _Unanswered:
                if idle >= STALE_SECONDS:
                    self.resent += 1
                    continue
                raise ConnectionFailed("the connection closed before an answer") from None
            except BaseException:
                conn.close()
                raise
            if conn.keep_alive:
                conn.idle_since = time.monotonic()
                self._idle.append(conn)
            else:
                conn.close()
            return answer

    async def _connection(self) -> tuple[_Connection, float]:
        """A connection, and how long it was idle (0: new)."""
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < KEEPALIVE_SECONDS:
                return conn, now - conn.idle_since
            conn.close()
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                lambda: _Connection(self._open),
                self._host,
                self._port,
                ssl=_tls() if self._tls else None,
                server_hostname=self._host if self._tls else None,
            )
        except (OSError, ssl.SSLError) as exc:
            # the host may carry a key (a provider's subdomain): the pool redacts what it logs
            raise ConnectFailed(f"cannot connect to {self._host}:{self._port}: {_reason(exc)}") from None
        return conn, 0.0

    def close(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._idle.clear()


def _reason(exc: OSError) -> str:
    """The same words on either event loop (asyncio's say "Connect call failed ('127.0.0.1', 1)")."""
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror) or not exc.errno or exc.errno < 0:
        return exc.strerror or str(exc) or type(exc).__name__
    return os.strerror(exc.errno)


class _Unanswered(Exception):
    """The connection closed before any byte of a reply: safe to send again on a new one."""


class _Connection(asyncio.Protocol):
    """One connection; one request at a time (no pipelining: a slow reply would hold the next)."""

    def __init__(self, registry: set[_Connection]) -> None:
        self._registry = registry
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._body: list[bytes] = []
        self._headers: dict[bytes, bytes] = {}
        self._received = False
        self._framed = False  # the reply says where it ends (a length, or chunks); else it ends with the connection
        self.keep_alive = True
        self.closed = False
        self.idle_since = 0.0

    async def exchange(self, message: bytes) -> Answer:
        assert self._transport is not None and self._waiter is None
        if self.closed:
            raise _Unanswered
        self._waiter = asyncio.get_running_loop().create_future()
        self._received, self._body, self._headers = False, [], {}
        self._transport.write(message)
        try:
            return await self._waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._gone()

    def _gone(self) -> None:
        self.closed = True
        self._registry.discard(self)

    # ---- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not its subclasses
        self._registry.add(self)

    def data_received(self, data: bytes) -> None:
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.keep_alive = False
            self._fail(ConnectionFailed(f"not an HTTP reply ({exc})"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()
        if self._waiter is None or self._waiter.done():
            return
        if self._received and not self._framed and self._parser.get_status_code():
            self._answer()  # an HTTP/1.0-style reply: its body ends with the connection
        elif not self._received:
            self._fail(_Unanswered())
        else:
            self._fail(ConnectionFailed("the connection closed mid-reply"))

    # ---- httptools callbacks ------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        h = self._headers
        self._framed = b"content-length" in h or b"chunked" in h.get(b"transfer-encoding", b"").lower()
        self.keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self._parser.get_status_code() < 200:  # an interim reply: the real one follows
            self._headers, self._body = {}, []
            return
        self._answer()

    def _answer(self) -> None:
        body = b"".join(self._body)
        encoding = self._headers.get(b"content-encoding", b"").lower()
        if encoding in (b"gzip", b"deflate"):
            try:
                body = zlib.decompress(body, wbits=47)  # gzip or zlib, by its header
            except zlib.error:
                try:
                    body = zlib.decompress(body, wbits=-15)  # deflate as some servers send it: raw
                except zlib.error:
                    self._fail(ConnectionFailed(f"a {encoding.decode()} reply that does not decompress"))
                    return
        retry_after = self._headers.get(b"retry-after")
        answer = Answer(
            self._parser.get_status_code(),
            body,
            retry_after.decode("latin-1") if retry_after else None,
            advertised(self._headers),
        )
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(answer)

    def _fail(self, exc: Exception) -> None:
        self.keep_alive = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

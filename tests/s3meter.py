"""An S3 proxy for the operator's scale tests: counts requests by kind, stalls them, refuses some.

In front of the moto server (servers.S3Server), so the runner meets real S3 HTTP: a stall is a
slow store (as S3 under throttling or a congested link), a refusal a 403 (obstore does not retry
it: the caller sees a StorageError at once, as after obstore's own retries ran out).
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter
from dataclasses import dataclass

from aiohttp import web
from servers import S3FaultProxy

DENIED = "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"


@dataclass
class Refusal:
    """Answer 403 to the next `times` requests of `method` whose key matches `key` (a regex)."""

    method: str
    key: str
    times: int = 1
    conditional: bool | None = None  # only requests with (True) or without (False) If-Match
    refused: int = 0


def kind(request: web.Request) -> str:
    if request.method == "GET" and "list-type" in request.query:
        return "LIST"
    if request.method == "GET" and "If-None-Match" in request.headers:
        return "GET-if-changed"
    return request.method


class S3Meter(S3FaultProxy):
    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.counts: Counter[str] = Counter()
        self.keys: Counter[tuple[str, str]] = Counter()  # (kind, key)
        self.stall = 0.0  # seconds every request waits before it is forwarded
        self.refusals: list[Refusal] = []
        self.lock = threading.Lock()

    def reset(self) -> None:
        with self.lock:
            self.counts.clear()
            self.keys.clear()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    async def handle(self, request: web.Request) -> web.StreamResponse:
        what = kind(request)
        key = request.path.split("/", 2)[-1] if request.path.count("/") >= 2 else ""
        with self.lock:
            self.counts[what] += 1
            self.keys[what, key] += 1
            refusal = next((r for r in self.refusals if self._matches(r, request, key)), None)
            if refusal is not None:
                refusal.refused += 1
        if self.stall:
            await asyncio.sleep(self.stall)
        if refusal is not None:
            return web.Response(status=403, text=DENIED, content_type="application/xml")
        if request.method != "HEAD":
            return await super().handle(request)
        # a HEAD's Content-Length is the object's size (obstore needs it); aiohttp would write 0
        async with self.client().head(self.upstream + request.path_qs, headers=dict(request.headers)) as resp:
            out = {k: v for k, v in resp.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
            response = web.StreamResponse(status=resp.status, headers=out)
            await response.prepare(request)
            return response

    @staticmethod
    def _matches(r: Refusal, request: web.Request, key: str) -> bool:
        if r.refused >= r.times or request.method != r.method or not re.search(r.key, key):
            return False
        return r.conditional is None or r.conditional == ("If-Match" in request.headers)

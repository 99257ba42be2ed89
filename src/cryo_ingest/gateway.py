"""A JSON-RPC proxy on 127.0.0.1: the only thing that talks to RPC providers.

Cryo gets this proxy's URL, never a provider's (it leaks its RPC URL into reports and banners,
and does not survive 429s or 5xx). Behind the proxy sits the key pool: a token bucket and a
concurrency cap per endpoint, retries with backoff and jitter on another endpoint, a circuit
breaker, and per-endpoint metrics by name. It also makes old chains readable by Cryo
(docs/history.md): receipts without `from`/`to` get them from the block's own transactions, and
receipts without `status` (pre-Byzantium) are recorded so that `success` is written as null.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import uvloop
from aiohttp import web
from aiolimiter import AsyncLimiter

from . import traces
from .budget import SharedBudget
from .config import Endpoint
from .errors import RpcError, redact

log = logging.getLogger("cryo_ingest.gateway")

UNKNOWN_PATH = "/_cryo_ingest/unknown"
TRACE_SOURCE_PATH = "/_cryo_ingest/trace-source"
# Methods whose null result for a block at or below the known head means a lagging node.
BLOCK_METHODS = {"eth_getBlockByNumber", "eth_getBlockReceipts", "trace_block", "debug_traceBlockByNumber"}
TRANSIENT_MESSAGE = re.compile(
    r"rate.?limit|too many|limit exceeded|exceeds? .*capacity|header not found|timeout|timed out|"
    r"temporar|try again|busy|overload|unavailable|internal error|upstream|missing trie node",
    re.I,
)
AUTH_MESSAGE = re.compile(r"unauthori[sz]ed|api.?key|forbidden|not authori[sz]ed|access denied|invalid.*token", re.I)
TRANSIENT_CODES = {-32005, -32029, 429, -32603}
# The opening of a JSON-RPC success as nodes write it. A reply that opens so and ends with "}"
# is a success whatever its size: passing it on unparsed saves the gateway most of its CPU.
SUCCESS_OPENING = re.compile(rb'\s*\{\s*"jsonrpc"\s*:\s*"2\.0"\s*,\s*"id"\s*:\s*(?:-?\d+|"[^"\\]*"|null)\s*,\s*"result"\s*:\s*')
# An endpoint trips its breaker after 10 failures in a row; three trips with no success between: down.
POOL_DOWN_TRIPS = 3
# What the gateway answers Cryo when a request's retries are spent (logged where it happens).
GAVE_UP = "cryo-ingest gateway: retry budget spent"


class Reply(dict[str, Any]):
    """A JSON-RPC reply that remembers the upstream bytes, so an unchanged reply is passed on
    without re-encoding (most of the gateway's cost on large blocks otherwise)."""

    raw: bytes | None = None


class Retry(Exception):
    """One failed attempt that another attempt may fix; `kind` names it in metrics, `detail` says
    what happened (the exception or the provider's words, redacted) for logs and error messages."""

    def __init__(self, kind: str, delay: float = 0.0, detail: str = "") -> None:
        super().__init__(f"{kind} ({detail})" if detail else kind)
        self.kind, self.delay, self.detail = kind, delay, detail


@dataclass
class Upstream:
    """An endpoint's live state. Its URL stays inside `spec` and is only used to send."""

    spec: Endpoint
    limiter: AsyncLimiter | None
    semaphore: asyncio.Semaphore
    disabled: str | None = None
    consecutive_failures: int = 0
    trips: int = 0
    cooldown_until: float = 0.0
    last_failure: str = ""
    latency: float = 0.05
    requests: int = 0
    retries: int = 0
    bytes: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    def usable(self, now: float) -> bool:
        return self.disabled is None and self.cooldown_until <= now

    def fail(self, kind: str, now: float) -> None:
        self.errors[kind] += 1
        self.consecutive_failures += 1
        if self.consecutive_failures >= 10:
            self.trips += 1
            self.cooldown_until = max(self.cooldown_until, now + min(30.0, 0.5 * 2**self.trips))
            self.consecutive_failures = 0
            log.warning("endpoint %s: %d failures in a row, cooling down", self.name, 10)

    def succeed(self, elapsed: float) -> None:
        self.consecutive_failures = 0
        self.trips = max(0, self.trips - 1)
        self.latency = 0.8 * self.latency + 0.2 * elapsed
        self.latencies.append(elapsed)

    def metrics(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        pct = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 2)) if lat else (lambda q: None)
        return {
            "requests": self.requests,
            "retries": self.retries,
            "errors": dict(sorted(self.errors.items())),
            "http_429": self.errors.get("http_429", 0),
            "p50_ms": pct(0.5),
            "p95_ms": pct(0.95),
            "bytes": self.bytes,
            "disabled": self.disabled,
        }


class Gateway:
    """Run with `with Gateway(job.rpc, job.chain_id) as gw:`; give Cryo `gw.url`."""

    def __init__(
        self,
        endpoints: Iterable[Endpoint],
        chain_id: int,
        *,
        attempts: int = 12,
        budget_seconds: float = 120.0,
        timeout_seconds: float = 30.0,
        shared: SharedBudget | None = None,
    ) -> None:
        self.specs = list(endpoints)
        self.shared = shared  # rate limits shared with other gateways (budget.py); else each endpoint's own bucket
        self.chain_id = chain_id
        self.attempts, self.budget, self.timeout = attempts, budget_seconds, timeout_seconds
        self.upstreams: list[Upstream] = []
        self.head = -1
        # Values the chain does not determine, by block: extract writes them as null (docs/history.md).
        self.unknown: dict[int, list[dict[str, Any]]] = {}
        self.trace_source = "trace_block"
        self.url = ""
        self._down = False  # every endpoint keeps failing (logged once per outage)
        self._loop = uvloop.new_event_loop()  # about half asyncio's CPU per proxied request
        self._thread = threading.Thread(target=self._loop.run_forever, name="cryo-ingest-gateway", daemon=True)
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    # ---- lifecycle (called from the main thread) -------------------------------------------

    def __enter__(self) -> Gateway:
        self._thread.start()
        try:
            self._run(self._start())
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self._run(self._stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def call(self, method: str, *params: Any) -> Any:
        """One JSON-RPC call through the pool, from synchronous code; raises RpcError on error."""
        reply = self._run(self.forward({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}))
        if "error" in reply:
            raise RpcError(f"rpc: {method} failed: {reply['error'].get('message', reply['error'])}")
        return reply.get("result")

    def final_head(self, reorg_buffer: int) -> int:
        """The highest final block: the `finalized` tag where served, else latest - reorg_buffer."""
        try:
            block = self.call("eth_getBlockByNumber", "finalized", False)
            if block is not None:
                return int(block["number"], 16)
        except RpcError:
            pass
        return int(self.call("eth_blockNumber"), 16) - reorg_buffer

    def require_traces(self, block: int) -> None:
        """Pick the traces source (trace_block where served, else debug_traceBlockByNumber/callTracer) on `block`."""
        self.trace_source = self._run(self._probe_traces(block))

    def metrics(self) -> dict[str, Any]:
        return {u.name: u.metrics() for u in self.upstreams}

    # ---- server ------------------------------------------------------------------------------

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        )
        self.upstreams = [
            Upstream(
                spec=e,
                limiter=_limiter(e.requests_per_second) if e.requests_per_second else None,
                semaphore=asyncio.Semaphore(e.max_concurrency or 1),
            )
            for e in self.specs
        ]
        if self.shared is not None:
            await self.shared.start(self.specs)
        await self._preflight()
        app = web.Application(client_max_size=1024**3)
        app.router.add_post("/", self._handle)
        app.router.add_get(UNKNOWN_PATH, self._handle_unknown)
        app.router.add_get(TRACE_SOURCE_PATH, self._handle_trace_source)
        # A request whose client went away (a partition killed at its timeout) is cancelled, not retried
        # upstream for minutes on behalf of no one; and stopping does not wait for such requests.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True, shutdown_timeout=5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        if self.shared is not None:
            await self.shared.close()

    async def _preflight(self) -> None:
        """eth_chainId on every endpoint: wrong chain or bad credentials leave the pool."""
        body = {"jsonrpc": "2.0", "id": 0, "method": "eth_chainId", "params": []}
        problems = []
        for up in self.upstreams:
            try:
                reply = await self._preflight_one(up, body)
            except Retry as r:
                problems.append(f"{up.name}: {r}")
                if up.disabled is None:
                    up.cooldown_until = time.monotonic() + 1.0  # down now; probed again later
                continue
            try:
                served = int(reply["result"], 16)
            except (KeyError, TypeError, ValueError):
                error = reply.get("error")
                problems.append(
                    f"{up.name}: " + (f"eth_chainId failed: {_describe_error(error)}" if error else "no chain id in reply")
                )
                up.disabled = "bad eth_chainId reply"
                continue
            if served != self.chain_id:
                up.disabled = f"chain {served}"
                problems.append(f"{up.name}: serves chain {served}, not {self.chain_id}")
                log.warning("endpoint %s serves chain %d, not %d: excluded", up.name, served, self.chain_id)
            else:
                up.cooldown_until = 0.0
        if not any(u.disabled is None and u.cooldown_until == 0.0 for u in self.upstreams):
            if any("serves chain" in p for p in problems):
                raise RpcError(f"rpc: chain id mismatch: {'; '.join(problems)}")
            raise RpcError(f"rpc: no endpoint reachable: {'; '.join(problems)}")
        reply = await self.forward({"jsonrpc": "2.0", "id": 0, "method": "eth_blockNumber", "params": []})
        if "error" in reply:
            raise RpcError(f"rpc: eth_blockNumber failed: {reply['error'].get('message')}")
        self.head = int(reply["result"], 16)

    async def _preflight_one(self, up: Upstream, body: dict[str, Any], attempts: int = 4) -> dict[str, Any]:
        """A transient fault at start-up (a 429, a reset) must not drop the endpoint: retry it a little."""
        for attempt in range(attempts - 1):
            try:
                return await self._attempt(up, body, first_try=True)
            except Retry as r:
                if up.disabled is not None:
                    raise
                await asyncio.sleep(max(r.delay, 0.1 * 2**attempt))
        return await self._attempt(up, body, first_try=True)

    async def _probe_traces(self, block: int) -> str:
        probe: dict[str, Any] = {"jsonrpc": "2.0", "id": 0, "method": "trace_block", "params": [hex(block)]}
        if "error" not in await self.forward(probe):
            return "trace_block"
        probe.update(method="debug_traceBlockByNumber", params=[hex(block), {"tracer": "callTracer"}])
        reply = await self.forward(probe)
        if "error" not in reply:
            log.info("trace_block is not served: traces come from debug_traceBlockByNumber/callTracer")
            return traces.DEBUG_SOURCE
        raise RpcError(
            "rpc: the traces dataset needs trace_block or debug_traceBlockByNumber with callTracer; "
            "no endpoint of the pool serves either"
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return _json({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}})
        if isinstance(body, list):
            if not body:
                return _json({"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "empty batch"}})
            replies = await asyncio.gather(*(self._relay(item) for item in body))
            return _raw(b"[" + b",".join(_encode(r) for r in replies) + b"]")
        return _raw(_encode(await self._relay(body)))

    async def _relay(self, req: Any) -> dict[str, Any]:
        """Cryo's request through the pool. An error Cryo gets fails its chunk and Cryo says no more
        than that, so the reason is logged here (a spent retry budget was logged where it was spent)."""
        reply = await self.forward(req, passthrough=True)
        error = reply.get("error")
        if error is not None and not (isinstance(error, dict) and str(error.get("message", "")).startswith(GAVE_UP)):
            method = req.get("method") if isinstance(req, dict) else None
            log.warning("%s: the pool answered %s; passed on to Cryo", method, _describe_error(error))
        return reply

    async def _handle_unknown(self, request: web.Request) -> web.StreamResponse:
        lo, hi = int(request.query["from"]), int(request.query["to"])
        return _json([{**cell, "block": b} for b in sorted(self.unknown) if lo <= b <= hi for cell in self.unknown[b]])

    def _record_unknown(self, block: int, cells: list[dict[str, Any]]) -> None:
        known = self.unknown.setdefault(block, [])
        known += [c for c in cells if c not in known]

    async def _handle_trace_source(self, request: web.Request) -> web.StreamResponse:
        return _json(self.trace_source)

    # ---- forwarding ----------------------------------------------------------------------------

    async def forward(self, req: Any, passthrough: bool = False) -> dict[str, Any]:
        """One request through the pool. `passthrough`: the caller only relays the reply's bytes,
        so a plain success need not be parsed."""
        if not isinstance(req, dict) or not isinstance(req.get("method"), str):
            rid = req.get("id") if isinstance(req, dict) else None
            return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32600, "message": "invalid request"}}
        method = req["method"]
        if method == "eth_chainId" and self.head >= 0:  # verified on every endpoint at start: no need to ask again
            return {"jsonrpc": "2.0", "id": req.get("id"), "result": hex(self.chain_id)}
        if method == "eth_getBlockReceipts":
            return await self._block_receipts(req)
        if method == "trace_block" and self.trace_source == traces.DEBUG_SOURCE:
            return await self._trace_block_from_debug(req)
        return await self._send(req, passthrough)

    async def _send(self, req: dict[str, Any], passthrough: bool = False) -> dict[str, Any]:
        """Send with retries on other endpoints; a spent budget becomes a JSON-RPC error."""
        deadline = time.monotonic() + self.budget
        tried: set[str] = set()
        last = "no endpoint"
        for attempt in range(self.attempts):
            up = await self._pick(tried, deadline)
            if up is None:
                last = "no endpoint left: each is disabled or failing without a success (circuit open)"
                break
            tried.add(up.name)
            try:
                return await self._attempt(up, req, passthrough=passthrough)
            except Retry as r:
                up.retries += 1
                last = f"{up.name}: {r}"
                # Another endpoint with capacity: at once. Else back off; an endpoint that sent
                # Retry-After is cooling down until then, and _pick waits for it.
                fresh = any(u.usable(time.monotonic()) and u.name not in tried for u in self.upstreams)
                delay = 0.0 if fresh else min(2.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.5)
                if time.monotonic() + max(delay, r.delay) > deadline:
                    break
                await asyncio.sleep(delay)
        # While the pool is down every request ends here; that was logged once, as an error.
        (log.debug if self._down else log.warning)("%s gave up after retries (last: %s)", req["method"], last)
        return {
            "jsonrpc": "2.0",
            "id": req.get("id"),
            "error": {"code": -32000, "message": f"{GAVE_UP} (last: {last})"},
        }

    async def _pick(self, tried: set[str], deadline: float) -> Upstream | None:
        """An endpoint with capacity, weighted by weight and recent latency; fresh ones first."""
        while True:
            now = time.monotonic()
            live = [u for u in self.upstreams if u.disabled is None]
            if not live:
                return None
            usable = [u for u in live if u.usable(now)]
            if not usable and all(u.trips >= POOL_DOWN_TRIPS for u in live):
                if not self._down:
                    self._down = True
                    failing = "; ".join(f"{u.name}: {u.last_failure}" for u in live)
                    log.error(
                        "rpc pool down: every endpoint keeps failing (%s); requests fail at once until one answers", failing
                    )
                return None  # every endpoint keeps failing: fail now, not after each request's whole budget
            if not usable:
                wait = min(u.cooldown_until for u in live) - now
                if now + wait > deadline:
                    return min(live, key=lambda u: u.cooldown_until)  # probe it anyway
                await asyncio.sleep(max(0.0, wait))
                continue
            fresh = [u for u in usable if u.name not in tried] or usable
            free = [u for u in fresh if not u.semaphore.locked()] or fresh
            return random.choices(free, weights=[u.spec.weight / (u.latency + 0.01) for u in free])[0]

    async def _attempt(
        self, up: Upstream, req: dict[str, Any], first_try: bool = False, passthrough: bool = False
    ) -> dict[str, Any]:
        """One request to one endpoint; raises Retry for anything another attempt may fix."""
        assert self._session is not None
        async with up.semaphore:
            if self.shared is not None and up.spec.requests_per_second:
                await self.shared.acquire(up.name, up.spec.requests_per_second)
            elif up.limiter is not None:
                await up.limiter.acquire()
            up.requests += 1
            started = time.monotonic()
            try:
                async with self._session.post(up.spec.url.get_secret_value(), json=req) as resp:
                    raw = await resp.read()
                    status, retry_after = resp.status, resp.headers.get("Retry-After")
            except TimeoutError:
                raise self._failed(up, req, "timeout", f"no answer in {self.timeout:g} s") from None
            except aiohttp.ClientError as err:
                # aiohttp's messages name the host, or the whole URL (InvalidURL): redacted in _failed
                kind = "connect" if isinstance(err, aiohttp.ClientConnectorError) else "connection"
                raise self._failed(up, req, kind, f"{type(err).__name__}: {err}") from None
        now = time.monotonic()
        up.bytes += len(raw)
        if status in (401, 403):
            body = _body_text(status, raw)
            self._disable(up, f"http {status}", body)
            raise Retry(f"http_{status}", detail=body)
        if status == 429 or status == 408 or status >= 500:
            delay = _retry_after(retry_after)
            if delay > 0:  # the provider's word holds for the endpoint, not only for this request
                up.cooldown_until = max(up.cooldown_until, now + delay)
            kind = f"http_{status}" if status < 500 else "http_5xx"
            raise self._failed(up, req, kind, _body_text(status, raw), now, delay)
        if status != 200:
            raise self._failed(up, req, f"http_{status}", _body_text(status, raw), now)
        opening = SUCCESS_OPENING.match(raw) if passthrough else None
        if opening is not None and raw.rstrip().endswith(b"}"):
            if raw[opening.end() : opening.end() + 4] == b"null" and _lagging(req, self.head):
                raise self._failed(up, req, "null_result", "null for a block at or below the head", now)
            self._succeeded(up, now - started)
            reply = Reply(jsonrpc="2.0", id=req.get("id"))
            reply.raw = raw
            return reply
        try:
            parsed = json.loads(raw)
            if not isinstance(parsed, dict):
                raise ValueError
        except ValueError:
            raise self._failed(up, req, "bad_body", f"not a JSON-RPC reply ({len(raw)} bytes)", now) from None
        reply = Reply(parsed)
        reply.raw = raw
        error = reply.get("error")
        if error is not None:
            code, message = (error.get("code"), str(error.get("message", ""))) if isinstance(error, dict) else (None, str(error))
            if AUTH_MESSAGE.search(message):
                detail = _describe_error(error)
                self._disable(up, "auth error", detail)
                raise Retry("auth", detail=detail)
            if (code in TRANSIENT_CODES and (code != -32603 or TRANSIENT_MESSAGE.search(message))) or (
                TRANSIENT_MESSAGE.search(message)
            ):
                raise self._failed(up, req, "rpc_transient", _describe_error(error), now)
            self._succeeded(up, now - started)  # a definite answer (e.g. method not found): pass it on
            log.debug("%s on %s: answered %s", req.get("method"), up.name, _describe_error(error))
            return _scrubbed(reply)
        if reply.get("result") is None and not first_try and _lagging(req, self.head):
            raise self._failed(up, req, "null_result", "null for a block at or below the head", now)
        self._succeeded(up, now - started)
        return reply

    def _failed(
        self, up: Upstream, req: dict[str, Any], kind: str, detail: str, now: float | None = None, delay: float = 0.0
    ) -> Retry:
        """Count a failed attempt; what happened is shown with -v and in errors, never with the URL."""
        detail = _shorten(redact(detail))
        up.fail(kind, time.monotonic() if now is None else now)
        up.last_failure = f"{kind} ({detail})" if detail else kind
        log.debug("%s on %s failed: %s", req.get("method"), up.name, up.last_failure)
        return Retry(kind, delay, detail)

    def _succeeded(self, up: Upstream, elapsed: float) -> None:
        up.succeed(elapsed)
        self._down = False

    def _disable(self, up: Upstream, reason: str, detail: str = "") -> None:
        if up.disabled is None:
            up.disabled = reason
            up.errors["auth"] += 1
            up.last_failure = f"{reason} ({detail})" if detail else reason
            log.error("endpoint %s refused our credentials (%s): out of the pool for this run", up.name, up.last_failure)

    # ---- making old chains and other node APIs readable by Cryo ------------------------------------

    async def _block_receipts(self, req: dict[str, Any]) -> dict[str, Any]:
        reply = await self._send(req)
        receipts = reply.get("result")
        if not isinstance(receipts, list):
            return reply
        missing_from = any("from" not in r for r in receipts)
        lacking = [r for r in receipts if r.get("status") is None]
        if not missing_from and not lacking:
            return reply
        reply = Reply(reply)  # changed below: encoded anew, not passed on as received
        if missing_from:
            block = await self._send({**req, "method": "eth_getBlockByNumber", "params": [req["params"][0], True]})
            txs = {t["hash"]: t for t in (block.get("result") or {}).get("transactions", [])}
            for r in receipts:
                tx = txs.get(r.get("transactionHash"))
                if tx is not None and "from" not in r:
                    r["from"], r["to"] = tx["from"], tx.get("to")
        # Cryo stops on a receipt without status; the placeholder keeps it going, and the
        # block is recorded so that extract writes `success` as null, never the placeholder.
        for r in lacking:
            r["status"] = "0x1"
            self._record_unknown(int(r["blockNumber"], 16), [{"dataset": "transactions", "columns": ["success"]}])
        return reply

    async def _trace_block_from_debug(self, req: dict[str, Any]) -> dict[str, Any]:
        number = req["params"][0]
        debug, block = await asyncio.gather(
            self._send({**req, "method": "debug_traceBlockByNumber", "params": [number, {"tracer": "callTracer"}]}),
            self._send({**req, "method": "eth_getBlockByNumber", "params": [number, False]}),
        )
        for reply in (debug, block):
            if "error" in reply or reply.get("result") is None:
                return reply if "error" in reply else {**reply, "error": {"code": -32000, "message": "block not found"}}
        try:
            flat, unknown = traces.from_call_frames(debug["result"], block["result"])
        except (ValueError, KeyError, TypeError) as err:
            return {"jsonrpc": "2.0", "id": req.get("id"), "error": {"code": -32000, "message": f"untranslatable trace: {err}"}}
        self._record_unknown(int(block["result"]["number"], 16), unknown)
        return {"jsonrpc": "2.0", "id": req.get("id"), "result": flat}


def _limiter(rps: float) -> AsyncLimiter:
    """A bucket holding a tenth of a second's requests: a one-second burst would let a provider
    that counts per second see twice the rate."""
    capacity = max(1.0, rps / 10)
    return AsyncLimiter(capacity, capacity / rps)


def _encode(obj: Any) -> bytes:
    raw = obj.raw if isinstance(obj, Reply) else None
    return raw if raw is not None else json.dumps(obj, separators=(",", ":")).encode()


def _raw(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


def _json(obj: Any) -> web.Response:
    return _raw(_encode(obj))


def _shorten(text: str, limit: int = 300) -> str:
    """One line of at most `limit` characters. Cut only redacted text: a cut through a key hides it from redaction."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _body_text(status: int, raw: bytes) -> str:
    body = _shorten(redact(raw.decode("utf-8", "replace")), 200)
    return f"HTTP {status}" + (f": {body}" if body else "")


def _describe_error(error: Any) -> str:
    """A JSON-RPC error object as one redacted line (providers' messages may quote the request URL)."""
    if isinstance(error, dict):
        text = f"error {error.get('code')}: {error.get('message', '')}"
        if error.get("data") is not None:
            text += f" ({error['data']})"
    else:
        text = f"error: {error}"
    return _shorten(redact(text))


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    return value


def _scrubbed(reply: Reply) -> Reply:
    """A provider's error as Cryo will see it: any secret in it redacted. Unchanged: passed on byte for byte."""
    error = reply.get("error")
    clean = _redacted(error)
    if clean == error:
        return reply
    return Reply({**reply, "error": clean})  # no raw: encoded anew


def _retry_after(value: str | None) -> float:
    try:
        return min(30.0, max(0.0, float(value))) if value else 0.0
    except ValueError:
        return 1.0


def _lagging(req: dict[str, Any], head: int) -> bool:
    """A null for a block the pool already saw mined means this node is behind."""
    if req["method"] not in BLOCK_METHODS:
        return False
    params = req.get("params") or []
    try:
        return int(params[0], 16) <= head
    except (IndexError, TypeError, ValueError):
        return False

"""The JSON-RPC proxy on 127.0.0.1 that Cryo talks to, and what it answers by itself."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import secrets
import threading
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import uvloop

from ..config import Endpoint
from ..errors import RpcError, register_secret_url
from ..pipeline.task import (
    BLAME_PATH,
    CANONICAL_PATH,
    RECEIPTS_PATH,
    REFUSALS_PATH,
    SERVED_PATH,
    SETTLE_PATH,
    TRACE_SOURCE_PATH,
    UNKNOWN_PATH,
)
from . import call_frames, history, traces
from .cheapest import Cheapest
from .inflight import InFlight
from .listener import Listener, Request, Response
from .logs import RangedLogs
from .pool import Pool
from .replies import GAVE_UP, Refusals, describe_error, encode, error
from .shared_budget import SharedBudget
from .trust import Trust

log = logging.getLogger("cryo_ingest.gateway")


class Gateway:
    """Run with `with Gateway(job.rpc, job.chain_id) as gw:`; give Cryo `gw.url`.

    Any process on the host can reach a loopback port: the URL's path is a random secret of this
    run, anything else is answered 403 without an upstream call, so only Cryo spends the keys.
    The URL is registered as a secret, redacted wherever a key would be.
    """

    def __init__(
        self,
        endpoints: Iterable[Endpoint],
        chain_id: int,
        *,
        attempts: int = 12,
        budget_seconds: float = 120.0,
        timeout_seconds: float = 30.0,
        shared: SharedBudget | None = None,
        canonical_check: bool | None = None,
    ) -> None:
        self.pool = Pool(
            endpoints,
            chain_id,
            attempts=attempts,
            budget_seconds=budget_seconds,
            timeout_seconds=timeout_seconds,
            shared=shared,
        )
        self.chain_id = chain_id
        self.logs = RangedLogs(self.pool)
        self.inflight = InFlight()
        self.unknown = history.Unknown()
        self.receipts = history.ReceiptCounts()
        self.trust = Trust(self.pool, canonical_check)
        self.pool.answered, self.pool.avoid = self.trust.answered, self.trust.avoid
        self.cheapest = Cheapest(self.pool.specs)
        self.pool.exchange = self.cheapest.exchange
        self.refusals = Refusals()
        self.trace_source = "trace_block"
        self.url = ""
        self._loop = uvloop.new_event_loop()  # about half asyncio's CPU per proxied request
        self._thread = threading.Thread(target=self._loop.run_forever, name="cryo-ingest-gateway", daemon=True)
        self._listener = Listener(self._route)
        self._base = "/" + secrets.token_hex(16)
        # What a partition asks of its gateway besides JSON-RPC, by path; answered from the query.
        self._get: dict[str, Callable[[dict[str, str]], object]] = {
            self._base + UNKNOWN_PATH: lambda q: self.unknown.between(int(q["from"]), int(q["to"])),
            self._base + TRACE_SOURCE_PATH: lambda q: self.trace_source,
            self._base + REFUSALS_PATH: lambda q: self.refusals.between(int(q["from"]), int(q["to"])),
            self._base + RECEIPTS_PATH: lambda q: self.receipts.take(int(q["from"]), int(q["to"])),
            self._base + BLAME_PATH: lambda q: self.trust.blame(int(q["block"]), q["check"], int(q["from"]), int(q["to"])),
            self._base + SETTLE_PATH: lambda q: self._settle(int(q["from"]), int(q["to"])),
            self._base + CANONICAL_PATH: lambda q: self.trust.canonical(int(q["block"]), q["hash"]),
            self._base + SERVED_PATH: lambda q: self.trust.served(int(q["from"]), int(q["to"])),
        }

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
        self.trace_source = self._run(traces.probe(self.pool, block))

    def metrics(self) -> dict[str, Any]:
        return self.pool.metrics()

    def _settle(self, lo: int, hi: int) -> None:
        """A partition is done: what was kept for its blocks goes."""
        self.trust.settle(lo, hi)
        self.cheapest.settle(lo, hi)

    # ---- server ------------------------------------------------------------------------------

    async def _start(self) -> None:
        await self.pool.start()
        port = await self._listener.start()
        self.url = f"http://127.0.0.1:{port}{self._base}"
        register_secret_url(self.url)

    async def _stop(self) -> None:
        await self._listener.stop()
        await self.pool.stop()

    async def _route(self, request: Request) -> Response:
        if request.path == self._base and request.method == "POST":
            return Response(200, await self._handle(request.body))
        answer = self._get.get(request.path) if request.method == "GET" else None
        if answer is None:
            return Response(403, b"forbidden", "text/plain")
        try:
            out = answer(request.query)
            return Response(200, encode(await out if inspect.isawaitable(out) else out))
        except (KeyError, ValueError):
            return Response(400, b"from and to: block numbers", "text/plain")

    async def _handle(self, raw: bytes) -> bytes:
        try:
            body = orjson.loads(raw)
        except ValueError:
            try:  # what orjson refuses and the stdlib reads: an integer beyond 64 bits
                body = json.loads(raw)
            except ValueError:
                return encode(error(None, "parse error", -32700))
        if isinstance(body, list):
            if not body:
                return encode(error(None, "empty batch", -32600))
            replies = await asyncio.gather(*(self._relay(item) for item in body))
            return b"[" + b",".join(encode(r) for r in replies) + b"]"
        return encode(await self._relay(body))

    async def _relay(self, req: Any) -> dict[str, Any]:
        """Cryo's request through the pool. An error Cryo gets fails its chunk and Cryo says no more
        than that, so the reason is logged here (a spent retry budget was logged where it was spent)."""
        reply = await self.forward(req, passthrough=True)
        err = reply.get("error")
        if err is not None and isinstance(req, dict):
            self.refusals.record(req, err)
            if not (isinstance(err, dict) and str(err.get("message", "")).startswith(GAVE_UP)):
                log.warning("%s: the pool answered %s; passed on to Cryo", req.get("method"), describe_error(err))
        return reply

    async def forward(self, req: Any, passthrough: bool = False) -> dict[str, Any]:
        """One request, answered here, rewritten, or sent through the pool. `passthrough`: the caller
        only relays the reply's bytes, so a plain success need not be parsed."""
        if not isinstance(req, dict) or not isinstance(req.get("method"), str):
            return error(req.get("id") if isinstance(req, dict) else None, "invalid request", -32600)
        method = req["method"]
        if method == "eth_chainId" and self.pool.head >= 0:  # verified on every endpoint at start: no need to ask again
            return {"jsonrpc": "2.0", "id": req.get("id"), "result": hex(self.chain_id)}
        return await self.inflight.run(req, passthrough, lambda: self._dispatch(req, method, passthrough))

    async def _dispatch(self, req: dict[str, Any], method: str, passthrough: bool) -> dict[str, Any]:
        if method == "eth_getLogs":
            return await self.logs.get_logs(req, passthrough)
        if method == "eth_getBlockReceipts":
            return await history.block_receipts(self.pool, req, self.unknown, self.receipts)
        if method == "trace_block" and self.trace_source == call_frames.DEBUG_SOURCE:
            return await traces.trace_block_from_debug(self.pool, req, self.unknown)
        return await self.pool.send(req, passthrough)

"""The endpoints behind the gateway: which one gets a request, retries and hedges, and what a reply
means (success, a fault another attempt may fix, or a definite answer). Each endpoint's state is in
endpoint.py, its circuit breaker in breaker.py."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..config import Endpoint
from ..errors import RpcError, redact
from . import logs
from .breaker import POOL_DOWN_TRIPS
from .budgets import Bucket
from .endpoint import Exchange, Queued, Upstream, probe_place
from .replies import GAVE_UP, Reply, body_text, describe_error, encode, error, scrubbed, shorten
from .shared_budget import SharedBudget
from .upstream import Answer, Client, ConnectFailed, retry_after_seconds

log = logging.getLogger("cryo_ingest.gateway")


# Methods whose null result for a block at or below the known head means a lagging node.
BLOCK_METHODS = {"eth_getBlockByNumber", "eth_getBlockReceipts", "trace_block", "debug_traceBlockByNumber"}
TRANSIENT_MESSAGE = re.compile(
    r"rate.?limit|too many|limit exceeded|exceeds? .*capacity|header not found|timeout|timed out|"
    r"temporar|try again|busy|overload|unavailable|internal error|upstream|missing trie node",
    re.I,
)
AUTH_MESSAGE = re.compile(r"unauthori[sz]ed|api.?key|forbidden|not authori[sz]ed|access denied|invalid.*token", re.I)
TRANSIENT_CODES = {-32005, -32029, 429, -32603}
# A rate-limit answer: the endpoint is fine, we are too fast (never a failure: the rate is cut instead).
RATE_LIMIT_CODES = {-32005, -32029, 429}
RATE_LIMIT_MESSAGE = re.compile(r"rate.?limit|too many requests|exceeds? .*capacity|compute units|throughput", re.I)
# Only reads are raced on a second endpoint (sending a write twice would not be the same as once).
HEDGED = re.compile(r"eth_get|trace_|debug_trace")
# Hedge a request still unanswered after the endpoint's p95 (and at least these seconds, or 3 x p50:
# a node on loopback answers in a millisecond, where a stall is not worth a second request); at most
# HEDGE_SHARE of the requests are hedged.
HEDGE_MIN_SECONDS, HEDGE_SHARE = 0.05, 0.05
# The opening of a JSON-RPC success as nodes write it. A reply that opens so and ends with "}"
# is a success whatever its size: passing it on unparsed saves the gateway most of its CPU.
SUCCESS_OPENING = re.compile(rb'\s*\{\s*"jsonrpc"\s*:\s*"2\.0"\s*,\s*"id"\s*:\s*(?:-?\d+|"[^"\\]*"|null)\s*,\s*"result"\s*:\s*')


class Retry(Exception):
    """One failed attempt that another attempt may fix; `kind` names it in metrics, `detail` says
    what happened (the exception or the provider's words, redacted) for logs and error messages."""

    def __init__(self, kind: str, delay: float = 0.0, detail: str = "", throttled: bool = False) -> None:
        super().__init__(f"{kind} ({detail})" if detail else kind)
        self.kind, self.delay, self.detail, self.throttled = kind, delay, detail, throttled


class Pool:
    """The endpoints and their state; lives on the gateway's event loop."""

    def __init__(
        self,
        endpoints: Iterable[Endpoint],
        chain_id: int,
        *,
        attempts: int,
        budget_seconds: float,
        timeout_seconds: float,
        shared: SharedBudget | None,
    ) -> None:
        self.specs = list(endpoints)
        self.shared = shared  # rate limits shared with other gateways (shared_budget.py); else each endpoint's own bucket
        self.chain_id = chain_id
        self.attempts, self.budget, self.timeout = attempts, budget_seconds, timeout_seconds
        self.upstreams: list[Upstream] = []
        self.head = -1
        self._down = False  # every endpoint keeps failing (logged once per outage)
        # Set by the gateway (gateway/trust.py): told which endpoint answered each request; asked which
        # endpoints a request should avoid (they answered data of its blocks that failed a check).
        self.answered: Callable[[dict[str, Any], str], None] | None = None
        self.avoid: Callable[[dict[str, Any]], frozenset[str]] | None = None
        # Set by the gateway (gateway/cheapest.py): the calls an endpoint charges least for the same answer.
        self.exchange: Callable[[Upstream, dict[str, Any]], Exchange | None] | None = None

    async def start(self) -> None:
        self.upstreams = [
            Upstream(
                spec=e,
                bucket=Bucket(e, self.shared),
                semaphore=asyncio.Semaphore(e.max_concurrency or 1),
                client=Client(e.url.get_secret_value()),
            )
            for e in self.specs
        ]
        if self.shared is not None:
            await self.shared.start(self.specs)
        await self._preflight()

    async def stop(self) -> None:
        for up in self.upstreams:
            up.client.close()
        if self.shared is not None:
            await self.shared.close()

    def metrics(self) -> dict[str, Any]:
        return {u.name: u.metrics() for u in self.upstreams}

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
                err = reply.get("error")
                problems.append(
                    f"{up.name}: " + (f"eth_chainId failed: {describe_error(err)}" if err else "no chain id in reply")
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
        reply = await self.send({"jsonrpc": "2.0", "id": 0, "method": "eth_blockNumber", "params": []})
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

    async def ask(self, up: Upstream, req: dict[str, Any]) -> dict[str, Any]:
        """`req` to `up` and no other (a second opinion, gateway/trust.py), retried a little; raises Retry."""
        return await self._preflight_one(up, req)

    async def send(self, req: dict[str, Any], passthrough: bool = False) -> dict[str, Any]:
        """Send with retries on other endpoints; a spent budget becomes a JSON-RPC error.
        `passthrough`: the caller only relays the reply's bytes, so a plain success need not be parsed."""
        deadline = time.monotonic() + self.budget
        avoid = self.avoid(req) if self.avoid is not None else frozenset()
        now = time.monotonic()
        # endpoints to avoid count as tried: others first, them only if none other is left
        tried: set[str] = set(avoid) if any(u.usable(now) and u.name not in avoid for u in self.upstreams) else set()
        last = "no endpoint"
        attempt = 0
        while attempt < self.attempts:  # a rate-limit answer costs no attempt: only time, within the budget
            up = await self._pick(tried, deadline)
            if up is None:
                last = "no endpoint left: each is disabled or failing without a success (circuit open)"
                break
            tried.add(up.name)
            try:
                reply, winner = await self._hedged(up, req, tried, passthrough)
            except Retry as r:
                up.retries += 1
                last = f"{up.name}: {r}"
                attempt += not r.throttled
                # Another endpoint with capacity: at once. Else back off; an endpoint that sent
                # Retry-After is cooling down until then, and _pick waits for it.
                fresh = any(u.usable(time.monotonic()) and u.name not in tried for u in self.upstreams)
                delay = 0.0 if fresh else min(2.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.5)
                if time.monotonic() + max(delay, r.delay) > deadline:
                    break
                await asyncio.sleep(delay)
            else:
                if self.answered is not None:
                    self.answered(req, winner.name)
                return reply
        # While the pool is down every request ends here; that was logged once, as an error.
        (log.debug if self._down else log.warning)("%s gave up after retries (last: %s)", req["method"], last)
        return error(req.get("id"), f"{GAVE_UP} (last: {last})")

    async def _hedged(
        self, up: Upstream, req: dict[str, Any], tried: set[str], passthrough: bool
    ) -> tuple[dict[str, Any], Upstream]:
        """One attempt on `up`; a read still unanswered after `up`'s p95 races a second endpoint, and the
        first answer wins (the other request is cancelled). A failure of one waits for the other.
        Returns the reply and the endpoint that gave it."""
        delay = self._hedge_delay(up, req)
        if delay is None:
            return await self._attempt(up, req, passthrough=passthrough), up
        sent = asyncio.Event()
        first = self._raced(up, req, passthrough, sent)
        racing = {first}
        try:
            # The clock runs from the send, not from the wait for a slot in the budget: raced while it
            # queued, a request took a second key's slot for nothing (48 of 409 requests in one run, none won).
            slot = asyncio.ensure_future(sent.wait())
            try:
                await asyncio.wait({first, slot}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                slot.cancel()
            done, _ = await asyncio.wait(racing, timeout=delay)
            other = None if done else self._hedge_target(up)
            if other is None:
                return await first, up
            other.hedges += 1
            tried.add(other.name)
            second = self._raced(other, req, passthrough)
            racing.add(second)
            log.debug("%s on %s: no answer in %.0f ms, raced on %s", req["method"], up.name, delay * 1000, other.name)
            while racing:
                done, racing = await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.exception() is None:
                        other.hedge_wins += task is second
                        return task.result(), other if task is second else up
            return first.result(), up  # both failed: the first's failure is retried as usual
        finally:
            for task in racing:
                task.cancel()

    def _hedge_delay(self, up: Upstream, req: dict[str, Any]) -> float | None:
        """How long to wait before racing `req` on another endpoint; None: do not."""
        if len(self.upstreams) < 2 or not HEDGED.match(req["method"]) or len(up.latencies) < 20:
            return None
        requests = sum(u.requests for u in self.upstreams)
        if sum(u.hedges for u in self.upstreams) >= HEDGE_SHARE * requests:
            return None
        now = time.monotonic()
        if not any(u is not up and u.usable(now) for u in self.upstreams):
            return None
        p50, p95 = up.percentile(0.5), up.percentile(0.95)
        assert p50 is not None and p95 is not None
        return max(p95, 3 * p50, HEDGE_MIN_SECONDS)

    def _hedge_target(self, up: Upstream) -> Upstream | None:
        """The fastest other endpoint that would send at once: a race queued behind a budget cannot be won."""
        now = time.monotonic()
        others = [u for u in self.upstreams if u is not up and u.usable(now) and u.bucket.ready(now, u.queued)]
        free = [u for u in others if not u.semaphore.locked()]
        return min(free or others, key=lambda u: u.latency) if others else None

    async def _pick(self, tried: set[str], deadline: float) -> Upstream | None:
        """An endpoint with capacity, weighted by weight and recent latency; fresh ones first."""
        if len(self.upstreams) == 1 and self.upstreams[0].usable(time.monotonic()):
            return self.upstreams[0]  # an own node alone: the common case, on every request
        while True:
            now = time.monotonic()
            live = [u for u in self.upstreams if u.disabled is None]
            if not live:
                return None
            usable = [u for u in live if u.usable(now)]
            if not usable and self._is_down(live):
                return None  # every endpoint keeps failing: fail now, not after each request's whole budget
            if not usable:
                until = min(live, key=lambda u: u.held_until)
                if until.held_until > deadline:
                    return until  # probe it anyway
                wait = until.held_until - now
                await asyncio.sleep(max(0.0, wait))
                continue
            fresh = [u for u in usable if u.name not in tried] or usable
            free = [u for u in fresh if not u.semaphore.locked()] or fresh
            # keys whose budget has a slot now before keys where the request would queue: with several
            # rate-limited keys, a random pick leaves some idle while others have a queue
            ready = [u for u in free if u.bucket.ready(now, u.queued)]
            if not ready:
                # every key would queue: the one whose queue drains first. Queued at random, one key of three
                # still had seconds of calls queued when the others ran dry, and sent the run's end alone.
                return min(fresh, key=lambda u: u.bucket.wait(now, u.queued))
            return random.choices(ready, weights=[u.spec.weight / (u.latency + 0.01) for u in ready])[0]

    async def _attempt(
        self, up: Upstream, req: dict[str, Any], first_try: bool = False, passthrough: bool = False
    ) -> dict[str, Any]:
        """One request to one endpoint; raises Retry for anything another attempt may fix. Awaited at once,
        so it counts in `up.queued` before another request is picked."""
        return await self._try(self._queue(up, req), req, first_try, passthrough, None)

    def _raced(
        self, up: Upstream, req: dict[str, Any], passthrough: bool, sent: asyncio.Event | None = None
    ) -> asyncio.Task[dict[str, Any]]:
        """An attempt in a task of its own, counted in `up.queued` now, not when the task first runs (90
        requests picked in one tick all saw the same queues and went to one key); `sent` is set once it
        has its slot. Its units go back even where it is cancelled before it starts."""
        queued = self._queue(up, req)
        task = asyncio.ensure_future(self._try(queued, req, False, passthrough, sent))
        task.add_done_callback(lambda _: queued.release())
        return task

    def _queue(self, up: Upstream, req: dict[str, Any]) -> Queued:
        swap = self.exchange(up, req) if self.exchange is not None else None
        method, calls = swap.charge() if swap else (req["method"], 1)
        return Queued(up, swap, method, calls, up.bucket.units(method, calls))

    async def _try(
        self, queued: Queued, req: dict[str, Any], first_try: bool, passthrough: bool, sent: asyncio.Event | None
    ) -> dict[str, Any]:
        up, swap = queued.up, queued.swap
        call = None
        try:
            async with up.semaphore, probe_place(up):
                started, units = await self._slot(up, queued.method, queued.calls)
                queued.release()
                if sent is not None:
                    sent.set()
                up.requests += 1
                call = up.breaker.sent()
                try:
                    async with asyncio.timeout(self.timeout):
                        answer = await (swap.post(up) if swap else up.client.post(encode(req)))
                except TimeoutError:
                    raise self._failed(up, req, "timeout", call, f"no answer in {self.timeout:g} s") from None
                except OSError as exc:
                    kind = "connect" if isinstance(exc, ConnectFailed) else "connection"
                    raise self._failed(up, req, kind, call, str(exc)) from None
            return self._read(up, req, answer, started, units, call, first_try, passthrough)
        finally:
            queued.release()
            if call is not None:  # no word from the reply on the endpoint's health (a rate-limit answer, a hedge lost)
                up.breaker.answered(call, None, time.monotonic())

    @staticmethod
    async def _slot(up: Upstream, method: str, calls: int) -> tuple[float, float]:
        """A slot in `up`'s budget outside any Retry-After hold. A request that waited for its slot
        while a 429 came goes after the hold, its slot taken anew: those queued behind the refused
        one (for the probe's few in flight, or the rate just learnt) went out into the very window
        that refused it, a 429 each (15 of them, in one run)."""
        while True:
            if (held := up.cooldown_until - time.monotonic()) > 0:
                await asyncio.sleep(held)
            started, units = await up.bucket.acquire(method, calls) if calls else (time.monotonic(), 0.0)
            if up.cooldown_until <= started:
                return started, units

    def _read(
        self,
        up: Upstream,
        req: dict[str, Any],
        answer: Answer,
        started: float,
        units: float,
        call: int,
        first_try: bool,
        passthrough: bool,
    ) -> dict[str, Any]:
        """What `answer` to `req`, sent to `up` at `started`, means: a reply, or Retry."""
        raw, status, retry_after = answer.body, answer.status, answer.retry_after
        now = time.monotonic()
        up.bytes += len(raw)
        if answer.limit is not None:
            up.bucket.advertised(answer.limit, now)
        if req["method"] == "eth_getLogs" and (refused := logs.refusal(status, raw)) is not None:
            up.errors["range_refused"] += 1  # a definite answer, split by the caller (gateway/logs.py)
            self._succeeded(up, req["method"], now - started, units, call)
            return refused
        if status in (401, 403):
            body = body_text(status, raw)
            self._disable(up, f"http {status}", body)
            raise Retry(f"http_{status}", detail=body)
        if status == 429 or status == 408 or status >= 500:
            delay = retry_after_seconds(retry_after)
            if delay > 0:  # the provider's word holds for the endpoint, not only for this request
                up.cooldown_until = max(up.cooldown_until, now + delay)
            if status == 429:
                raise self._throttled(up, req, "http_429", body_text(status, raw), started, units, now, delay)
            kind = f"http_{status}" if status < 500 else "http_5xx"
            raise self._failed(up, req, kind, call, body_text(status, raw), now, delay)
        if status != 200:
            raise self._failed(up, req, f"http_{status}", call, body_text(status, raw), now)
        opening = SUCCESS_OPENING.match(raw) if passthrough else None
        if opening is not None and raw.rstrip().endswith(b"}"):
            if raw[opening.end() : opening.end() + 4] == b"null" and _lagging(req, self.head):
                raise self._failed(up, req, "null_result", call, "null for a block at or below the head", now)
            self._succeeded(up, req["method"], now - started, units, call)
            reply = Reply(jsonrpc="2.0", id=req.get("id"))
            reply.raw = raw
            return reply
        try:
            parsed = json.loads(raw)
            if not isinstance(parsed, dict):
                raise ValueError
        except ValueError:
            raise self._failed(up, req, "bad_body", call, f"not a JSON-RPC reply ({len(raw)} bytes)", now) from None
        reply = Reply(parsed)
        reply.raw = raw
        err = reply.get("error")
        if err is not None:
            code, message = (err.get("code"), str(err.get("message", ""))) if isinstance(err, dict) else (None, str(err))
            if code in RATE_LIMIT_CODES or RATE_LIMIT_MESSAGE.search(message):  # before auth: "API key rate limit"
                raise self._throttled(up, req, "rpc_rate_limit", describe_error(err), started, units, now)
            if AUTH_MESSAGE.search(message):
                detail = describe_error(err)
                self._disable(up, "auth error", detail)
                raise Retry("auth", detail=detail)
            if (code in TRANSIENT_CODES and (code != -32603 or TRANSIENT_MESSAGE.search(message))) or (
                TRANSIENT_MESSAGE.search(message)
            ):
                raise self._failed(up, req, "rpc_transient", call, describe_error(err), now)
            # a definite answer (e.g. method not found): pass it on
            self._succeeded(up, req["method"], now - started, units, call)
            log.debug("%s on %s: answered %s", req.get("method"), up.name, describe_error(err))
            return scrubbed(reply)
        if reply.get("result") is None and not first_try and _lagging(req, self.head):
            raise self._failed(up, req, "null_result", call, "null for a block at or below the head", now)
        self._succeeded(up, req["method"], now - started, units, call)
        return reply

    def _is_down(self, live: list[Upstream]) -> bool:
        """Whether every live endpoint's breaker is open after a failed probe; logged once per outage."""
        now = time.monotonic()
        if not all(u.breaker.trips >= POOL_DOWN_TRIPS and not u.usable(now) for u in live):
            return False
        if not self._down:
            self._down = True
            failing = "; ".join(f"{u.name}: {u.last_failure}" for u in live)
            log.error("rpc pool down: every endpoint keeps failing (%s); requests fail at once until one answers", failing)
        return True

    def _failed(
        self,
        up: Upstream,
        req: dict[str, Any],
        kind: str,
        call: int,
        detail: str,
        now: float | None = None,
        delay: float = 0.0,
    ) -> Retry:
        """Count a failed attempt (`call`: its number in the breaker); what happened is shown with -v
        and in errors, never with the URL."""
        detail = shorten(redact(detail))
        up.last_failure = f"{kind} ({detail})" if detail else kind
        if up.fail(kind, time.monotonic() if now is None else now, call):
            self._is_down([u for u in self.upstreams if u.disabled is None])  # said as soon as it is so
        log.debug("%s on %s failed: %s", req.get("method"), up.name, up.last_failure)
        return Retry(kind, delay, detail)

    def _throttled(
        self,
        up: Upstream,
        req: dict[str, Any],
        kind: str,
        detail: str,
        sent: float,
        units: float,
        now: float,
        delay: float = 0.0,
    ) -> Retry:
        """A rate-limit answer: not a failure (no circuit breaker, no pool down), a cue to send slower;
        the refused call's `units` go back to the bucket (before a cut changes its rate)."""
        up.errors[kind] += 1
        if (tuner := up.bucket.throttled(req["method"], sent, now, units)) is not None:
            up.rate_cuts += 1
            rate = tuner.rate
            log.debug("endpoint %s rate-limits us: %.1f %s from now", up.name, rate or 0.0, up.bucket.unit)
        log.debug("%s on %s: rate-limited (%s)", req.get("method"), up.name, shorten(redact(detail)))
        return Retry(kind, delay, shorten(redact(detail)), throttled=True)

    def _succeeded(self, up: Upstream, method: str, elapsed: float, units: float, call: int) -> None:
        now = time.monotonic()
        up.succeed(elapsed, now, call)
        up.bucket.answered(method, now - elapsed, now, units)
        self._down = False

    def _disable(self, up: Upstream, reason: str, detail: str = "") -> None:
        if up.disabled is None:
            up.disabled = reason
            up.errors["auth"] += 1
            up.last_failure = f"{reason} ({detail})" if detail else reason
            log.error("endpoint %s refused our credentials (%s): out of the pool for this run", up.name, up.last_failure)


def _lagging(req: dict[str, Any], head: int) -> bool:
    """A null for a block the pool already saw mined means this node is behind."""
    if req["method"] not in BLOCK_METHODS:
        return False
    params = req.get("params") or []
    try:
        return int(params[0], 16) <= head
    except (IndexError, TypeError, ValueError):
        return False

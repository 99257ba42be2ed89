"""An endpoint's live state behind the pool: its budget, breaker, latencies, errors and counters,
and its place among the few requests in flight while its limit is learnt."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config import Endpoint
from .breaker import Breaker
from .budgets import PROBE_CONCURRENCY, PROBE_HOLD, Bucket
from .upstream import Answer, Client

log = logging.getLogger("cryo_ingest.gateway")

# Recent latencies kept per endpoint, for its p50/p95 and the hedging delay.
LATENCY_WINDOW = 1000


@contextlib.asynccontextmanager
async def probe_place(up: Upstream) -> AsyncIterator[None]:
    """While an endpoint's limit is learnt, a place among its few requests in flight, held PROBE_HOLD
    seconds at most (budgets.py)."""
    if not up.bucket.tuner.probing:
        yield
        return
    await up.probe.acquire()
    held = True

    def release() -> None:
        nonlocal held
        if held:
            held = False
            up.probe.release()

    timer = asyncio.get_running_loop().call_later(PROBE_HOLD, release)
    try:
        yield
    finally:
        timer.cancel()
        release()


@dataclass
class Upstream:
    """An endpoint's live state. Its URL stays inside `spec` and is only used to send."""

    spec: Endpoint
    bucket: Bucket
    semaphore: asyncio.Semaphore
    client: Client
    probe: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(PROBE_CONCURRENCY))  # budgets.py
    disabled: str | None = None
    breaker: Breaker = field(default_factory=Breaker)
    cooldown_until: float = 0.0  # the provider's Retry-After, or down at start-up
    last_failure: str = ""
    latency: float = 0.05
    requests: int = 0
    queued: float = 0.0  # budget units of the requests picked for it, waiting for a place in flight or a slot
    retries: int = 0
    bytes: int = 0
    hedges: int = 0  # requests sent here to race a slow one on another endpoint
    hedge_wins: int = 0  # of those, answered first
    rate_cuts: int = 0
    lies: int = 0  # failed checks of data this endpoint alone answered (gateway/trust.py)
    suspected: int = 0  # failed checks of data it answered with others
    errors: Counter[str] = field(default_factory=Counter)
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    _sorted: list[float] = field(default_factory=list)  # `latencies` sorted, redone every 5% of new ones
    _fresh: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    def usable(self, now: float) -> bool:
        return self.disabled is None and self.held_until <= now

    @property
    def held_until(self) -> float:
        """When the breaker or the provider's Retry-After lets requests through again."""
        return max(self.cooldown_until, self.breaker.open_until)

    def state(self, now: float) -> str:
        """For the endpoints table: out of the pool (why), its breaker open, held back, or ok."""
        if self.disabled is not None:
            return self.disabled
        if self.breaker.open_until > now:
            return f"breaker open, {self.breaker.open_until - now:.1f} s left"
        if self.cooldown_until > now:  # the provider's Retry-After
            return f"cooling down, {self.cooldown_until - now:.1f} s left"
        return "ok"

    def fail(self, kind: str, now: float, call: int) -> bool:
        """Count a failed call (its number from `breaker.sent`); True if it opened the breaker."""
        self.errors[kind] += 1
        if not self.breaker.answered(call, True, now):
            return False
        failed = self.breaker.failure_rate
        log.warning(
            "endpoint %s: %.0f %% of its last calls failed, breaker open for %g s",
            self.name,
            100 * failed,
            self.breaker.open_until - now,
        )
        return True

    def succeed(self, elapsed: float, now: float, call: int) -> None:
        self.breaker.answered(call, False, now)
        self.latency = 0.8 * self.latency + 0.2 * elapsed
        self.latencies.append(elapsed)
        self._fresh += 1

    def percentile(self, q: float) -> float | None:
        if not self.latencies:
            return None
        if self._fresh * 20 >= len(self._sorted) or not self._sorted:
            self._sorted, self._fresh = sorted(self.latencies), 0
        return self._sorted[min(len(self._sorted) - 1, int(q * len(self._sorted)))]

    def metrics(self) -> dict[str, Any]:
        self._fresh = len(self.latencies)  # exact figures at the end of a run
        p50, p95 = self.percentile(0.5), self.percentile(0.95)
        rate = self.bucket.tuner.rate
        return {
            "requests": self.requests,
            "retries": self.retries,
            "resent": self.client.resent,  # on a new connection, the kept-alive one having closed (not retries)
            "errors": dict(sorted(self.errors.items())),
            "http_429": self.errors.get("http_429", 0),
            "p50_ms": None if p50 is None else round(p50 * 1000, 2),
            "p95_ms": None if p95 is None else round(p95 * 1000, 2),
            "bytes": self.bytes,
            "disabled": self.disabled,
            "state": self.state(time.monotonic()),
            "rate_limit": None if rate is None else round(rate, 1),  # after tuning; None: not limited
            "rate_unit": self.bucket.unit,
            "rate_cuts": self.rate_cuts,
            # methods a limit nobody configured reached sooner, paced apart (budgets.py)
            "method_limits": {m: round(t.rate or 0.0, 1) for m, (t, _) in sorted(self.bucket.dear.items())},
            "compute_units": round(self.bucket.compute_units, 1),
            "hedges": self.hedges,
            "hedge_wins": self.hedge_wins,
            "lies": self.lies,
            "suspected": self.suspected,
        }


class Exchange(Protocol):
    """What an attempt sends instead of the request as asked (gateway/cheapest.py): defined here, below
    the pool that uses it, so that the pool does not import what imports it."""

    def charge(self) -> tuple[str, int]: ...

    async def post(self, up: Upstream) -> Answer: ...


class Queued:
    """An attempt picked for `up` and not sent yet: its budget units count in `up.queued` (what `_pick`
    reads) until it has its slot, or ends without one. Given back once."""

    def __init__(self, up: Upstream, swap: Exchange | None, method: str, calls: int, units: float) -> None:
        self.up, self.swap, self.method, self.calls, self.units = up, swap, method, calls, units
        up.queued += units

    def release(self) -> None:
        self.up.queued -= self.units
        self.units = 0.0

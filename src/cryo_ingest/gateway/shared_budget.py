"""One requests-per-second budget per endpoint for every gateway of a cluster, kept in Redis.

Each worker runs its own loopback gateway, so an in-process token bucket would let N workers send
N times an endpoint's `requests_per_second`. With a budget store, every gateway takes each
request's slot from one GCRA record per endpoint (a Lua script: atomic, on Redis's clock, so
hosts' clocks do not matter), keyed by pool and endpoint *name*, never by URL.

When the store cannot be reached mid-run, each gateway falls back to an in-process bucket of
`requests_per_second / N`, N being the number of gateways the store last counted on that endpoint,
and probes the store again once a second. Failing closed would stop every worker of the cluster
whenever Redis blinks, for a limit whose overrun costs some HTTP 429s that the gateway already
retries; the share keeps the sum at the limit as long as no gateway starts during the outage.
A gateway that cannot reach the store when it starts does not know N, so it refuses to start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from ..config import Endpoint, Job
from ..errors import RpcError, redact

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = logging.getLogger("cryo_ingest.gateway")

# A gateway that took no slot for this long no longer counts among an endpoint's gateways.
LIVE_SECONDS = 30
# While the store is down, one request a second tries it again (the others use the fallback).
PROBE_SECONDS = 1.0
# A store failing for this long is down; until then requests wait for it.
GRACE_SECONDS = 3.0
STORE_TIMEOUT = 1.0

# KEYS[1]: the endpoint's theoretical arrival time (TAT, µs on Redis's clock); KEYS[2]: its gateways
# (sorted set, by last slot); KEYS[3]: its flow (hash: units taken, `s<tenth of a second>`, and
# answered, `a<tenth>`, by every gateway). ARGV: emission interval (µs per unit), burst (units),
# gateway id, liveness (µs), cost (units: 1 for a request, its compute units for a call), the units
# this gateway saw answered since its last slot, by how many tenths of a second ago ("age:units,...":
# a gateway held back by a Retry-After tells its last answers a second late, and counted as of now
# they would add up with the next second's).
# Reserves the next slot and answers how long to wait for it, how far the endpoint's slots are
# reserved (both µs from now), how many gateways are live, and the units every gateway took and saw
# answered in the last second (strings: Redis would cut a Lua number to an integer).
# GCRA with burst tolerance (burst - 1) * interval: at most burst + rate * T units in any T seconds
# (a call costing more than the burst goes alone, and the calls after it wait for what it took).
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, burst, live, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4]), tonumber(ARGV[5])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval * cost
local start = new_tat - math.max(burst, cost) * interval
if start < now then start = now end
local ttl = math.floor((new_tat - now) / 1000) + live / 1000
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', ttl)
redis.call('ZADD', KEYS[2], now, ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - live)
redis.call('PEXPIRE', KEYS[2], ttl)
local tenth = math.floor(now / 100000)
redis.call('HINCRBYFLOAT', KEYS[3], 's' .. tenth, cost)
for age, units in string.gmatch(ARGV[6], '(%d+):([%d.]+)') do
  if tonumber(age) < 10 then redis.call('HINCRBYFLOAT', KEYS[3], 'a' .. (tenth - tonumber(age)), units) end
end
local flow = redis.call('HGETALL', KEYS[3])
local taken, seen = 0, 0
for i = 1, #flow, 2 do
  local at = tonumber(string.sub(flow[i], 2))
  if at <= tenth - 10 then
    redis.call('HDEL', KEYS[3], flow[i])
  elseif string.sub(flow[i], 1, 1) == 's' then
    taken = taken + tonumber(flow[i + 1])
  else
    seen = seen + tonumber(flow[i + 1])
  end
end
redis.call('PEXPIRE', KEYS[3], 2000)
return {start - now, new_tat - now, redis.call('ZCARD', KEYS[2]), tostring(taken), tostring(seen)}
"""


def burst(rps: float, seconds: float = 1 / 20) -> float:
    """A twentieth of a second's units, half the in-process bucket's (docs/rpc-pool.md): gateways
    in other processes and hosts wake up for their slots with some jitter, which adds to the burst."""
    return max(1.0, rps * seconds)


class LocalSlots:
    """The same GCRA in this process: an endpoint's own bucket, or a gateway's share while the store
    is down. `rps` (units per second) may change between calls: the auto-tuner lowers and raises it.
    Our own rather than aiolimiter's: its bucket neither changes rate under waiting callers nor
    charges a call dearer than its capacity (a 1,000-CU trace), and one algorithm here and in the
    store's script makes a local and a shared limit behave alike."""

    def __init__(self, rps: float, burst_seconds: float = 1 / 20) -> None:
        self.rps, self.burst_seconds = rps, burst_seconds
        self._tat = 0.0

    def ready(self, now: float) -> bool:
        """A call taking a slot now would not wait."""
        return self._tat <= now + (burst(self.rps, self.burst_seconds) - 1) / self.rps

    def backlog(self, now: float) -> float:
        """Seconds of slots given out ahead of `now`."""
        return max(0.0, self._tat - now)

    async def take(self, cost: float = 1.0) -> float:
        now, interval = time.monotonic(), 1 / self.rps
        tat = max(self._tat, now)
        self._tat = tat + interval * cost
        return max(0.0, self._tat - max(burst(self.rps, self.burst_seconds), cost) * interval - now)

    def refund(self, cost: float) -> None:
        """Give back a call's units: the provider refused it (a rate-limit answer) and counted none of them."""
        self._tat -= cost / self.rps


class SharedBudget:
    """The slots of a pool's endpoints, shared by every gateway using the same store and pool name.

    Lives on the gateway's event loop: `start`, `acquire` and `close` are called from there only.
    """

    def __init__(self, url: str, pool: str) -> None:
        self.pool = pool
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._url = url
        self._client: aioredis.Redis | None = None
        self._errors: tuple[type[Exception], ...] = (OSError,)  # and RedisError, once start() has imported redis
        self._peers: dict[str, int] = {}  # gateways the store last counted, by endpoint name
        self._flow: dict[str, tuple[float, float]] = {}  # units every gateway took and saw answered in the last second
        # units answered here, not yet told to the store, by tenth of a second
        self._answered: defaultdict[str, defaultdict[int, float]] = defaultdict(lambda: defaultdict(float))
        self._reserved: dict[str, float] = {}  # until when (monotonic) the store may have given out slots, by endpoint
        self._limits: dict[str, tuple[float, float]] = {}  # rate and units in flight at most (guessed), by budget
        self._fallback: dict[str, LocalSlots] = {}
        self._down = False
        self._failing_since = 0.0  # when the store began failing (0: it answers)
        self._next_probe = 0.0
        self.late = 0  # slots given up because this gateway woke up too late for them

    def _keys(self, endpoint: str) -> list[str]:
        base = f"cryo-ingest:budget:{self.pool}:{endpoint}"
        return [f"{base}:tat", f"{base}:gateways", f"{base}:flow"]

    async def start(self, endpoints: Iterable[Endpoint]) -> None:
        """Register this gateway on each rate-limited endpoint; raises RpcError if the store does not answer."""
        import redis.asyncio as aioredis  # here: most gateways share no budget, and never load redis
        from redis.exceptions import RedisError

        self._errors = (RedisError, OSError)
        self._client = aioredis.Redis.from_url(
            self._url, socket_timeout=STORE_TIMEOUT, socket_connect_timeout=STORE_TIMEOUT, retry_on_timeout=False
        )
        for e in endpoints:
            for name, rate, cost in limits(e):
                self._limits[name] = (rate, (e.max_concurrency or 1) * cost)
                try:
                    wait = await self._take(name, rate, cost)
                except self._errors as err:
                    raise RpcError(f"budget store unreachable at start ({type(err).__name__}: {redact(str(err))})") from None
                await asyncio.sleep(wait)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def acquire(self, endpoint: str, rps: float, cost: float = 1.0) -> None:
        """Wait for a slot of `cost` units in this budget (an endpoint's requests, or its compute units:
        see `limits`): the store's, or while it is down this gateway's share."""
        while True:
            now = time.monotonic()
            probe = self._down  # only a request sent to the store while it was down can say it is back
            if probe and now < self._next_probe:
                break
            self._next_probe = now + PROBE_SECONDS
            try:
                await self._slot(lambda: self._take(endpoint, rps, cost), rps, cost)
            except self._errors as err:
                if self._down:
                    break
                # A blip (a busy CPU, a failover) is waited out: falling back while the other gateways
                # still share the store would add this gateway's share on top of the limit.
                self._failing_since = self._failing_since or now
                if time.monotonic() - self._failing_since < GRACE_SECONDS:
                    await asyncio.sleep(0.1)
                    continue
                self._down = True
                self._hold_reserved(time.monotonic())
                log.warning(
                    "budget store unreachable (%s): each endpoint falls back to this gateway's share of its limit (%s)",
                    type(err).__name__,
                    ", ".join(f"{n}: 1/{k}" for n, k in sorted(self._peers.items())),
                )
                break
            self._failing_since = 0.0
            if probe and self._down:
                self._down = False
                self._fallback.clear()
                log.warning("budget store reachable again: endpoints share the cluster's budget")
            return
        await asyncio.sleep(max(0.0, self._reserved.get(endpoint, 0.0) - time.monotonic()))
        share = self._fallback.get(endpoint)
        if share is None:
            share = self._fallback[endpoint] = LocalSlots(rps / self._peers.get(endpoint, 1))
        share.rps = rps / self._peers.get(endpoint, 1)  # the tuner may have moved the rate since
        await self._slot(lambda: share.take(cost), share.rps, cost)

    def peers(self, endpoint: str) -> int:
        """The gateways the store last counted on this budget."""
        return self._peers.get(endpoint, 1)

    def answered(self, endpoint: str, units: float) -> None:
        """Units of this budget answered here: told to the store with the next slot taken."""
        if not self._down:
            self._answered[endpoint][int(time.monotonic() * 10)] += units

    def flow(self, endpoint: str) -> tuple[float, float] | None:
        """The units every gateway took and saw answered in the last second, as of this gateway's last
        slot; None while the store is down. A gateway's own view is its share of the endpoint's,
        which is not 1/N when jobs differ in demand."""
        return None if self._down else self._flow.get(endpoint)

    async def _slot(self, take: Callable[[], Awaitable[float]], rps: float, cost: float) -> None:
        """Sleep until a slot. One woken late (a busy CPU stalls the event loop) is given up and another
        taken once: sent now, it would bunch with the slots after it and break the limit at the provider;
        given up every time, a slow machine would spend the whole budget on slots nobody uses."""
        for retake in (True, False):
            wait = await take()
            due = time.monotonic() + wait
            await asyncio.sleep(wait)
            if not retake or time.monotonic() - due <= max(burst(rps), cost) / rps:
                return
            self.late += 1

    async def _take(self, endpoint: str, rps: float, cost: float = 1.0) -> float:
        assert self._client is not None
        interval = 1_000_000 / rps
        answered: dict[int, float] = self._answered.pop(endpoint, {})
        now = int(time.monotonic() * 10)
        try:
            wait_us, reserved_us, peers, taken, seen = await self._client.eval(
                TAKE,
                3,
                *self._keys(endpoint),
                f"{interval:.3f}",
                f"{burst(rps):.3f}",
                self.id,
                LIVE_SECONDS * 1_000_000,
                f"{cost:.3f}",
                ",".join(f"{now - tenth}:{units:.3f}" for tenth, units in answered.items() if now - tenth < 10),
            )
        except BaseException:
            for tenth, units in answered.items():  # told with the next slot
                self._answered[endpoint][tenth] += units
            raise
        self._peers[endpoint] = max(1, int(peers))
        self._flow[endpoint] = (float(taken), float(seen))
        self._reserved[endpoint] = time.monotonic() + int(reserved_us) / 1_000_000
        return max(0.0, int(wait_us) / 1_000_000)

    def _hold_reserved(self, now: float) -> None:
        """Slots the store gave out before it went down are still being used, by every gateway: the share
        starts after them, or both would add up to twice the limit. A gateway holds at most one slot per
        request in flight, so the store's slots end within peers x max_concurrency slots of now (peers
        using the same pool document; in compute units, each slot guessed at the table's default cost);
        this gateway's own last answer may say later."""
        for endpoint, (rps, in_flight) in self._limits.items():
            ahead = self._peers.get(endpoint, 1) * in_flight / rps
            self._reserved[endpoint] = max(self._reserved.get(endpoint, 0.0), now + ahead)


def limits(e: Endpoint) -> list[tuple[str, float, float]]:
    """An endpoint's budgets, each (name in the store, configured rate, a typical call's cost): its
    requests, keyed by its name, and its compute units, keyed `NAME/cu`."""
    out = []
    if e.requests_per_second:
        out.append((e.name, e.requests_per_second, 1.0))
    if e.compute_units_per_second:
        out.append((f"{e.name}/cu", e.compute_units_per_second, e.cost("default")))
    return out


def shared_budget(job: Job) -> SharedBudget | None:
    """The job's shared budget, if it names a store; pools given as `--rpc` URLs are keyed "rpc"."""
    if job.budget_store is None:
        return None
    return SharedBudget(job.budget_store.get_secret_value(), job.rpc_pool or "rpc")

"""How fast the gateway may send to one endpoint: its own buckets or the cluster's shared ones, charged
in requests or in compute units, at a rate the endpoint's rate-limit answers tune (docs/rpc-pool.md)."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass, field

from ..budget import LocalSlots, SharedBudget, limits
from ..config import Endpoint

# A rate-limit answer to a request sent while the rate was far from the last one that drew such an
# answer: the limit is unknown, cut hard. Near it: the limit is about there, cut a little.
CUT_FAR, CUT_NEAR, NEAR = 0.7, 0.9, 0.15
# Each second spent sending at the rate (demand at or above it) raises it by this share of the rate
# that last drew a rate-limit answer: back to it in 1 / (RAISE / (1 - CUT_NEAR)) = 5 s near the limit.
RAISE = 0.02
# Below RECOVER x the most the endpoint answered within a second, and CALM_SECONDS after the last
# cut, the rate climbs by CLIMB a second: a cut that drew no rate-limit answer since was too deep (a
# first cut taken while little was answered, as after the burst of a start with no limit). Never to
# above CUT_NEAR x the rate that drew the last cut: against a provider counting per fixed second, a
# second spanning two of its windows answers up to twice its limit, and the most answered so far
# says more than the endpoint allows.
RECOVER, CLIMB, CALM_SECONDS = 0.8, 1.5, 3.0
# At most one cut a second: providers count per second, and the requests already waiting for a slot
# when the rate was cut go out (and get their 429s) in the same second.
CUT_SECONDS = 1.0
# Never below this share of the configured rate, nor below PROVEN x the most the endpoint answered in
# one second so far: a provider answering 429 at random (not for our rate) must not starve the run.
FLOOR, PROVEN = 0.1, 0.5
# A rate-limit answer while fewer requests than this were answered in the last second says nothing
# about our rate (the run is starting, or the endpoint refuses at random): it cuts nothing.
MIN_ANSWERED = 5
# An endpoint with no limit configured (a node on loopback, or a provider's key behind one, as a
# local eRPC) has at most PROBE_CONCURRENCY requests in flight until PROBE_CALLS were answered with
# no rate-limit answer (pool.py): unbounded, of the first second's burst (58 requests on loopback),
# 38 drew a 429 from a key allowing 20, and a probe on the rate (from 50 a second, doubling) still
# overshot by 10-20 on a busy host, where the 429 takes tens of ms to come back. In flight, the
# overshoot is at most 4 whatever the round trip; an own node pays with its first 300 requests
# going 4 at a time (at a millisecond or two each on loopback, a fraction of a second).
PROBE_CONCURRENCY, PROBE_CALLS = 4, 300
# A request holds its place among those few PROBE_HOLD seconds at most: one the endpoint stalls on is
# no part of a burst, and four of them (a block a node hangs on) held up every other request for their
# whole timeout (an operator's other partitions timed out behind one stalled partition).
PROBE_HOLD = 1.0
# Its first rate-limit answer sets its rate to LEARNT x what the endpoint accepted of the requests
# sent in the second before the refused one (those sent earlier reached it first, and were within its
# count): its limit, where its first second fell in one of its windows. Not what it answered in
# that second (requests still in flight are not answered yet, and the first 429 comes back before
# them: the first cut waited for a second 429, a second of them later). 0.95: paced at the limit
# exactly, a provider counting per fixed second sees the limit plus one in half its windows.
LEARNT = 0.95
# Nor does the slow rise (RAISE) take a learnt rate above LEARNT x the rate that drew the last cut
# within PROBE_AGAIN seconds of it: each 429 holds the endpoint a second (Retry-After), a tenth of
# a short job's time.
PROBE_AGAIN = 30.0
# A rate-limit answer while the endpoint answered at least AS_CONFIGURED x its configured compute units
# in the last second says the limit is as configured: a call that did not fit in what was left of a
# fixed window (a 200-CU batch), not a lower limit. It cuts nothing: each cut, 10 % for some 5 s, cost
# a key of 2,500 CU/s a second of a 20-second run. Not for a limit in requests, where every request
# fits and a 429 at the limit says the gateways together went past it (three sharing 50/s, uncut,
# lost a second's hold to each of their 429s).
AS_CONFIGURED = 0.9
# The in-process bucket holds a tenth of a second's units: a one-second burst would let a provider
# that counts per second see twice the rate.
LOCAL_BURST_SECONDS = 0.1
# A configured compute-unit budget is sent at PACE x it, from a bucket holding CU_BURST_SECONDS of
# it: a provider counting per fixed second refuses a call whole (a 200-CU batch) where it does not
# fit in what is left of the window, and rate + burst must stay under the limit in any second
# (0.95 x 1.05 < 1). At the limit with a tenth of a second's burst, 2,750 CU reached some windows
# of a 2,500 CU/s key; at 0.97, 13 batches of 200 CU were sent into each second, one refused.
PACE, CU_BURST_SECONDS = 0.95, 0.05


class Tuner:
    """The rate an endpoint is sent at, in its limit's unit: additive increase while it is used in
    full, multiplicative decrease on a rate-limit answer to a request sent after the last decrease (the
    others are about a rate already left behind), at most once a second, within [floor, configured].
    The first cut starts from what the endpoint answered in the last second: about its limit.

    With a budget store, what the endpoint took and answered is the cluster's (`cluster`), counted in
    the store; while the store is down, this gateway's view times the gateways last counted (`peers`)."""

    def __init__(self, ceiling: float | None, whole_calls: bool = False) -> None:
        self.ceiling = ceiling
        # Compute units: a call may not fit in what is left of a provider's window (AS_CONFIGURED)
        self.whole_calls = whole_calls
        self.rate = ceiling  # None: no limit known (a loopback node) until the first rate-limit answer
        self.best = 0.0  # the most units the endpoint answered within one second
        self.peers = 1
        self.cluster: tuple[float, float] | None = None  # units (taken, answered) in the last second, every gateway's
        self.peak: float | None = None  # the rate that last drew a rate-limit answer (the first: an estimate)
        self.refused = math.inf  # the rate sent at when the last cut came
        self.changed = -math.inf  # when the rate was last cut
        self._accepted: deque[tuple[float, float]] = deque()  # (when, units) answered here in the last second
        self._answered = 0.0  # their units
        self._since, self._used = time.monotonic(), 0.0  # units sent here since `_since`
        self._sends: deque[tuple[float, float]] = deque()  # (when, units) sent here in the last two seconds
        self._refused: deque[float] = deque()  # when the requests refused with a rate-limit answer were sent
        self._count = 0  # requests answered here while learning

    @property
    def learning(self) -> bool:
        """No limit configured, none learnt yet: the first rate-limit answer teaches it."""
        return self.ceiling is None and self.peak is None

    @property
    def probing(self) -> bool:
        """Learning, and few requests answered so far: few may be in flight (PROBE_CONCURRENCY)."""
        return self.learning and self._count < PROBE_CALLS

    def sent(self, now: float, units: float) -> None:
        self._used += units
        if self.learning:  # what the first rate-limit answer learns from
            self._sends.append((now, units))
            while self._sends[0][0] < now - 2.0:
                self._sends.popleft()
        elapsed = now - self._since
        if elapsed < 1.0:
            return
        # the rate held the sending back, not the demand
        used = self.cluster[0] if self.cluster else self._used * self.peers / elapsed
        full = self.rate is not None and used >= 0.8 * self.rate
        if self.rate is not None and self.peak is not None and full and now - self.changed >= 1.0:
            proven = min(RECOVER * self.best, CUT_NEAR * self.refused)
            calm = now - self.changed >= CALM_SECONDS
            step = self.rate * (CLIMB - 1) if self.rate < proven and calm else RAISE * self.peak
            rise = self.rate + RAISE * self.peak
            if self.ceiling is None and now - self.changed < PROBE_AGAIN:  # a learnt limit: no probing above it yet
                rise = min(rise, max(self.rate, LEARNT * self.peak))
            self.rate = min(self.ceiling or math.inf, max(rise, min(proven, self.rate + step)))
        self._since, self._used = now, 0.0

    @property
    def floor(self) -> float:
        configured = self.ceiling * FLOOR if self.ceiling else 0.0
        return min(self.ceiling or math.inf, max(configured, PROVEN * self.best))

    def accepted(self, now: float, units: float) -> None:
        self._count += 1
        self._accepted.append((now, units))
        self._answered += units
        while self._accepted[0][0] < now - 1.0:
            self._answered -= self._accepted.popleft()[1]
        self.best = max(self.best, self.answered)

    @property
    def answered(self) -> float:
        """Units the endpoint answered in the last second."""
        return self.cluster[1] if self.cluster else self._answered * self.peers

    def throttled(self, sent_at: float, now: float) -> bool:
        """A rate-limit answer to a request sent at `sent_at`; True if it cut the rate."""
        if self.learning:
            return self._learn(sent_at, now)
        if sent_at < self.changed or now - self.changed < CUT_SECONDS:
            return False
        if sum(1 for t, _ in self._accepted if t >= now - 1.0) < MIN_ANSWERED:
            return False
        if self.whole_calls and self.ceiling is not None and self.answered >= AS_CONFIGURED * self.ceiling:
            return False
        self.refused = self.rate or math.inf
        if self.peak is None:  # the first: what the endpoint answered in the last second is about its limit
            self.peak = min(self.rate or math.inf, self.answered)
            self.rate = max(self.floor, self.peak * CUT_NEAR)
        else:
            assert self.rate is not None
            near = abs(self.rate - self.peak) <= NEAR * self.peak
            self.peak = self.rate
            # and never above what the endpoint answered: a rate far above the limit (a first cut taken from a
            # second that held two of the provider's windows) comes down to it at once, not by a tenth a cut
            self.rate = max(self.floor, min(self.rate * (CUT_NEAR if near else CUT_FAR), self.answered * CUT_NEAR))
        self.changed = now
        self._since, self._used = now, 0.0
        return True

    def advertised(self, rate: float, now: float) -> None:
        """The endpoint's headers say it allows `rate`: a limit learnt without a 429, below any configured."""
        if self.peak is not None or (self.rate is not None and self.rate <= LEARNT * rate):
            return
        self.refused = math.inf
        self.peak, self.rate, self.best = rate, LEARNT * rate, rate
        self.changed = now
        self._since, self._used = now, 0.0

    def _learn(self, sent_at: float, now: float) -> bool:
        """The first rate-limit answers of an endpoint with no limit configured: its rate from what it
        accepted of the requests sent in the second before the refused one (see LEARNT)."""
        earlier = sum(1 for t in self._refused if sent_at - 1.0 < t < sent_at)
        self._refused.append(sent_at)
        accepted = sum(u for t, u in self._sends if sent_at - 1.0 < t < sent_at) - earlier
        # A limit refuses the requests past it, after it accepted those before: a refusal among others
        # (a provider refusing at random) or of the run's very first requests says no rate.
        if earlier or accepted < MIN_ANSWERED:
            return False
        self.refused = math.inf  # sent unpaced
        # and the most answered in a second is this: the start's burst may have spanned two of the
        # provider's windows, and the calm climb (RECOVER x best) would go past the limit
        self.peak, self.rate, self.best = accepted, LEARNT * accepted, accepted
        self.changed = now
        self._since, self._used = now, 0.0
        self._sends.clear()
        self._refused.clear()
        return True


@dataclass
class _Budget:
    name: str  # in the shared store
    configured: float | None
    compute_units: bool  # charged each call's cost, else 1 a request
    slots: LocalSlots | None  # in-process; None: taken from the shared store
    pace: float = 1.0  # the share of the rate sent at (PACE)
    # One waiter at a time takes its slot, when the one before has had its own: a slot taken at once by
    # each of 70 waiting requests would keep them on the rate of that moment, whatever the tuner says since.
    queue: asyncio.Lock = field(default_factory=asyncio.Lock)


class Bucket:
    """An endpoint's limits: `requests_per_second` and `compute_units_per_second`, each taken from the
    budget store when the cluster shares one (budget.py), else from a bucket in this process. The
    tuner moves the compute-unit limit if there is one, else the request limit; an endpoint with no
    limit configured is not held back until its first rate-limit answer, then by a limit in this process."""

    def __init__(self, spec: Endpoint, shared: SharedBudget | None) -> None:
        self.spec, self.shared = spec, shared
        self.budgets = []
        for name, rate, _ in limits(spec):
            cu = name.endswith("/cu")
            slots = None if shared else LocalSlots(rate, CU_BURST_SECONDS if cu else LOCAL_BURST_SECONDS)
            self.budgets.append(_Budget(name, rate, cu, slots, PACE if cu else 1.0))
        if not self.budgets:
            self.budgets.append(_Budget(spec.name, None, False, None))
        self.tuned = self.budgets[-1]  # the compute units if limited, else the requests
        self.tuner = Tuner(self.tuned.configured, self.tuned.compute_units)
        self.compute_units = 0.0  # spent, by the endpoint's cost table

    @property
    def unit(self) -> str:
        return "compute units/s" if self.tuned.compute_units else "requests/s"

    def ready(self, now: float) -> bool:
        """Whether a request would go out at once (as far as this process knows: the store's slots are not)."""
        return all(b.slots is None or (not b.queue.locked() and b.slots.ready(now)) for b in self.budgets)

    async def acquire(self, method: str, calls: int = 1) -> tuple[float, float]:
        """Wait until `calls` calls of `method` (one JSON-RPC batch) may be sent; answers when that was
        and what they cost in the tuned unit. A batch takes its slot whole: taken call by call, the
        batches waiting together took their slots in turn, all finished together, and reached a
        provider counting per second in one burst (640 calls received in one second, then none for four)."""
        cost = self.spec.cost(method) * calls
        for b in self.budgets:
            rate = self.tuner.rate if b is self.tuned else b.configured
            if rate is None:
                continue
            rate *= b.pace
            units = cost if b.compute_units else float(calls)
            if b.slots is None and b.configured is not None:
                assert self.shared is not None
                await self.shared.acquire(b.name, rate, units)
                if b is self.tuned:
                    self.tuner.peers, self.tuner.cluster = self.shared.peers(b.name), self.shared.flow(b.name)
                continue
            if b.slots is None:  # no limit configured, one found: this gateway's own, one request at a time
                # (a tenth of a second's burst on 0.95 x a learnt limit let 1.045 x it into some second: a 429)
                b.slots = LocalSlots(rate, 0.0)
            async with b.queue:
                b.slots.rps = rate
                await asyncio.sleep(await b.slots.take(units))
        now = time.monotonic()
        if self.spec.compute_units_per_second:
            self.compute_units += cost
        units = cost if self.tuned.compute_units else float(calls)
        self.tuner.sent(now, units)
        return now, units

    def refused(self, units: float) -> None:
        """A rate-limit answer to a call charged `units` of the tuned budget: the provider counted none
        of them, so neither does this process's bucket. Charged again on each retry, the bucket ran
        ahead of what was served (125,810 CU charged for 43,610 served, in one run) and held the
        sending far under the budget. The store's shared slots keep theirs (budget.py)."""
        if self.tuned.slots is not None:
            self.tuned.slots.refund(units)

    def advertised(self, requests: float, now: float) -> None:
        """The endpoint's headers say it allows `requests` a second (read while the tuned unit is requests)."""
        if not self.tuned.compute_units:
            self.tuner.advertised(requests, now)

    def answered(self, now: float, units: float) -> None:
        """A request sent at the tuned unit's cost `units` was answered (not rate-limited)."""
        self.tuner.accepted(now, units)
        if self.shared is not None and self.tuned.configured is not None:
            self.shared.answered(self.tuned.name, units)

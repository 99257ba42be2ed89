"""How fast the gateway may send to one endpoint: its own buckets or the cluster's shared ones, charged
in requests or in compute units, at a rate the endpoint's rate-limit answers tune (docs/rpc-pool.md)."""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field

from ..config import Endpoint
from .shared_budget import LocalSlots, SharedBudget, limits

log = logging.getLogger("cryo_ingest.gateway")

# A rate-limit answer to a request sent while the rate was far from the last one that drew such an
# answer: the limit is unknown, cut hard. Near it: the limit is about there, cut a little.
CUT_FAR, CUT_NEAR, NEAR = 0.7, 0.9, 0.15
# Each second spent sending at the rate (demand at or above it) raises it by this share of the rate
# that last drew a rate-limit answer: back to it in 1 / (RAISE / (1 - CUT_NEAR)) = 5 s near the limit.
RAISE = 0.02
# ... and by UNSETTLED_RAISE after a first cut, an estimate the next 429 settles: sooner than in RAISE's
# 5 s, which brought that 429 and its second's hold into a 6-s measure's first second (2 of 11 runs).
UNSETTLED_RAISE = 0.06
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
# ... the latter only while at most half the answers of the last RECENT_SECONDS were rate-limit answers,
# which also say whether an endpoint's first rate-limit answers teach its rate (Tuner._learn).
RECENT_SECONDS = 5.0
# At most this share of them rate-limit answers: a limit touched now and then, not 429s at random.
RARE = 0.1
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
# Nor does the slow rise (RAISE) take a rate above LEARNT x the rate that drew the last cut within
# PROBE_AGAIN seconds of it: each 429 holds the endpoint a second (Retry-After), a tenth of a short
# job's time. Climbing back to the limit every 5 s (CUT_NEAR, RAISE), a configured rate above the
# provider's drew a 429 and its second's hold each time: 0.68-0.86 of the limit in a 6-s window. Not
# after a first cut, which may come while little was answered yet (24 of a limit of 30, in one run):
# the next 429 settles the limit.
PROBE_AGAIN = 30.0
# A rate-limit answer while the endpoint answered at least AS_CONFIGURED x its configured compute units
# (calls charged whole) in the last second says the limit is as configured: a call that did not fit in what was left of a
# fixed window (a 200-CU batch), not a lower limit. It cuts nothing: each cut, 10 % for some 5 s, cost
# a key of 2,500 CU/s a second of a 20-second run. Not for a limit in requests, where every request
# fits and a 429 at the limit says the gateways together went past it (three sharing 50/s, uncut,
# lost a second's hold to each of their 429s). So too for a dear method (DEAR) answered at about the
# rate it was found at: 5 receipts of 500 CU fill a window of 2,500, and each block call beside them
# drew a 429 on one, which cut the receipts from 4.5 a second to 1.9 in 10 s.
AS_CONFIGURED = 0.9
# With no limit configured, a method with at least DEAR of its calls sent in the last DEAR_SECONDS
# refused, while at least DEAR_PASS of the other calls sent within DEAR_AFTER seconds after one of
# those were answered, is paced apart (Bucket): a limit in compute units,
# which it reaches sooner. Against a limit in requests, a full window refuses every call until the
# next: comparing each method's share of refusals instead, blocks refused at the start's burst while
# the traces sent earlier in the window passed were taken for dear, and paced at 1 a second.
DEAR, DEAR_PASS, DEAR_AFTER, DEAR_SECONDS = 0.5, 0.8, 0.1, 2.0
# Calls of the method, and after its refusals, at the least: a provider refusing 30 % of the calls at
# random refuses half of some method's 5 calls now and then
DEAR_CALLS, DEAR_AFTER_CALLS = 20, 5
# The in-process bucket holds a tenth of a second's units: a one-second burst would let a provider
# that counts per second see twice the rate.
LOCAL_BURST_SECONDS = 0.1
# A configured compute-unit budget is sent at PACE x it, from a bucket holding CU_BURST_SECONDS of
# it: a provider counting per fixed second refuses a call whole (a 200-CU batch) where it does not
# fit in what is left of the window, and rate + burst must stay under the limit in any second
# (0.95 x 1.05 < 1). At the limit with a tenth of a second's burst, 2,750 CU reached some windows
# of a 2,500 CU/s key; at 0.97, 13 batches of 200 CU were sent into each second, one refused.
PACE, CU_BURST_SECONDS = 0.95, 0.05
# Under a configured compute-unit budget, a call goes at most WHOLE_CALLS x as often as whole calls of
# its cost fit in a window: at a steady rate r, some second receives floor(r / cost) + 1 of them. Three
# 1,000-CU traces reached windows of 2,500 CU at 2,375 CU/s (85 refused for 101 served); at 0.98 x 2
# a second, three span 1.02 s. A 200-CU batch (12 a window) goes at 2,352 CU/s rather than 2,375.
WHOLE_CALLS = 0.98


@dataclass
class Sends:
    """What an endpoint was sent, and which of it was refused, in the last two seconds while its limit
    is learnt: the first rate-limit answer's lesson."""

    sent: deque[tuple[float, float]] = field(default_factory=deque)  # (when, units)
    refused: deque[float] = field(default_factory=deque)  # when the requests refused with a rate-limit answer were sent

    def add(self, now: float, units: float) -> None:
        self.sent.append((now, units))
        while self.sent[0][0] < now - 2.0:
            self.sent.popleft()
        while self.refused and self.refused[0] < now - 2.0:
            self.refused.popleft()


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
        self.settled = False  # the peak is not that first estimate (a later cut, a learnt or advertised limit)
        self.refused = math.inf  # the rate sent at when the last cut came
        self.changed = -math.inf  # when the rate was last cut
        self._accepted: deque[tuple[float, float]] = deque()  # (when, units) answered here in the last second
        self._answered = 0.0  # their units
        self._since, self._used = time.monotonic(), 0.0  # units sent here since `_since`
        self._sends = Sends()
        self._recent: deque[tuple[float, bool]] = deque()  # (when, not rate-limited) of the last RECENT_SECONDS' answers
        self._refusals = 0  # rate-limit answers among them
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
            self._sends.add(now, units)
        elapsed = now - self._since
        if elapsed < 1.0:
            return
        # the rate held the sending back, not the demand
        used = self.cluster[0] if self.cluster else self._used * self.peers / elapsed
        full = self.rate is not None and used >= 0.8 * self.rate
        # A limit a 429 settled holds PROBE_AGAIN s: no probing above LEARNT x it, nor at all while every
        # gateway sharing it together sends that; past it, each takes its own rate down in proportion
        # (another that saw no 429 charges its slots at its own higher rate: with one asking 5 a second of a
        # shared 30, 0.95 x the rate that drew the 429 drew another, and its second's hold). A first cut's
        # estimate is probed past, and sooner (UNSETTLED_RAISE): held, 24 of a limit of 30 held two
        # gateways there, each one's slots holding back the other's.
        held = self.settled and self.peak is not None and now - self.changed < PROBE_AGAIN
        limit = LEARNT * (self.peak or 0.0)
        if held and self.cluster and used > limit:
            self.rate = max(self.floor(now), (self.rate or 0.0) * limit / used)
        elif (
            self.rate is not None
            and self.peak is not None
            and full
            and now - self.changed >= 1.0
            and not (held and used >= limit)
        ):
            proven = min(RECOVER * self.best, CUT_NEAR * self.refused)
            calm = now - self.changed >= CALM_SECONDS
            step = self.rate * (CLIMB - 1) if self.rate < proven and calm else RAISE * self.peak
            rise = self.rate + (RAISE if self.settled else UNSETTLED_RAISE) * self.peak
            if held:
                rise = min(rise, max(self.rate, limit))
            self.rate = min(self.ceiling or math.inf, max(rise, min(proven, self.rate + step)))
        self._since, self._used = now, 0.0

    def floor(self, now: float) -> float:
        configured = self.ceiling * FLOOR if self.ceiling else 0.0
        # Not while most answers are 429s: no provider refusing at random (30 % of the calls, in
        # test_30_percent_faults_still_give_the_clean_archive) but a limit the calls sent now reach
        # sooner than those the most was answered for (learnt on blocks at 16 CU, it kept 46 receipt calls
        # of 500 CU a second going to a key of 2,500 CU/s)
        self._note(now, None)
        proven = PROVEN * self.best if 2 * self._refusals <= len(self._recent) else 0.0
        return min(self.ceiling or math.inf, max(configured, proven))

    def _note(self, now: float, ok: bool | None) -> None:
        """An answer (None: none, the window moves on)."""
        if ok is not None:
            self._recent.append((now, ok))
            self._refusals += not ok
        while self._recent and self._recent[0][0] < now - RECENT_SECONDS:
            self._refusals -= not self._recent.popleft()[1]

    def accepted(self, now: float, units: float) -> None:
        self._count += 1
        self._note(now, True)
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
        self._note(now, False)
        if self.learning:
            return self._learn(sent_at, now)
        if sent_at < self.changed or now - self.changed < CUT_SECONDS:
            return False
        if sum(1 for t, _ in self._accepted if t >= now - 1.0) < MIN_ANSWERED:
            return False
        limit = self.ceiling if self.ceiling is not None else self.peak
        if self.whole_calls and limit is not None and self.answered >= AS_CONFIGURED * limit:
            return False
        if self.peak is None:  # the first: what the endpoint answered in the last second is about its limit
            self.refused = self.rate or math.inf
            self.peak = min(self.rate or math.inf, self.answered)  # little may be answered yet: not settled
            self.rate = max(self.floor(now), self.peak * CUT_NEAR)
        else:
            assert self.rate is not None
            near = abs(self.rate - self.peak) <= NEAR * self.peak
            # Sent steadily, a provider counting per fixed second answers about its limit in any second:
            # a rate above that is not what drew the 429 (a first cut taken from a start's burst across
            # two of its windows, 47 for a limit of 30, then climbed back to 0.8 x that, drew another)
            self.refused = self.peak = min(self.rate, self.answered)
            # nor is the most it answered in a second more than that, where 429s are rare (a limit touched,
            # not a provider refusing 30 % at random, whose floor must hold): 58 in a start's burst across
            # two windows kept the floor (PROVEN x best) at 29 of a limit of 30 shared with another job
            if self._refusals <= RARE * len(self._recent):
                self.best = min(self.best, self.peak)
            self.settled = True
            # and never above what the endpoint answered: a rate far above the limit (a first cut taken from a
            # second that held two of the provider's windows) comes down to it at once, not by a tenth a cut
            self.rate = max(self.floor(now), min(self.rate * (CUT_NEAR if near else CUT_FAR), self.answered * CUT_NEAR))
        self.changed = now
        self._since, self._used = now, 0.0
        return True

    def advertised(self, rate: float, now: float) -> None:
        """The endpoint's headers say it allows `rate`: a limit learnt without a 429, below any configured."""
        if self.peak is None and (self.rate is None or self.rate > LEARNT * rate):
            self.learnt(rate, now)

    def learnt(self, rate: float, now: float) -> None:
        """The endpoint allows `rate` (its headers, its first rate-limit answer): sent at LEARNT x it. The
        most it answered in a second is that too: the start's burst may have spanned two of a provider's
        windows, and the calm climb (RECOVER x best) would go past the limit."""
        self.refused = math.inf  # sent unpaced
        self.peak, self.rate, self.best, self.settled = rate, LEARNT * rate, rate, True
        self.changed = now
        self._since, self._used = now, 0.0

    def _learn(self, sent_at: float, now: float) -> bool:
        """The first rate-limit answers of an endpoint with no limit configured: its rate from what it
        accepted of the requests sent in the second before the refused one (see LEARNT)."""
        earlier = sum(1 for t in self._sends.refused if sent_at - 1.0 < t < sent_at)
        self._sends.refused.append(sent_at)
        accepted = sum(u for t, u in self._sends.sent if sent_at - 1.0 < t < sent_at) - earlier
        # A limit refuses the requests past it, after it accepted those before: a refusal among others
        # (a provider refusing at random) or of the run's very first requests says no rate. Unless the
        # refusals outnumber the answers (20 at least): then what it answered in the last second is its rate (else
        # an endpoint whose first refusal taught nothing never learns: each later one comes among others).
        if self._refusals > max(len(self._recent) / 2, 4 * MIN_ANSWERED):
            accepted = float(sum(1 for t, _ in self._accepted if t >= now - 1.0))
            if accepted < 1:
                return False
        elif earlier or accepted < MIN_ANSWERED:
            return False
        self.learnt(accepted, now)
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

    def units(self, cost: float, calls: int) -> float:
        """A batch of `calls` calls costing `cost` compute units, in this budget's unit."""
        return cost if self.compute_units else float(calls)


class Bucket:
    """An endpoint's limits: `requests_per_second` and `compute_units_per_second`, each taken from the
    budget store when the cluster shares one (shared_budget.py), else from a bucket in this process. The
    tuner moves the compute-unit limit if there is one, else the request limit; an endpoint with no
    limit configured is not held back until its first rate-limit answer, then by a limit in this process.

    With no limit configured, the limit may be in units we do not know, which some calls reach sooner
    (a key of 2,500 CU/s allows 150 block calls a second, 5 of its blocks' receipts): a method the limit
    refuses while it lets the calls sent right after through (`dear`, `_dearer`) is paced by a rate of
    its own, and its refusals no longer cut the endpoint's. One rate for every call, learnt on blocks, sent 75 receipt
    calls a second (3,129 429s for 203 served); cut to the receipts', it then held the blocks to 4 a
    second. A rate for each method from the start halved the run against a limit in requests, where
    every method's rate must share it (0.53 of the limit used, from 0.87)."""

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
        self.dear: dict[str, tuple[Tuner, _Budget]] = {}  # no limit configured: methods paced apart
        self._answers: deque[tuple[float, str, bool]] = deque()  # (sent, method, not rate-limited) in the last DEAR_SECONDS
        self.compute_units = 0.0  # spent, by the endpoint's cost table

    @property
    def unit(self) -> str:
        return "compute units/s" if self.tuned.compute_units else "requests/s"

    def ready(self, now: float, queued: float = 0.0) -> bool:
        """Whether a request would go out at once behind `queued` units picked for the endpoint and not
        sent yet (as far as this process knows: the store's slots are not)."""
        if queued and self.tuned.slots is not None:
            return False
        budgets = [*self.budgets, *(b for _, b in self.dear.values())]
        return all(b.slots is None or (not b.queue.locked() and b.slots.ready(now)) for b in budgets)

    def wait(self, now: float, queued: float) -> float:
        """About how long a request would wait for its slot behind `queued` units, as far as this process knows."""
        slots = self.tuned.slots
        return slots.backlog(now) + queued / slots.rps if slots else 0.0

    def units(self, method: str, calls: int = 1) -> float:
        """What `calls` calls of `method` take of the tuned budget."""
        return self.tuned.units(self.spec.cost(method) * calls, calls)

    async def acquire(self, method: str, calls: int = 1) -> tuple[float, float]:
        """Wait until `calls` calls of `method` (one JSON-RPC batch) may be sent; answers when that was
        and what they cost in the tuned unit. A batch takes its slot whole: taken call by call, the
        batches waiting together took their slots in turn, all finished together, and reached a
        provider counting per second in one burst (640 calls received in one second, then none for four)."""
        cost = self.spec.cost(method) * calls
        tuners = self._tuners(method)
        for b in self.budgets + [budget for _, budget in tuners[1:]]:
            rate = next((t.rate for t, tuned in tuners if tuned is b), b.configured)
            if rate is None:
                continue
            rate *= b.pace
            units = b.units(cost, calls)
            if b.compute_units and b.configured is not None and b.configured >= units > 0:
                rate = min(rate, WHOLE_CALLS * (b.configured // units) * units)
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
        units = self.tuned.units(cost, calls)
        for t, _ in tuners:
            t.sent(now, units)
        return now, units

    def _tuners(self, method: str) -> list[tuple[Tuner, _Budget]]:
        """The endpoint's tuned budget, and `method`'s own where it is paced apart."""
        return [(self.tuner, self.tuned), *([self.dear[method]] if method in self.dear else [])]

    def throttled(self, method: str, sent_at: float, now: float, units: float) -> Tuner | None:
        """A rate-limit answer to a call of `method` charged `units` of the tuned budget, sent at
        `sent_at`: the tuner it cut, if any. The provider counted none of the units, so neither does
        this process's bucket: charged again on each retry, the bucket ran ahead of what was served
        (125,810 CU charged for 43,610 served, in one run) and held the sending far under the budget.
        The store's shared slots keep theirs (shared_budget.py)."""
        for _, b in self._tuners(method):
            if b.slots is not None:
                b.slots.refund(units)
        self._answer(sent_at, method, False)
        if method in self.dear:
            tuner = self.dear[method][0]
            return tuner if tuner.throttled(sent_at, now) else None
        if self.tuned.configured is None and (rate := self._dearer(method, now)) is not None:
            tuner = Tuner(None, whole_calls=True)  # dear calls: one that does not fit in a window is no lower limit
            tuner.learnt(rate, now)
            self.dear[method] = (tuner, _Budget(f"{self.spec.name}:{method}", None, False, None))
            log.debug("endpoint %s: %s reaches its limit sooner than its other calls, paced apart", self.spec.name, method)
            return tuner
        return self.tuner if self.tuner.throttled(sent_at, now) else None

    def advertised(self, requests: float, now: float) -> None:
        """The endpoint's headers say it allows `requests` a second (read while the tuned unit is requests)."""
        if not self.tuned.compute_units:
            self.tuner.advertised(requests, now)

    def answered(self, method: str, sent: float, now: float, units: float) -> None:
        """A request sent at `sent` at the tuned unit's cost `units` was answered (not rate-limited)."""
        self.tuner.accepted(now, units)
        if method in self.dear:
            self.dear[method][0].accepted(now, units)
        self._answer(sent, method, True)
        if self.shared is not None and self.tuned.configured is not None:
            self.shared.answered(self.tuned.name, units)

    def _answer(self, sent: float, method: str, ok: bool) -> None:
        if self.tuned.configured is not None:
            return
        self._answers.append((sent, method, ok))
        while self._answers[0][0] < sent - DEAR_SECONDS:
            self._answers.popleft()

    def _dearer(self, method: str, now: float) -> float | None:
        """The rate `method` was answered at in a recent second, if the limit refuses it where it lets the
        other calls through: most of its calls in the last DEAR_SECONDS refused (DEAR), and most of the
        other calls sent within DEAR_AFTER of a refused one answered (DEAR_PASS). A full window of a limit
        in requests refuses every call until the next; one in compute units still lets cheaper calls in.
        Not while the endpoint's rate is unknown: the start's burst reaches windows unpaced."""
        if self.tuner.learning:
            return None
        mine = [(t, ok) for t, m, ok in self._answers if m == method]
        refused = sorted(t for t, ok in mine if not ok)
        if len(mine) < DEAR_CALLS or len(refused) < DEAR * len(mine):
            return None
        after = []
        for t, m, ok in self._answers:
            i = bisect.bisect_left(refused, t)
            if m != method and i and t - refused[i - 1] <= DEAR_AFTER:
                after.append(ok)
        if len(after) < DEAR_AFTER_CALLS or after.count(True) < DEAR_PASS * len(after):
            return None
        # the more answered of its last two seconds: in one, the other calls may have taken most of the window
        seconds = [sum(1 for t, ok in mine if ok and now - k - 1.0 <= t < now - k) for k in range(int(DEAR_SECONDS))]
        return float(max(1, *seconds))

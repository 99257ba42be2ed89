"""An endpoint's circuit breaker on its failure rate (pool.py keeps one per endpoint)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

# The circuit breaker reads an endpoint's failure rate over its last BREAKER_CALLS answers within
# BREAKER_SECONDS, as resilience4j's count- and time-based sliding windows and eRPC's failsafe
# circuitBreaker (failureThresholdCount of failureThresholdCapacity) do, rather than failures in a
# row: with 30 % fast 5xx, fast failures overtake slow successes and "10 in a row" tripped it again
# and again. It opens at BREAKER_RATE of at least BREAKER_MIN_CALLS answers: an endpoint failing
# nearly everything. 30 % random failures reach 9 of 10 once in 7,000 windows, 18 of 20 almost never
# (binomial tails); a node that went away fails them all and opens it after 10 calls, in well under
# a second. 30 s: older answers say little about the endpoint now.
BREAKER_CALLS, BREAKER_SECONDS, BREAKER_MIN_CALLS, BREAKER_RATE = 20, 30.0, 10, 0.9
# Open for 1 s, doubling on each trip whose probe failed too, to at most 30 s. After it, half-open:
# the first answer to a call sent since decides, as Helidon's success-threshold 1 and Hystrix's single
# test call (a success closes it, a failure opens it again for twice as long).
BREAKER_OPEN_SECONDS, BREAKER_OPEN_MAX = 1.0, 30.0
# Every live endpoint open, each tripped twice with no success between (it failed nearly every call,
# then its probe after the cool-down failed too): the pool is down, requests fail at once.
POOL_DOWN_TRIPS = 2


# A call's state in Breaker.pending: sent and not answered yet, or answered in a way that says
# nothing about the endpoint's health (a rate-limit answer, a hedge cancelled).
IN_FLIGHT, NO_WORD = -1, 2


@dataclass
class Breaker:
    """An endpoint's circuit breaker on its failure rate (see BREAKER_CALLS): closed, open until
    `open_until`, then half-open until an answer decides.

    Answers are read in the order their calls were sent, each once every call sent before it is
    answered: a fast 5xx does not count before the slow successes sent with it, so a burst of 64
    calls whose failures come back first does not read as 100 % failed."""

    answers: deque[tuple[float, bool]] = field(default_factory=lambda: deque(maxlen=BREAKER_CALLS))  # (when, failed)
    pending: dict[int, int] = field(default_factory=dict)  # call -> IN_FLIGHT, 0 or 1 (failed), NO_WORD; in sending order
    calls: int = 0  # calls sent so far (the next call's number)
    trips: int = 0  # opened this many times with no success between
    opened: int = 0  # the first call sent after it last opened
    open_until: float = 0.0

    @property
    def failure_rate(self) -> float:
        return sum(failed for _, failed in self.answers) / len(self.answers) if self.answers else 0.0

    def sent(self) -> int:
        """A call goes out: its number, for `answered`."""
        self.calls += 1
        self.pending[self.calls] = IN_FLIGHT
        return self.calls

    def answered(self, call: int, failed: bool | None, now: float) -> bool:
        """The answer to `call` (None: it says nothing of the endpoint's health); True if it opened
        the breaker. Once per call: a later word on the same call is ignored."""
        if self.pending.get(call) != IN_FLIGHT:
            return False
        if failed is not None and self.trips and call >= self.opened:  # sent since it opened: a probe
            del self.pending[call]
            if not failed:
                self.trips, self.open_until = 0, 0.0
                self.answers.clear()
            elif now >= self.open_until:
                return self._open(now)
            return False
        self.pending[call] = NO_WORD if failed is None or call < self.opened else int(failed)
        opened = False
        while self.pending:
            first = next(iter(self.pending))
            outcome = self.pending[first]
            if outcome == IN_FLIGHT:
                break
            del self.pending[first]
            if outcome != NO_WORD:
                opened |= self._record(bool(outcome), now)
        return opened

    def _record(self, failed: bool, now: float) -> bool:
        self.answers.append((now, failed))
        while self.answers[0][0] < now - BREAKER_SECONDS:
            self.answers.popleft()
        if not self.trips and len(self.answers) >= BREAKER_MIN_CALLS and self.failure_rate >= BREAKER_RATE:
            return self._open(now)
        return False

    def _open(self, now: float) -> bool:
        self.trips += 1
        self.opened = self.calls + 1
        self.open_until = now + min(BREAKER_OPEN_MAX, BREAKER_OPEN_SECONDS * 2 ** (self.trips - 1))
        return True

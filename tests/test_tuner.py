"""The rate tuner alone (gateway/budgets.py), on a clock of its own: the cases the provider-shaped
tests (tests/test_gateway.py, tests/test_budget.py) meet only now and then, each made to happen."""

from __future__ import annotations

import time

import pytest

from cryo_ingest.gateway.budgets import Tuner


def answer(tuner: Tuner, start: float, seconds: float, per_second: int) -> float:
    """`per_second` requests sent and answered evenly for `seconds` from `start`; answers the end."""
    n = int(seconds * per_second)
    for i in range(n):
        now = start + (i + 1) / per_second
        tuner.sent(now, 1.0)
        tuner.accepted(now, 1.0)
    return start + seconds


def test_a_later_cut_comes_down_to_what_the_endpoint_answered() -> None:
    """A first cut taken from a second that held two of a provider's windows (answered 50, limit 30)
    leaves the rate at 45; the next cut, while 30 a second are answered, goes to 27 rather than 40.5."""
    tuner = Tuner(100.0)
    t = answer(tuner, time.monotonic(), 1.0, 50)
    assert tuner.throttled(t, t) and tuner.rate == pytest.approx(45.0)
    t = answer(tuner, t, 2.0, 30)
    assert tuner.throttled(t, t)
    assert tuner.rate == pytest.approx(27.0, abs=1.0)  # the window's ends: 30 or 31 answered


def test_the_calm_climb_stops_below_the_rate_that_drew_the_last_cut() -> None:
    """The most answered in a second (55, a straddle of two windows) would have the rate climb back to
    0.8 x 55 = 44 after 3 calm seconds; a cut drawn at about 35 keeps it at 0.9 x that, plus the slow
    rise (2 % of the rate of the last cut a second)."""
    tuner = Tuner(100.0)
    t = answer(tuner, time.monotonic(), 1.0, 55)
    assert tuner.throttled(t, t)
    tuner.rate = 34.0  # as the cuts that followed left it
    t = answer(tuner, t, 1.0, 34)
    refused = tuner.rate
    assert tuner.throttled(t, t)
    t = answer(tuner, t, 6.0, 40)  # demand above the rate: it is used in full, and no 429 comes
    assert tuner.best == 55.0
    assert tuner.rate is not None and tuner.rate <= 0.9 * refused + 6 * 0.02 * refused, tuner.rate


def test_with_a_budget_store_the_cluster_s_counts_are_read_not_this_gateway_s() -> None:
    """Two gateways, this one sending 25 of the endpoint's 30 a second: its own view times two (50)
    would be taken for the limit; the store's count of every gateway's answers (30) is."""
    tuner = Tuner(100.0)
    tuner.peers = 2
    t = answer(tuner, time.monotonic(), 1.0, 25)
    tuner.cluster = (35.0, 30.0)
    assert tuner.throttled(t, t)
    assert tuner.peak == 30.0 and tuner.rate == pytest.approx(27.0)
    tuner.cluster = None  # the store down: this gateway's view times the gateways last counted
    assert tuner.answered == pytest.approx(50.0)

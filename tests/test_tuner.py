"""The rate tuner alone (gateway/budgets.py), on a clock of its own: the cases the provider-shaped
tests (tests/test_gateway.py, tests/test_budget.py) meet only now and then, each made to happen."""

from __future__ import annotations

import time

import pytest

from cryo_ingest.config import Endpoint
from cryo_ingest.gateway.budgets import Bucket, Tuner


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
    rise (2 % of the rate of the last cut a second), and the floor (half the most answered in a second)
    is no longer half the straddle's 55."""
    tuner = Tuner(100.0)
    t = answer(tuner, time.monotonic(), 1.0, 55)
    assert tuner.throttled(t, t)
    tuner.rate = 34.0  # as the cuts that followed left it
    t = answer(tuner, t, 1.0, 34)
    refused = tuner.rate
    assert tuner.throttled(t, t)
    assert tuner.best <= 35.0  # the straddle's 55 is forgotten at the second cut: the floor is half of it
    t = answer(tuner, t, 6.0, 40)  # demand above the rate: it is used in full, and no 429 comes
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


@pytest.mark.parametrize("metered", ["compute units", "requests"])
def test_a_method_a_limit_nobody_configured_refuses_sooner_is_paced_apart(metered: str) -> None:
    """No limit configured, blocks and receipts sent side by side. Against compute units (2,500 a second:
    blocks at 16, receipts at 500) the receipts are refused while the blocks sent beside them pass: the
    receipts get a rate of their own (what was answered of them in the last second), and their refusals
    no longer cut the endpoint's rate. Against a limit in requests a full window refuses
    both alike: one rate for both, as before."""
    bucket = Bucket(Endpoint.model_validate({"url": "http://127.0.0.1:1/"}), None)
    t, spent, window = time.monotonic(), 0, -1
    cuts = []
    for i in range(75):  # 25 a second of each, for three seconds
        now = t + i / 25
        if int(now - t) != window:
            window, spent = int(now - t), 0
        for method, cost in (("eth_getBlockByNumber", 16), ("eth_getBlockReceipts", 500)):
            bucket.tuner.sent(now, 1.0)
            cost = cost if metered == "compute units" else 1
            if spent + cost <= (2500 if metered == "compute units" else 30):
                spent += cost
                bucket.answered(method, now, now, 1.0)
            elif (tuner := bucket.throttled(method, now, now, 1.0)) is not None:
                cuts.append((method, tuner is bucket.tuner))
    if metered == "compute units":
        assert list(bucket.dear) == ["eth_getBlockReceipts"], cuts
        receipts = bucket.dear["eth_getBlockReceipts"][0]
        assert receipts.rate is not None and receipts.rate <= 5, receipts.rate
        apart = cuts.index(("eth_getBlockReceipts", False))  # the first refusal taught the endpoint's rate
        assert ("eth_getBlockReceipts", True) not in cuts[apart:], cuts
    else:
        assert bucket.dear == {} and cuts and all(endpoint for _, endpoint in cuts), cuts


def test_gateways_sharing_a_limit_found_by_a_429_take_their_shares_down() -> None:
    """A gateway whose peers send more than the limit a 429 found (every gateway's count, from the store)
    lowers its own rate though it saw no further 429: another that saw none charges its slots at its own
    higher rate."""
    tuner = Tuner(100.0)
    t = answer(tuner, time.monotonic(), 1.0, 30)
    tuner.cluster = (31.0, 30.0)
    assert tuner.throttled(t, t) and tuner.rate == pytest.approx(27.0)
    tuner.cluster = (33.0, 32.0)  # this one at 27, the other adding 6: a first cut's estimate is not held
    tuner.sent(t + 1.5, 1.0)
    assert tuner.rate is not None and tuner.rate >= 27.0
    t = answer(tuner, t + 2.0, 1.0, 30)
    tuner.cluster = (31.0, 30.0)
    assert tuner.throttled(t, t) and tuner.settled  # a second cut settles the limit
    rate, peak = tuner.rate, tuner.peak
    assert rate is not None and peak is not None
    tuner.cluster = (33.0, 32.0)
    tuner.sent(t + 1.5, 1.0)
    assert tuner.rate == pytest.approx(rate * 0.95 * peak / 33)


@pytest.mark.parametrize("refused", [1, 2])
def test_the_floor_holds_against_random_429s_not_against_most_calls_refused(refused: int) -> None:
    """The floor (half the most answered in a second) keeps a provider refusing a third of the calls at random
    from starving the run; where most calls are refused it is a limit, and the cuts go below it."""
    tuner = Tuner(100.0)
    t = answer(tuner, time.monotonic(), 2.0, 100)
    assert tuner.throttled(t, t) and tuner.floor(t) == pytest.approx(50.0, abs=1)
    for i in range(500):  # 100 a second for 5 s, `refused` of each 3 answered 429
        now = t + 1.0 + i / 100
        tuner.sent(now, 1.0)
        if i % 3 < refused:
            tuner.throttled(now, now)
        else:
            tuner.accepted(now, 1.0)
    if refused == 1:
        assert tuner.floor(now) >= 30.0  # half of what it answers a second, above the configured tenth
    else:
        assert tuner.floor(now) == pytest.approx(10.0)  # the configured tenth only (half the most answered: 17)

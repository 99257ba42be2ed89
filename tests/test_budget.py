"""One endpoint's requests_per_second across several gateways: three `cryo-ingest backfill`
processes, a real redis-server, a proxy that answers 429 above 50 requests per 1-second window."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import CANARY, Devnet, backfill, backfill_command, cli
from servers import FaultProxy, Faults, RedisServer
from test_config import SPEC_YAML

LIMIT = 50
GATEWAYS = 3


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(autouse=True)
def provider_priority() -> Iterator[None]:
    """The proxy stands for a provider, which does not share our CPU: on a busy machine (2 cores, Cryo,
    anvil, three jobs) a starved proxy reads requests late and in bunches, and measures its own stalls.
    So this process (the proxy's thread) runs at a higher priority than the jobs, where allowed (root)."""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    with contextlib.suppress(PermissionError):
        os.setpriority(os.PRIO_PROCESS, 0, -10)
    yield
    os.setpriority(os.PRIO_PROCESS, 0, before)


def _normal_priority() -> None:
    os.setpriority(os.PRIO_PROCESS, 0, 0)


def start_backfills(proxy: FaultProxy, store: str, tmp_path: Path) -> list[tuple[subprocess.Popen[str], Path]]:
    """Three jobs (own archives), one pool: the endpoint `shared` at 50 requests/s, its key a canary."""
    runs = []
    for i in range(GATEWAYS):
        pool = {"endpoints": [{"name": "shared", "url": proxy.url(f"/v2/{CANARY}/{i}"), "requests_per_second": LIMIT}]}
        env = {**os.environ, "CRYO_INGEST_RPC_POOL_TEST": json.dumps(pool), "CRYO_INGEST_BUDGET_STORE": store}
        log = tmp_path / f"backfill-{i}.log"
        cmd = backfill_command(tmp_path / f"archive-{i}", None, "--rpc-pool", "test", datasets="blocks")
        with log.open("w") as out:
            runs.append(
                (
                    subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=env, preexec_fn=_normal_priority),
                    log,
                )
            )
    return runs


def finish(runs: list[tuple[subprocess.Popen[str], Path]]) -> list[str]:
    outputs = []
    for process, log in runs:
        code = process.wait(120)
        text = log.read_text()
        assert code == 0, text
        assert CANARY.lower() not in text.lower()
        outputs.append(text)
    return outputs


def worst_window(times: list[float]) -> int:
    """The most requests that arrived in one of the proxy's one-second windows (those its 429s count)."""
    return max(Counter(int(t) for t in times).values())


def worst_sliding(times: list[float], seconds: float = 1.0) -> int:
    """The most requests that arrived within any `seconds`-long window, not aligned (shown, not asserted:
    on a busy machine the proxy's own stalls bunch what it reads)."""
    times = sorted(times)
    j, worst = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - seconds:
            j += 1
        worst = max(worst, i - j + 1)
    return worst


def useful_rate(answered: list[float], start: float, end: float) -> float:
    """Requests forwarded and answered per second between `start` and `end`."""
    return sum(1 for t in answered if start <= t < end) / (end - start)


@pytest.mark.timing
def test_three_gateways_share_one_budget(chain: Devnet, redis_server: RedisServer, tmp_path: Path) -> None:
    with FaultProxy(chain.url, Faults(rate_limit=LIMIT)) as proxy:
        finish(start_backfills(proxy, redis_server.url, tmp_path))
    # Each gateway alone sends up to 50/s (plus a burst of 5): without the store, three send ~150/s.
    worst = worst_window(proxy.times)
    # The steady part (all three busy: the first and last 10% of requests are start-up and tail)
    answered = sorted(proxy.answered)
    lo, hi = answered[len(answered) // 10], answered[-len(answered) // 10]
    rate = useful_rate(answered, lo, hi)
    print(
        f"worst 1-s window {worst} (sliding {worst_sliding(proxy.times)}), useful rate {rate:.1f}/s, "
        f"429s {proxy.injected['http_429']}, {len(answered)} answered"
    )
    assert worst <= LIMIT * 1.1, worst
    assert rate >= 0.85 * LIMIT, rate


@pytest.mark.timing
def test_store_stopped_mid_run_falls_back_to_a_share(chain: Devnet, redis_server: RedisServer, tmp_path: Path) -> None:
    """docs/cluster.md: with the store gone, each gateway keeps 1/3 of the limit (3 gateways seen); the jobs finish."""
    with FaultProxy(chain.url, Faults(rate_limit=LIMIT)) as proxy:
        runs = start_backfills(proxy, redis_server.url, tmp_path)
        deadline = time.monotonic() + 60
        while len(proxy.answered) < 150 and time.monotonic() < deadline:  # all three gateways taking slots
            time.sleep(0.05)
        redis_server.stop()
        stopped = time.monotonic()
        outputs = finish(runs)
    for text in outputs:
        assert "budget store unreachable" in text and "shared: 1/3" in text, text
        assert text.count("budget store unreachable") == 1 and "reachable again" not in text, text  # it never came back
    after = [t for t in proxy.times if t > stopped]
    worst = worst_window(after)
    answered = sorted(t for t in proxy.answered if t > stopped)
    rate = useful_rate(answered, answered[0], answered[-1])
    print(f"after the stop: worst 1-s window {worst} (sliding {worst_sliding(after)}), useful rate {rate:.1f}/s")
    assert worst <= LIMIT * 1.1, worst
    # Most of the work was done after the stop: not failed closed. (The rate is lower: 3 s of grace,
    # then the wait for the slots the store may have given out, then 1/3 each while jobs end one by one.)
    assert len(answered) > 200


def test_run_takes_its_slots_from_the_store_keyed_by_names(chain: Devnet, redis_server: RedisServer, tmp_path: Path) -> None:
    """`cryo-ingest run` (the operator's runner) uses the store too; its keys name the pool and the endpoint, not the URL."""
    config = tmp_path / "dag.yaml"
    config.write_text(
        SPEC_YAML.replace("chain_id: 10143", "chain_id: 31337").replace(
            "    rpc_pool: monad\n", "    rpc_pool: monad\n    chunk_size: 50\n    chunks_per_partition: 1\n"
        )
    )
    root = tmp_path / "archive"
    with FaultProxy(chain.url) as proxy:
        pool = {"endpoints": [{"name": "local", "url": proxy.url(f"/v2/{CANARY}"), "requests_per_second": 200}]}
        env = {"CRYO_INGEST_RPC_POOL_MONAD": json.dumps(pool)}
        req = cli("request", "--config", str(config), "--root", str(root), "--start", "0", "--end", "99", env=env)
        assert req.code == 0, req.text
        run = cli("run", "--config", str(config), "--root", str(root), "--budget-store", redis_server.url, env=env)
    assert run.code == 0, run.text
    assert_keys(redis_server, "cryo-ingest:budget:monad:local")
    assert CANARY.lower() not in run.text.lower()


def test_store_unreachable_at_start_stops_the_job_without_its_password(chain: Devnet, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pool = {"endpoints": [{"name": "shared", "url": chain.url, "requests_per_second": LIMIT}]}
    run = backfill(
        tmp_path / "archive",
        None,
        "--rpc-pool",
        "test",
        "--budget-store",
        f"redis://:{CANARY}@127.0.0.1:{port}/0",
        datasets="blocks",
        env={"CRYO_INGEST_RPC_POOL_TEST": json.dumps(pool)},
    )
    assert run.code == 1, run.text
    assert "budget store unreachable at start" in run.text, run.text
    assert CANARY.lower() not in run.text.lower()
    assert not (tmp_path / "archive").exists()


def test_shared_budget_charges_each_call_its_compute_units(redis_server: RedisServer) -> None:
    """Two gateways' budgets on one store, 500 compute units/s, calls of 50 units (eth_getLogs in this
    table): 30 calls take 3 s (less a twentieth of a second's burst) whichever gateway sends them."""
    import asyncio

    from cryo_ingest.config import Endpoint
    from cryo_ingest.gateway.shared_budget import SharedBudget

    spec = Endpoint.model_validate(
        {"name": "cu", "url": "https://a.example/k", "compute_units_per_second": 500, "costs": {"eth_getLogs": 50, "default": 5}}
    )

    async def run() -> float:
        gateways = [SharedBudget(redis_server.url, "pool") for _ in range(2)]
        for g in gateways:
            await g.start([spec])
        started = time.monotonic()
        await asyncio.gather(*(gateways[i % 2].acquire("cu/cu", 500, spec.cost("eth_getLogs")) for i in range(30)))
        took = time.monotonic() - started
        for g in gateways:
            await g.close()
        return took

    took = asyncio.run(run())
    assert 2.7 <= took <= 3.5, took  # 1 unit a call would take 0.06 s
    assert_keys(redis_server, "cryo-ingest:budget:pool:cu/cu")


def assert_keys(server: RedisServer, base: str) -> None:
    """The store holds one endpoint's keys, named by pool and endpoint; its flow (the last second's
    counts) lives 2 s, so it may be gone already."""
    keys = set(redis.Redis.from_url(server.url, decode_responses=True).keys("*"))
    assert {f"{base}:gateways", f"{base}:tat"} <= keys <= {f"{base}:gateways", f"{base}:tat", f"{base}:flow"}, keys


# (callers, seconds between one caller's requests) per gateway
DEMANDS = {"even": [(6, 0.0), (6, 0.0)], "uneven": [(8, 0.0), (1, 0.2)]}


@pytest.mark.timing
@pytest.mark.parametrize("demand", DEMANDS)
def test_gateways_sharing_a_budget_tune_it_together(demand: str, chain: Devnet, redis_server: RedisServer) -> None:
    """docs/rpc-pool.md: each gateway tunes the rate it charges its slots at. Two gateways, one shared
    budget configured at 100 requests/s, the provider allowing 30 per one-second window: together
    they converge near 30, with few 429s. Also when one job asks for far more than the other (about 5
    a second): what a gateway sees is then not half the endpoint's traffic, and only the store's count
    of every gateway's answers says what the endpoint allowed (with each gateway's own view scaled by
    two instead: 16.5-21.3 % of 429s in 3 runs)."""
    import threading

    from test_gateway import drive

    from cryo_ingest.config import Endpoint
    from cryo_ingest.gateway import Gateway
    from cryo_ingest.gateway.shared_budget import SharedBudget

    # 10 s measured: the 429 that settles a first cut's estimate holds the endpoint a second (Retry-After),
    # a sixth of a 6-s measure when it falls into its start
    real, warmup, measured = 30, 6.0, 10.0
    with FaultProxy(chain.url, Faults(rate_limit=real)) as proxy:
        spec = Endpoint.model_validate({"name": "shared", "url": proxy.url(), "requests_per_second": 100})
        gateways = [Gateway([spec], 31337, shared=SharedBudget(redis_server.url, "pool")) for _ in range(2)]
        for gw in gateways:
            gw.__enter__()
        try:
            start = time.monotonic()
            callers = [
                threading.Thread(target=drive, args=(gw.url, warmup + measured, threads, pause))
                for gw, (threads, pause) in zip(gateways, DEMANDS[demand], strict=True)
            ]
            for c in callers:
                c.start()
            for c in callers:
                c.join()
            cuts = [gw.metrics()["shared"]["rate_cuts"] for gw in gateways]
        finally:
            for gw in gateways:
                gw.__exit__(None, None, None)
    window = [t for t in proxy.times if start + warmup <= t < start + warmup + measured]
    answered = sum(1 for t in proxy.answered if start + warmup <= t < start + warmup + measured)
    rate, refused = len(window) / measured, (len(window) - answered) / len(window)
    print(f"two gateways, {demand} demand: sent {rate:.1f}/s after warm-up, {refused:.1%} refused, cuts {cuts}")
    assert 0.8 * real <= rate <= 1.1 * real, rate
    assert refused <= 0.1, refused

"""The operator after a year: a poll costs its open work, a slow or failing store loses nothing,
overlapping requests share a cell's lease and its attempts, a request of any size is safe (issue 19)."""

from __future__ import annotations

import json
import threading
import time
import tracemalloc
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import Devnet, cli, manifest_doc
from s3meter import Refusal, S3Meter
from test_operator import (
    DATASETS,
    StallProxy,
    _s3_objects,
    dag_file,
    devnet_dag,
    finish,
    pool_env,
    request,
    start,
    status,
    wait_for,
)

from cryo_ingest.archive import manifest
from cryo_ingest.archive.storage import open_store
from cryo_ingest.errors import ConfigError, StorageError
from cryo_ingest.operator import datasets, requests
from cryo_ingest.operator.dag import Pools, load_dag
from cryo_ingest.operator.executor import Local
from cryo_ingest.operator.node import Runner
from cryo_ingest.operator.sources import retrying
from cryo_ingest.pipeline.plan import contiguous_through, outlook


def test_a_slow_store_never_lets_two_runners_extract_one_cell(chain: Devnet, s3: Any, tmp_path: Path) -> None:
    """One runner's store stalls past lease_seconds while its partition waits on the node: its lease
    lapses, the other runner takes the cell, and the first must have stopped extracting by then
    (counted at the node: none of its requests for the cell after the other's first). The work finishes."""
    config = dag_file(
        tmp_path, devnet_dag("    lease_seconds: 3\n    poll_seconds: 0.5\n").replace("max_concurrency: 20", "max_concurrency: 1")
    )
    bucket = s3.bucket("operator-slow-store")
    root = f"s3://{bucket}/archive"
    cell = range(100, 150)
    with S3Meter(s3.endpoint) as store_a, S3Meter(s3.endpoint) as store_b, StallProxy(chain.url, stall=cell) as node:
        stores = {"/a": store_a, "/b": store_b}
        envs = {who: {**s3.env, "AWS_ENDPOINT_URL": stores[who].url, **pool_env(node.url(who))} for who in stores}
        request_id = request(config, root, 0, 249, envs["/a"])
        runs = {who: start("run", "--config", str(config), "--root", root, env=envs[who]) for who in stores}

        def asked(who: str) -> list[float]:
            return [t for p, b, t in list(node.seen) if p == who and b in cell]

        wait_for(lambda: asked("/a") or asked("/b"), 60, "a runner extracting the stalled cell")
        first = "/a" if asked("/a") else "/b"
        other = "/b" if first == "/a" else "/a"

        def in_flight() -> list[dict[str, Any]]:
            return list(status(config, root, {**s3.env, **pool_env(chain.url)})["partitions_in_flight"])

        wait_for(lambda: any(p["blocks"] == [100, 149] for p in in_flight()), 30, "the stalled cell in flight in status")
        stores[first].stall = 4.0  # each of its store requests now outlasts its lease of 3 s
        wait_for(lambda: asked(other), 60, "the other runner taking the cell over")
        node.stall = range(0)  # the node answers again: a partition still running would go on asking
        time.sleep(2)
        stores[first].stall = 0.0
        out = {who: finish(p, 240) for who, p in runs.items()}
        taken_over = min(asked(other))
        late = [t for t in asked(first) if t > taken_over]
    assert all(r.code == 0 for r in out.values()), out
    assert "partition 100-149 not renewed in time: giving it up" in out[first].text, out[first].text
    assert not late, f"{first} went on extracting blocks 100-149 after {other} took them over"
    st = status(config, root, {**s3.env, **pool_env(chain.url)})
    assert [(r["id"], r["state"]) for r in st["requests"]["items"]] == [(request_id, "done")]
    for dataset in DATASETS:
        assert [f["start_block"] for f in manifest_doc(root, 31337, dataset)["files"]] == [0, 50, 100, 150, 200]


def test_overlapping_requests_share_a_cell_and_its_attempts(chain: Devnet, tmp_path: Path) -> None:
    """Two requests over a cell whose upstream never answers: it runs one attempt at a time, `attempts`
    in all (not per request), both requests fail naming it, and the rest of both ranges is archived."""
    config = dag_file(tmp_path, devnet_dag("    attempts: 2\n").replace("timeout_seconds: 3600", "timeout_seconds: 8"))
    root = tmp_path / "archive"
    with StallProxy(chain.url, stall=range(50, 100)) as node:
        env = pool_env(node.url())
        first = request(config, root, 0, 149, env)
        second = request(config, root, 50, 199, env)
        run = cli("run", "--config", str(config), "--root", str(root), env=env)
    assert run.code == 1, run.text
    assert run.text.count("partition 50-99 started") == 2, run.text
    states = {r["id"]: r for r in status(config, root, pool_env(chain.url))["requests"]["items"]}
    for request_id in (first, second):
        assert states[request_id]["state"] == "failed"
        assert states[request_id]["reason"].startswith("failed after 2 attempts: partition 50-99: partition 50-99: timed out")
    for dataset in DATASETS:
        assert [f["start_block"] for f in manifest_doc(str(root), 31337, dataset)["files"]] == [0, 100, 150]


def test_store_errors_on_leases_states_and_events_lose_nothing(chain: Devnet, s3: Any, tmp_path: Path) -> None:
    """403s (no retry by obstore: a StorageError at once) on lease renewals, state writes and event
    writes: the runner lives on, the request is done, every manifest entry has exactly one event."""
    config = dag_file(tmp_path, devnet_dag("    lease_seconds: 3\n    poll_seconds: 0.5\n"))
    bucket = s3.bucket("operator-store-errors")
    root = f"s3://{bucket}/archive"
    with S3Meter(s3.endpoint) as store:
        env = {**s3.env, "AWS_ENDPOINT_URL": store.url, **pool_env(chain.url)}
        request_id = request(config, root, 0, 249, env)
        store.refusals = [
            Refusal("PUT", r"/operator/cryo_backfill/leases/", times=3, conditional=True),  # renewals
            Refusal("PUT", r"/operator/cryo_backfill/requests/", times=2),
            Refusal("PUT", r"/datasets/cold_blocks/events/", times=2),
        ]
        run = cli("run", "--config", str(config), "--root", root, env=env)
        refused = [r.refused for r in store.refusals]
    assert run.code == 0, run.text
    assert refused == [3, 2, 2], refused
    st = status(config, root, {**s3.env, **pool_env(chain.url)})
    assert [(r["id"], r["state"]) for r in st["requests"]["items"]] == [(request_id, "done")]
    entries = sorted((d, f["start_block"], f["sha256"]) for d in DATASETS for f in manifest_doc(root, 31337, d)["files"])
    assert len(entries) == 3 * 5
    events = [json.loads(v) for v in _s3_objects(bucket, "archive/datasets/cold_blocks/events/").values()]
    assert sorted((e["dataset"], e["start_block"], e["sha256"]) for e in events) == entries


def test_requests_of_any_size_wait_without_cost(chain: Devnet, tmp_path: Path) -> None:
    """Up to block 10^12, and far beyond the head: accepted, the final part archived, the rest waits
    with its reason; the runner exits (idle_timeout 0) and nothing was built per chunk."""
    config, root = dag_file(tmp_path, devnet_dag()), tmp_path / "archive"
    env = pool_env(chain.url)
    huge = request(config, root, 0, 10**12, env)
    beyond = request(config, root, 10**9, 10**9 + 10, env)
    started = time.monotonic()
    run = cli("run", "--config", str(config), "--root", str(root), env=env)
    assert run.code == 0, run.text
    assert time.monotonic() - started < 120
    states = {r["id"]: r for r in status(config, root, env)["requests"]["items"]}
    assert states[huge]["state"] == "waiting"
    assert states[huge]["reason"] == f"blocks 250-{10**12 + 49 - 10**12 % 50} not final yet"
    assert states[beyond] | {} == states[beyond] and states[beyond]["state"] == "waiting"
    assert states[beyond]["reason"] == f"blocks {10**9}-{10**9 + 49} not final yet"
    for dataset in DATASETS:
        assert [f["start_block"] for f in manifest_doc(str(root), 31337, dataset)["files"]] == [0, 50, 100, 150, 200]


def test_outlook_memory_follows_the_cells_not_the_range() -> None:
    """A plan up to block 10^12 over an archive of 79,000 chunks (complete shards, one gap): a few
    kilobytes, the gap found, every missing block counted."""
    size, window = 1000, manifest.shard_span(1000)
    gap = 41_000_000

    def held(_dataset: str, lo: int, hi: int) -> Any:
        if hi < 79_000_000 and not lo <= gap <= hi:
            return range(lo, hi + 1, size)
        return {s for s in range(lo, min(hi, 78_999_999) + 1, size) if s != gap}

    tracemalloc.start()
    look = outlook(0, 10**12, size, 4, window, ("blocks", "logs"), held, final_head=90_000_000, limit=10)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1_000_000, peak
    assert min(look.cells) == gap // (4 * size)
    assert len(look.cells) == 10
    assert look.missing_blocks == 1000 + 11_000_000
    assert look.pending_from == 90_000_000 and look.pending_chunks == (10**12 - 90_000_000) // size + 1
    assert contiguous_through(held, ("blocks",), size, window, 0) == gap - 1


def test_an_idle_poll_costs_the_same_after_a_thousand_done_requests(chain: Devnet, s3: Any, tmp_path: Path) -> None:
    """Storage requests of an idle poll, counted at the store, before and after 1,000 ended requests."""
    bucket = s3.bucket("operator-idle-poll")
    root = f"s3://{bucket}/archive"
    config = dag_file(tmp_path, devnet_dag())
    request(config, root, 0, 49, pool_env(chain.url))
    assert cli("run", "--config", str(config), "--root", root, env=pool_env(chain.url)).code == 0
    dag = load_dag(config, root)
    node = dag.nodes["cryo_backfill"]

    def idle_poll(meter: S3Meter) -> Counter[str]:
        """A runner's second poll (the first one scans every request once, at start-up)."""
        job = dag.job(node, Pools(rpc=[chain.url]), storage_options={"aws_endpoint": meter.url})
        runner = Runner(node, job, Local(job), threading.Event(), 0)
        with runner.executor:
            assert runner._tick() is False
            meter.reset()
            assert runner._tick() is False
        return Counter(meter.counts)

    writer = open_store(root)

    def ended(i: int) -> None:
        r = datasets.make_request(
            id=f"old-{i:04}", kind="manual", source="test", chain_id=31337, start_block=0, end_block=49, created_at="x"
        )
        datasets.put(writer, "backfill_requests", r)
        requests.set_state(writer, "cryo_backfill", r.id, "done", "", "test")

    with S3Meter(s3.endpoint) as meter:
        before = idle_poll(meter)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(ended, range(1000)))
        after = idle_poll(meter)
    assert requests.summary(writer, "cryo_backfill")["counts"] == {"done": 1001}
    assert sum(before.values()) <= 20 and before["HEAD"] == 0, before
    # the same, but for one more page of the arrivals listing: the 1,000 came in the last ten
    # minutes, which each poll looks back over for producers whose clocks lag
    assert after == before + Counter({"LIST": 1}), (before, after)


def test_status_without_rpc_needs_no_pool(tmp_path: Path) -> None:
    """Whoever inspects the archive from a laptop holds no RPC secret: `status --no-rpc` reads the store only."""
    config, root = dag_file(tmp_path, devnet_dag()), tmp_path / "archive"
    request_id = request(config, root, 0, 49, {})
    run = cli("status", "--config", str(config), "--root", str(root), "--json", "--no-rpc")
    assert run.code == 0, run.text
    [node] = json.loads(run.out)["nodes"]
    assert [(r["id"], r["state"]) for r in node["requests"]["items"]] == [(request_id, "pending")]
    without = cli("status", "--config", str(config), "--root", str(root))
    assert without.code == 2 and "pool 'monad' not found" in without.text


def test_a_source_outlives_store_errors() -> None:
    """A source's tick that meets a store error is tried again with backoff; invalid config ends it."""
    stop, calls = threading.Event(), []

    def turn() -> None:
        calls.append(time.monotonic())
        if len(calls) <= 2:
            raise StorageError("storage: cannot read operator/hot/cursor.json: permission denied")
        stop.set()

    retrying("hot", stop, turn, 0.01)
    assert len(calls) == 3 and calls[1] - calls[0] >= 0.9 and calls[2] - calls[1] >= 1.9

    def bad() -> None:
        raise ConfigError("invalid config: chunk_size: 50 differs from the archive's 100")

    with pytest.raises(ConfigError):
        retrying("hot", threading.Event(), bad, 0.01)

"""The DAG runs: requests in, partitions leased and run in processes, events out (issue: the spec's node)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import CANARY, Devnet, Run, cli, files_under, manifest, rpc
from servers import FaultProxy
from test_config import SPEC_YAML

from cryo_ingest import devnet

EXE = str(Path(sys.executable).parent / "cryo-ingest")
DATASETS = ("blocks", "transactions", "logs")


def pool_env(url: str, name: str = "monad") -> dict[str, str]:
    return {f"CRYO_INGEST_RPC_POOL_{name.upper()}": json.dumps({"endpoints": [{"name": "local", "url": url}]})}


def dag_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dag.yaml"
    path.write_text(text)
    return path


def devnet_dag(extra_config: str = "", node: str = "", sources: str = "") -> str:
    """The spec's node on the devnet's chain id, small chunks, plus what a test adds."""
    text = SPEC_YAML.replace("chain_id: 10143", "chain_id: 31337").replace(
        "    rpc_pool: monad\n", "    rpc_pool: monad\n    chunk_size: 50\n    chunks_per_partition: 1\n" + extra_config
    )
    return text + node + sources


def events_in(root: Path, dataset: str = "cold_blocks") -> list[dict[str, Any]]:
    base = root / "datasets" / dataset / "events"
    return [json.loads(p.read_text()) for p in sorted(base.rglob("*.json"))] if base.exists() else []


def entries(root: Path, chain_id: int, datasets: tuple[str, ...] = DATASETS) -> list[tuple[str, int, str]]:
    return sorted((d, f["start_block"], f["sha256"]) for d in datasets for f in manifest(root, chain_id, d)["files"])


def status(config: Path, root: Path | str, env: dict[str, str]) -> dict[str, Any]:
    run = cli("status", "--config", str(config), "--root", str(root), "--json", env=env)
    assert run.code == 0, run.text
    return dict(json.loads(run.out)["nodes"][0])


def test_spec_node_as_written_runs_a_manual_request(tmp_path: Path) -> None:
    """The spec's YAML exactly as written (chain 10143, pool `monad`, chunks of 1000): request, run, events."""
    config, root = dag_file(tmp_path, SPEC_YAML), tmp_path / "archive"
    with devnet.anvil(chain_id=10143) as node:
        devnet.generate_sync(node.url, 1006, 1)  # Monad's rule: final = finalized - 3 = head - 5
        env = pool_env(node.url)
        req = cli("request", "--config", str(config), "--root", str(root), "--start", "0", "--end", "999", env=env)
        assert req.code == 0, req.text
        request_id = req.out.strip()
        assert request_id.startswith("manual-")
        again = cli("request", "--config", str(config), "--root", str(root), "--start", "0", "--end", "999", env=env)
        assert again.out.strip() == f"{request_id} (already requested)"
        run = cli("run", "--config", str(config), "--root", str(root), env=env)
        assert run.code == 0, run.text
        st = status(config, root, env)
    assert [(r["id"], r["state"]) for r in st["requests"]["items"]] == [(request_id, "done")]
    recorded = entries(root, 10143)
    assert [(d, s) for d, s, _ in recorded] == sorted((d, 0) for d in DATASETS)
    events = events_in(root)
    assert sorted((e["dataset"], e["start_block"], e["sha256"]) for e in events) == recorded
    assert {(e["request_id"], e["output_dataset"], e["chain_id"]) for e in events} == {(request_id, "cold_blocks", 10143)}
    assert all(e["uri"] == f"{root}/cold/10143/{e['dataset']}/{e['dataset']}_00000000_00000999.parquet" for e in events)
    assert st["datasets"]["blocks"]["archived"] == [[0, 999]]


class StallProxy(FaultProxy):
    """Forwards to the node; never answers requests for blocks in `stall`; records who asked for which block, when.

    The path of the URL names the caller (each runner gets its own), so a test can tell runners apart.
    """

    def __init__(self, upstream: str, stall: range = range(0), delay: float = 0.0) -> None:
        super().__init__(upstream)
        self.stall, self.delay = stall, delay
        self.seen: list[tuple[str, int, float]] = []  # (path, block, time)
        self.released = False

    def __exit__(self, *exc: object) -> None:
        self.released = True  # stalled handlers return, so the server stops at once
        super().__exit__(*exc)

    async def handle(self, request: Any) -> Any:
        import asyncio

        raw = await request.read()
        body = json.loads(raw)
        for item in body if isinstance(body, list) else [body]:
            block = _block_of(item)
            if block is not None:
                self.seen.append((request.path, block, time.monotonic()))
                while block in self.stall and not self.released:
                    await asyncio.sleep(0.1)
        if self.delay:
            await asyncio.sleep(self.delay)
        return await self._forward(raw)


def _block_of(item: dict[str, Any]) -> int | None:
    params = item.get("params") or []
    if item.get("method") in ("eth_getBlockByNumber", "eth_getBlockReceipts", "trace_block") and params:
        value = params[0]
    elif item.get("method") == "eth_getLogs" and params:
        value = params[0].get("fromBlock")
    else:
        return None
    return int(value, 16) if isinstance(value, str) and value.startswith("0x") else None


def start(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """A runner in its own session, as a container: killing its group kills its partitions too."""
    return subprocess.Popen(
        [EXE, *args],
        env={**os.environ, "COLUMNS": "200", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(p: subprocess.Popen[str], timeout: float = 120) -> Run:
    out, _ = p.communicate(timeout=timeout)
    return Run(p.returncode, out, "")


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def request(config: Path, root: Path | str, start_block: int, end: int, env: dict[str, str], *extra: str) -> str:
    run = cli(
        "request", "--config", str(config), "--root", str(root), "--start", str(start_block), "--end", str(end), *extra, env=env
    )
    assert run.code == 0, run.text
    return run.out.strip()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--start", "10", "--end", "5"], "invalid request: end_block (5) is before start_block (10)"),
        (["--start", "0", "--end", "5", "--datasets", "blocks,bogus"], "invalid request: datasets: unknown dataset 'bogus'"),
        (["--start", "0", "--end", "5", "--datasets", "traces"], "invalid request: datasets: traces is not among node"),
        (["--start", "0", "--end", "5", "--chain-id", "1"], "invalid request: chain_id: 1, but node cryo_backfill archives"),
        (["--start", "0", "--end", "5", "--node", "nope"], "invalid config: --node: no cryo_ingest node named 'nope'"),
        (["--start", "0", "--end", "5", "--id", "../escape"], "invalid request: id: String should match pattern"),
    ],
)
def test_bad_requests_enqueue_nothing(args: list[str], message: str, tmp_path: Path) -> None:
    config, root = dag_file(tmp_path, devnet_dag()), tmp_path / "archive"
    run = cli("request", "--config", str(config), "--root", str(root), *args)
    assert run.code == 2 and message in run.text, run.text
    assert len(run.text.strip().splitlines()) == 1
    assert not root.exists()


def test_malformed_event_is_marked_invalid_and_the_node_goes_on(chain: Devnet, tmp_path: Path) -> None:
    config, root = dag_file(tmp_path, devnet_dag()), tmp_path / "archive"
    env = pool_env(chain.url)
    bad = root / "datasets" / "backfill_requests" / "events"
    bad.mkdir(parents=True)
    (bad / "garbage.json").write_text("{not json")
    (bad / "other-chain.json").write_text(
        json.dumps(
            {
                "id": "other-chain",
                "kind": "manual",
                "source": "x",
                "chain_id": 1,
                "start_block": 0,
                "end_block": 9,
                "created_at": "",
            }
        )
    )
    good = request(config, root, 0, 49, env)
    run = cli("run", "--config", str(config), "--root", str(root), env=env)
    assert run.code == 0, run.text
    states = {r["id"]: (r["state"], r["reason"]) for r in status(config, root, env)["requests"]["items"]}
    assert states[good] == ("done", "")
    assert states["garbage"][0] == "invalid" and "malformed event" in states["garbage"][1]
    assert states["other-chain"] == ("invalid", "chain 1, but node cryo_backfill archives chain 31337")


def test_timeout_kills_the_partition_and_fails_the_request_without_blocking_others(chain: Devnet, tmp_path: Path) -> None:
    # 10 s: a healthy partition (spawn, imports, 50 blocks) ends in about 2 s even on a loaded machine
    config = dag_file(tmp_path, devnet_dag("    attempts: 2\n").replace("timeout_seconds: 3600", "timeout_seconds: 10"))
    root, staging = tmp_path / "archive", tmp_path / "tmp"
    staging.mkdir()
    with StallProxy(chain.url, stall=range(50, 100)) as proxy:
        env = {**pool_env(proxy.url()), "TMPDIR": str(staging)}
        request_id = request(config, root, 0, 149, env)
        started = time.monotonic()
        run = cli("run", "--config", str(config), "--root", str(root), env=env)
        took = time.monotonic() - started
    assert run.code == 1, run.text
    assert "timed out after 10 s, killed" in run.text
    assert took < 10 * 2 + 1 + 20, (took, run.text)  # two attempts of 10 s, a 1 s backoff, start-up
    st = status(config, root, pool_env(chain.url))
    [item] = st["requests"]["items"]
    assert item["id"] == request_id and item["state"] == "failed"
    assert item["reason"].startswith("failed after 2 attempts: partition 50-99: partition 50-99: timed out")
    for dataset in DATASETS:  # the partitions around the stalled one were not blocked
        assert [f["start_block"] for f in manifest(root, 31337, dataset)["files"]] == [0, 100]
    assert not list((root / "cold").rglob("*_00000050_00000099.parquet"))
    assert list(staging.iterdir()) == [], "a killed partition left staging behind"


def test_two_runners_one_killed_lose_nothing_and_never_share_a_partition(chain: Devnet, s3: Any, tmp_path: Path) -> None:
    """Two runners on one S3 root; one is SIGKILLed (with its partitions) mid-partition; the other takes over."""
    config = dag_file(
        tmp_path, devnet_dag("    lease_seconds: 3\n    poll_seconds: 0.5\n").replace("max_concurrency: 20", "max_concurrency: 1")
    )
    bucket = s3.bucket("operator-two-runners")
    root = f"s3://{bucket}/archive"
    with StallProxy(chain.url, delay=0.02) as proxy:
        env_a, env_b = {**s3.env, **pool_env(proxy.url("/a"))}, {**s3.env, **pool_env(proxy.url("/b"))}
        request_id = request(config, root, 0, 249, env_a)
        a = start("run", "--config", str(config), "--root", root, env=env_a)
        b = start("run", "--config", str(config), "--root", root, env=env_b)

        def both_mid_partition() -> bool:
            now = time.monotonic()
            return all(any(p == who and now - t < 0.2 for p, _, t in proxy.seen) for who in ("/a", "/b"))

        wait_for(both_mid_partition, 60, "both runners extracting at once")
        os.killpg(a.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        a.wait()
        run_b = finish(b)
    assert run_b.code == 0, run_b.text
    st = status(config, root, {**s3.env, **pool_env(chain.url)})
    assert [(r["id"], r["state"]) for r in st["requests"]["items"]] == [(request_id, "done")]
    clean = tmp_path / "clean"
    assert (
        cli(
            "backfill", "--config", str(config), "--root", str(clean), "--start", "0", "--end", "249", env=pool_env(chain.url)
        ).code
        == 0
    )
    snapshot = {k.removeprefix("cold/"): v for k, v in _s3_objects(bucket, "archive/cold/").items()}
    assert snapshot == {k.removeprefix("cold/"): v for k, v in files_under(clean).items() if k.startswith("cold/")}
    windows: dict[tuple[str, int], list[float]] = {}
    for path, block, t in proxy.seen:
        windows.setdefault((path, block // 50), []).append(t)
    for cell in range(5):
        spans = [(min(ts), max(ts)) for (p, c), ts in windows.items() if c == cell]
        if len(spans) == 2:  # both runners touched this partition: only one after the other
            (_, first_end), (second_start, _) = sorted(spans)
            assert first_end <= second_start, f"partition {cell} extracted by both runners at once"
    taken_over = [c for (p, c), ts in windows.items() if p == "/b" and (("/a", c) in windows)]
    assert taken_over, "runner b finished the partition runner a was killed in"
    assert min(min(windows[("/b", c)]) for c in taken_over) >= killed_at, "b started a's partition only after a died"
    events = events_in_s3(bucket)
    assert len(events) == len({(e["dataset"], e["start_block"]) for e in events}) == 3 * 5


def _s3_objects(bucket: str, prefix: str) -> dict[str, bytes]:
    import boto3

    client = boto3.client("s3")
    keys = [
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for o in page.get("Contents", [])
    ]
    return {k.removeprefix("archive/"): client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def events_in_s3(bucket: str) -> list[dict[str, Any]]:
    return [json.loads(v) for v in _s3_objects(bucket, "archive/datasets/cold_blocks/events/").values()]


CRON = """\
- name: every3s
  operator: cron_source
  config: {schedule: "* * * * * */3"}
  output_dataset: backfill_requests
"""


def test_cron_ticks_catch_up_once_and_never_twice(chain: Devnet, tmp_path: Path) -> None:
    config, root = dag_file(tmp_path, devnet_dag(sources=CRON)), tmp_path / "archive"
    env = pool_env(chain.url)
    src = start("run", "--config", str(config), "--root", str(root), "--node", "every3s", env=env)

    def ids() -> list[str]:
        return sorted(p.stem for p in (root / "datasets/backfill_requests/events").glob("*.json"))

    wait_for(lambda: len(ids()) >= 2, 20, "two ticks")
    src.send_signal(signal.SIGTERM)
    assert finish(src, 30).code == 0
    two = ids()
    assert len(two) == 2 and all(i.startswith("cron-every3s-") for i in two)
    doc = json.loads((root / "datasets/backfill_requests/events" / f"{two[0]}.json").read_text())
    final = int(rpc(chain.url, "eth_getBlockByNumber", "finalized", False)["number"], 16)
    assert (doc["kind"], doc["start_block"], doc["end_block"]) == ("cron", 0, (final + 1) // 50 * 50 - 1)
    time.sleep(7)  # two ticks or more pass while the source is down
    src = start("run", "--config", str(config), "--root", str(root), "--node", "every3s", env=env)
    wait_for(lambda: len(ids()) >= 3, 10, "the catch-up tick")
    time.sleep(1.0)
    src.send_signal(signal.SIGTERM)
    assert finish(src, 30).code == 0
    after = ids()
    assert after[:2] == two and len(after) in (3, 4), after  # one catch-up for the missed ticks (+ at most one new tick)
    assert len(set(after)) == len(after)


def test_threshold_keeps_the_archive_near_the_head(tmp_path: Path) -> None:
    """anvil mines a block a second; the threshold source and the node in one process keep up within blocks + a chunk."""
    dag = devnet_dag("    poll_seconds: 0.5\n").replace("chunk_size: 50", "chunk_size: 5")
    dag += "- name: hot\n  operator: threshold_source\n  config: {blocks: 10, poll_seconds: 0.5}\n"
    dag += "  output_dataset: backfill_requests\n"
    config, root = dag_file(tmp_path, dag), tmp_path / "archive"
    with devnet.anvil() as node:
        devnet.generate_sync(node.url, 20, 2)
        p = start("run", "--config", str(config), "--root", str(root), env=pool_env(node.url))
        lags = []
        try:
            for second in range(30):
                rpc(node.url, "evm_mine")
                time.sleep(1)
                if second >= 20:
                    final = int(rpc(node.url, "eth_getBlockByNumber", "finalized", False)["number"], 16)
                    files = (
                        manifest(root, 31337, "blocks")["files"] if (root / "cold/31337/blocks/manifest.json").exists() else []
                    )
                    high = max((f["end_block"] for f in files), default=-1)
                    lags.append(final - high)
        finally:
            p.send_signal(signal.SIGTERM)
            run = finish(p, 60)
    assert run.code == 0, run.text
    assert lags and max(lags) <= 10 + 5, lags
    requests = sorted((root / "datasets/backfill_requests/events").glob("*.json"))
    assert requests and all(r.stem.startswith("threshold-hot-") for r in requests)


def test_idle_timeout_waits_for_work_then_exits_and_serves_metrics(chain: Devnet, tmp_path: Path) -> None:
    root = tmp_path / "archive"
    batch = dag_file(tmp_path, devnet_dag())
    t = time.monotonic()
    assert cli("run", "--config", str(batch), "--root", str(root), env=pool_env(chain.url)).code == 0
    batch_seconds = time.monotonic() - t
    config = dag_file(tmp_path, devnet_dag("    poll_seconds: 0.5\n").replace("idle_timeout: 0", "idle_timeout: 6"))
    env = pool_env(chain.url)
    port = devnet.free_port()
    t = time.monotonic()
    p = start("run", "--config", str(config), "--root", str(root), "--metrics-port", str(port), env=env)
    time.sleep(2)
    request_id = request(config, root, 0, 49, env)
    scraped: dict[str, str] = {}

    def archived() -> bool:
        for path in ("/metrics", "/healthz"):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
                    scraped[path] = resp.read().decode()
            except OSError:
                return False
        return 'cryo_ingest_blocks_archived_total{node="cryo_backfill"} 50.0' in scraped["/metrics"]

    wait_for(archived, 30, "the partition in the metrics")
    run = finish(p, 60)
    waited = time.monotonic() - t
    assert run.code == 0, run.text
    assert f"request {request_id} done" in run.text
    assert waited >= 2 + 6 and waited < 2 + 6 + 15, waited
    assert batch_seconds < waited - 6
    text = scraped["/metrics"]
    assert 'cryo_ingest_partitions_total{node="cryo_backfill",state="ok"} 1.0' in text
    assert 'cryo_ingest_rpc_requests_total{endpoint="local",node="cryo_backfill"}' in text
    assert 'cryo_ingest_lag_blocks{dataset="blocks",node="cryo_backfill"}' in text
    assert scraped["/healthz"] == "ok\n"
    assert chain.url.split("//")[1] not in text, "metrics name endpoints, never URLs"


def test_sigterm_mid_partition_then_a_fresh_runner_loses_nothing(chain: Devnet, tmp_path: Path) -> None:
    config = dag_file(tmp_path, devnet_dag("    grace_seconds: 0\n").replace("max_concurrency: 20", "max_concurrency: 2"))
    root = tmp_path / "archive"
    with StallProxy(chain.url, delay=0.01) as proxy:
        env = pool_env(proxy.url())
        request_id = request(config, root, 0, 249, env)
        p = start("run", "--config", str(config), "--root", str(root), env=env)
        wait_for(lambda: len(proxy.seen) > 30, 60, "a partition under way")
        p.send_signal(signal.SIGTERM)
        t = time.monotonic()
        stopped = finish(p, 60)
        assert time.monotonic() - t < 10
        assert stopped.code == 0, stopped.text
        assert "lease released" in stopped.text
        fresh = cli("run", "--config", str(config), "--root", str(root), env=env)
    assert fresh.code == 0, fresh.text
    st = status(config, root, pool_env(chain.url))
    assert [(r["id"], r["state"]) for r in st["requests"]["items"]] == [(request_id, "done")]
    for dataset in DATASETS:
        assert [f["start_block"] for f in manifest(root, 31337, dataset)["files"]] == [0, 50, 100, 150, 200]
    assert sorted((e["dataset"], e["start_block"], e["sha256"]) for e in events_in(root)) == entries(root, 31337)


def test_canary_key_reaches_no_output_and_no_file(chain: Devnet, tmp_path: Path) -> None:
    """The pool's URL carries a key; request, run (with a failing partition), status and every file must not show it."""
    config = dag_file(tmp_path, devnet_dag("    attempts: 1\n").replace("timeout_seconds: 3600", "timeout_seconds: 6"))
    root = tmp_path / "archive"
    with StallProxy(chain.url, stall=range(50, 100)) as proxy:
        env = pool_env(proxy.url(f"/v2/{CANARY}"))
        texts = [cli("request", "--config", str(config), "--root", str(root), "--start", "0", "--end", "99", env=env).text]
        run = cli("run", "--config", str(config), "--root", str(root), "-v", env=env)
        texts += [run.text, cli("status", "--config", str(config), "--root", str(root), "--json", env=env).text]
        texts.append(cli("status", "--config", str(config), "--root", str(root), env=env).text)
    assert run.code == 1 and "timed out" in run.text, run.text
    assert any(f"/v2/{CANARY}" in p for p, _, _ in proxy.seen), "the key did reach the provider"
    for text in texts:
        assert CANARY not in text
    for name, data in files_under(root).items():
        assert CANARY.encode() not in data, name

"""The RPC pool behind the gateway: faults, rate limits, failover, secrets. Real servers on loopback."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import boto3
import pytest
from conftest import CANARY, S3, Devnet, Run, backfill, files_under, manifest, rpc
from servers import FaultProxy, Faults

from cryo_ingest import devnet
from cryo_ingest.config import Endpoint
from cryo_ingest.gateway import Gateway

END = 149
DATASETS = "blocks,transactions,logs,traces"


def pool_env(*endpoints: dict[str, object]) -> dict[str, str]:
    return {"CRYO_INGEST_RPC_POOL_TEST": json.dumps({"endpoints": list(endpoints)})}


def run_pool(root: Path, env: dict[str, str], *extra: str, end: int = END) -> Run:
    return backfill(root, None, "--rpc-pool", "test", "--json", *extra, end=end, env=env)


@pytest.fixture(scope="module")
def clean_archive(chain: Devnet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("clean")
    run = backfill(root, chain.url, end=END)
    assert run.code == 0, run.text
    return files_under(root)


@pytest.mark.parametrize("kind", ["http_429", "http_500", "http_503", "rpc_32005", "truncated", "reset", "null_result"])
def test_30_percent_faults_still_give_the_clean_archive(
    kind: str, chain: Devnet, clean_archive: dict[str, bytes], tmp_path: Path
) -> None:
    root = tmp_path / "a"
    faults = Faults()
    setattr(faults, kind, 0.3)
    with FaultProxy(chain.url, faults) as proxy:
        run = run_pool(root, pool_env({"name": "flaky", "url": proxy.url(f"/v2/{CANARY}")}))
    assert run.code == 0, run.text
    assert proxy.injected[kind] > 20
    doc = json.loads(run.out)
    assert doc["gateway"]["flaky"]["retries"] >= proxy.injected[kind] * 0.9
    assert files_under(root) == clean_archive
    assert CANARY not in run.text


def test_rate_limit_is_respected(chain: Devnet, tmp_path: Path) -> None:
    proxies = [FaultProxy(chain.url) for _ in range(3)]
    for p in proxies:
        p.__enter__()
    try:
        env = pool_env(*({"name": f"k{i}", "url": p.url(), "requests_per_second": 50} for i, p in enumerate(proxies)))
        run = run_pool(tmp_path / "r", env, end=99)
    finally:
        for p in proxies:
            p.__exit__()
    assert run.code == 0, run.text
    for p in proxies:
        times = sorted(p.times)
        assert len(times) > 50
        # any one-second window: the rate, plus the bucket's burst (a tenth of a second's worth), plus
        # 100 ms of arrival jitter between the gateway and this proxy's clock. A one-second bucket gave 101.
        worst = max(sum(1 for t in times[i:] if t - s < 1.0) for i, s in enumerate(times))
        assert worst <= 50 + 5 + 5, worst


def test_failover_completes_on_the_healthy_endpoints(chain: Devnet, clean_archive: dict[str, bytes], tmp_path: Path) -> None:
    dead_url = f"http://127.0.0.1:{devnet.free_port()}/v2/{CANARY}-dead"
    with (
        FaultProxy(chain.url) as good,
        FaultProxy(chain.url, Faults(status=401)) as auth,
        FaultProxy(chain.url, Faults(chain_id=1)) as wrong,
        FaultProxy(chain.url, Faults(die_after=100)) as dying,
    ):
        env = pool_env(
            {"name": "good", "url": good.url(f"/v2/{CANARY}")},
            {"name": "down", "url": dead_url},
            {"name": "auth", "url": auth.url(f"/v2/{CANARY}")},
            {"name": "wrongchain", "url": wrong.url(f"/v2/{CANARY}")},
            {"name": "dying", "url": dying.url(f"/v2/{CANARY}")},
        )
        root = tmp_path / "f"
        run = run_pool(root, env)
    assert run.code == 0, run.text
    assert files_under(root) == clean_archive
    doc = json.loads(run.out)["gateway"]
    assert doc["auth"]["disabled"] == "http 401" and doc["wrongchain"]["disabled"] == "chain 1"
    assert doc["good"]["requests"] > 0
    assert dying.faults.dead and doc["dying"]["errors"].get("connection", 0) + doc["dying"]["errors"].get("connect", 0) > 0
    assert "wrongchain serves chain 1" in run.text.replace("endpoint ", "")
    assert CANARY not in run.text


def test_all_endpoints_dead_fails_cleanly(chain: Devnet, tmp_path: Path) -> None:
    root = tmp_path / "d"
    staging = tmp_path / "tmp"
    staging.mkdir()
    with FaultProxy(chain.url, Faults(die_after=3)) as proxy:  # chain id, head and finality pass; then it dies
        env = {**pool_env({"name": "only", "url": proxy.url(f"/v2/{CANARY}")}), "TMPDIR": str(staging)}
        run = backfill(root, None, "--rpc-pool", "test", end=49, datasets="blocks", env=env)
    assert run.code == 1
    assert "retry budget spent" in run.text or "Cryo" in run.text
    assert not (root / "cold" / "31337" / "blocks" / "manifest.json").exists()
    assert not list(root.rglob("*.parquet"))
    assert list(staging.iterdir()) == []
    assert CANARY not in run.text


def test_pool_file_with_env_reference(chain: Devnet, tmp_path: Path) -> None:
    pools = tmp_path / "pools.yaml"
    pools.write_text("pools:\n  local:\n    endpoints:\n      - name: mine\n        url: ${MY_RPC}\n")
    pool = ["--rpc-pool", "local", "--rpc-pool-file", str(pools)]
    run = backfill(tmp_path / "p", None, *pool, end=49, datasets="blocks", env={"MY_RPC": chain.url})
    assert run.code == 0, run.text
    assert len(manifest(tmp_path / "p", 31337, "blocks")["files"]) == 1


def test_pool_from_secrets_manager(s3: S3, chain: Devnet, tmp_path: Path) -> None:
    """What a worker wrapper reads from AWS Secrets Manager: moto's server on loopback speaks it."""
    secrets = boto3.client("secretsmanager")
    pool = {"endpoints": [{"name": "from-secret", "url": f"{chain.url}/", "requests_per_second": 500}]}
    secrets.create_secret(Name="cryo/monad", SecretString=json.dumps(pool))
    from_secret = ["--rpc-pool", "monad", "--rpc-pool-secret"]
    run = backfill(tmp_path / "a", None, *from_secret, "cryo/monad", end=49, datasets="blocks", env=s3.env)
    assert run.code == 0, run.text
    assert "from-secret" in run.text
    missing = backfill(tmp_path / "b", None, *from_secret, "cryo/none", end=49, datasets="blocks", env=s3.env)
    assert missing.code == 2
    assert "cannot read secret 'cryo/none': ResourceNotFoundException" in missing.text
    assert not (tmp_path / "b").exists()


def test_batch_requests_are_split_retried_and_reassembled_in_order(chain: Devnet) -> None:
    calls = [{"jsonrpc": "2.0", "id": 100 - i, "method": "eth_getBlockByNumber", "params": [hex(i), False]} for i in range(30)]
    calls.append({"jsonrpc": "2.0", "id": "x", "method": "no_such_method", "params": []})
    faults = Faults(http_500=0.3, rpc_32005=0.2)
    with (
        FaultProxy(chain.url, faults) as proxy,
        Gateway([Endpoint.model_validate({"url": proxy.url(), "name": "f"})], 31337) as gw,
    ):
        req = urllib.request.Request(gw.url, json.dumps(calls).encode(), {"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            replies = json.loads(resp.read())
        assert sum(proxy.injected.values()) > 3
    assert [r["id"] for r in replies] == [c["id"] for c in calls]
    for i, reply in enumerate(replies[:30]):
        assert reply["result"] == rpc(chain.url, "eth_getBlockByNumber", hex(i), False)
    assert replies[30]["error"]["code"] == -32601  # a definite answer is passed on, not retried


@pytest.mark.parametrize("scenario", ["success", "auth", "dead", "wrong_chain", "failed_validation"])
def test_canary_key_never_leaks(scenario: str, chain: Devnet, tmp_path: Path) -> None:
    root, staging = tmp_path / "root", tmp_path / "tmp"
    staging.mkdir()
    faults = {"auth": Faults(status=403), "dead": Faults(dead=True), "wrong_chain": Faults(chain_id=1)}.get(scenario, Faults())
    with FaultProxy(chain.url, faults) as proxy:
        url = proxy.url(f"/v2/{CANARY}?apikey={CANARY}")
        if scenario == "failed_validation":  # a chunk that cannot be published: another object holds its key
            (root / "cold/31337/blocks").mkdir(parents=True)
            (root / "cold/31337/blocks/blocks_00000000_00000049.parquet").write_bytes(b"other bytes")
        run = backfill(root, url, "--json", "-v", end=49, datasets="blocks,transactions", env={"TMPDIR": str(staging)})
    assert run.code == (0 if scenario == "success" else 1), run.text
    assert CANARY not in run.text
    written = [*root.rglob("*"), *staging.rglob("*")]
    assert all(CANARY.encode() not in p.read_bytes() for p in written if p.is_file())
    assert list(staging.iterdir()) == []

"""`cryo-ingest run --scheduler`: the operator's partitions on a real Dask cluster (test_cluster.py's
scheduler and two workers), the pool's canary key only in the workers' environment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import CANARY, Devnet, cli, files_under, without_provenance
from dask_cluster import PARTITION_PROCESS, Cluster, staging_left
from test_cluster import assert_no_canary, client_env, cluster
from test_operator import StallProxy, dag_file, devnet_dag, finish, pool_env, request, start, wait_for

from cryo_ingest.archive.storage import open_store
from cryo_ingest.operator import requests

__all__ = ["cluster"]  # the fixture, from test_cluster.py (with this module's proxy)

NODE = "cryo_backfill"
END = 249  # 5 cells of one chunk of 50


def dag(max_concurrency: int = 2, extra: str = "") -> str:
    text = devnet_dag(extra).replace("rpc_pool: monad", "rpc_pool: test")
    return text.replace("max_concurrency: 20", f"max_concurrency: {max_concurrency}")


def outputs(root: Path) -> tuple[dict[str, object], list[dict[str, object]]]:
    """The archive less its provenance (the endpoints' names differ between a local and a cluster run), and the output
    dataset's events with the root taken out of their URIs."""
    archive = without_provenance(files_under(root / "cold"))
    events = [
        json.loads(p.read_text().replace(str(root), "ROOT")) for p in sorted((root / "datasets" / "cold_blocks").rglob("*.json"))
    ]
    return archive, events


def state(root: Path, request_id: str) -> str:
    return requests.load_state(open_store(str(root)), NODE, request_id).state


@pytest.fixture(scope="module")
def proxy(chain: Devnet) -> Iterator[StallProxy]:
    """The workers' endpoint (its URL carries the canary key); a test may make it stall."""
    with StallProxy(chain.url) as p:
        yield p


@pytest.fixture(scope="module")
def local_run(chain: Devnet, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, object], list[dict[str, object]]]:
    """The same request run by `cryo-ingest run` on this machine, the pool in its own environment."""
    tmp = tmp_path_factory.mktemp("local-run")
    config, root = dag_file(tmp, dag()), tmp / "archive"
    env = pool_env(chain.url, "test")
    request(config, root, 0, END, env, "--id", "r1")
    run = cli("run", "--config", str(config), "--root", str(root), env=env)
    assert run.code == 0, run.text
    assert state(root, "r1") == "done"
    return outputs(root)


def partitions_running(cluster: Cluster) -> int:
    """Partition processes under the workers: each worker (its nanny's child) starts one per partition."""
    count = 0
    for nanny in cluster.workers:
        try:
            for worker in psutil.Process(nanny.pid).children():
                count += sum(PARTITION_PROCESS in " ".join(c.cmdline()) for c in worker.children())
        except psutil.Error:  # a process ended while we looked
            continue
    return count


class Sampler(threading.Thread):
    """The most partition processes seen at once on the cluster, sampled every 20 ms."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(daemon=True)
        self.cluster, self.peak, self.done = cluster, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, partitions_running(self.cluster))
            time.sleep(0.02)


def test_run_on_cluster_archives_as_the_local_run_and_the_key_stays_on_the_workers(
    cluster: Cluster, local_run: tuple[dict[str, object], list[dict[str, object]]], tmp_path: Path
) -> None:
    config, root = dag_file(tmp_path, dag()), tmp_path / "archive"
    request(config, root, 0, END, client_env(), "--id", "r1")
    run = cli("run", "--config", str(config), "--root", str(root), "--scheduler", cluster.address, "-v", env=client_env())
    assert run.code == 0, run.text
    assert "partition 0-49 ok" in run.text, run.text
    assert state(root, "r1") == "done"
    assert outputs(root) == local_run
    scheduler_log = cluster.scheduler_log.read_text()
    assert "partition_task" in scheduler_log and "PoolRef(name='test'" in scheduler_log  # specs are logged ...
    assert "final_head_task" in scheduler_log  # ... the final head's too, asked by a worker ...
    assert_no_canary(run.text, scheduler_log, folders=(root,))  # ... and the key is in none


def test_max_concurrency_holds_across_the_cluster_for_two_runners(
    cluster: Cluster, local_run: tuple[dict[str, object], list[dict[str, object]]], tmp_path: Path
) -> None:
    """Two runners of one node, each allowed 2 partitions, 4 worker threads: still 2 at once in all."""
    config, root = dag_file(tmp_path, dag(max_concurrency=2)), tmp_path / "archive"
    request(config, root, 0, END, client_env(), "--id", "r1")
    env = {**client_env(), "DASK_SCHEDULER_ADDRESS": cluster.address}  # the flag's environment variable
    sampler = Sampler(cluster)
    sampler.start()
    runners = [start("run", "--config", str(config), "--root", str(root), env=env) for _ in range(2)]
    runs = [finish(p, 240) for p in runners]
    sampler.done.set()
    sampler.join()
    for run in runs:
        assert run.code == 0, run.text
    assert all("partition" in run.text for run in runs), "both runners ran partitions"
    assert 1 <= sampler.peak <= 2, f"{sampler.peak} partitions ran at once"
    assert state(root, "r1") == "done"
    assert outputs(root) == local_run


def test_sigterm_stops_the_partitions_on_the_workers(cluster: Cluster, proxy: StallProxy, tmp_path: Path) -> None:
    """Past the grace period the runner stops its partitions: on a cluster, their processes on the workers end."""
    config, root = dag_file(tmp_path, dag(extra="    grace_seconds: 0\n")), tmp_path / "archive"
    request(config, root, 0, END, client_env(), "--id", "r1")
    proxy.seen.clear()  # the module's earlier tests' requests
    proxy.stall = range(END + 1)  # every partition hangs on its first block, until stopped
    try:
        p = start("run", "--config", str(config), "--root", str(root), "--scheduler", cluster.address, env=client_env())
        wait_for(lambda: any(block is not None for _, block, _ in proxy.seen), 60, "a partition asking for blocks")
        p.send_signal(signal.SIGTERM)
        stopped = finish(p, 60)
        assert stopped.code == 0, stopped.text
        assert "lease released" in stopped.text
        wait_for(lambda: partitions_running(cluster) == 0, 5, "the partitions' processes on the workers to end")
    finally:
        proxy.stall = range(0)
    assert state(root, "r1") == "running"  # not failed: a fresh runner takes it up


def test_timeout_kills_the_partition_on_its_worker(cluster: Cluster, proxy: StallProxy, tmp_path: Path) -> None:
    """`timeout_seconds` holds on a worker: its partition's process is killed and its staging folder removed."""
    text = dag(extra="    attempts: 1\n").replace("timeout_seconds: 3600", "timeout_seconds: 5")
    config, root = dag_file(tmp_path, text), tmp_path / "archive"
    request(config, root, 0, 49, client_env(), "--id", "r1")
    proxy.stall = range(END + 1)  # the partition hangs on its first block
    try:
        run = cli("run", "--config", str(config), "--root", str(root), "--scheduler", cluster.address, env=client_env())
    finally:
        proxy.stall = range(0)
    assert run.code == 1, run.text
    assert "partition 0-49: timed out after 5 s, killed" in run.text, run.text
    assert state(root, "r1") == "failed"
    assert partitions_running(cluster) == 0
    assert not staging_left(cluster, 10), "the killed partition left its staging folder"


@pytest.mark.parametrize(
    ("args", "config_rpc"),
    [(["--rpc", f"http://127.0.0.1:9/v2/{CANARY}"], False), ([], True)],
    ids=["--rpc", "config-rpc"],
)
def test_run_scheduler_refuses_a_url(args: list[str], config_rpc: bool, tmp_path: Path) -> None:
    text = dag()
    if config_rpc:
        text = text.replace("    rpc_pool: test\n", f"    rpc: [http://127.0.0.1:9/v2/{CANARY}]\n")
    config, root = dag_file(tmp_path, text), tmp_path / "archive"
    run = cli("run", "--config", str(config), "--root", str(root), "--scheduler", "tcp://127.0.0.1:9", *args)
    assert run.code == 2, run.text
    assert "--scheduler needs a pool by name" in run.text
    assert CANARY not in run.text
    assert not root.exists()


def test_run_without_scheduler_imports_no_dask() -> None:
    code = "import sys, cryo_ingest.cli; sys.exit('distributed' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def test_run_with_an_unreachable_scheduler_says_so(tmp_path: Path) -> None:
    config, root = dag_file(tmp_path, dag()), tmp_path / "archive"
    env = {**client_env(), "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2"}
    run = cli("run", "--config", str(config), "--root", str(root), "--scheduler", "tcp://127.0.0.1:9", env=env)
    assert run.code == 1, run.text
    assert "--scheduler tcp://127.0.0.1:9: cannot reach the scheduler" in run.text
    assert "Traceback" not in run.text

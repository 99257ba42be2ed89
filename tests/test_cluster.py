"""Partitions on a real Dask cluster: a `dask scheduler` and two `dask worker` processes on loopback,
the pool's key only in the workers' environment."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from conftest import CANARY, Devnet, backfill, backfill_command, files_under
from servers import FaultProxy

DASK = str(Path(sys.executable).parent / "dask")
END = 249  # 5 chunks of 50: two partitions (4 chunks at most each)
SPEC_LOG = str(Path(__file__).parent / "dask_spec_log.py")


@dataclass
class Cluster:
    address: str
    scheduler_log: Path
    workers: list[subprocess.Popen[bytes]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def proxy(chain: Devnet) -> Iterator[FaultProxy]:
    with FaultProxy(chain.url) as p:  # a clean proxy, so the endpoint URL can carry the canary key
        yield p


@pytest.fixture
def cluster(proxy: FaultProxy, tmp_path: Path) -> Iterator[Cluster]:
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("CRYO_INGEST_RPC_POOL_")}
    log = tmp_path / "scheduler.log"
    with log.open("wb") as out:
        scheduler = subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0", "--preload", SPEC_LOG],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=base,
        )
    pool = {"endpoints": [{"name": "node", "url": proxy.url(f"/v2/{CANARY}")}]}
    # docs/cluster.md: a worker starts each partition as a child process, which a daemonic process cannot
    worker_env = {**base, "CRYO_INGEST_RPC_POOL_TEST": json.dumps(pool), "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    workers = []
    for i in range(2):
        with (tmp_path / f"worker-{i}.log").open("wb") as out:
            cmd = [DASK, "worker", address, "--host", "127.0.0.1", "--nthreads", "2", "--dashboard-address", ":0"]
            workers.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=worker_env))
    try:
        from distributed import Client

        with Client(address, timeout=30) as client:  # type: ignore[no-untyped-call]
            client.wait_for_workers(2, timeout=60)
        yield Cluster(address, log, workers)
    finally:
        for p in [*workers, scheduler]:
            p.terminate()
        for p in [*workers, scheduler]:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="module")
def local_archive(chain: Devnet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("local")
    run = backfill(root, chain.url, end=END)
    assert run.code == 0, run.text
    return files_under(root)


def client_env() -> dict[str, str]:
    """The submitting machine's environment: no pool, so no key."""
    return {"CRYO_INGEST_RPC_POOL_TEST": ""}


def assert_no_canary(*texts: str, folders: tuple[Path, ...] = ()) -> None:
    for text in texts:
        assert CANARY.lower() not in text.lower()
    for folder in folders:
        for p in folder.rglob("*"):
            assert not p.is_file() or CANARY.lower().encode() not in p.read_bytes().lower(), p


def test_cluster_archive_equals_the_local_one_and_the_key_stays_on_the_workers(
    cluster: Cluster, local_archive: dict[str, bytes], tmp_path: Path
) -> None:
    root = tmp_path / "archive"
    run = backfill(root, None, "--rpc-pool", "test", "--scheduler", cluster.address, end=END, env=client_env())
    assert run.code == 0, run.text
    assert "partition" in run.text
    assert files_under(root) == local_archive
    scheduler_log = cluster.scheduler_log.read_text()
    assert "PoolRef(name='test'" in scheduler_log  # the task specs are in the log (dask_spec_log.py) ...
    assert_no_canary(run.text, scheduler_log, folders=(root,))  # ... and the key is not


def test_worker_killed_mid_partition_the_job_still_completes(
    cluster: Cluster, local_archive: dict[str, bytes], tmp_path: Path
) -> None:
    root = tmp_path / "archive"
    cmd = backfill_command(root, None, "--rpc-pool", "test", "--scheduler", cluster.address, "--max-concurrency", "4", end=END)
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **client_env()})
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and time.monotonic() < deadline:  # a worker process with a partition running under it
        for nanny in cluster.workers:
            for proc in psutil.Process(nanny.pid).children():
                if any("spawn_main" in " ".join(c.cmdline()) for c in proc.children(recursive=True)):
                    os.kill(proc.pid, signal.SIGKILL)  # the worker itself; its nanny starts a new one
                    killed = proc.pid
                    break
            if killed:
                break
        time.sleep(0.05)
    out, _ = job.communicate(timeout=240)
    assert killed is not None, "no partition was seen running"
    assert job.returncode == 0, out
    assert files_under(root) == local_archive
    assert_no_canary(out, cluster.scheduler_log.read_text(), folders=(root,))

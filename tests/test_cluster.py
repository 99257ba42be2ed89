"""Partitions on a real Dask cluster: a `dask scheduler` and two `dask worker` processes on loopback,
the pool's key only in the workers' environment."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CANARY, Devnet, backfill, backfill_command, files_under, without_provenance
from dask_cluster import LOOPBACK, Cluster, dask_cluster, kill_a_busy_worker, staging_left
from servers import FaultProxy

END = 249  # 5 chunks of 50: two partitions (4 chunks at most each)


@pytest.fixture(scope="module")
def proxy(chain: Devnet) -> Iterator[FaultProxy]:
    with FaultProxy(chain.url) as p:  # a clean proxy, so the endpoint URL can carry the canary key
        yield p


@pytest.fixture
def cluster(proxy: FaultProxy, tmp_path: Path) -> Iterator[Cluster]:
    pool = {"endpoints": [{"name": "node", "url": proxy.url(f"/v2/{CANARY}")}]}
    with dask_cluster(tmp_path, {"CRYO_INGEST_RPC_POOL_TEST": json.dumps(pool)}) as c:
        yield c


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
    assert without_provenance(files_under(root)) == without_provenance(local_archive)  # "node", not rpc-0
    scheduler_log = cluster.scheduler_log.read_text()
    assert "PoolRef(name='test'" in scheduler_log  # the task specs are in the log (dask_spec_log.py) ...
    assert_no_canary(run.text, scheduler_log, folders=(root,))  # ... and the key is not


def test_workers_started_non_daemonic_run_partitions_too(
    proxy: FaultProxy, local_archive: dict[str, bytes], tmp_path: Path
) -> None:
    """DASK_DISTRIBUTED__WORKER__DAEMON=False, which the docs once asked for, still works."""
    pool = {"endpoints": [{"name": "node", "url": proxy.url(f"/v2/{CANARY}")}]}
    with dask_cluster(tmp_path, {"CRYO_INGEST_RPC_POOL_TEST": json.dumps(pool)}, workers=(LOOPBACK,), daemon=False) as cluster:
        root = tmp_path / "archive"
        run = backfill(root, None, "--rpc-pool", "test", "--scheduler", cluster.address, end=END, env=client_env())
    assert run.code == 0, run.text
    assert without_provenance(files_under(root)) == without_provenance(local_archive)  # "node", not rpc-0


def test_worker_killed_mid_partition_the_job_still_completes(
    cluster: Cluster, local_archive: dict[str, bytes], tmp_path: Path
) -> None:
    root = tmp_path / "archive"
    cmd = backfill_command(root, None, "--rpc-pool", "test", "--scheduler", cluster.address, "--max-concurrency", "4", end=END)
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **client_env()})
    killed = kill_a_busy_worker(cluster)
    out, _ = job.communicate(timeout=240)
    assert killed is not None, "no partition was seen running"
    assert job.returncode == 0, out
    assert without_provenance(files_under(root)) == without_provenance(local_archive)  # "node", not rpc-0
    assert_no_canary(out, cluster.scheduler_log.read_text(), folders=(root,))
    assert not staging_left(cluster, 10), "the killed worker's orphaned partition left its staging folder"


def test_a_partition_the_cluster_gives_up_on_fails_as_a_local_one_does(
    proxy: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dask gives up on a task whose worker died more often than allowed (0 here): that partition fails,
    named in one line and in the summary; the job goes on with the others and exits 1, no traceback."""
    monkeypatch.setenv("DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES", "0")
    pool = {"endpoints": [{"name": "node", "url": proxy.url(f"/v2/{CANARY}")}]}
    with dask_cluster(tmp_path, {"CRYO_INGEST_RPC_POOL_TEST": json.dumps(pool)}) as cluster:
        cmd = backfill_command(tmp_path / "a", None, "--rpc-pool", "test", "--scheduler", cluster.address, "--json", end=END)
        job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **client_env()})
        killed = kill_a_busy_worker(cluster)
        out, err = job.communicate(timeout=240)
    assert killed is not None, "no partition was seen running"
    assert job.returncode == 1, out + err
    assert "Traceback" not in err, err
    failed = json.loads(out)["failed"]
    assert len(failed) == 1 and ": on the cluster: KilledWorker: " in failed[0], failed

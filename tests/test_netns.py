"""`backfill --scheduler` across hosts for real: the scheduler, two workers, the devnet, the S3 server
and the submitting client each in a network namespace of its own, joined by veth pairs through one
bridge. A process reaches another host at its address only, never at its loopback: each worker's
partitions go through the worker's own loopback gateway, and nothing may need anyone else's."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from conftest import backfill, backfill_command, files_under, run_command, without_provenance
from dask_cluster import Cluster, Host, dask_cluster, kill_a_busy_worker, staging_left
from servers import s3_env

from cryo_ingest import devnet

BLOCKS = 60
END = 59
CHUNK = 5  # 12 chunks: three partitions of 4
HOSTS = ("sched", "w0", "w1", "node", "s3", "client")
SERVERS = str(Path(__file__).parent / "servers.py")


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def free_subnet() -> str:
    """A 10.x.y.0/24 no route of this machine uses (other runs' bridges included)."""
    routes = ip("-4", "route").stdout
    while True:
        prefix = f"10.{random.randint(100, 254)}.{random.randint(0, 255)}"
        if f"{prefix}." not in routes:
            return prefix


@pytest.fixture(scope="module")
def net() -> Iterator[dict[str, Host]]:
    """The hosts, by name; the root namespace (this test) at .1 on the bridge, to set up and read back.

    Names are unique per run; teardown kills whatever still runs in each namespace, then removes it."""
    tag = uuid.uuid4().hex[:6]
    bridge = f"cibr{tag}"
    made: list[str] = []
    try:
        try:
            ip("netns", "add", f"ci-{tag}-{HOSTS[0]}")
        except (OSError, subprocess.CalledProcessError) as err:
            detail = err.stderr.strip() if isinstance(err, subprocess.CalledProcessError) else err
            pytest.skip(f"network namespaces unavailable (`ip netns add` needs root and iproute2): {detail}")
        made.append(f"ci-{tag}-{HOSTS[0]}")
        prefix = free_subnet()
        ip("link", "add", bridge, "type", "bridge")
        ip("addr", "add", f"{prefix}.1/24", "dev", bridge)
        ip("link", "set", bridge, "up")
        hosts = {}
        for i, name in enumerate(HOSTS):
            ns, outside, inside = f"ci-{tag}-{name}", f"cv{tag}{i}a", f"cv{tag}{i}b"
            if ns not in made:
                ip("netns", "add", ns)
                made.append(ns)
            ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            ip("link", "set", inside, "netns", ns)
            ip("link", "set", outside, "master", bridge, "up")
            ip("-n", ns, "addr", "add", f"{prefix}.{i + 2}/24", "dev", inside)
            ip("-n", ns, "link", "set", inside, "up")
            ip("-n", ns, "link", "set", "lo", "up")
            hosts[name] = Host(f"{prefix}.{i + 2}", ns)
        yield hosts
    finally:
        for ns in made:
            for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
                with suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # its veth ends go with it
        if made:  # else `ip netns add` failed, before the bridge (or there is no `ip`)
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def reaches(host: Host, address: str, port: int) -> bool:
    """Whether a process on `host` can open a TCP connection to address:port."""
    probe = f"import socket; socket.create_connection(({address!r}, {port}), timeout=2)"
    return run_command(host.command([sys.executable, "-c", probe])).code == 0


@pytest.fixture(scope="module")
def node(net: dict[str, Host]) -> Iterator[str]:
    """anvil on the `node` host, its chain made from here through the bridge."""
    host = net["node"]
    with devnet.anvil(host=host.ip, launcher=host.command([])) as anvil:
        devnet.generate_sync(anvil.url, BLOCKS, 5)
        yield anvil.url


@dataclass
class S3Host:
    env: dict[str, str]

    def bucket(self) -> str:
        name = f"cold-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def client(self) -> Any:
        env = self.env
        return boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_REGION"],
        )

    def files(self, bucket: str) -> dict[str, bytes]:
        s3 = self.client()
        keys = [
            o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket) for o in page.get("Contents", [])
        ]
        return {k.removeprefix("archive/"): s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


@pytest.fixture(scope="module")
def s3(net: dict[str, Host]) -> Iterator[S3Host]:
    """moto's S3 (tests/servers.py) in a process on the `s3` host."""
    host, port = net["s3"], 9000
    process = subprocess.Popen(host.command([sys.executable, SERVERS, host.ip, str(port)]), stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((host.ip, port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the S3 server did not start: {process.stderr.read().decode() if process.stderr else ''}"
                    ) from None
                time.sleep(0.1)
        yield S3Host(s3_env(f"http://{host.ip}:{port}"))
    finally:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def local_archive(node: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The same range by a single-machine backfill (from here, through the bridge): what readers see,
    cold/ (a local root also holds its lock files, .locks/, which object stores do not need)."""
    root = tmp_path_factory.mktemp("local")
    run = backfill(root, node, end=END, chunk=CHUNK)
    assert run.code == 0, run.text
    return {k: v for k, v in files_under(root).items() if k.startswith("cold/")}


@pytest.fixture
def cluster(net: dict[str, Host], node: str, s3: S3Host, tmp_path: Path) -> Iterator[Cluster]:
    pool = {"endpoints": [{"name": "node", "url": node}]}
    env = {"CRYO_INGEST_RPC_POOL_TEST": json.dumps(pool), **s3.env}
    with dask_cluster(tmp_path, env, workers=(net["w0"], net["w1"]), scheduler=net["sched"]) as c:
        yield c


def job_command(net: dict[str, Host], cluster: Cluster, bucket: str, *extra: str) -> list[str]:
    """`cryo-ingest backfill --scheduler` on the `client` host."""
    cmd = backfill_command(
        f"s3://{bucket}/archive", None, "--rpc-pool", "test", "--scheduler", cluster.address, *extra, end=END, chunk=CHUNK
    )
    return net["client"].command(cmd)


def test_archive_across_hosts_equals_the_single_machine_one(
    net: dict[str, Host], cluster: Cluster, s3: S3Host, local_archive: dict[str, bytes]
) -> None:
    port = int(cluster.address.rsplit(":", 1)[1])
    assert reaches(net["w0"], net["sched"].ip, port)
    assert not reaches(net["w0"], "127.0.0.1", port)  # the hosts are apart: the scheduler is not on a worker's loopback
    bucket = s3.bucket()
    run = run_command(job_command(net, cluster, bucket), env={**s3.env, "CRYO_INGEST_RPC_POOL_TEST": ""})
    assert run.code == 0, run.text
    assert without_provenance(s3.files(bucket)) == without_provenance(local_archive)  # "node", not rpc-0


def test_worker_killed_mid_partition_across_hosts(
    net: dict[str, Host], cluster: Cluster, s3: S3Host, local_archive: dict[str, bytes]
) -> None:
    bucket = s3.bucket()
    cmd = job_command(net, cluster, bucket, "--max-concurrency", "4")
    env = {**os.environ, **s3.env, "CRYO_INGEST_RPC_POOL_TEST": ""}
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    killed = kill_a_busy_worker(cluster)
    out, _ = job.communicate(timeout=240)
    assert killed is not None, "no partition was seen running"
    assert job.returncode == 0, out
    assert without_provenance(s3.files(bucket)) == without_provenance(local_archive)  # "node", not rpc-0
    assert not staging_left(cluster, 10), "the killed worker's orphaned partition left its staging folder"

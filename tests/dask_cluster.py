"""A real Dask cluster for the tests and bench/cluster.py: a `dask scheduler` and `dask worker`
processes, on loopback or each on a host of its own (a network namespace: tests/test_netns.py)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from cryo_ingest.devnet import free_port

DASK = str(Path(sys.executable).parent / "dask")
SPEC_LOG = str(Path(__file__).parent / "dask_spec_log.py")
# In the command line of every partition's process (operator/dispatch.py), and of nothing else.
PARTITION_PROCESS = "-m cryo_ingest.operator.dispatch"


@dataclass(frozen=True)
class Host:
    """Where a process runs: the address it listens on and, off loopback, its network namespace."""

    ip: str = "127.0.0.1"
    netns: str | None = None

    def command(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *cmd] if self.netns else cmd


LOOPBACK = Host()


@dataclass
class Cluster:
    address: str
    scheduler_log: Path
    workers: list[subprocess.Popen[bytes]]  # each worker's nanny, which restarts a killed worker
    temp_dirs: list[Path]  # each worker's TMPDIR, where its partitions stage


@contextmanager
def dask_cluster(
    folder: Path,
    worker_env: dict[str, str],
    workers: Sequence[Host] = (LOOPBACK, LOOPBACK),
    scheduler: Host = LOOPBACK,
    nthreads: int = 2,
    spec_log: bool = True,
    daemon: bool = True,
) -> Iterator[Cluster]:
    """The scheduler (logging every task spec if `spec_log`: tests/dask_spec_log.py) and one worker per
    host in `workers`, with `worker_env` on top of this environment without its pools; logs in `folder`.
    Workers start as `dask worker` starts them (a nanny, a daemonic worker process), or with
    DASK_DISTRIBUTED__WORKER__DAEMON=False if not `daemon`; checked on each worker."""
    port = free_port()
    address = f"tcp://{scheduler.ip}:{port}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("CRYO_INGEST_RPC_POOL_")}
    log = folder / "scheduler.log"
    cmd = [DASK, "scheduler", "--host", scheduler.ip, "--port", str(port), "--dashboard-address", ":0"]
    cmd += ["--preload", SPEC_LOG] if spec_log else []
    with log.open("wb") as out:
        procs = [subprocess.Popen(scheduler.command(cmd), stdout=out, stderr=subprocess.STDOUT, env=base)]
    env = {**base, **worker_env, **({} if daemon else {"DASK_DISTRIBUTED__WORKER__DAEMON": "False"})}
    temp_dirs = []
    for i, host in enumerate(workers):
        temp_dirs.append(folder / f"worker-{i}-tmp")
        temp_dirs[-1].mkdir()
        cmd = [DASK, "worker", address, "--host", host.ip, "--nthreads", str(nthreads), "--dashboard-address", ":0"]
        with (folder / f"worker-{i}.log").open("wb") as out:
            worker = subprocess.Popen(
                host.command(cmd), stdout=out, stderr=subprocess.STDOUT, env={**env, "TMPDIR": str(temp_dirs[-1])}
            )
        procs.append(worker)
    try:
        from distributed import Client

        with Client(address, timeout=30) as client:  # type: ignore[no-untyped-call]
            client.wait_for_workers(len(workers), timeout=60)
            daemonic = client.run(lambda: multiprocessing.current_process().daemon)
        assert list(daemonic.values()) == [daemon] * len(workers), daemonic
        yield Cluster(address, log, procs[1:], temp_dirs)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def kill_a_busy_worker(cluster: Cluster, seconds: float = 60) -> int | None:
    """SIGKILL a worker process (not its nanny, which starts a new one) while a partition's process
    runs under it; its pid, or None if no partition was seen running within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for nanny in cluster.workers:
            for proc in psutil.Process(nanny.pid).children():
                if any(PARTITION_PROCESS in " ".join(c.cmdline()) for c in proc.children(recursive=True)):
                    os.kill(proc.pid, signal.SIGKILL)
                    return int(proc.pid)
        time.sleep(0.05)
    return None


def staging_left(cluster: Cluster, seconds: float) -> list[Path]:
    """The partitions' staging folders still in the workers' temp dirs after up to `seconds`."""
    deadline = time.monotonic() + seconds
    while (left := [p for d in cluster.temp_dirs for p in d.glob("cryo-ingest-partition-*")]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left

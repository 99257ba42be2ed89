"""Blocks/s of `cryo-ingest backfill --scheduler` with 1, 2 and 4 Dask workers, each worker's gateway
taking its slots from one Redis budget store: with the endpoint limited, the budget caps the rate
whatever the number of workers; unlimited, the machine's CPU does.

    .venv/bin/python bench/cluster.py [--blocks 1000] [--rps 100] [--workers 1 2 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common import cached_chain, save
from servers import FaultProxy, RedisServer

BIN = Path(sys.executable).parent
DATASETS = "blocks,logs"  # one request per block each


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def dask_cluster(workers: int, env: dict[str, str], logs: Path) -> Iterator[str]:
    """A `dask scheduler` and `workers` single-threaded `dask worker` processes on loopback."""
    port = _port()
    address = f"tcp://127.0.0.1:{port}"
    procs = []
    with (logs / "scheduler.log").open("wb") as out:
        cmd = [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"]
        procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT))
    for i in range(workers):
        with (logs / f"worker-{i}.log").open("wb") as out:
            cmd = [str(BIN / "dask"), "worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--dashboard-address", ":0"]
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}))
    try:
        from distributed import Client

        with Client(address, timeout=30) as client:  # type: ignore[no-untyped-call]
            client.wait_for_workers(workers, timeout=60)
        yield address
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)


def one_run(node: str, blocks: int, workers: int, rps: float | None, store: str, tmp: Path) -> dict[str, Any]:
    endpoint: dict[str, Any] = {"name": "node", "url": node}
    if rps:
        endpoint["requests_per_second"] = rps
    env = {
        "CRYO_INGEST_RPC_POOL_BENCH": json.dumps({"endpoints": [endpoint]}),
        "CRYO_INGEST_BUDGET_STORE": store,
        "DASK_DISTRIBUTED__WORKER__DAEMON": "False",
    }
    logs = Path(tempfile.mkdtemp(dir=tmp))
    with dask_cluster(workers, env, logs) as address:
        cmd = [str(BIN / "cryo-ingest"), "backfill", "--rpc-pool", "bench", "--scheduler", address, "--chain-id", "31337"]
        cmd += ["--start", "0", "--end", str(blocks - 1), "--datasets", DATASETS, "--chunk-size", "50"]
        cmd += ["--root", str(logs / "archive"), "--max-concurrency", str(workers)]
        started = time.monotonic()
        p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "CRYO_INGEST_RPC_POOL_BENCH": ""})
        seconds = time.monotonic() - started
    if p.returncode != 0:
        raise SystemExit(f"backfill failed: {p.stdout[-2000:]}{p.stderr[-2000:]}")
    return {"workers": workers, "rps": rps, "seconds": round(seconds, 2), "blocks_per_s": round(blocks / seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=1000)
    ap.add_argument("--txs-per-block", type=int, default=2)
    ap.add_argument("--rps", type=float, default=100.0, help="the endpoint's requests_per_second, shared by every worker")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--no-save", action="store_true")
    a = ap.parse_args()
    rows = []
    with (
        cached_chain(a.blocks, a.txs_per_block) as node,
        FaultProxy(node) as proxy,
        RedisServer() as redis_server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        for rps in (a.rps, None):
            for workers in a.workers:
                row = one_run(proxy.url(), a.blocks, workers, rps, redis_server.url, Path(tmp))
                print(row, flush=True)
                rows.append(row)
    limit = f"{a.rps:g} requests/s" if a.rps else "none"
    table = ["| workers | endpoint limit (shared) | seconds | blocks/s |", "| --- | --- | --- | --- |"]
    table += [f"| {r['workers']} | {limit if r['rps'] else 'none'} | {r['seconds']} | {r['blocks_per_s']} |" for r in rows]
    markdown = (
        f"`backfill --scheduler` of {a.blocks} blocks ({DATASETS}: 2 requests a block, so a budget of "
        f"{a.rps:g} requests/s allows {a.rps / 2:g} blocks/s at most), chunks of 50, one Dask worker process "
        "(one thread) per worker, every worker's gateway on one Redis budget store.\n\n" + "\n".join(table)
    )
    if not a.no_save:
        save("cluster", shlex.join(["bench/cluster.py", *sys.argv[1:]]), {"runs": rows}, markdown)
    print(markdown)


if __name__ == "__main__":
    main()

"""Blocks/s of `cryo-ingest backfill --scheduler` with 1, 2 and 4 Dask workers, each worker's gateway
taking its slots from one Redis budget store: with the pool limited below what one worker's CPU can
do, the budget caps the rate whatever the number of workers; unlimited, the machine's CPU does.

    .venv/bin/python bench/cluster.py [--blocks 1000] [--endpoints 2] [--rps 20] [--workers 1 2 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import cached_chain, save
from dask_cluster import LOOPBACK, dask_cluster
from servers import FaultProxy, RedisServer

BIN = Path(sys.executable).parent
DATASETS = "blocks,logs"  # one request per block each


def one_run(node: str, blocks: int, workers: int, endpoints: int, rps: float | None, store: str, tmp: Path) -> dict[str, Any]:
    pool = [{"name": f"node-{i}", "url": node} | ({"requests_per_second": rps} if rps else {}) for i in range(endpoints)]
    env = {"CRYO_INGEST_RPC_POOL_BENCH": json.dumps({"endpoints": pool}), "CRYO_INGEST_BUDGET_STORE": store}
    logs = Path(tempfile.mkdtemp(dir=tmp))
    with dask_cluster(logs, env, workers=(LOOPBACK,) * workers, nthreads=1, spec_log=False) as cluster:
        cmd = [str(BIN / "cryo-ingest"), "backfill", "--rpc-pool", "bench", "--scheduler", cluster.address]
        cmd += ["--chain-id", "31337", "--start", "0", "--end", str(blocks - 1), "--datasets", DATASETS, "--chunk-size", "50"]
        cmd += ["--root", str(logs / "archive"), "--max-concurrency", str(workers)]
        started = time.monotonic()
        p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "CRYO_INGEST_RPC_POOL_BENCH": ""})
        seconds = time.monotonic() - started
    if p.returncode != 0:
        raise SystemExit(f"backfill failed: {p.stdout[-2000:]}{p.stderr[-2000:]}")
    budget = rps * endpoints if rps else None
    load = round(os.getloadavg()[0], 1)  # the last minute's: other jobs on the machine, this run included
    rate = round(blocks / seconds, 1)
    return {"workers": workers, "budget": budget, "seconds": round(seconds, 2), "blocks_per_s": rate, "load": load}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=1000)
    ap.add_argument("--txs-per-block", type=int, default=2)
    ap.add_argument("--endpoints", type=int, default=2, help="endpoints in the pool (all to the same node)")
    ap.add_argument("--rps", type=float, default=20.0, help="each endpoint's requests_per_second, shared by every worker")
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
                row = one_run(proxy.url(), a.blocks, workers, a.endpoints, rps, redis_server.url, Path(tmp))
                print(row, flush=True)
                rows.append(row)
    budget = a.rps * a.endpoints
    limit = f"{budget:g} requests/s"
    table = ["| workers | pool budget (shared) | seconds | blocks/s | load average (1 min) |", "| --- | --- | --- | --- | --- |"]
    table += [
        f"| {r['workers']} | {limit if r['budget'] else 'none'} | {r['seconds']} | {r['blocks_per_s']} | {r['load']} |"
        for r in rows
    ]
    markdown = (
        f"`backfill --scheduler` of {a.blocks} blocks ({DATASETS}: 2 requests a block), chunks of 50, one Dask worker "
        f"process (one thread) per worker, every worker's gateway on one Redis budget store. The pool: {a.endpoints} "
        f"endpoints at {a.rps:g} requests/s each, {budget:g} requests/s in all, so {budget / 2:g} blocks/s at most.\n\n"
        + "\n".join(table)
    )
    if not a.no_save:
        save("cluster", shlex.join(["bench/cluster.py", *sys.argv[1:]]), {"runs": rows}, markdown)
    print(markdown)


if __name__ == "__main__":
    main()

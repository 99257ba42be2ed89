"""`cryo-ingest status`: requests by state, partitions in flight, coverage, gaps and lag, last events."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

from .. import chains, manifest
from ..config import Job
from ..errors import IngestError
from ..events import dataset_prefix
from ..gateway import Gateway
from ..plan import high_water
from ..storage import open_store
from . import datasets, requests
from .dag import Dag, Pools

LAST_EVENTS = 5


def ranges(starts: list[int], chunk_size: int) -> list[tuple[int, int]]:
    """Contiguous runs of chunks as (first block, last block)."""
    out: list[tuple[int, int]] = []
    for s in sorted(starts):
        if out and out[-1][1] + 1 == s:
            out[-1] = (out[-1][0], s + chunk_size - 1)
        else:
            out.append((s, s + chunk_size - 1))
    return out


def node_status(dag: Dag, name: str, pools: Pools, with_rpc: bool = True) -> dict[str, Any]:
    node = dag.nodes[name]
    job: Job = dag.job(node, pools)
    store = open_store(job.root, job.storage_options)
    states = requests.load_states(store, name)
    reqs = []
    for dataset in node.input_datasets:
        for request_id, request in datasets.read(store, dataset):
            state = states.get(request_id) or requests.State(request_id)
            item: dict[str, Any] = {
                "id": request_id,
                "state": state.state,
                "reason": state.reason,
                "updated_at": state.updated_at,
            }
            if isinstance(request, datasets.Request):
                item |= {"start_block": request.start_block, "end_block": request.end_block, "kind": request.kind}
            reqs.append(item)
    counts: dict[str, int] = {}
    for r in reqs:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    now = time.time()
    in_flight = [
        {"blocks": [lease.cell * job.chunk_size * job.chunks_per_partition], "request": lease.request, "runner": lease.owner}
        for lease in requests.read_leases(store, name)
        if lease.owner and lease.expires > now
    ]
    final: int | None = None
    error = None
    if with_rpc:
        try:
            with Gateway(job.rpc, job.chain_id, attempts=2, budget_seconds=10, timeout_seconds=5) as gw:
                final = chains.final_head(gw, job.chain_id, job.reorg_buffer)
        except IngestError as err:
            error = str(err)
    coverage = {}
    for dataset in job.datasets:
        m = manifest.load(store, job.chain_id, dataset)
        held = set(m.files) if m else set()
        runs = ranges(list(held), job.chunk_size)
        gaps = [(a[1] + 1, b[0] - 1) for a, b in itertools.pairwise(runs)]
        high = high_water([held], job.chunk_size)
        coverage[dataset] = {
            "archived": runs,
            "gaps": gaps,
            "high_water": high,
            "lag_blocks": None if final is None else max(0, final - high),
        }
    out_prefix = dataset_prefix(str(job.output_dataset))
    keys = sorted(store.list(out_prefix), key=lambda k: k.rsplit("/", 1)[-1])[-LAST_EVENTS:]
    last = [json.loads(store.get(k) or b"{}") for k in keys]
    return {
        "node": name,
        "root": job.root,
        "chain_id": job.chain_id,
        "final_head": final,
        "rpc_error": error,
        "requests": {"counts": counts, "items": reqs},
        "partitions_in_flight": in_flight,
        "datasets": coverage,
        "output_dataset": job.output_dataset,
        "last_events": last,
    }

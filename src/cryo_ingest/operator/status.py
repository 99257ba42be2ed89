"""`cryo-ingest status`: requests by state, partitions in flight, coverage, gaps and lag, last events.

It reads what is open and what is small: the open requests' states, the ended ones' counts and
last few (summary.json), the arrivals of the last two days that no runner has taken in yet, the
leases of cells in work, the manifests' indexes and the shards that are not complete, and the
events of the last archived chunks by name. None of it grows with the node's history.
"""

from __future__ import annotations

import itertools
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from .. import chains
from ..archive import events, manifest
from ..archive.storage import Store, open_store
from ..config import Job
from ..errors import IngestError
from ..gateway import Gateway
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
    # without RPC, nothing needs the pool: whoever inspects the archive may hold no RPC secret
    job: Job = dag.job(node, pools if with_rpc else replace(pools, on_workers=True, rpc=None))
    store = open_store(job.root, job.storage_options)
    reqs, counts = _requests(store, name, node.input_datasets)
    now = datetime.now(UTC).timestamp()
    in_flight = [
        {"blocks": claim["blocks"], "request": claim["request"], "runner": report["runner"]}
        for report in requests.read_runners(store, name)
        for claim in report["claims"]
        if claim["expires"] > now
    ]
    final: int | None = None
    error = None
    if with_rpc:
        try:
            with Gateway(job.rpc, job.chain_id, attempts=2, budget_seconds=10, timeout_seconds=5) as gw:
                final = chains.final_head(gw, job.chain_id, job.reorg_buffer)
        except IngestError as err:
            error = str(err)
    views = manifest.Views(store, job.chain_id, job.datasets, job.chunk_size)
    views.refresh()
    coverage = {}
    for dataset, view in views.of.items():
        runs = _runs(view)
        gaps = [(a[1] + 1, b[0] - 1) for a, b in itertools.pairwise(runs)]
        high = views.through((dataset,))
        coverage[dataset] = {
            "archived": runs,
            "gaps": gaps,
            "high_water": high,
            "lag_blocks": None if final is None else max(0, final - high),
        }
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
        "last_events": _last_events(store, views.of, job),
    }


def _requests(store: Store, node: str, inputs: list[str]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Open requests, those arrived in the last two days that no runner took in yet, and the last ended."""
    summary = requests.summary(store, node)
    states = {s.id: s for s in requests.OpenStates(store, node).read(settle=False).values()}
    now = datetime.now(UTC)
    arrived = {
        datasets.arrival_id(key): dataset
        for dataset in inputs
        for day in (now - timedelta(days=1), now)
        for key in store.list(f"{datasets.arrivals_prefix(dataset)}{day:%Y-%m-%d}/")
    }
    unseen = [i for i in arrived if i not in states]
    with ThreadPoolExecutor(max_workers=16) as pool:
        ended_ = list(pool.map(lambda i: store.head(requests.closed_key(node, i)) is not None, unseen))
    for request_id, gone in zip(unseen, ended_, strict=True):
        if not gone:
            states[request_id] = requests.State(request_id, dataset=arrived[request_id])
    ended = [requests.State(**s) for s in summary["recent"] if s["id"] not in states]
    every = [*states.values(), *ended]

    with ThreadPoolExecutor(max_workers=16) as pool:
        bodies = list(pool.map(lambda s: datasets.find(store, [s.dataset] if s.dataset else inputs, s.id), every))
    items = []
    for state, request in zip(every, bodies, strict=True):
        item: dict[str, Any] = {"id": state.id, "state": state.state, "reason": state.reason, "updated_at": state.updated_at}
        if isinstance(request, datasets.Request):
            item |= {"start_block": request.start_block, "end_block": request.end_block, "kind": request.kind}
        items.append(item)
    counts = dict(summary["counts"])
    for s in states.values():
        counts[s.state] = counts.get(s.state, 0) + 1
    return items, counts


def _runs(view: manifest.View) -> list[tuple[int, int]]:
    """Archived runs of blocks: a complete shard is one run, unread."""
    size = view.chunk_size
    if size is None:
        return []
    out: list[tuple[int, int]] = []
    for shard in view.shards:
        if view.complete(shard):
            lo = manifest.shard_start(shard)
            pieces = [(lo, lo + manifest.shard_span(size) - 1)]
        else:
            pieces = ranges(list(view.entries(shard)), size)
        for a, b in pieces:
            if out and out[-1][1] + 1 == a:
                out[-1] = (out[-1][0], b)
            else:
                out.append((a, b))
    return out


def _last_events(store: Store, views: dict[str, manifest.View], job: Job) -> list[dict[str, Any]]:
    """The events of the last archived chunks, read by their names: no listing of the output dataset."""
    last = [(e.start_block, e.sha256, d, e) for d, v in views.items() if v.shards for e in v.entries(v.shards[-1]).values()]
    newest = sorted(last, key=lambda t: t[:2])[-LAST_EVENTS:]
    sinks = events.Sinks(str(job.output_dataset), job.root)
    keys = [
        f"{events.dataset_prefix(str(job.output_dataset))}{ev.key}.json"
        for _, _, d, e in newest
        for ev in events.for_entries(sinks, job.chain_id, d, [e])
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        datas = list(pool.map(store.get, keys))
    return [json.loads(d) for d in datas if d]

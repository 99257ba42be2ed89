"""The operator's commands: `request`, `run` and `status` on a DAG file."""

from __future__ import annotations

import argparse
import json
import threading
from typing import TYPE_CHECKING, Any

from rich.table import Table

from ..archive.storage import open_store
from ..errors import ConfigError, redact
from .backfill import pool_ref
from .output import out

if TYPE_CHECKING:
    from ..config import Job
    from ..operator.dag import Dag, Pools
    from ..operator.executor import Executor, Executors


def _dag(a: argparse.Namespace) -> tuple[Dag, Pools]:
    from ..operator.dag import Pools, load_dag

    return load_dag(a.config, a.root), Pools(a.rpc_pool_file, a.rpc_pool_secret, a.rpc, a.budget_store)


def cmd_request(a: argparse.Namespace) -> int:
    from ..operator import datasets as requests_

    dag, _ = _dag(a)
    node = dag.node(a.node)
    cfg = node.config
    if not node.input_datasets:
        raise ConfigError(f"invalid config: {node.name}: the node has no input_datasets to request into")
    if a.chain_id is not None and a.chain_id != cfg.chain_id:
        raise ConfigError(f"invalid request: chain_id: {a.chain_id}, but node {node.name} archives chain {cfg.chain_id}")
    fields: dict[str, Any] = {"chain_id": cfg.chain_id, "start_block": a.start, "end_block": a.end}
    if a.datasets is not None:
        fields["datasets"] = a.datasets
    probe = requests_.make_request(id="probe", kind="manual", source="cli", created_at="", **fields)  # validates
    if probe.datasets and (extra := [d for d in probe.datasets if d not in cfg.datasets]):
        raise ConfigError(f"invalid request: datasets: {extra[0]} is not among node {node.name}'s ({', '.join(cfg.datasets)})")
    content = {
        k: v for k, v in probe.model_dump(mode="json").items() if k in ("chain_id", "start_block", "end_block", "datasets")
    }
    request_id = a.id or requests_.content_id("manual", content)
    request = requests_.make_request(
        id=request_id, kind="manual", source="cli", created_at=requests_.now_iso(), **{**fields, "datasets": probe.datasets}
    )
    store = open_store(dag.root(node))
    new = requests_.put(store, node.input_datasets[0], request)
    if a.json:
        out.print_json(json.dumps({"id": request_id, "new": new, "dataset": node.input_datasets[0], "root": dag.root(node)}))
    else:
        out.print(request_id if new else f"{request_id} (already requested)", highlight=False)
    return 0


def cmd_run(a: argparse.Namespace) -> int:
    from ..operator.executor import local
    from ..operator.service import install_sigterm, run_dag

    dag, pools = _dag(a)
    executors: Executors = local
    if a.scheduler:
        from ..operator.on_cluster import OnCluster  # Dask loads only here

        pools.on_workers = True

        def executors(name: str, job: Job) -> Executor[Any]:
            return OnCluster(a.scheduler, pool_ref(a, job), job, name)

    stop = threading.Event()
    install_sigterm(stop)
    return run_dag(dag, pools, a.node, stop, a.metrics_port, executors)


def cmd_status(a: argparse.Namespace) -> int:
    from ..operator.status import node_status
    from ..verify import write_from_manifests

    dag, pools = _dag(a)
    names = [dag.node(a.node).name] if a.node else list(dag.nodes)
    docs = [node_status(dag, name, pools, with_rpc=not a.no_rpc) for name in names]
    if a.html:
        nodes = [dag.nodes[name] for name in names]
        write_from_manifests(a.html, [(dag.root(n), n.config.chain_id, n.config.datasets) for n in nodes])
    if a.json:
        out.print_json(redact(json.dumps({"nodes": docs})))
        return 0
    for doc in docs:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(doc["requests"]["counts"].items())) or "none"
        head = doc["final_head"] if doc["final_head"] is not None else f"unknown ({doc['rpc_error'] or 'not asked'})"
        out.print(f"node {doc['node']} chain {doc['chain_id']} root {doc['root']}: final head {head}", highlight=False)
        out.print(f"requests: {counts}; partitions in flight: {len(doc['partitions_in_flight'])}", highlight=False)
        t = Table(title="requests")
        for col in ("id", "state", "blocks", "reason"):
            t.add_column(col)
        for item in doc["requests"]["items"]:
            t.add_row(item["id"], item["state"], f"{item.get('start_block', '?')}-{item.get('end_block', '?')}", item["reason"])
        out.print(t)
        c = Table(title="coverage")
        for col in ("dataset", "archived", "gaps", "lag (blocks)"):
            c.add_column(col)
        for dataset, cov in doc["datasets"].items():
            runs = ", ".join(f"{x}..{y}" for x, y in cov["archived"]) or "-"
            gaps = ", ".join(f"{x}..{y}" for x, y in cov["gaps"]) or "-"
            c.add_row(dataset, runs, gaps, "?" if cov["lag_blocks"] is None else f"{cov['lag_blocks']:,}")
        out.print(c)
        for e in doc["last_events"]:
            out.print(f"event {e.get('dataset')} {e.get('start_block')}-{e.get('end_block')} request {e.get('request_id')}")
    return 0

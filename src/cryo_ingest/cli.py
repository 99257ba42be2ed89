"""`cryo-ingest`: a thin layer over the Python API. Exit 0 success, 1 operational failure, 2 invalid input."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from . import manifest
from .config import BUDGET_ENV, DATASETS, DEFAULT_GRACE, Job, load_node, make_job, resolve_pool
from .errors import ConfigError, IngestError, RedactingFilter, redact, register_secret_url
from .storage import open_store
from .workers import SCHEDULER_ENV

# Each command imports what only it needs: start-up is a backfill's fixed cost, and every worker
# process that `backfill` spawns imports this module again (it is the main module).
if TYPE_CHECKING:
    from .backfill import Result
    from .cluster import PoolRef
    from .operator.dag import Dag, Pools
    from .operator.executor import Executor, Executors
    from .task import PartitionResult

SCHEDULER_HELP = (
    f"tcp://HOST:8786: run the partitions on this Dask cluster, the pool resolved by its workers (env {SCHEDULER_ENV})"
)
BUDGET_HELP = f"redis://HOST:6379/0: one requests_per_second budget per endpoint for every gateway (env {BUDGET_ENV})"

console = Console(stderr=True)
out = Console()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        console.print(f"invalid arguments: {redact(message)}", markup=False, soft_wrap=True)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    cluster = _Parser(add_help=False)
    cluster.add_argument("--scheduler", default=os.environ.get(SCHEDULER_ENV), help=SCHEDULER_HELP)
    from importlib.metadata import version  # here, not at the top: only the parser needs it

    p = _Parser(prog="cryo-ingest", description="Archive EVM chain data to Parquet in object storage, with Cryo.")
    p.add_argument("--version", action="version", version=f"cryo-ingest {version('cryo-ingest')} (cryo {manifest.CRYO_VERSION})")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    b = sub.add_parser("backfill", help="archive a block range", parents=[common, cluster])
    b.add_argument("--config", type=Path, help="the spec's DAG node YAML (a node or a list of nodes)")
    b.add_argument("--node", help="node name in --config")
    b.add_argument("--chain-id", type=int)
    b.add_argument("--start", type=int, help="first block (overrides start_block)")
    b.add_argument("--end", type=int, help="last block, inclusive (overrides end_block)")
    b.add_argument("--datasets", help=f"comma-separated: {','.join(DATASETS)} (aliases txs, events)")
    b.add_argument("--rpc", action="append", help="RPC URL (repeatable): a pool of these with default limits")
    b.add_argument("--rpc-pool", help="pool name (CRYO_INGEST_RPC_POOL_<NAME>, --rpc-pool-file, --rpc-pool-secret)")
    b.add_argument("--rpc-pool-file", type=Path, help="YAML/JSON pools file; values may use ${ENV}")
    b.add_argument("--rpc-pool-secret", help="AWS Secrets Manager secret holding the pool document")
    b.add_argument("--budget-store", default=os.environ.get(BUDGET_ENV), help=BUDGET_HELP)
    b.add_argument("--timeout", type=float, help="--scheduler: seconds a partition may take before it is killed")
    b.add_argument("--root", help="archive root: path, file://, s3://, gs://, az://")
    b.add_argument("--chunk-size", type=int)
    b.add_argument("--force", action="store_true", help="redo chunks the manifest already lists")
    b.add_argument("--overwrite-conflicts", action="store_true", help="replace archived chunks whose content changed")
    b.add_argument("--max-concurrency", type=int, help="worker processes (default 2)")
    b.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE")
    b.add_argument("--events-file", type=Path, help="append one JSON line per published chunk")
    b.add_argument("--json", action="store_true", help="print the result as JSON on stdout")

    d = sub.add_parser("demo", help="archive a generated local devnet chain (anvil)", parents=[common])
    d.add_argument("--root", default="./archive")
    d.add_argument("--blocks", type=int, default=2000)
    d.add_argument("--txs-per-block", type=int, default=10)
    d.add_argument("--chunk-size", type=int, default=500)

    ls = sub.add_parser("ls", help="list what the manifests of an archive say", parents=[common])
    ls.add_argument("root")
    ls.add_argument("--chain-id", type=int, required=True)
    ls.add_argument("--dataset", choices=DATASETS)
    ls.add_argument("--files", action="store_true", help="one line per file")
    dag_args = _Parser(add_help=False, parents=[common])
    dag_args.add_argument("--config", type=Path, required=True, help="DAG file: the spec's node(s) and optional sources")
    dag_args.add_argument("--root", help="archive root for every node (overrides config.root)")
    dag_args.add_argument("--rpc", action="append", help="RPC URL (repeatable): overrides every node's pool")
    dag_args.add_argument("--rpc-pool-file", type=Path, help="YAML/JSON pools file; values may use ${ENV}")
    dag_args.add_argument("--rpc-pool-secret", help="AWS Secrets Manager secret holding the pool document")
    dag_args.add_argument("--budget-store", default=os.environ.get(BUDGET_ENV), help=BUDGET_HELP)

    r = sub.add_parser("request", help="the manual source: enqueue one backfill request", parents=[dag_args])
    r.add_argument("--node", help="the cryo_ingest node whose input dataset gets the request")
    r.add_argument("--start", type=int, required=True)
    r.add_argument("--end", type=int, required=True, help="last block, inclusive")
    r.add_argument("--datasets", help="a subset of the node's datasets (default: all of them)")
    r.add_argument("--chain-id", type=int, help="checked against the node's chain")
    r.add_argument("--id", help="request id (default: from its content, so the same request twice is one)")
    r.add_argument("--json", action="store_true")

    run = sub.add_parser(
        "run", help="run the DAG's nodes (or one, with --node) until idle or SIGTERM", parents=[dag_args, cluster]
    )
    run.add_argument("--node", help="run only this node (a cryo_ingest node or a source)")
    run.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on /metrics and health on /healthz")

    st = sub.add_parser("status", help="requests, partitions in flight, coverage, lag, last events", parents=[dag_args])
    st.add_argument("--node", help="one cryo_ingest node (default: all)")
    st.add_argument("--no-rpc", action="store_true", help="do not ask the RPC for the final head (no lag)")
    st.add_argument("--json", action="store_true")
    st.add_argument("--html", type=Path, metavar="PATH", help="write the coverage page of each node's archive (no file read)")

    v = sub.add_parser(
        "verify", help="prove an archive whole: files, hash chain, receipts roots, gaps, orphans", parents=[common]
    )
    v.add_argument("root")
    v.add_argument("--chain-id", type=int, required=True)
    v.add_argument("--dataset", action="append", choices=DATASETS, help="only this dataset (repeatable; default: all)")
    v.add_argument("--from", dest="first", type=int, metavar="A", help="first block to verify")
    v.add_argument("--to", dest="last", type=int, metavar="B", help="last block to verify, inclusive")
    v.add_argument("--deep", type=int, metavar="K", help="also fetch K random archived blocks again and compare every value")
    v.add_argument("--seed", type=int, help="--deep: seed of the random choice of blocks (repeatable runs)")
    v.add_argument("--rpc", action="append", help="--deep: RPC URL (repeatable)")
    v.add_argument("--rpc-pool", help="--deep: pool name (CRYO_INGEST_RPC_POOL_<NAME>, --rpc-pool-file, --rpc-pool-secret)")
    v.add_argument("--rpc-pool-file", type=Path, help="YAML/JSON pools file; values may use ${ENV}")
    v.add_argument("--rpc-pool-secret", help="AWS Secrets Manager secret holding the pool document")
    v.add_argument("--html", type=Path, metavar="PATH", help="also write the coverage page")
    v.add_argument("--json", action="store_true", help="print the report as JSON on stdout")

    g = sub.add_parser("gc", help="delete orphaned data files older than a grace period", parents=[common])
    g.add_argument("root")
    g.add_argument("--chain-id", type=int, required=True)
    g.add_argument("--dataset", action="append", choices=DATASETS, help="only this dataset (repeatable; default: all)")
    g.add_argument("--older-than", default=DEFAULT_GRACE, help=f"grace period: 0s, 90s, 15m, 1h, 2d (default {DEFAULT_GRACE})")
    g.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    g.add_argument("--json", action="store_true")
    return p


def _dag(a: argparse.Namespace) -> tuple[Dag, Pools]:
    from .operator.dag import Pools, load_dag

    return load_dag(a.config, a.root), Pools(a.rpc_pool_file, a.rpc_pool_secret, a.rpc, a.budget_store)


def cmd_request(a: argparse.Namespace) -> int:
    from .operator import datasets as requests_

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
    from .operator.executor import local
    from .operator.service import install_sigterm, run_dag

    dag, pools = _dag(a)
    executors: Executors = local
    if a.scheduler:
        from .operator.on_cluster import OnCluster  # Dask loads only here

        pools.on_workers = True

        def executors(name: str, job: Job) -> Executor[Any]:
            return OnCluster(a.scheduler, pool_ref(a, job), job, name)

    stop = threading.Event()
    install_sigterm(stop)
    return run_dag(dag, pools, a.node, stop, a.metrics_port, executors)


def cmd_status(a: argparse.Namespace) -> int:
    from .operator.status import node_status
    from .verify import write_from_manifests

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


def job_from_args(a: argparse.Namespace) -> Job:
    fields: dict[str, Any] = {}
    pool_name = a.rpc_pool
    if a.config is not None:
        node = load_node(a.config, a.node)
        cfg = node.config
        fields.update(chain_id=cfg.chain_id, datasets=cfg.datasets, output_dataset=node.output_dataset)
        for name in ("start_block", "end_block", "root", "chunk_size", "reorg_buffer", "chunks_per_partition", "rpc"):
            if getattr(cfg, name) is not None:
                fields[name] = getattr(cfg, name)
        pool_name = pool_name or cfg.rpc_pool
    elif a.node is not None:
        raise ConfigError("invalid config: --node: needs --config")
    cli = {
        "chain_id": a.chain_id,
        "start_block": a.start,
        "end_block": a.end,
        "datasets": a.datasets,
        "root": a.root,
        "chunk_size": a.chunk_size,
        "max_concurrency": a.max_concurrency,
    }
    fields.update({k: v for k, v in cli.items() if v is not None})
    if a.rpc:
        fields["rpc"] = a.rpc
    elif pool_name and a.scheduler:  # the workers resolve it: no secret on this machine
        fields.update(rpc=(), rpc_pool=pool_name)
    elif pool_name:
        fields["rpc"] = resolve_pool(pool_name, a.rpc_pool_file, a.rpc_pool_secret)
        fields["rpc_pool"] = pool_name
    for name, flag in (
        ("chain_id", "--chain-id"),
        ("start_block", "--start"),
        ("end_block", "--end"),
        ("datasets", "--datasets"),
        ("rpc", "--rpc or --rpc-pool"),
    ):
        if name not in fields:
            raise ConfigError(f"invalid config: {name}: missing (give {flag} or set it in --config)")
    options = {}
    for item in a.storage_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"invalid config: --storage-option: expected KEY=VALUE, got {key!r}")
        options[key] = value
    return make_job(
        **fields, force=a.force, overwrite_conflicts=a.overwrite_conflicts, storage_options=options, budget_store=a.budget_store
    )


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def archive_table(root: str, chain_id: int, datasets: tuple[str, ...]) -> Table:
    """Per dataset: files, rows, bytes, block range, as the manifests say."""
    store = open_store(root)
    table = Table(title=f"archive {root} chain {chain_id}")
    for col in ("dataset", "files", "rows", "bytes", "blocks"):
        table.add_column(col, justify="left" if col in ("dataset", "blocks") else "right")
    for dataset in datasets:
        m = manifest.load(store, chain_id, dataset)
        files = list(m.files.values()) if m else []
        blocks = f"{files[0].start_block}..{files[-1].end_block}" if files else "-"
        rows, size = sum(f.rows for f in files), sum(f.bytes for f in files)
        table.add_row(dataset, str(len(files)), f"{rows:,}", _size(size), blocks)
    return table


def _report(result: Result) -> None:
    t = Table(title=f"backfill chain {result.chain_id} blocks {result.start_block}..{result.end_block} ({result.seconds:.1f} s)")
    for col in ("dataset", "chunks published", "rows", "already archived", "not final yet"):
        t.add_column(col, justify="left" if col == "dataset" else "right")
    for dataset in result.datasets:
        pub = [e for e in result.published if e.dataset == dataset]
        t.add_row(dataset, str(len(pub)), f"{sum(e.rows for e in pub):,}", str(len(result.done)), str(len(result.pending)))
    console.print(t)
    g = Table(title="RPC endpoints")
    for col in ("endpoint", "requests", "retries", "429s", "errors", "p50 ms", "p95 ms", "state"):
        g.add_column(col)
    for name, m in result.gateway.items():
        errs = ", ".join(f"{k} {v}" for k, v in m["errors"].items()) or "-"
        g.add_row(
            name,
            str(m["requests"]),
            str(m["retries"]),
            str(m["http_429"]),
            errs,
            str(m["p50_ms"]),
            str(m["p95_ms"]),
            m["disabled"] or "ok",
        )
    console.print(g)
    for msg in result.conflicts + result.failed:
        console.print(f"[red]error:[/red] {redact(msg)}", highlight=False, soft_wrap=True)


def _on_partition(pr: PartitionResult) -> None:
    state = "[red]failed[/red]" if pr.error else "[green]ok[/green]"
    stages = ", ".join(f"{stage} {s:.1f} s" for stage, s in pr.seconds.items())
    console.print(
        f"partition {pr.partition.start}-{pr.partition.end}: {state}" + (f" ({stages})" if stages else ""), highlight=False
    )


def pool_ref(a: argparse.Namespace, job: Job) -> PoolRef:
    """--scheduler: where the workers find the job's pool. A URL (--rpc, a config's rpc) would travel with the tasks."""
    if job.rpc or job.rpc_pool is None:
        raise ConfigError(
            "invalid arguments: --scheduler needs a pool by name, not --rpc or rpc (a URL would travel to the scheduler)"
        )
    from .cluster import PoolRef  # Dask loads only here

    return PoolRef(job.rpc_pool, str(a.rpc_pool_file.resolve()) if a.rpc_pool_file else None, a.rpc_pool_secret)


def cmd_backfill(a: argparse.Namespace) -> int:
    from .backfill import backfill

    job = job_from_args(a)
    if a.scheduler:
        ref = pool_ref(a, job)
        from .cluster import backfill_on_cluster

        result = backfill_on_cluster(job, ref, a.scheduler, a.timeout, a.events_file, _on_partition)
    else:
        result = backfill(job, events_file=a.events_file, on_partition=_on_partition)
    _report(result)
    if a.json:
        doc = asdict(result) | {"ok": result.ok}
        out.print_json(redact(json.dumps(doc, default=str)))
    return 0 if result.ok else 1


def cmd_demo(a: argparse.Namespace) -> int:
    from . import devnet
    from .backfill import backfill

    if a.blocks < 1 or a.chunk_size < 1:
        raise ConfigError("invalid config: --blocks and --chunk-size must be positive")
    with devnet.anvil() as node:
        t = time.monotonic()
        chain = devnet.generate_sync(node.url, a.blocks, a.txs_per_block)
        console.print(
            f"devnet: {chain.head + 1} blocks, {chain.transactions:,} transactions "
            f"({chain.reverted} reverted, {chain.creations} creations) in {time.monotonic() - t:.1f} s"
        )
        end = (a.blocks // a.chunk_size) * a.chunk_size - 1  # whole chunks only: the rest is not final
        if end < 0:
            raise ConfigError(f"invalid config: --blocks {a.blocks} is less than one chunk of {a.chunk_size}")
        job = make_job(
            chain_id=devnet.CHAIN_ID,
            start_block=0,
            end_block=end,
            datasets=list(DATASETS),
            rpc=[node.url],
            root=a.root,
            chunk_size=a.chunk_size,
        )
        result = backfill(job, on_partition=_on_partition)
    _report(result)
    out.print(archive_table(a.root, devnet.CHAIN_ID, DATASETS))
    return 0 if result.ok else 1


def cmd_ls(a: argparse.Namespace) -> int:
    datasets = (a.dataset,) if a.dataset else DATASETS
    if not a.files:
        out.print(archive_table(a.root, a.chain_id, datasets))
        return 0
    store = open_store(a.root)
    for dataset in datasets:
        m = manifest.load(store, a.chain_id, dataset)
        for e in m.files.values() if m else []:
            out.print(f"{dataset}\t{e.path}\t{e.start_block}\t{e.end_block}\t{e.rows}\t{e.bytes}\t{e.sha256}", highlight=False)
    return 0


def _datasets(chosen: list[str] | None) -> tuple[str, ...] | None:
    return tuple(d for d in DATASETS if d in chosen) if chosen else None


def cmd_verify(a: argparse.Namespace) -> int:
    from .gateway import Gateway
    from .verify import deep as verify_deep
    from .verify import sorted_problems, verify, write

    rpc = a.rpc or (resolve_pool(a.rpc_pool, a.rpc_pool_file, a.rpc_pool_secret) if a.rpc_pool else None)
    if a.deep is not None and (a.deep < 1 or not rpc):
        raise ConfigError("invalid arguments: --deep K: K must be positive, with --rpc or --rpc-pool")
    if rpc and a.deep is None:
        raise ConfigError("invalid arguments: --rpc and --rpc-pool are for --deep")
    store = open_store(a.root)
    if a.deep:
        with Gateway(verify_deep.endpoints(a.chain_id, rpc), a.chain_id) as gw:
            refetch = verify_deep.Deep(gw, a.deep, a.seed)
            report = verify(store, a.chain_id, a.root, _datasets(a.dataset), a.first, a.last, refetch)
    else:
        report = verify(store, a.chain_id, a.root, _datasets(a.dataset), a.first, a.last)
    if a.html:
        write(a.html, [report])
    if a.json:
        out.print_json(redact(json.dumps(report.to_json(), default=str)))
        return 0 if report.ok else 1
    problems = sorted_problems(report)
    if problems:
        t = Table(title=f"{len(problems)} problem(s)")
        for col in ("dataset", "file", "blocks", "check", "what"):
            t.add_column(col, overflow="fold")
        for p in problems:
            t.add_row(p.dataset, p.file, p.blocks, p.check, redact(p.what))
        out.print(t)
    for s in report.skipped:
        out.print(f"not checked: {s.check} of blocks {s.first_block}-{s.last_block}: {s.reason}", highlight=False)
    c = report.counts
    rate = c.get("blocks", 0) / report.seconds if report.seconds else 0.0
    state = "whole" if report.ok else "NOT whole"
    out.print(
        f"{state}: chain {a.chain_id}, {', '.join(report.datasets)}: {c.get('files', 0):,} files, "
        f"{c.get('rows', 0):,} rows, {c.get('blocks', 0):,} blocks in {report.seconds:.1f} s ({rate:,.0f} blocks/s); "
        f"receipts roots {c.get('receipts_root_checked', 0):,}, logs blooms {c.get('logs_bloom_checked', 0):,}, "
        f"traces {c.get('traces_checked', 0):,} blocks" + (f"; --deep blocks {report.deep_blocks}" if report.deep_blocks else ""),
        highlight=False,
        soft_wrap=True,
    )
    return 0 if report.ok else 1


def cmd_gc(a: argparse.Namespace) -> int:
    from .verify import gc, parse_duration

    result = gc(open_store(a.root), a.chain_id, parse_duration(a.older_than), _datasets(a.dataset) or DATASETS, a.dry_run)
    if a.json:
        doc = {
            "dry_run": result.dry_run,
            "deleted": [o.key for o in result.deleted],
            "kept_young": [o.key for o in result.kept_young],
            "kept_other": [o.key for o in result.kept_other],
            "restored": result.restored,
        }
        out.print_json(json.dumps(doc))
        return 0
    verb = "would delete" if a.dry_run else "deleted"
    for o in result.deleted:
        out.print(f"{verb} {o.key} ({o.size:,} bytes, last modified {o.last_modified:%Y-%m-%d %H:%M:%S} UTC)", highlight=False)
    for o in result.kept_young:
        out.print(f"kept {o.key}: younger than --older-than {a.older_than}", highlight=False)
    for o in result.kept_other:
        out.print(f"kept {o.key}: not an orphaned data file (see cryo-ingest verify)", highlight=False)
    for key in result.restored:
        out.print(f"put back {key}: a job recorded it while it was being deleted", highlight=False)
    out.print(f"{len(result.deleted)} orphan(s) {verb}", highlight=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    # argparse echoes bad arguments (`--rpc A B`, a URL given to --chain-id) before any config sees them.
    for token in sys.argv[1:] if argv is None else argv:
        if re.match(r"(https?|rediss?)://", token.split("=", 1)[-1], re.I):
            register_secret_url(token.split("=", 1)[-1])
    args = _parser().parse_args(argv)
    # A terminal gets rich's layout; a pipe or a log collector one line per record, unpadded.
    handler: logging.Handler = (
        RichHandler(console=console, show_path=False, show_time=False) if console.is_terminal else logging.StreamHandler()
    )
    if not console.is_terminal:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter())
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    commands = {
        "backfill": cmd_backfill,
        "demo": cmd_demo,
        "ls": cmd_ls,
        "request": cmd_request,
        "run": cmd_run,
        "status": cmd_status,
        "verify": cmd_verify,
        "gc": cmd_gc,
    }
    try:
        return commands[args.command](args)
    except IngestError as err:
        console.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
        return err.exit_code
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())

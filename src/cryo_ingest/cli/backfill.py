"""`backfill` and `demo`: a job from the arguments (or a DAG node's config), run, reported."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from rich.table import Table

from ..config import DATASETS, Job, load_node, make_job, resolve_pool
from ..errors import ConfigError, redact
from .output import archive_table, console, out

if TYPE_CHECKING:
    from ..pipeline.backfill import Result
    from ..pipeline.cluster import PoolRef
    from ..pipeline.task import PartitionResult


def job_from_args(a: argparse.Namespace) -> Job:
    fields: dict[str, Any] = {}
    pool_name = a.rpc_pool
    if a.config is not None:
        node = load_node(a.config, a.node)
        cfg = node.config
        fields.update(chain_id=cfg.chain_id, datasets=cfg.datasets, output_dataset=node.output_dataset)
        for name in (
            "start_block",
            "end_block",
            "root",
            "chunk_size",
            "reorg_buffer",
            "chunks_per_partition",
            "header_checks",
            "rpc",
        ):
            if getattr(cfg, name) is not None:
                fields[name] = getattr(cfg, name)
        pool_name = pool_name or cfg.rpc_pool
        if cfg.catalog is not None:
            fields.update(catalog=cfg.catalog.url, catalog_namespace=cfg.catalog.namespace)
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
        "header_checks": a.header_checks,
        "catalog": a.catalog,
        "catalog_namespace": a.catalog_namespace,
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


def pool_ref(a: argparse.Namespace, job: Job) -> PoolRef:
    """--scheduler: where the workers find the job's pool. A URL (--rpc, a config's rpc) would travel with the tasks."""
    if job.rpc or job.rpc_pool is None:
        raise ConfigError(
            "invalid arguments: --scheduler needs a pool by name, not --rpc or rpc (a URL would travel to the scheduler)"
        )
    from ..pipeline.cluster import PoolRef

    return PoolRef(job.rpc_pool, str(a.rpc_pool_file.resolve()) if a.rpc_pool_file else None, a.rpc_pool_secret)


def report(result: Result) -> None:
    t = Table(title=f"backfill chain {result.chain_id} blocks {result.start_block}..{result.end_block} ({result.seconds:.1f} s)")
    for col in ("dataset", "chunks published", "rows", "already archived", "not final yet"):
        t.add_column(col, justify="left" if col == "dataset" else "right")
    for dataset in result.datasets:
        pub = [e for e in result.published if e.dataset == dataset]
        t.add_row(dataset, str(len(pub)), f"{sum(e.rows for e in pub):,}", str(len(result.done)), str(len(result.pending)))
    console.print(t)
    g = Table(title="RPC endpoints")
    for col in ("endpoint", "requests", "retries", "429s", "errors", "lies", "p50 ms", "p95 ms", "state"):
        g.add_column(col)
    for name, m in result.gateway.items():
        errs = ", ".join(f"{k} {v}" for k, v in m["errors"].items()) or "-"
        g.add_row(
            name,
            str(m["requests"]),
            str(m["retries"]),
            str(m["http_429"]),
            errs,
            f"{m['lies']} (+{m['suspected']} suspected)" if m["suspected"] else str(m["lies"]),
            str(m["p50_ms"]),
            str(m["p95_ms"]),
            m["state"],
        )
    console.print(g)
    for msg in result.conflicts + result.failed:
        console.print(f"[red]error:[/red] {redact(msg)}", highlight=False, soft_wrap=True)


def on_partition(pr: PartitionResult) -> None:
    state = "[red]failed[/red]" if pr.error else "[green]ok[/green]"
    stages = ", ".join(f"{stage} {s:.1f} s" for stage, s in pr.seconds.items())
    console.print(
        f"partition {pr.partition.start}-{pr.partition.end}: {state}" + (f" ({stages})" if stages else ""), highlight=False
    )


def cmd_backfill(a: argparse.Namespace) -> int:
    from ..pipeline.backfill import backfill

    job = job_from_args(a)
    if a.scheduler:
        ref = pool_ref(a, job)
        from ..pipeline.cluster import backfill_on_cluster

        result = backfill_on_cluster(job, ref, a.scheduler, a.timeout, a.events_file, on_partition)
    else:
        result = backfill(job, events_file=a.events_file, on_partition=on_partition)
    report(result)
    if a.json:
        doc = asdict(result) | {"ok": result.ok}
        out.print_json(redact(json.dumps(doc, default=str)))
    return 0 if result.ok else 1


def cmd_demo(a: argparse.Namespace) -> int:
    from .. import devnet
    from ..pipeline.backfill import backfill

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
        result = backfill(job, on_partition=on_partition)
    report(result)
    out.print(archive_table(a.root, devnet.CHAIN_ID, DATASETS))
    return 0 if result.ok else 1

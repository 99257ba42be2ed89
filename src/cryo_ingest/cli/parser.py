"""The command line's arguments."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..archive import manifest
from ..config import BUDGET_ENV, DATASETS, DEFAULT_GRACE, HEADER_CHECKS
from ..errors import redact
from ..pipeline.workers import SCHEDULER_ENV
from .output import console

SCHEDULER_HELP = (
    f"tcp://HOST:8786: run the partitions on this Dask cluster, the pool resolved by its workers (env {SCHEDULER_ENV})"
)
BUDGET_HELP = f"redis://HOST:6379/0: one requests_per_second budget per endpoint for every gateway (env {BUDGET_ENV})"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        console.print(f"invalid arguments: {redact(message)}", markup=False, soft_wrap=True)
        raise SystemExit(2)


def parser() -> argparse.ArgumentParser:
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
    b.add_argument(
        "--header-checks",
        choices=HEADER_CHECKS,
        help="transactions or logs without blocks: check them against headers the archive holds, else fetched"
        " (fetch: about 1 request a block more; the default), or the archive's alone (archived)",
    )
    b.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE")
    b.add_argument("--events-file", type=Path, help="append one JSON line per published chunk")
    b.add_argument("--catalog", help="Iceberg tables follow the archive: sqlite:///PATH, postgresql://…, rest+https://…, glue")
    b.add_argument("--catalog-namespace", help="the tables' namespace (default cold_{chain_id})")
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

    c = sub.add_parser("catalog", help="the archive as Apache Iceberg tables (needs the iceberg extra)")
    catalog = c.add_subparsers(dest="catalog_command", required=True, parser_class=_Parser, metavar="{sync}")
    cs = catalog.add_parser("sync", help="bring each dataset's table in step with the manifest", parents=[common])
    cs.add_argument("root")
    cs.add_argument("--chain-id", type=int, required=True)
    cs.add_argument("--catalog", required=True, help="sqlite:///PATH, postgresql://USER:PASSWORD@HOST/DB, rest+https://…, glue")
    cs.add_argument("--datasets", help=f"comma-separated: {','.join(DATASETS)} (default: all; aliases txs, events)")
    cs.add_argument("--namespace", help="the tables' namespace (default cold_{chain_id})")
    cs.add_argument("--json", action="store_true", help="print what changed as JSON on stdout")
    return p

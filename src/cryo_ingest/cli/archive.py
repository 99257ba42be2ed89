"""What is in an archive: `ls`, `verify`, `gc` and `catalog sync`."""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from ..archive import manifest
from ..archive.storage import open_store
from ..config import DATASETS, resolve_pool
from ..errors import ConfigError, IngestError, redact
from .output import archive_table, out


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
    from ..gateway import Gateway
    from ..verify import deep as verify_deep
    from ..verify import sorted_problems, verify, write

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
    from ..verify import gc, parse_duration

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


def cmd_catalog_sync(a: argparse.Namespace) -> int:
    from ..config import _datasets as parse_datasets

    try:
        datasets = parse_datasets(a.datasets) if a.datasets else DATASETS
        from ..archive import catalog
    except ValueError as err:
        raise ConfigError(f"invalid arguments: --datasets: {err}") from None
    except ImportError:
        raise IngestError("catalog sync needs the iceberg extra: pip install 'cryo-ingest[iceberg]'") from None
    results = catalog.sync(a.root, a.chain_id, a.catalog, datasets, a.namespace)
    if a.json:
        out.print_json(redact(json.dumps({"tables": [r.to_json() for r in results]})))
        return 0
    for r in results:
        changes = f"{len(r.added)} file(s) added, {len(r.replaced)} replaced" if r.snapshot_id else "in step, nothing changed"
        out.print(
            f"{r.table}: {changes}" + (f" (snapshot {r.snapshot_id})" if r.snapshot_id else ""), highlight=False, soft_wrap=True
        )
    if not results:
        out.print(f"no manifest under {redact(a.root)} for chain {a.chain_id}: nothing to sync", highlight=False)
    return 0

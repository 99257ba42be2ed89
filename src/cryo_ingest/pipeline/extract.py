"""Cryo into a private staging folder, then Cryo's file names mapped to ours."""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cryo
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import ChunkError
from .plan import Chunk, Partition
from .task import (
    BLAME_PATH,
    CANONICAL_PATH,
    RECEIPTS_PATH,
    REFUSALS_PATH,
    SERVED_PATH,
    SETTLE_PATH,
    TRACE_SOURCE_PATH,
    UNKNOWN_PATH,
)


def extract(
    partition: Partition, gateway_url: str, chunk_size: int, staging: Path, for_checks: tuple[str, ...] = ()
) -> dict[tuple[str, Chunk], Path]:
    """Run Cryo over the partition; every expected file must exist, else the partition fails. `for_checks`: datasets
    extracted besides the partition's only for validate to read (the headers of a job without blocks), never published."""
    datasets = partition.datasets + tuple(d for d in for_checks if d not in partition.datasets)
    try:
        report = cryo.freeze(
            list(datasets),
            blocks=[f"{partition.start}:{partition.end + 1}"],
            rpc=gateway_url,  # the loopback gateway: Cryo never sees a provider URL
            output_dir=str(staging),
            chunk_size=chunk_size,
            inner_request_size=chunk_size,  # logs: one eth_getLogs per chunk, split by the gateway where refused
            include_columns=["all"],
            no_report=True,  # its report would record the RPC URL
            verbose=False,
            overwrite=True,
            max_retries=0,  # the gateway retries; Cryo's own retries would double the load
            max_concurrent_chunks=len(partition.chunks),
        )
    except Exception as err:  # Cryo raises TypeError('failed') and little else: name the chunk instead
        raise ChunkError(
            f"extract: blocks {partition.start}-{partition.end}: Cryo failed ({type(err).__name__}: {err})"
        ) from None
    files: dict[tuple[str, Chunk], Path] = {}
    missing = []
    for chunk in partition.chunks:
        for dataset in datasets:
            found = list(staging.glob(f"*__{dataset}__{chunk.start:08}_to_{chunk.end:08}.parquet"))
            if len(found) == 1:
                files[dataset, chunk] = found[0]
            else:
                missing.append(f"{dataset} {chunk}")
    if report.get("n_errored") or missing:
        raise ChunkError(
            f"extract: blocks {partition.start}-{partition.end}: {report.get('n_errored', 0)} Cryo chunk(s) errored"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + _refusals(gateway_url, partition)
        )
    cells = _gateway_json(gateway_url, f"{UNKNOWN_PATH}?from={partition.start}&to={partition.end}")
    for chunk in partition.chunks:
        for dataset in datasets:
            mine = [c for c in cells if c["dataset"] == dataset and chunk.start <= c["block"] <= chunk.end]
            if mine:
                null_cells(files[dataset, chunk], mine)
    return files


def _refusals(gateway_url: str, partition: Partition, shown: int = 3) -> str:
    """What the pool answered Cryo's failed requests: retry, switch endpoint, or trace by transaction?"""
    try:
        lines = _gateway_json(gateway_url, f"{REFUSALS_PATH}?from={partition.start}&to={partition.end}")
    except (OSError, ValueError):  # the gateway went away (its worker died): the error stands without them
        return ""
    if not lines:
        return ""
    more = f" (and {len(lines) - shown} more)" if len(lines) > shown else ""
    return "; the pool answered " + "; ".join(lines[:shown]) + more


def receipt_counts(gateway_url: str, partition: Partition) -> dict[int, int]:
    """How many receipts the gateway passed on for each block of the partition (taken: asked once per extraction)."""
    pairs = _gateway_json(gateway_url, f"{RECEIPTS_PATH}?from={partition.start}&to={partition.end}")
    return {int(b): int(n) for b, n in pairs}


def blame(gateway_url: str, block: int, check: str, chunk: Chunk) -> list[str]:
    """Tell the gateway a block failed a check (it counts the lie, and the refetch goes elsewhere); which
    endpoint answered what for it ("eth_getLogs rpc-1"). Empty if the gateway went away."""
    try:
        names = _gateway_json(gateway_url, f"{BLAME_PATH}?block={block}&check={check}&from={chunk.start}&to={chunk.end}")
    except (OSError, ValueError):
        return []
    return [str(n) for n in names]


def second_opinion(gateway_url: str) -> Callable[[int, str], dict[str, Any] | None]:
    """Asks the gateway whether a second endpoint gives a block the same hash (validate.py, the canonical check)."""
    return lambda block, block_hash: _gateway_json(gateway_url, f"{CANONICAL_PATH}?block={block}&hash={block_hash}")


def served(gateway_url: str, chunk: Chunk) -> dict[str, tuple[str, ...]]:
    """By dataset, the names of the endpoints that answered the chunk's data (never their URLs)."""
    names = _gateway_json(gateway_url, f"{SERVED_PATH}?from={chunk.start}&to={chunk.end}")
    return {d: tuple(str(n) for n in ns) for d, ns in names.items()}


def settle(gateway_url: str, partition: Partition) -> None:
    """The partition is done: the gateway forgets which endpoint answered its blocks."""
    with contextlib.suppress(OSError, ValueError):  # the gateway went away: nothing left to forget
        _gateway_json(gateway_url, f"{SETTLE_PATH}?from={partition.start}&to={partition.end}")


def trace_source(gateway_url: str) -> str:
    return str(_gateway_json(gateway_url, TRACE_SOURCE_PATH))


def _gateway_json(gateway_url: str, path: str) -> Any:
    with urllib.request.urlopen(gateway_url + path, timeout=30) as resp:
        return json.loads(resp.read())


def null_cells(path: Path, cells: list[dict[str, Any]]) -> None:
    """Write as null what the chain does not determine (a placeholder let Cryo parse it); docs/history.md."""
    meta = pq.ParquetFile(path).metadata
    codec = meta.row_group(0).column(0).compression.lower() if meta.num_row_groups else "zstd"
    table = pq.read_table(path)
    for cell in cells:
        mask = pc.equal(table["block_number"], pa.scalar(cell["block"], table["block_number"].type))
        for key in ("transaction_index", "trace_address"):
            if key in cell:
                mask = pc.and_(mask, pc.equal(table[key], pa.scalar(cell[key], table[key].type)))
        for column in cell["columns"]:
            col = table[column]
            nulled = pc.if_else(mask, pa.scalar(None, col.type), col)
            table = table.set_column(table.schema.get_field_index(column), column, nulled)
    pq.write_table(table, path, compression=codec)

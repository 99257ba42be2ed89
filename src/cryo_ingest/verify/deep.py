"""`verify --deep K`: K random archived blocks fetched again from the node and compared value by value.

The static checks prove the archive consistent with itself and with the chain's commitments that
it holds (hashes, receipts root, bloom); a value no commitment covers (a timestamp, a transaction's
value or input, a trace) is proven only by asking the chain again. Each block is extracted again
exactly as a backfill does (Cryo through the loopback gateway, the same columns, the same
undetermined cells written as null), so every archived column is compared with what the node
serves now in the same representation, and nothing here maps RPC fields to columns by hand.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..config import DATASETS, Endpoint, make_job
from ..errors import ChunkError, RpcError
from ..gateway import Gateway
from ..pipeline.extract import extract
from ..pipeline.plan import Chunk, Partition
from .checks import ORDER

MAX_LISTED = 5  # differing cells named per block and dataset


def endpoints(chain_id: int, rpc: Any) -> tuple[Endpoint, ...]:
    """Validated, named endpoints (URLs, or a pool document), with backfill's rules and error messages."""
    return make_job(chain_id=chain_id, start_block=0, end_block=0, datasets=["blocks"], rpc=rpc).rpc


def _value(v: Any) -> str:
    text = "0x" + v.hex() if isinstance(v, bytes) else repr(v)
    return text if len(text) <= 40 else text[:37] + "…"


def differences(dataset: str, archived: pa.Table, fresh: pa.Table) -> list[str]:
    """Every archived cell against the node's, in the archive's row order."""
    order = [("block_number", "ascending")] + [(c, "ascending") for c in ORDER[dataset]]
    missing = [c for c in archived.column_names if c not in fresh.column_names]
    if missing:
        return [f"columns {', '.join(missing)} are not produced for the node's block"]
    if archived.num_rows != fresh.num_rows:
        return [f"{archived.num_rows} rows archived, the node's block has {fresh.num_rows}"]
    old = archived.sort_by(order).to_pylist()
    new = fresh.select(archived.column_names).sort_by(order).to_pylist()
    diffs = [
        f"row {i} {column}: archived {_value(a[column])}, the node's {_value(b[column])}"
        for i, (a, b) in enumerate(zip(old, new, strict=True))
        for column in archived.column_names
        if a[column] != b[column] and not (a[column] != a[column] and b[column] != b[column])  # NaN equals NaN here
    ]
    if len(diffs) > MAX_LISTED:
        diffs = [*diffs[:MAX_LISTED], f"and {len(diffs) - MAX_LISTED} more differing values"]
    return diffs


class Deep:
    """Re-fetches through a running gateway; `seed` makes the choice of blocks repeatable."""

    def __init__(self, gateway: Gateway, k: int, seed: int | None = None) -> None:
        self.gateway, self.k, self.rng = gateway, k, random.Random(seed)
        self.blocks: set[int] = set()

    def choose(self, runs: list[tuple[int, int]]) -> None:
        sizes = [b - a + 1 for a, b in runs]
        picks = self.rng.sample(range(sum(sizes)), min(self.k, sum(sizes)))
        for p in picks:
            for (a, _), size in zip(runs, sizes, strict=True):
                if p < size:
                    self.blocks.add(a + p)
                    break
                p -= size

    def compare(
        self, block: int, archived: dict[str, pa.Table], sources: dict[str, str | None]
    ) -> tuple[list[tuple[str, str]], list[str]]:
        out: list[tuple[str, str]] = []
        skipped: list[str] = []
        datasets = [d for d in DATASETS if d in archived]
        if "traces" in datasets:
            try:
                self.gateway.require_traces(block)
            except RpcError as err:
                out.append(("traces", f"--deep: the node serves no traces for block {block}: {err}"))
                datasets.remove("traces")
            if "traces" in datasets and sources.get("traces") and sources["traces"] != self.gateway.trace_source:
                skipped.append(f"traces archived from {sources['traces']}, the node serves {self.gateway.trace_source}")
                datasets.remove("traces")
        if not datasets:
            return out, skipped
        chunk = Chunk(block, block)
        with tempfile.TemporaryDirectory(prefix="cryo-ingest-verify-") as tmp:
            try:
                files = extract(Partition((chunk,), tuple(datasets)), self.gateway.url, 1, Path(tmp))
            except ChunkError as err:
                return out + [(d, f"--deep: block {block} could not be fetched again: {err}") for d in datasets], skipped
            for d in datasets:
                out += [(d, f"--deep: {what}") for what in differences(d, archived[d], pq.read_table(files[d, chunk]))]
        return out, skipped

"""Checks on a staged chunk before anything of it is published.

Blocks: one row per block, in order, each block's parent hash the previous block's hash, and
the chain continuing into the neighbouring chunks. Other datasets: every row inside the chunk
and, when blocks are fetched in the same job, on the same block hashes (a reorg between two
fetches shows up here, not in the archive).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import ChunkError
from .plan import Chunk


@dataclass(frozen=True)
class Facts:
    rows: int
    schema: list[dict[str, str]]
    first_parent_hash: str | None = None
    last_block_hash: str | None = None


def schema_of(table_schema: pa.Schema) -> list[dict[str, str]]:
    return [{"name": f.name, "type": str(f.type)} for f in table_schema]


def _hex(value: bytes | None) -> str | None:
    return None if value is None else "0x" + value.hex()


def _read(path: Path, dataset: str, chunk: Chunk, columns: list[str]) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as err:
        raise ChunkError(f"validate: {dataset} {chunk}: unreadable Parquet: {err}") from None


def validate_blocks(path: Path, chunk: Chunk, prev_hash: str | None, next_parent: str | None) -> tuple[Facts, list[str]]:
    """Returns the facts and the chunk's block hashes (index = block - chunk.start)."""
    table = _read(path, "blocks", chunk, ["block_number", "block_hash", "parent_hash"])
    numbers = table["block_number"].to_pylist()
    if numbers != list(range(chunk.start, chunk.end + 1)):
        missing = sorted(set(range(chunk.start, chunk.end + 1)) - set(numbers))
        raise ChunkError(
            f"validate: blocks {chunk}: {len(numbers)} rows for {chunk.end - chunk.start + 1} blocks"
            + (f" (missing {missing[:5]})" if missing else " (duplicated or out of order)")
        )
    hashes = [_hex(h) for h in table["block_hash"].to_pylist()]
    parents = [_hex(h) for h in table["parent_hash"].to_pylist()]
    for i in range(1, len(hashes)):
        if parents[i] != hashes[i - 1]:
            raise ChunkError(f"validate: blocks {chunk}: block {chunk.start + i} does not follow block {chunk.start + i - 1}")
    if prev_hash is not None and parents[0] != prev_hash:
        raise ChunkError(f"validate: blocks {chunk}: block {chunk.start} does not follow the archived block {chunk.start - 1}")
    if next_parent is not None and hashes[-1] != next_parent:
        raise ChunkError(f"validate: blocks {chunk}: the archived block {chunk.end + 1} does not follow block {chunk.end}")
    facts = Facts(len(numbers), schema_of(pq.read_schema(path)), parents[0], hashes[-1])
    return facts, [h or "" for h in hashes]


def validate_rows(path: Path, dataset: str, chunk: Chunk, block_hashes: list[str] | None) -> Facts:
    schema = pq.read_schema(path)
    has_hash = block_hashes is not None and "block_hash" in schema.names
    table = _read(path, dataset, chunk, ["block_number", "block_hash"] if has_hash else ["block_number"])
    numbers = table["block_number"]
    if table.num_rows:
        lo, hi = pc.min(numbers).as_py(), pc.max(numbers).as_py()
        if numbers.null_count or lo < chunk.start or hi > chunk.end:
            raise ChunkError(f"validate: {dataset} {chunk}: rows for blocks {lo}-{hi} outside the chunk")
    if has_hash and table.num_rows:
        assert block_hashes is not None
        expected = pa.array([bytes.fromhex(h[2:]) for h in block_hashes], pa.binary()).take(
            pc.subtract(numbers.cast(pa.int64()), chunk.start)
        )
        actual = table["block_hash"].combine_chunks().cast(pa.binary())
        wrong = pc.invert(pc.fill_null(pc.equal(actual, expected), True))
        if pc.any(wrong).as_py():
            bad = pc.filter(numbers, wrong)[0].as_py()
            raise ChunkError(f"validate: {dataset} {chunk}: block {bad} has another hash than in blocks (reorg during fetch?)")
    return Facts(table.num_rows, schema_of(schema))


def validate_chunk(files: dict[str, Path], chunk: Chunk, prev_hash: str | None, next_parent: str | None) -> dict[str, Facts]:
    facts: dict[str, Facts] = {}
    hashes = None
    if "blocks" in files:
        facts["blocks"], hashes = validate_blocks(files["blocks"], chunk, prev_hash, next_parent)
    for dataset, path in files.items():
        if dataset != "blocks":
            facts[dataset] = validate_rows(path, dataset, chunk, hashes)
    return facts

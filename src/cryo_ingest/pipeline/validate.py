"""Checks on a staged chunk before anything of it is published.

Blocks: one row per block, in order, each block's parent hash the previous block's hash, and
the chain continuing into the neighbouring chunks. Other datasets: every row inside the chunk
and on the same block hashes as the chunk's blocks (the job's, else the headers the content checks
use): a reorg between two fetches shows up here, not in the archive.

Content: every block against its own header (`roots.check_block`, as `verify` does): the logs
bloom from its logs, the gas used and, with the logs, the receipts root from its transactions;
and its transactions as many as the receipts the gateway passed on. A provider that leaves out a
log or a transaction fails the chunk, which is fetched again (docs/verify.md, "Before publishing").

Canonical: the chunk's last block hash as a second endpoint gives it (where the pool has two); the hash
chain carries that to every block of the chunk, and the hash check of the other datasets to their rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import roots
from ..errors import CheckFailed, ChunkError
from .plan import Chunk

TX_COLUMNS = ["block_number", "transaction_index", "transaction_type", "success", "gas_used"]
LOG_COLUMNS = ["block_number", "log_index", "transaction_index", "address", "topic0", "topic1", "topic2", "topic3", "data"]
HEADER_COLUMNS = ["receipts_root", "logs_bloom", "gas_used"]


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


@dataclass
class Checked:
    """What the content checks did for a chunk: blocks checked by check, and what could not apply and why."""

    counts: dict[str, int]
    unchecked: dict[str, int]  # "check: why" -> the first block it could not apply to


def check_content(
    files: dict[str, Path], chunk: Chunk, chain_id: int, receipts: dict[int, int] | None, headers: Path | None = None
) -> Checked:
    """Every block of the chunk against its header and its receipts count; the first failure raises
    CheckFailed naming the block and the check (the partition fetches the chunk again). The headers are
    the job's blocks, else `headers` (for a job without blocks: the archive's own blocks file of the chunk, or
    the chunk's blocks fetched for the checks alone)."""
    done = Checked({}, {})
    blocks = range(chunk.start, chunk.end + 1)
    txs = _txs(files["transactions"], chunk) if "transactions" in files else None
    logs = _logs(files["logs"], chunk) if "logs" in files else None
    if txs is not None and receipts is not None:
        for b in blocks:
            n, m = len(txs.get(b, [])), receipts.get(b)
            if m is None:
                done.unchecked.setdefault("receipts: the gateway saw no eth_getBlockReceipts answer", b)
            elif n != m:
                _fail(chunk, b, "receipts", f"{n} transactions, {m} receipts in the eth_getBlockReceipts answer")
            else:
                done.counts["receipts"] = done.counts.get("receipts", 0) + 1
    header_file = files.get("blocks", headers)
    if header_file is None:
        if logs is not None or txs is not None:
            why = "logs_bloom, gas_used, receipts_root: no headers (blocks neither fetched nor archived for these blocks)"
            done.unchecked.setdefault(why, chunk.start)
        return done
    table = _read(header_file, "blocks", chunk, HEADER_COLUMNS)
    columns = [table[c].to_pylist() for c in HEADER_COLUMNS]
    for b, (root, bloom, gas) in zip(blocks, zip(*columns, strict=True), strict=True):
        outcome = roots.check_block(
            chain_id,
            b,
            roots.Header(root, bloom, gas),
            None if txs is None else txs.get(b, []),
            None if logs is None else logs.get(b, []),
        )
        for f in outcome.failed:
            _fail(chunk, b, f.check, f"{f.what} ({f.datasets})")
        for check, why in outcome.skipped:
            done.unchecked.setdefault(f"{check}: {why}", b)
        for check, _ in outcome.applied:
            done.counts[check] = done.counts.get(check, 0) + 1
    return done


def _fail(chunk: Chunk, block: int, check: str, what: str) -> None:
    raise CheckFailed(f"validate: {chunk}: block {block} fails the {check} check: {what}", block, check)


def _txs(path: Path, chunk: Chunk) -> dict[int, list[roots.Tx]]:
    table = _read(path, "transactions", chunk, TX_COLUMNS).sort_by(
        [("block_number", "ascending"), ("transaction_index", "ascending")]
    )
    out: dict[int, list[roots.Tx]] = {}
    for b, index, kind, success, gas in zip(*(table[c].to_pylist() for c in TX_COLUMNS), strict=True):
        out.setdefault(b, []).append(roots.Tx(index, kind, success, gas))
    return out


def _logs(path: Path, chunk: Chunk) -> dict[int, list[roots.Log]]:
    table = _read(path, "logs", chunk, LOG_COLUMNS).sort_by([("block_number", "ascending"), ("log_index", "ascending")])
    out: dict[int, list[roots.Log]] = {}
    for b, _, tx, address, t0, t1, t2, t3, data in zip(*(table[c].to_pylist() for c in LOG_COLUMNS), strict=True):
        topics = tuple(t for t in (t0, t1, t2, t3) if t is not None)
        out.setdefault(b, []).append(roots.Log(tx, address or b"", topics, data or b""))
    return out


def validate_chunk(
    files: dict[str, Path],
    chunk: Chunk,
    prev_hash: str | None,
    next_parent: str | None,
    chain_id: int,
    receipts: dict[int, int] | None,
    headers: Path | None = None,
    second_opinion: Callable[[int, str], dict[str, Any] | None] | None = None,
) -> tuple[dict[str, Facts], Checked]:
    """Shape first (a block missing or out of order makes the content checks meaningless), then whether the
    blocks are the canonical chain's (before their hashes judge the other datasets' rows), then content."""
    facts: dict[str, Facts] = {}
    hashes = None
    canonical = Checked({}, {})
    if "blocks" in files:
        facts["blocks"], hashes = validate_blocks(files["blocks"], chunk, prev_hash, next_parent)
        if second_opinion is not None:
            canonical = check_canonical(chunk, hashes[-1], second_opinion(chunk.end, hashes[-1]))
    elif headers is not None:  # archived or fetched apart from the rows: both must be of one chain
        _, hashes = validate_blocks(headers, chunk, None, None)
    for dataset, path in files.items():
        if dataset != "blocks":
            facts[dataset] = validate_rows(path, dataset, chunk, hashes)
    checked = check_content(files, chunk, chain_id, receipts, headers)
    checked.counts.update(canonical.counts)
    checked.unchecked.update(canonical.unchecked)
    return facts, checked


def check_canonical(chunk: Chunk, last_hash: str, verdict: dict[str, Any] | None) -> Checked:
    """The gateway's verdict on the chunk's last hash (None: the check is off); a disagreement raises CheckFailed."""
    if verdict is None:
        return Checked({}, {})
    if "unchecked" in verdict:
        return Checked({}, {f"canonical: {verdict['unchecked']}": chunk.end})
    if not verdict["agrees"]:
        _fail(chunk, chunk.end, "canonical", f"its hash {last_hash} is another fork's: {verdict['detail']}")
    return Checked({"canonical": chunk.end - chunk.start + 1}, {})

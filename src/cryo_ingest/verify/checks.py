"""The checks of one window of chunks, block by block across datasets: the hash chain, transaction
and log indexes, block hashes, the header's logs bloom and receipts root recomputed from the
archived rows, one top-level trace per transaction. walk.py brings the windows, in block order.
docs/verify.md lists the checks and what each one can and cannot see.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import roots
from ..archive.manifest import Entry, Manifest
from ..archive.storage import Store, sha256
from ..config import DATASETS
from ..pipeline.validate import schema_of
from .report import Report

# The columns each block-level check reads; the rest of a file is decoded once (it must read) and dropped.
COLUMNS = {
    "blocks": ["block_number", "block_hash", "parent_hash", "receipts_root", "logs_bloom", "gas_used"],
    "transactions": [
        "block_number",
        "block_hash",
        "transaction_index",
        "transaction_hash",
        "transaction_type",
        "success",
        "gas_used",
    ],
    "logs": [
        "block_number",
        "block_hash",
        "log_index",
        "transaction_index",
        "transaction_hash",
        "address",
        "topic0",
        "topic1",
        "topic2",
        "topic3",
        "data",
    ],
    "traces": ["block_number", "block_hash", "transaction_index", "transaction_hash", "trace_address"],
}
ORDER = {"blocks": [], "transactions": ["transaction_index"], "logs": ["log_index"], "traces": ["transaction_index"]}
MAX_LISTED = 5  # indexes named in one problem's text


class Refetch(Protocol):
    """--deep: compares archived rows of some blocks with the node's (deep.py)."""

    blocks: set[int]

    def choose(self, runs: list[tuple[int, int]]) -> None:
        """Pick the blocks to re-fetch among the archived `runs`."""
        ...

    def compare(
        self, block: int, archived: dict[str, pa.Table], sources: dict[str, str | None]
    ) -> tuple[list[tuple[str, str]], list[str]]:
        """(dataset, what differs) for every difference; and why parts could not be compared."""
        ...


def hx(value: bytes | None) -> str:
    return "null" if value is None else "0x" + value.hex()


def _short(values: list[int]) -> str:
    return ", ".join(map(str, values[:MAX_LISTED])) + (
        f" and {len(values) - MAX_LISTED} more" if len(values) > MAX_LISTED else ""
    )


@dataclass
class Held:
    """A window's readable, intact files of one dataset, and its rows sorted by block."""

    entries: list[Entry] = field(default_factory=list)
    table: pa.Table | None = None
    spans: dict[int, tuple[int, int]] = field(default_factory=dict)  # block -> (offset, rows)

    def covers(self, block: int) -> bool:
        return any(e.start_block <= block <= e.end_block for e in self.entries)

    def rows(self, block: int) -> list[dict[str, Any]]:
        if self.table is None or block not in self.spans:
            return []
        offset, n = self.spans[block]
        rows: list[dict[str, Any]] = self.table.slice(offset, n).to_pylist()
        return rows


class Verifier:
    def __init__(
        self,
        store: Store,
        chain_id: int,
        manifests: dict[str, Manifest],
        report: Report,
        refetch: Refetch | None,
    ) -> None:
        self.store, self.chain_id, self.manifests, self.report = store, chain_id, manifests, report
        self.refetch = refetch
        self.prev: tuple[int, bytes | None] | None = None  # the last block of the hash chain seen
        self.open_skips: set[str] = set()

    def key(self, dataset: str, entry: Entry) -> str:
        return f"cold/{self.chain_id}/{dataset}/{entry.path}"

    # ---- files ----------------------------------------------------------------------------

    def read(self, dataset: str, entry: Entry) -> pa.Table | None:
        """The file's table if it is the one the manifest names (bytes, hash, schema, rows), else None."""
        r, key = self.report, self.key(dataset, entry)
        first, last = entry.start_block, entry.end_block
        data = self.store.get(key)
        r.count("files")
        if data is None:
            r.add(dataset, key, first, last, "object", "missing: the manifest names it, the store does not hold it")
            return None
        r.count("bytes", len(data))
        if len(data) != entry.bytes:
            r.add(dataset, key, first, last, "object", f"{len(data)} bytes, the manifest says {entry.bytes}")
            return None
        if (digest := sha256(data)) != entry.sha256:
            r.add(dataset, key, first, last, "object", f"sha256 {digest[:16]}…, the manifest says {entry.sha256[:16]}…")
            return None
        try:
            table = pq.read_table(pa.BufferReader(data))
        except (pa.ArrowException, OSError) as err:
            r.add(dataset, key, first, last, "parquet", f"unreadable Parquet: {str(err).splitlines()[0][:200]}")
            return None
        del data
        expected = self.manifests[dataset].schema
        if (schema := schema_of(table.schema)) != expected:
            diff = next(
                (
                    f"column {i}: {a} where the manifest has {b}"
                    for i, (a, b) in enumerate(itertools.zip_longest(schema, expected))
                    if a != b
                ),
                "",
            )
            r.add(dataset, key, first, last, "parquet", f"schema differs from the manifest's: {diff}")
            return None
        if absent := [c for c in COLUMNS[dataset] if c not in table.column_names]:
            r.add(dataset, key, first, last, "parquet", f"no column {', '.join(absent)}: the checks cannot read this file")
            return None
        if table.num_rows != entry.rows:
            r.add(dataset, key, first, last, "parquet", f"{table.num_rows} rows, the manifest says {entry.rows}")
        r.count("rows", table.num_rows)
        numbers = table["block_number"]
        if table.num_rows and (numbers.null_count or pc.min(numbers).as_py() < first or pc.max(numbers).as_py() > last):
            outside = pc.filter(numbers, pc.or_kleene(pc.less(numbers, first), pc.greater(numbers, last))).to_pylist()
            what = [f"{numbers.null_count} rows without a block number"] * bool(numbers.null_count)
            what += [f"rows for blocks outside the file: {_short(sorted(set(outside)))}"] * bool(outside)
            r.add(dataset, key, first, last, "parquet", "; ".join(what))
            table = table.filter(pc.and_(pc.greater_equal(numbers, first), pc.less_equal(numbers, last)))
        return table

    def load(self, dataset: str, entries: list[Entry], keep_all: bool) -> Held:
        held = Held()
        parts = []
        for entry in entries:
            table = self.read(dataset, entry)
            if table is None:
                continue
            held.entries.append(entry)
            parts.append(table if keep_all else table.select(COLUMNS[dataset]))
        if not parts:
            return held
        table = pa.concat_tables(parts).sort_by([("block_number", "ascending")] + [(c, "ascending") for c in ORDER[dataset]])
        numbers = table["block_number"].to_pylist()
        offset = 0
        for block, run in itertools.groupby(numbers):
            n = sum(1 for _ in run)
            held.spans[block] = (offset, n)
            offset += n
        held.table = table
        return held

    # ---- blocks: one row per block, the hash chain ------------------------------------------

    def check_blocks(self, held: Held) -> dict[int, dict[str, Any]]:
        headers: dict[int, dict[str, Any]] = {}
        r = self.report
        for entry in held.entries:
            key = self.key("blocks", entry)
            numbers = [b for b in range(entry.start_block, entry.end_block + 1) if b in held.spans]
            missing = [b for b in range(entry.start_block, entry.end_block + 1) if b not in held.spans]
            dup = [b for b in numbers if held.spans[b][1] > 1]
            if missing:
                r.add("blocks", key, missing[0], missing[-1], "blocks", f"no row for blocks {_short(missing)}")
            if dup:
                r.add("blocks", key, dup[0], dup[-1], "blocks", f"several rows for blocks {_short(dup)}")
            for b in numbers:
                headers[b] = held.rows(b)[0]
            if numbers:
                first, last = headers[numbers[0]], headers[numbers[-1]]
                if entry.first_parent_hash is not None and hx(first["parent_hash"]) != entry.first_parent_hash:
                    r.add(
                        "blocks",
                        key,
                        numbers[0],
                        numbers[0],
                        "hash_chain",
                        "parent_hash differs from the manifest's first_parent_hash",
                    )
                if entry.last_block_hash is not None and hx(last["block_hash"]) != entry.last_block_hash:
                    r.add(
                        "blocks",
                        key,
                        numbers[-1],
                        numbers[-1],
                        "hash_chain",
                        "block_hash differs from the manifest's last_block_hash",
                    )
        for b in sorted(headers):
            row = headers[b]
            if self.prev is not None and self.prev[0] == b - 1 and row["parent_hash"] != self.prev[1]:
                r.add(
                    "blocks",
                    self.file_of("blocks", held, b),
                    b,
                    b,
                    "hash_chain",
                    f"parent_hash {hx(row['parent_hash'])[:18]}… is not block {b - 1}'s hash {hx(self.prev[1])[:18]}…",
                )
            self.prev = (b, row["block_hash"])
        r.count("blocks", len(headers))
        return headers

    def file_of(self, dataset: str, held: Held, block: int) -> str:
        return next((self.key(dataset, e) for e in held.entries if e.start_block <= block <= e.end_block), "")

    # ---- block hashes of the other datasets ----------------------------------------------

    def check_block_hashes(self, dataset: str, held: Held, headers: dict[int, dict[str, Any]]) -> None:
        if held.table is None or "block_hash" not in held.table.column_names or not headers:
            return
        pairs = held.table.group_by(["block_number", "block_hash"]).aggregate([]).to_pylist()
        wrong = sorted(
            {
                p["block_number"]
                for p in pairs
                if p["block_number"] in headers and p["block_hash"] != headers[p["block_number"]]["block_hash"]
            }
        )
        for b in wrong:
            self.report.add(
                dataset, self.file_of(dataset, held, b), b, b, "block_hash", "block_hash differs from the blocks file's"
            )

    # ---- per block -----------------------------------------------------------------------

    def skip(self, check: str, block: int, reason: str) -> None:
        self.report.skip(check, block, reason, extend=check in self.open_skips)
        self.open_skips.add(check)

    def applied(self, check: str, nontrivial: bool) -> None:
        self.report.count(f"{check}_checked")
        if nontrivial:
            self.open_skips.discard(check)

    def check_block(self, b: int, header: dict[str, Any] | None, held: dict[str, Held]) -> None:
        r = self.report
        has = {d: d in held and held[d].covers(b) for d in DATASETS}
        txs = held["transactions"].rows(b) if has["transactions"] else None
        logs = held["logs"].rows(b) if has["logs"] else None
        tx_file = self.file_of("transactions", held["transactions"], b) if has["transactions"] else ""
        log_file = self.file_of("logs", held["logs"], b) if has["logs"] else ""
        if txs is not None:
            indexes = [t["transaction_index"] for t in txs]
            if indexes != list(range(len(indexes))):
                r.add(
                    "transactions",
                    tx_file,
                    b,
                    b,
                    "transactions",
                    f"transaction indexes are not 0..{len(indexes) - 1}: {_describe(indexes)}",
                )
        if logs is not None:
            indexes = [x["log_index"] for x in logs]
            if indexes != list(range(len(indexes))):
                r.add("logs", log_file, b, b, "logs", f"log indexes are not 0..{len(indexes) - 1}: {_describe(indexes)}")
            if txs is not None:
                hashes = {t["transaction_index"]: t["transaction_hash"] for t in txs}
                strays = sorted(
                    {x["log_index"] for x in logs if hashes.get(x["transaction_index"], b"?") != x["transaction_hash"]}
                )
                if strays:
                    r.add(
                        "logs",
                        log_file,
                        b,
                        b,
                        "logs",
                        f"logs {_short(strays)} name a transaction the transactions file does not hold",
                    )
        if header is not None and (txs is not None or logs is not None):
            self.check_commitments(b, header, txs, logs, {"transactions": tx_file, "logs": log_file})
        if has["traces"]:
            self.check_traces(b, held["traces"], txs)

    def check_commitments(
        self,
        b: int,
        header: dict[str, Any],
        txs: list[dict[str, Any]] | None,
        logs: list[dict[str, Any]] | None,
        files: dict[str, str],
    ) -> None:
        """The block's logs bloom, gas used and receipts root against its header (roots.check_block, as validate does)."""
        outcome = roots.check_block(
            self.chain_id,
            b,
            roots.Header(header["receipts_root"], header["logs_bloom"], header["gas_used"]),
            None if txs is None else [roots.tx_of(t) for t in txs],
            None if logs is None else [roots.log_of(x) for x in logs],
        )
        for check, why in outcome.skipped:
            self.skip(check, b, why)
        for check, nontrivial in outcome.applied:
            self.applied(check, nontrivial)
        for f in outcome.failed:
            file = " + ".join(files[d] for d in f.datasets.split("+"))
            self.report.add(f.datasets, file, b, b, f.check, f.what)

    def check_traces(self, b: int, held: Held, txs: list[dict[str, Any]] | None) -> None:
        rows = held.rows(b)
        top = [t for t in rows if t["trace_address"] == "" and t["transaction_index"] is not None]
        indexes = [t["transaction_index"] for t in top]
        n = len(txs) if txs is not None else (max(indexes) + 1 if indexes else 0)
        file = self.file_of("traces", held, b)
        if indexes != list(range(n)):
            r = self.report
            r.add(
                "traces",
                file,
                b,
                b,
                "traces",
                f"top-level traces are not one per transaction 0..{n - 1}: {_describe(indexes, n)}",
            )
        elif txs is not None:
            wrong = [
                t["transaction_index"] for t, x in zip(top, txs, strict=True) if t["transaction_hash"] != x["transaction_hash"]
            ]
            if wrong:
                self.report.add(
                    "traces",
                    file,
                    b,
                    b,
                    "traces",
                    f"top-level traces of transactions {_short(wrong)} carry another transaction hash",
                )
        self.report.count("traces_checked")


def _describe(indexes: list[int], n: int | None = None) -> str:
    n = len(indexes) if n is None else n
    missing = sorted(set(range(n)) - set(indexes))
    dup = sorted(i for i, k in Counter(indexes).items() if k > 1)
    extra = sorted({i for i in indexes if i >= n or i < 0})
    parts = (
        [f"missing {_short(missing)}"] * bool(missing)
        + [f"duplicated {_short(dup)}"] * bool(dup)
        + [f"beyond {_short(extra)}"] * bool(extra)
    )
    return "; ".join(parts) or "out of order"

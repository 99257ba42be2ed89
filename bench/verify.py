"""`cryo-ingest verify`: blocks verified per second, and peak memory as the archive grows to 100,000 entries.

Throughput: the benchmark devnet (cached anvil chain) archived with all four datasets, then
verified (every check) by the CLI, wall time and peak RSS of the process, and by the API in this
process (its own seconds, start-up excluded).

Memory: synthetic archives of blocks, transactions and logs with `--entries` manifest entries per
dataset (chunks of `--chunk-size` blocks, each block with 2 transactions and 2 logs), consistent
in every way verify checks (hash chain, indexes, block hashes, bloom, receipts root), so the run
does all the work a whole archive costs. Verified at a tenth of the entries and at all of them: if
memory is bounded by a chunk (streaming file by file), the peak grows only by the manifests.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from common import CACHE, ROOT, cached_chain, command_line, measure, save, spread

from cryo_ingest import roots
from cryo_ingest.archive import manifest
from cryo_ingest.archive.manifest import Entry, Manifest
from cryo_ingest.archive.storage import open_store, sha256
from cryo_ingest.pipeline.validate import schema_of
from cryo_ingest.verify import verify

CLI = str(Path(sys.executable).parent / "cryo-ingest")
TXS, LOGS = 2, 2  # per block, in the synthetic archives
CHAIN = 10143  # the spec's chain (Monad testnet), whose archives reach 100,000 entries first
SCHEMAS = {
    "blocks": pa.schema(
        [
            ("block_number", pa.uint32()),
            ("block_hash", pa.large_binary()),
            ("parent_hash", pa.large_binary()),
            ("receipts_root", pa.large_binary()),
            ("logs_bloom", pa.large_binary()),
            ("gas_used", pa.uint64()),
        ]
    ),
    "transactions": pa.schema(
        [
            ("block_number", pa.uint32()),
            ("block_hash", pa.large_binary()),
            ("transaction_index", pa.uint64()),
            ("transaction_hash", pa.large_binary()),
            ("transaction_type", pa.uint32()),
            ("success", pa.bool_()),
            ("gas_used", pa.uint64()),
        ]
    ),
    "logs": pa.schema(
        [
            ("block_number", pa.uint32()),
            ("block_hash", pa.large_binary()),
            ("log_index", pa.uint32()),
            ("transaction_index", pa.uint32()),
            ("transaction_hash", pa.large_binary()),
            ("address", pa.large_binary()),
            *[(f"topic{i}", pa.large_binary()) for i in range(4)],
            ("data", pa.large_binary()),
        ]
    ),
}


def h(*parts: int) -> bytes:
    return hashlib.sha256(b"/".join(str(p).encode() for p in parts)).digest()


def synthetic(root: Path, entries: int, chunk: int) -> None:
    """An archive that every check passes (receipts roots included), written straight to its final layout."""
    txs = [roots.Tx(i, 2, True, 21_000) for i in range(TXS)]
    logs = [roots.Log(j % TXS, b"\x11" * 20, (b"\x22" * 32,), b"") for j in range(LOGS)]
    receipts_root, bloom = roots.receipts_root(txs, logs), roots.bloom_bytes(roots.bloom(logs))
    store = open_store(str(root))
    for dataset, schema in SCHEMAS.items():
        m = Manifest(CHAIN, dataset, chunk, schema_of(schema))
        shards: dict[str, dict[int, Entry]] = {}
        for k in range(entries):
            first = k * chunk
            numbers = range(first, first + chunk)
            if dataset == "blocks":
                rows: dict[str, list[Any]] = {
                    "block_number": list(numbers),
                    "block_hash": [h(b) for b in numbers],
                    "parent_hash": [h(b - 1) if b else b"\x00" * 32 for b in numbers],
                    "receipts_root": [receipts_root] * chunk,
                    "logs_bloom": [bloom] * chunk,
                    "gas_used": [21_000 * TXS] * chunk,
                }
            elif dataset == "transactions":
                rows = {
                    "block_number": [b for b in numbers for _ in range(TXS)],
                    "block_hash": [h(b) for b in numbers for _ in range(TXS)],
                    "transaction_index": [i for _ in numbers for i in range(TXS)],
                    "transaction_hash": [h(b, i) for b in numbers for i in range(TXS)],
                    "transaction_type": [2] * chunk * TXS,
                    "success": [True] * chunk * TXS,
                    "gas_used": [21_000] * chunk * TXS,
                }
            else:
                rows = {
                    "block_number": [b for b in numbers for _ in range(LOGS)],
                    "block_hash": [h(b) for b in numbers for _ in range(LOGS)],
                    "log_index": [j for _ in numbers for j in range(LOGS)],
                    "transaction_index": [j % TXS for _ in numbers for j in range(LOGS)],
                    "transaction_hash": [h(b, j % TXS) for b in numbers for j in range(LOGS)],
                    "address": [b"\x11" * 20] * chunk * LOGS,
                    "topic0": [b"\x22" * 32] * chunk * LOGS,
                    **{f"topic{i}": [None] * chunk * LOGS for i in (1, 2, 3)},
                    "data": [b""] * chunk * LOGS,
                }
            buf = io.BytesIO()
            table = pa.table(rows, schema=schema)
            pq.write_table(table, buf)
            data = buf.getvalue()
            name = f"{dataset}_{first:08}_{first + chunk - 1:08}.parquet"
            store.put(f"cold/{CHAIN}/{dataset}/{name}", data)
            hashes = {}
            if dataset == "blocks":
                hashes = {
                    "first_parent_hash": "0x" + rows["parent_hash"][0].hex(),
                    "last_block_hash": "0x" + rows["block_hash"][-1].hex(),
                }
            entry = Entry(name, first, first + chunk - 1, table.num_rows, len(data), sha256(data), **hashes)
            shards.setdefault(manifest.shard_path(first, chunk), {})[first] = entry
        for path, files in shards.items():
            store.put(f"cold/{CHAIN}/{dataset}/{path}", manifest.encode_shard(m, files))
        store.put(manifest.key(CHAIN, dataset), manifest.encode_index(m, list(shards)))


def run_cli(root: Path, chain_id: int, iterations: int, blocks: int) -> dict[str, Any]:
    runs = [measure([CLI, "verify", str(root), "--chain-id", str(chain_id)]) for _ in range(iterations)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    wall = spread([r.seconds for r in runs])
    return {"wall": wall, "peak_rss": max(r.peak_rss for r in runs), "blocks_per_second_wall": blocks / wall["median"]}


def in_process(root: Path, chain_id: int, iterations: int) -> dict[str, Any]:
    seconds, counts = [], {}
    for _ in range(iterations):
        report = verify(open_store(str(root)), chain_id, str(root))
        assert report.ok, report.problems[:5]
        seconds.append(report.seconds)
        counts = report.counts
    return {"seconds": spread(seconds), "counts": counts, "blocks_per_second": counts["blocks"] / statistics.median(seconds)}


def devnet_throughput(blocks: int, txs_per_block: int, chunk: int, iterations: int) -> dict[str, Any]:
    root = CACHE / f"verify-archive-{blocks}x{txs_per_block}-{chunk}"
    if not (root / "cold").exists():
        with cached_chain(blocks + 2, txs_per_block) as url:
            args = [
                "--chain-id",
                "31337",
                "--start",
                "0",
                "--end",
                str(blocks - 1),
                "--datasets",
                "blocks,transactions,logs,traces",
            ]
            done = measure([CLI, "backfill", *args, "--rpc", url, "--root", str(root), "--chunk-size", str(chunk)])
            assert done.returncode == 0, done.stderr
    return {"cli": run_cli(root, 31337, iterations, blocks), "api": in_process(root, 31337, iterations)}


def memory(entries: int, chunk: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in (entries // 10, entries):
        root = CACHE / f"verify-synthetic-{n}x{chunk}"
        if not (root / "cold" / str(CHAIN) / "logs" / "manifest.json").exists():
            started = time.monotonic()
            synthetic(root, n, chunk)
            print(f"wrote the synthetic archive of {n:,} entries in {time.monotonic() - started:.0f} s", file=sys.stderr)
        out[str(n)] = run_cli(root, CHAIN, 1, n * chunk)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=2000)
    ap.add_argument("--txs-per-block", type=int, default=40)
    ap.add_argument("--chunk-size", type=int, default=100)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--synthetic-chunk", type=int, default=10)
    ap.add_argument("--no-save", action="store_true", help="print only (the smoke run)")
    args = ap.parse_args()
    dev = devnet_throughput(args.blocks, args.txs_per_block, args.chunk_size, args.iterations)
    mem = memory(args.entries, args.synthetic_chunk)
    cli, api = dev["cli"], dev["api"]
    c = api["counts"]
    wall, secs = cli["wall"], api["seconds"]
    lines = [
        f"### Verify: the devnet archive, {args.blocks:,} blocks ({args.txs_per_block} transactions each), "
        "all four datasets, every check",
        "",
        "| run | s (median, min–max) | blocks/s | peak RSS MB |",
        "| --- | --- | --- | --- |",
        f"| `cryo-ingest verify` (process, wall) | {wall['median']:.1f} ({wall['min']:.1f}–{wall['max']:.1f}) "
        f"| {cli['blocks_per_second_wall']:,.0f} | {cli['peak_rss'] / 2**20:,.0f} |",
        f"| `verify()` in process (start-up excluded) | {secs['median']:.1f} ({secs['min']:.1f}–{secs['max']:.1f}) "
        f"| {api['blocks_per_second']:,.0f} | |",
        "",
        f"Read and checked: {c['files']:,} files, {c['rows']:,} rows, {c['bytes'] / 2**20:.1f} MiB; receipts roots recomputed "
        f"{c['receipts_root_checked']:,}, logs blooms {c['logs_bloom_checked']:,}, traces {c['traces_checked']:,} blocks.",
        "",
        "### Verify: memory as the archive grows (synthetic: blocks, transactions, logs; "
        f"chunks of {args.synthetic_chunk} blocks, {TXS} transactions and {LOGS} logs per block)",
        "",
        "| entries per dataset | files | blocks | wall s | blocks/s | peak RSS MB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for n, m in mem.items():
        e = int(n)
        lines.append(
            f"| {e:,} | {3 * e:,} | {e * args.synthetic_chunk:,} | {m['wall']['median']:.0f} "
            f"| {m['blocks_per_second_wall']:,.0f} | {m['peak_rss'] / 2**20:,.0f} |"
        )
    text = "\n".join(lines)
    print(text)
    if not args.no_save:
        command = command_line()
        print(save("verify", command.strip(), {"devnet": dev, "memory": mem, "args": vars(args)}, text), file=sys.stderr)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "bench"))
    main()

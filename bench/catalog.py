"""The Iceberg tables at scale: `catalog sync` and planning over many chunk files (synthetic, local folder, SQLite).

N chunk files of 50 blocks (a few rows each, the logs dataset's unsigned columns) recorded in a
manifest as the pipeline records them; then, timed: the first sync (every file registered, one
commit), a sync after one more chunk (the whole archive compared) and the same restricted to the
chunk's blocks (what a partition's hook asks), planning and reading a 1,000-block range through the
table, and reading the same range by glob over the folder (Polars, DuckDB), in the same run.

Then a year of commits in small: K more commits of 4 chunks each (one per partition, as a backfill
with a catalog makes them), under the tables' retention policy with its week already past (every
snapshot is old: the newest 100 are kept), then the same planning again.

    .venv/bin/python bench/catalog.py [--files 5000] [--commits 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from cryo_ingest.archive import catalog, manifest
from cryo_ingest.archive.storage import open_store, sha256

TYPES = {"block_number": pa.uint32(), "log_index": pa.uint32(), "chain_id": pa.uint64()}
CHUNK = 50
T = TypeVar("T")


def write_chunks(root: Path, starts: range) -> None:
    entries = []
    for start in starts:
        name = f"logs_{start:08}_{start + CHUNK - 1:08}.parquet"
        path = root / "cold/31337/logs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = {"block_number": [start, start + 1], "log_index": [0, 1], "chain_id": [31337, 31337]}
        pq.write_table(pa.table(rows, schema=pa.schema(TYPES.items())), path)
        data = path.read_bytes()
        entries.append(manifest.Entry(name, start, start + CHUNK - 1, 2, len(data), sha256(data)))
    schema = [{"name": n, "type": str(t)} for n, t in TYPES.items()]
    manifest.add(open_store(str(root)), 31337, "logs", CHUNK, schema, entries, False)


def timed(label: str, fn: Callable[[], T]) -> T:
    started = time.perf_counter()
    result = fn()
    print(f"{label}: {time.perf_counter() - started:.2f} s", flush=True)
    return result


def plan_and_read(root: Path, url: str, n: int) -> None:
    """A 1,000-block range in the middle: planned and read through the table, read by glob (Polars, DuckDB)."""
    table = catalog.open_catalog(url, str(root)).load_table("cold_31337.logs")
    middle = n * CHUNK // 2
    where = f"block_number >= {middle} and block_number < {middle + 1000}"
    planned = timed(f"plan a 1,000-block range of {n:,} files", lambda: list(table.scan(row_filter=where).plan_files()))
    rows = timed("read it through the table (pyiceberg: plan + read)", lambda: table.scan(row_filter=where).to_arrow().num_rows)
    files = f"{root}/cold/31337/logs/*.parquet"
    in_range = (pl.col("block_number") >= middle) & (pl.col("block_number") < middle + 1000)
    by_glob = timed("read it by glob (Polars scan_parquet)", lambda: pl.scan_parquet(files).filter(in_range).collect().height)
    query = f"SELECT count(*) FROM read_parquet('{files}') WHERE block_number >= {middle} AND block_number < {middle + 1000}"
    by_duckdb = timed("read it by glob (DuckDB read_parquet)", lambda: duckdb.sql(query).fetchone())
    assert rows == by_glob == 40 and by_duckdb == (40,)
    snapshot = table.current_snapshot()
    assert snapshot is not None
    metadata = Path(table.metadata_location.removeprefix("file://")).stat().st_size
    print(
        f"  files planned: {len(planned)}; manifests: {len(snapshot.manifests(table.io))}; snapshots: "
        f"{len(table.snapshots())}; metadata file: {metadata / 1e6:.2f} MB",
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--files", type=int, default=5000)
    p.add_argument("--commits", type=int, default=200)
    args = p.parse_args()
    n = args.files
    with tempfile.TemporaryDirectory() as tmp:
        root, url = Path(tmp) / "root", f"sqlite:///{tmp}/catalog.db"
        timed(f"write {n} chunk files and their manifest", lambda: write_chunks(root, range(0, n * CHUNK, CHUNK)))
        timed(f"first sync: {n} files registered", lambda: catalog.sync(str(root), 31337, url, ("logs",)))
        write_chunks(root, range(n * CHUNK, (n + 1) * CHUNK, CHUNK))
        timed("sync after one more chunk, the whole archive compared", lambda: catalog.sync(str(root), 31337, url, ("logs",)))
        last = (n + 1) * CHUNK
        write_chunks(root, range(last, last + CHUNK, CHUNK))
        timed(
            "sync after one more chunk, its blocks only",
            lambda: catalog.sync(str(root), 31337, url, ("logs",), blocks=(last, last + CHUNK - 1)),
        )
        n += 2
        plan_and_read(root, url, n)
        table = catalog.open_catalog(url, str(root)).load_table("cold_31337.logs")
        table.transaction().set_properties({catalog.MAX_SNAPSHOT_AGE: "0"}).commit_transaction()  # a week has passed
        seconds = []
        for _ in range(args.commits):
            first = n * CHUNK
            write_chunks(root, range(first, first + 4 * CHUNK, CHUNK))
            started = time.perf_counter()
            catalog.sync(str(root), 31337, url, ("logs",), blocks=(first, first + 4 * CHUNK - 1))
            seconds.append(time.perf_counter() - started)
            n += 4
        tenth = max(1, len(seconds) // 10)
        print(
            f"{args.commits} commits of 4 chunks (one per partition): {sum(seconds):.1f} s; median per commit "
            f"{statistics.median(seconds):.2f} s (first tenth {statistics.median(seconds[:tenth]):.2f} s, "
            f"last tenth {statistics.median(seconds[-tenth:]):.2f} s)",
            flush=True,
        )
        plan_and_read(root, url, n)


if __name__ == "__main__":
    main()

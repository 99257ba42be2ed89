"""The Iceberg tables at scale: `catalog sync` and planning over many chunk files (synthetic, local folder, SQLite).

N chunk files of 50 blocks (a few rows each, the logs dataset's unsigned columns) recorded in a
manifest as the pipeline records them; then, timed: the first sync (every file registered, one
commit), a sync after one more chunk (the whole archive compared) and the same restricted to the
chunk's blocks (what a partition's hook asks), planning and reading a 1,000-block range through the
table, and reading the same range by glob over the folder (Polars), in the same run.

    .venv/bin/python bench/catalog.py [--files 5000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--files", type=int, default=5000)
    n = p.parse_args().files
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
        table = catalog.open_catalog(url, str(root)).load_table("cold_31337.logs")
        middle = n * CHUNK // 2
        where = f"block_number >= {middle} and block_number < {middle + 1000}"
        planned = timed(f"plan a 1,000-block range of {n + 2} files", lambda: list(table.scan(row_filter=where).plan_files()))
        rows = timed("read it through the table (pyiceberg)", lambda: table.scan(row_filter=where).to_arrow().num_rows)
        files = f"{root}/cold/31337/logs/*.parquet"
        in_range = (pl.col("block_number") >= middle) & (pl.col("block_number") < middle + 1000)
        by_glob = timed("read it by glob (Polars scan_parquet)", lambda: pl.scan_parquet(files).filter(in_range).collect().height)
        assert rows == by_glob == 40
        snapshot = table.current_snapshot()
        assert snapshot is not None
        print(f"  files planned: {len(planned)}; manifests: {len(snapshot.manifests(table.io))}")


if __name__ == "__main__":
    main()

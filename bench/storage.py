"""Publishing cost and manifest scale.

1. Publishing cost: cryo-ingest on the benchmark chain into a local root and into a local S3
   server (moto, on loopback), alternating; ratio of wall times; bytes uploaded per second by
   the S3 runs (whole run) and by publishing alone (the archive's objects, `put_new`).
2. Manifest scale: a manifest of 100,000 entries (a year of a fast chain at 1,000-block
   chunks): its size, the time to read it, and to add one entry with compare-and-swap.

    .venv/bin/python bench/storage.py [--blocks 2000] [--txs-per-block 40] [--iterations 3] [--entries 100000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
from common import cached_chain, command_line, ingest, measure, save, spread
from servers import S3Server

from cryo_ingest.archive import manifest
from cryo_ingest.archive.manifest import Entry, Manifest
from cryo_ingest.archive.storage import Store, open_store


def publishing(url: str, blocks: int, iterations: int, env: dict[str, str]) -> dict[str, Any]:
    times: dict[str, list[float]] = {"local": [], "s3": []}
    size = 0
    for i in range(iterations):
        for target in ["local", "s3"] if i % 2 == 0 else ["s3", "local"]:
            with tempfile.TemporaryDirectory() as tmp:
                if target == "s3":
                    bucket = f"bench-{i}"
                    boto3.client("s3").create_bucket(Bucket=bucket)
                    root = f"s3://{bucket}"
                else:
                    root = str(Path(tmp) / "archive")
                m = measure(ingest(url, Path(root) if target == "local" else root, blocks, 1000), env=env)  # type: ignore[arg-type]
                assert m.returncode == 0, m.stderr
                times[target].append(m.seconds)
                if target == "local":
                    size = sum(p.stat().st_size for p in Path(root).rglob("*.parquet")) + sum(
                        p.stat().st_size for p in Path(root).rglob("manifest.json")
                    )
                    objects = {str(p.relative_to(root)): p.read_bytes() for p in Path(root).rglob("*.parquet")}
                print(f"{target:5} {m.seconds:.1f} s", file=sys.stderr)
    boto3.client("s3").create_bucket(Bucket="bench-put")
    store = open_store("s3://bench-put")
    started = time.monotonic()
    for key, data in objects.items():
        store.put_new(key, data)
    put_seconds = time.monotonic() - started
    local, s3 = spread(times["local"]), spread(times["s3"])
    return {
        "local": local,
        "s3": s3,
        "ratio": s3["median"] / local["median"],
        "archive_bytes": size,
        "run_bytes_per_second": size / s3["median"],
        "put_bytes_per_second": sum(map(len, objects.values())) / put_seconds,
        "objects": len(objects),
    }


def big_manifest(entries: int) -> Manifest:
    m = Manifest(chain_id=10143, dataset="blocks", chunk_size=1000, schema=[{"name": "block_number", "type": "uint32"}])
    for k in range(entries - 1):  # the last chunk is left for the timed adds
        m.files[k * 1000] = Entry(
            path=f"blocks_{k * 1000:08}_{k * 1000 + 999:08}.parquet",
            start_block=k * 1000,
            end_block=k * 1000 + 999,
            rows=1000,
            bytes=250_000 + k % 1000,
            sha256=f"{k:064x}",
            first_parent_hash=f"0x{k:064x}",
            last_block_hash=f"0x{k + 1:064x}",
        )
    return m


def manifest_scale(entries: int, repeats: int = 5) -> dict[str, Any]:
    m = big_manifest(entries)
    shards: dict[str, dict[int, Entry]] = {}
    for start, entry in m.files.items():
        shards.setdefault(manifest.shard_path(start, m.chunk_size), {})[start] = entry
    objects = {f"cold/10143/blocks/{path}": manifest.encode_shard(m, files) for path, files in shards.items()}
    objects[manifest.key(10143, "blocks")] = manifest.encode_index(m, list(shards))
    out: dict[str, Any] = {"entries": entries, "shards": len(shards), "bytes": sum(map(len, objects.values()))}
    with tempfile.TemporaryDirectory() as tmp:
        boto3.client("s3").create_bucket(Bucket="bench-manifest")
        stores: dict[str, Store] = {"local": open_store(tmp), "s3": open_store("s3://bench-manifest")}
        for name, store in stores.items():
            for object_key, data in objects.items():
                store.put(object_key, data)
            reads, adds = [], []
            for r in range(repeats):
                started = time.monotonic()
                loaded = manifest.load(store, 10143, "blocks")
                reads.append(time.monotonic() - started)
                assert loaded is not None and len(loaded.files) == entries - 1 + r
                k = entries - 1 + r
                # an entry that continues the chain: the CAS update checks the hash chain too
                entry = Entry(
                    f"blocks_{k * 1000:08}_{k * 1000 + 999:08}.parquet",
                    k * 1000,
                    k * 1000 + 999,
                    1000,
                    1,
                    "ab" * 32,
                    f"0x{k:064x}",
                    f"0x{k + 1:064x}",
                )
                started = time.monotonic()
                manifest.add(store, 10143, "blocks", 1000, m.schema, [entry], overwrite_conflicts=False)
                adds.append(time.monotonic() - started)
            out[name] = {"read_seconds": statistics.median(reads), "add_one_seconds": statistics.median(adds)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=2000)
    ap.add_argument("--txs-per-block", type=int, default=40)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--entries", type=int, default=100_000)
    args = ap.parse_args()
    with S3Server() as server:
        os.environ.update(server.env)
        with cached_chain(args.blocks + 2, args.txs_per_block) as url:
            pub = publishing(url, args.blocks, args.iterations, server.env)
        scale = manifest_scale(args.entries)
    lo, s3 = pub["local"], pub["s3"]
    text = "\n".join(
        [
            f"### Publishing: cryo-ingest on {args.blocks:,} blocks ({args.txs_per_block} transactions each), all four datasets",
            "",
            "| root | wall s (median, min–max) | × local |",
            "| --- | --- | --- |",
            f"| local folder | {lo['median']:.1f} ({lo['min']:.1f}–{lo['max']:.1f}) | 1.00 |",
            f"| S3 (moto server on loopback) | {s3['median']:.1f} ({s3['min']:.1f}–{s3['max']:.1f}) | {pub['ratio']:.2f} |",
            "",
            f"Archive: {pub['objects']} Parquet objects, {pub['archive_bytes'] / 2**20:.1f} MiB with manifests. "
            "Uploaded per second: "
            f"{pub['run_bytes_per_second'] / 2**20:.1f} MiB/s over the whole S3 run; "
            f"{pub['put_bytes_per_second'] / 2**20:.1f} MiB/s for the objects alone "
            "(`put_new`, one at a time).",
            "",
            f"### Manifest scale: {scale['entries']:,} entries in {scale['shards']} shards, "
            f"{scale['bytes'] / 2**20:.1f} MiB in all",
            "",
            "| store | read all (index + shards, GET + parse) s "
            "| add one entry (index GET; shard CAS: GET, parse, check, encode, conditional PUT; index CAS) s |",
            "| --- | --- | --- |",
            f"| local folder | {scale['local']['read_seconds']:.3f} | {scale['local']['add_one_seconds']:.3f} |",
            f"| S3 (moto) | {scale['s3']['read_seconds']:.3f} | {scale['s3']['add_one_seconds']:.3f} |",
        ]
    )
    print(text)
    command = command_line()
    print(save("storage", command.strip(), {"publishing": pub, "manifest_scale": scale}, text), file=sys.stderr)


if __name__ == "__main__":
    main()

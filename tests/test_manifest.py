"""The sharded manifest on the local filesystem: shard edges, range reads, the hash chain, conflicts."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryo_ingest import manifest
from cryo_ingest.errors import ConflictError
from cryo_ingest.manifest import Entry
from cryo_ingest.storage import open_store

SCHEMA = [{"name": "block_number", "type": "uint32"}]


def entry(block: int, parent: str, last: str) -> Entry:
    return Entry(f"blocks_{block:08}_{block:08}.parquet", block, block, 1, 10, f"{block:064x}", parent, last)


def test_shards_range_reads_and_the_chain_across_an_edge(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    # chunk size 1: a shard holds 1,000 blocks, so 999 and 1000 sit on either side of an edge
    added = manifest.add(store, 1, "blocks", 1, SCHEMA, [entry(998, "0xa", "0xb"), entry(999, "0xb", "0xc")], False)
    assert len(added) == 2
    with pytest.raises(ConflictError, match="block 1000 does not follow block 999"):
        manifest.add(store, 1, "blocks", 1, SCHEMA, [entry(1000, "0xWRONG", "0xd")], False)
    manifest.add(store, 1, "blocks", 1, SCHEMA, [entry(1000, "0xc", "0xd"), entry(2500, "0xx", "0xy")], False)
    assert sorted((tmp_path / "cold/1/blocks/manifest").iterdir()) == [
        tmp_path / "cold/1/blocks/manifest" / name
        for name in ("00000000_00000999.json", "00001000_00001999.json", "00002000_00002999.json")
    ]
    whole = manifest.load(store, 1, "blocks")
    assert whole is not None and sorted(whole.files) == [998, 999, 1000, 2500]
    part = manifest.load(store, 1, "blocks", (999, 1000))
    assert part is not None and sorted(part.files) == [998, 999, 1000]
    before = (tmp_path / "cold/1/blocks/manifest.json").read_bytes()
    assert manifest.add(store, 1, "blocks", 1, SCHEMA, [entry(999, "0xb", "0xc")], False) == []  # identical: no write
    assert (tmp_path / "cold/1/blocks/manifest.json").read_bytes() == before
    with pytest.raises(ConflictError, match="chunk 999-999"):
        manifest.add(store, 1, "blocks", 1, SCHEMA, [Entry("x.parquet", 999, 999, 1, 10, "ff" * 32, "0xb", "0xc")], False)
    with pytest.raises(ConflictError, match="schema differs"):
        manifest.add(store, 1, "blocks", 1, [{"name": "other", "type": "int8"}], [entry(3000, "0xq", "0xr")], False)

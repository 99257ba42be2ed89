"""The sharded manifest on the local filesystem: shard edges, range reads, the hash chain, conflicts,
concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
from multiprocessing.sharedctypes import SynchronizedArray
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from cryo_ingest.archive import manifest
from cryo_ingest.archive.manifest import Entry
from cryo_ingest.archive.storage import Store, open_store
from cryo_ingest.errors import ConflictError

SCHEMA = [{"name": "block_number", "type": "uint32"}]


def entry(block: int, parent: str, last: str) -> Entry:
    return Entry(f"blocks_{block:08}_{block:08}.parquet", block, block, 1, 10, f"{block:064x}", parent, last)


class CountingStore(Store):
    """The real local store, recording the key of every write (`update` writes through `put`)."""

    def __init__(self, root: Path) -> None:
        real = open_store(str(root))
        super().__init__(real.url, real.remote, real.local_dir)
        self.writes: list[str] = []

    def put_new(self, key: str, data: bytes) -> bool:
        self.writes.append(key)
        return super().put_new(key, data)

    def put(self, key: str, data: bytes) -> None:
        self.writes.append(key)
        super().put(key, data)


def test_shards_range_reads_and_the_chain_across_an_edge(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
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
    # the last add wrote two shards and the index, and the store saw each write
    assert store.writes[-3:] == [
        "cold/1/blocks/manifest/00001000_00001999.json",
        "cold/1/blocks/manifest/00002000_00002999.json",
        "cold/1/blocks/manifest.json",
    ]
    store.writes.clear()
    assert manifest.add(store, 1, "blocks", 1, SCHEMA, [entry(999, "0xb", "0xc")], False) == []  # identical: no write
    assert store.writes == []
    with pytest.raises(ConflictError, match="chunk 999-999"):
        manifest.add(store, 1, "blocks", 1, SCHEMA, [Entry("x.parquet", 999, 999, 1, 10, "ff" * 32, "0xb", "0xc")], False)
    with pytest.raises(ConflictError, match="schema differs"):
        manifest.add(store, 1, "blocks", 1, [{"name": "other", "type": "int8"}], [entry(3000, "0xq", "0xr")], False)


WRITERS, ROUNDS = 10, 3


def _writer(root: str, n: int, barrier: Barrier, lock_waits: SynchronizedArray[int]) -> None:
    """One writer process: each round, wait for all the others, then add one entry to the shared shard."""
    store = open_store(root)
    for r in range(ROUNDS):
        block = r * WRITERS + n
        barrier.wait(timeout=60)
        manifest.add(store, 1, "blocks", 1, SCHEMA, [entry(block, f"0x{block:x}", f"0x{block + 1:x}")], False)
    lock_waits[n] = store.lock_waits


def test_concurrent_processes_lose_no_manifest_entry(tmp_path: Path) -> None:
    """Ten processes released together by a barrier add to one shard: they contend, and no entry is lost."""
    root = str(tmp_path / "archive")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WRITERS)
    lock_waits = ctx.Array("i", WRITERS)
    procs = [ctx.Process(target=_writer, args=(root, n, barrier, lock_waits)) for n in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    m = manifest.load(open_store(root), 1, "blocks")
    assert m is not None
    lost = sorted(set(range(WRITERS * ROUNDS)) - m.files.keys())
    assert lost == [], f"{len(lost)} of {WRITERS * ROUNDS} entries lost"
    waits: list[int] = lock_waits[:]
    assert sum(waits) > 0, "the writers never found the lock held: they did not contend, so this proves nothing"


class ReadCountingStore(CountingStore):
    """Also records each read and whether it came back unchanged (a 304)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: list[tuple[str, bool]] = []

    def get_if_changed(self, key: str, e_tag: str | None) -> tuple[bytes | None, str | None] | None:
        got = super().get_if_changed(key, e_tag)
        self.reads.append((key.rsplit("/", 1)[-1], got is None))
        return got


def test_a_view_reads_what_changed_and_never_a_complete_shard(tmp_path: Path) -> None:
    """The index marks a shard complete once it holds 1,000 chunks; a View then answers for its blocks
    unread, reads the other shard once per refresh (a 304 when unchanged), and counts the entries of a
    full shard that an older index does not mark."""
    store = ReadCountingStore(tmp_path)
    chain = [entry(b, f"0x{b:x}", f"0x{b + 1:x}") for b in range(1002)]
    manifest.add(store, 1, "blocks", 1, SCHEMA, chain[:999], False)
    index = manifest._index(store, 1, "blocks")
    assert index is not None and index["complete"] == []
    manifest.add(store, 1, "blocks", 1, SCHEMA, chain[999:], False)
    index = manifest._index(store, 1, "blocks")
    assert index is not None and index["complete"] == ["manifest/00000000_00000999.json"]
    view = manifest.View(store, 1, "blocks")
    view.refresh()
    assert view.held(0, 999) == range(0, 1000) and view.first() == 0
    assert view.held(1000, 1999) == {1000, 1001}
    assert view.held(1500, 1999) == set()
    assert store.reads == [("manifest.json", False), ("00001000_00001999.json", False)]
    view.refresh()
    assert view.held(1000, 1001) == {1000, 1001}
    assert store.reads[2:] == [("manifest.json", True), ("00001000_00001999.json", True)]
    manifest.add(store, 1, "blocks", 1, SCHEMA, [entry(1002, "0x3ea", "0x3eb")], False)
    view.refresh()
    assert view.held(1000, 1999) == {1000, 1001, 1002}
    assert store.reads[4:] == [("manifest.json", True), ("00001000_00001999.json", False)]
    # an index written before `complete`: the full shard is read once, then known
    old = manifest.View(store, 1, "blocks")
    doc = json.loads(store.get(manifest.key(1, "blocks")) or b"")
    del doc["complete"]
    store.put(manifest.key(1, "blocks"), json.dumps(doc).encode())
    old.refresh()
    assert old.held(0, 999) == set(range(1000)) and old.held(0, 999) == range(0, 1000)
    old.refresh()
    before = len(store.reads)
    assert old.held(0, 999) == range(0, 1000) and len(store.reads) == before

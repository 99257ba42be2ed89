"""Validated files to their final keys, then into the manifest.

Order is what makes a crash harmless: every object of a partition is stored whole before any
manifest entry names it, so a crash leaves at worst an unrecorded object that the next run
finds byte-identical and records. A key holding other bytes is a conflict, never overwritten
silently (unless the user asks).

A chunk replaced by `--overwrite-conflicts` goes to a new key, its usual name with the new bytes'
hash (`replacement_name`), and the entry is pointed at it; the old file stays whole where it was, for
the Iceberg table's earlier snapshots (time travel), until `gc` removes it after its grace period. A
crash mid-replacement leaves the entry naming the old file or the new one, both stored.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..archive import manifest
from ..archive.manifest import Entry
from ..archive.storage import Store, sha256, single_put_limit
from ..errors import ConflictError, StorageError
from ..faults import CRASH_ENV, CRASH_POINTS, crash_point
from .plan import Chunk
from .validate import Facts

# The crash hook lives in .faults (manifest.py marks a step too); its names stay importable from here.
__all__ = ["CRASH_ENV", "CRASH_POINTS", "Staged", "crash_point", "object_key", "publish"]
REPLACEMENT_HASH = 12  # hex digits of the new bytes' sha256 in a replacement's name


@dataclass(frozen=True)
class Staged:
    dataset: str
    chunk: Chunk
    path: Path
    facts: Facts
    source: str | None = None
    sources: tuple[str, ...] = ()  # the endpoints (names) that answered its data

    def entry(self, data: bytes) -> Entry:
        return Entry(
            path=self.chunk.filename(self.dataset),
            start_block=self.chunk.start,
            end_block=self.chunk.end,
            rows=self.facts.rows,
            bytes=len(data),
            sha256=sha256(data),
            first_parent_hash=self.facts.first_parent_hash,
            last_block_hash=self.facts.last_block_hash,
            source=self.source,
            sources=self.sources,
        )


def object_key(chain_id: int, dataset: str, name: str) -> str:
    return f"cold/{chain_id}/{dataset}/{name}"


def replacement_name(dataset: str, chunk: Chunk, sha: str) -> str:
    """`{dataset}_{start}_{end}.r{sha256[:12]}.parquet`: named by its bytes, so that a re-run of the same
    replacement finds it stored, and a first publish keeps the plain name."""
    return chunk.filename(dataset).removesuffix(".parquet") + f".r{sha[:REPLACEMENT_HASH]}.parquet"


def _refuse_too_large(store: Store, chunk_size: int, entries: list[tuple[Staged, Entry, Entry | None]]) -> None:
    """Every object goes up in one request (storage.py): refuse the partition before the first
    upload if a file to upload is larger than that, so that nothing of it is published."""
    limit = single_put_limit(store)
    uploads = [(item, entry) for item, entry, old in entries if old != entry]
    if limit is None or not uploads:
        return
    item, entry = max(uploads, key=lambda e: e[1].bytes)
    if entry.bytes > limit:
        raise StorageError(
            f"storage: {item.dataset} chunk {item.chunk} is {entry.bytes} bytes, above the {limit} bytes one request writes "
            f"to {type(store.remote).__name__}: use a chunk_size of at most {chunk_size * limit // entry.bytes} "
            f"(now {chunk_size}); nothing published"
        )


def _upload(store: Store, key: str, item: Staged, entry: Entry, overwrite_conflicts: bool) -> None:
    """The file under `key`, read here: its bytes are released before the next file's are read."""
    data = item.path.read_bytes()
    if not store.put_new(key, data):
        existing = store.get(key)
        if existing is not None and sha256(existing) != entry.sha256:
            if not overwrite_conflicts:
                raise ConflictError(
                    f"conflict: {item.dataset} chunk {item.chunk}: {key} holds other bytes than the new file; "
                    "nothing changed (use --overwrite-conflicts to replace it)"
                )
            store.put(key, data)


def publish(
    store: Store,
    chain_id: int,
    chunk_size: int,
    staged: list[Staged],
    archived: dict[str, manifest.Manifest | None],
    overwrite_conflicts: bool,
) -> list[tuple[str, Entry]]:
    """Store and record `staged`; returns the (dataset, entry) pairs that changed the archive.

    A file is read once to make its entry and once more to upload it, so that one file at a time is
    in memory, not the partition's."""
    entries = []
    for item in staged:
        entry = item.entry(item.path.read_bytes())
        known = archived.get(item.dataset)
        old = known.files.get(entry.start_block) if known else None
        if old is not None and old.sha256 != entry.sha256:
            if not overwrite_conflicts:
                raise ConflictError(
                    f"conflict: {item.dataset} chunk {item.chunk}: archived sha256 {old.sha256[:12]}… differs from "
                    f"new {entry.sha256[:12]}… (a reorg or another node?); nothing changed "
                    "(use --overwrite-conflicts to replace it)"
                )
            entry = replace(entry, path=replacement_name(item.dataset, item.chunk, entry.sha256))
        elif old is not None:
            entry = replace(entry, path=old.path)  # the same bytes, under the name they were recorded by
        entries.append((item, entry, old))
    _refuse_too_large(store, chunk_size, entries)
    crash_point("after-staging")
    for n, (item, entry, old) in enumerate(entries):
        if old == entry:
            continue
        _upload(store, object_key(chain_id, item.dataset, entry.path), item, entry, overwrite_conflicts)
        if n == 0:
            crash_point("mid-upload")
    crash_point("after-upload")
    changed: list[tuple[str, Entry]] = []
    by_dataset: dict[str, list[tuple[Staged, Entry]]] = {}
    for item, entry, _ in entries:
        by_dataset.setdefault(item.dataset, []).append((item, entry))
    for n, (dataset, items) in enumerate(by_dataset.items()):
        schema = items[0][0].facts.schema
        added = manifest.add(store, chain_id, dataset, chunk_size, schema, [e for _, e in items], overwrite_conflicts)
        changed += [(dataset, e) for e in added]
        if n == 0:
            crash_point("mid-manifest")
    return changed

"""The manifest: the archive's source of truth, one per chain and dataset.

A file not in the manifest does not exist for readers; an entry is added only after its file is
fully stored. `manifest.json` is a small index (metadata, schema, the list of shards); the
entries live in shards of `SHARD_CHUNKS` chunks each, so adding an entry rewrites one shard of
at most 1,000 entries however long the archive grows (a single 100,000-entry document is 37 MB
and took 0.76 s just to parse; see docs/manifest.md). Every write goes through `Store.update`
(compare-and-swap) and the bytes are a pure function of the entries, so a re-run with identical
content writes nothing. The format is documented in docs/manifest.md; keep the keys stable.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from typing import Any

from ..errors import ConfigError, ConflictError, IngestError
from ..faults import crash_point
from ..pipeline.plan import contiguous_through
from .storage import Store

FORMAT = "cryo-ingest-manifest"
SHARD_FORMAT = "cryo-ingest-manifest-shard"
FORMAT_VERSION = 2
SHARD_CHUNKS = 1000
CRYO_VERSION = version("cryo")


@dataclass(frozen=True)
class Entry:
    path: str  # relative to manifest.json
    start_block: int
    end_block: int
    rows: int
    bytes: int
    sha256: str
    first_parent_hash: str | None = None  # blocks only: parent of start_block
    last_block_hash: str | None = None  # blocks only: hash of end_block
    source: str | None = None  # traces only: the node API the rows came from
    # The endpoints (names) that answered its data: kept in the shard's `sources`, beside `files`, where readers
    # of format 2 that build an Entry from each of `files` do not look; not part of what a re-run compares.
    sources: tuple[str, ...] = field(default=(), compare=False)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and k != "sources"}


@dataclass
class Manifest:
    """The whole manifest as readers see it: the index's metadata and every shard's entries."""

    chain_id: int
    dataset: str
    chunk_size: int
    schema: list[dict[str, str]] = field(default_factory=list)
    cryo_version: str = CRYO_VERSION
    files: dict[int, Entry] = field(default_factory=dict)  # by start_block

    def header(self, fmt: str) -> dict[str, Any]:
        return {"format": fmt, "format_version": FORMAT_VERSION, "chain_id": self.chain_id, "dataset": self.dataset}


def key(chain_id: int, dataset: str) -> str:
    return f"cold/{chain_id}/{dataset}/manifest.json"


def shard_span(chunk_size: int) -> int:
    return chunk_size * SHARD_CHUNKS


def shard_path(start: int, chunk_size: int) -> str:
    """The shard (relative to manifest.json) that holds the entry of the chunk starting at `start`."""
    lo = start // shard_span(chunk_size) * shard_span(chunk_size)
    return f"manifest/{lo:08}_{lo + shard_span(chunk_size) - 1:08}.json"


def shard_start(shard: str) -> int:
    """The first block of a shard's span, from its name (`manifest/{lo:08}_{hi:08}.json`)."""
    return int(shard.rsplit("/", 1)[-1].split("_", 1)[0])


def _dir(chain_id: int, dataset: str) -> str:
    return f"cold/{chain_id}/{dataset}/"


def _parse(data: bytes, fmt: str, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
        if doc.get("format") != fmt or doc.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unknown format {doc.get('format')!r} v{doc.get('format_version')!r}")
        return dict(doc)
    except (ValueError, AttributeError) as err:
        raise IngestError(f"manifest {where} is unreadable: {err}") from None


def _entries(doc: dict[str, Any], where: str) -> dict[int, Entry]:
    try:
        served = doc.get("sources", {})
        return {e["start_block"]: Entry(**e, sources=tuple(served.get(str(e["start_block"]), ()))) for e in doc["files"]}
    except (KeyError, TypeError, AttributeError) as err:
        raise IngestError(f"manifest {where} is unreadable: {err}") from None


def encode_index(m: Manifest, shards: list[str], complete: list[str] | None = None) -> bytes:
    """`complete`: the shards that hold all SHARD_CHUNKS entries. Entries are never removed, so a
    shard once complete stays so, and a reader that plans or measures coverage skips it unread."""
    doc = {
        **m.header(FORMAT),
        "chunk_size": m.chunk_size,
        "shard_chunks": SHARD_CHUNKS,
        "cryo_version": m.cryo_version,
        "schema": m.schema,
        "shards": sorted(shards),
        "complete": sorted(complete or ()),
    }
    return (json.dumps(doc, indent=1) + "\n").encode()


def encode_shard(m: Manifest, entries: dict[int, Entry]) -> bytes:
    """One entry per line: diffable, and cheap to rewrite. Provenance after the entries, one line a chunk."""
    head = json.dumps(m.header(SHARD_FORMAT), indent=1)[:-2]
    lines = [json.dumps(entries[k].to_json(), separators=(",", ":")) for k in sorted(entries)]
    served = [f'"{k}":{json.dumps(list(entries[k].sources))}' for k in sorted(entries) if entries[k].sources]
    tail = ',\n "sources": {\n  ' + ",\n  ".join(served) + "\n }" if served else ""
    return (head + ',\n "files": [\n  ' + ",\n  ".join(lines) + "\n ]" + tail + "\n}\n").encode()


def _index(store: Store, chain_id: int, dataset: str) -> dict[str, Any] | None:
    data = store.get(key(chain_id, dataset))
    return None if data is None else _parse(data, FORMAT, key(chain_id, dataset))


def load(store: Store, chain_id: int, dataset: str, blocks: tuple[int, int] | None = None) -> Manifest | None:
    """The one reader of an archive's manifest (index and shards); None where there is none.

    With `blocks` (first, last), only the shards holding entries of those blocks are read.
    """
    index = _index(store, chain_id, dataset)
    if index is None:
        return None
    m = Manifest(chain_id, dataset, index["chunk_size"], index["schema"], index["cryo_version"])
    shards = index["shards"]
    if blocks is not None:  # by the listed shards' spans: a range up to block 10^12 costs what is listed
        lo = blocks[0] - blocks[0] % shard_span(m.chunk_size)
        shards = [s for s in shards if lo <= shard_start(s) <= blocks[1]]

    def read(shard: str) -> dict[int, Entry]:
        where = _dir(chain_id, dataset) + shard
        data = store.get(where)
        if data is None:
            raise IngestError(f"manifest {key(chain_id, dataset)} lists {shard}, which is missing")
        return _entries(_parse(data, SHARD_FORMAT, where), where)

    with ThreadPoolExecutor(max_workers=16) as pool:
        for entries in pool.map(read, shards):
            m.files.update(entries)
    return m


def check_grid(manifest: Manifest | None, chunk_size: int) -> None:
    if manifest is not None and manifest.chunk_size != chunk_size:
        raise ConfigError(
            f"invalid config: chunk_size: {chunk_size} differs from the archive's {manifest.chunk_size} "
            f"for {manifest.dataset} (files must stay on one grid)"
        )


def continuity_breaks(files: dict[int, Entry], chunk_size: int, starts: list[int]) -> list[str]:
    """Where the parent-hash chain breaks between the chunks at `starts` and their archived neighbours."""
    breaks = []
    for start in starts:
        entry = files[start]
        prev, nxt = files.get(start - chunk_size), files.get(start + chunk_size)
        if prev and prev.last_block_hash and entry.first_parent_hash != prev.last_block_hash:
            breaks.append(f"block {start} does not follow block {prev.end_block} ({entry.path})")
        if nxt and nxt.first_parent_hash and entry.last_block_hash != nxt.first_parent_hash:
            breaks.append(f"block {nxt.start_block} does not follow block {entry.end_block} ({entry.path})")
    return breaks


def add(
    store: Store,
    chain_id: int,
    dataset: str,
    chunk_size: int,
    schema: list[dict[str, str]],
    entries: list[Entry],
    overwrite_conflicts: bool,
) -> list[Entry]:
    """Record `entries` with compare-and-swap, shard by shard, then list new shards in the index.

    A crash between the two leaves a shard the index does not list: readers do not see it, and
    the next run that records any of its chunks lists it.
    """
    index = _index(store, chain_id, dataset)
    meta = Manifest(chain_id, dataset, chunk_size, schema)
    if index is not None:
        check_grid(Manifest(chain_id, dataset, index["chunk_size"]), chunk_size)
        if index["schema"] != schema:
            raise ConflictError(
                f"conflict: {dataset}: the new files' schema differs from the archive's "
                f"(archive written by Cryo {index['cryo_version']}); nothing recorded"
            )
    by_shard: dict[str, list[Entry]] = {}
    for entry in entries:
        by_shard.setdefault(shard_path(entry.start_block, chunk_size), []).append(entry)
    changed: list[Entry] = []
    complete: set[str] = set()
    for shard, items in sorted(by_shard.items()):
        added, full = _add_to_shard(store, meta, shard, items, overwrite_conflicts)
        changed += added
        if full:
            complete.add(shard)
    if not by_shard.keys() <= set(index["shards"] if index else ()):
        crash_point("mid-index")  # a shard holds the entries; the index does not list it yet

    def list_shards(current: bytes | None) -> bytes | None:
        doc = _parse(current, FORMAT, key(chain_id, dataset)) if current is not None else None
        listed = set(doc["shards"]) if doc else set()
        marked = set(doc.get("complete", ())) if doc else set()
        if doc is not None and listed >= by_shard.keys() and marked >= complete:
            return None
        if doc is not None and doc["schema"] != schema:
            raise ConflictError(f"conflict: {dataset}: schema changed while recording; nothing listed")
        return encode_index(meta, sorted(listed | by_shard.keys()), sorted(marked | complete))

    store.update(key(chain_id, dataset), list_shards)
    return changed


def _add_to_shard(store: Store, meta: Manifest, shard: str, entries: list[Entry], overwrite: bool) -> tuple[list[Entry], bool]:
    """The entries changed, and whether the shard now holds every chunk of its span."""
    where = _dir(meta.chain_id, meta.dataset) + shard
    changed: list[Entry] = []
    full = [False]

    def change(current: bytes | None) -> bytes | None:
        changed.clear()
        files = _entries(_parse(current, SHARD_FORMAT, where), where) if current is not None else {}
        full[0] = len(files) >= SHARD_CHUNKS
        for entry in entries:
            old = files.get(entry.start_block)
            if old == entry:
                continue
            if old is not None and not overwrite:
                raise ConflictError(
                    f"conflict: {meta.dataset} chunk {entry.start_block}-{entry.end_block}: archived sha256 "
                    f"{old.sha256[:12]}… differs from new {entry.sha256[:12]}…; nothing changed "
                    "(use --overwrite-conflicts to replace it)"
                )
            files[entry.start_block] = entry
            changed.append(entry)
        full[0] = len(files) >= SHARD_CHUNKS
        if not changed:
            return None
        breaks = continuity_breaks(
            _with_neighbours(store, meta, files, changed), meta.chunk_size, [e.start_block for e in changed]
        )
        if breaks:
            raise ConflictError(f"conflict: {meta.dataset}: parent-hash chain broken: {breaks[0]}; nothing recorded")
        return encode_shard(meta, files)

    store.update(where, change)
    return list(changed), full[0]


def _with_neighbours(store: Store, meta: Manifest, files: dict[int, Entry], changed: list[Entry]) -> dict[int, Entry]:
    """The shard's entries plus the neighbours across its edges, read from the adjacent shards."""
    if not any(e.first_parent_hash for e in changed):
        return files
    out = dict(files)
    for entry in changed:
        for neighbour in (entry.start_block - meta.chunk_size, entry.start_block + meta.chunk_size):
            if (
                neighbour < 0
                or neighbour in out
                or shard_path(neighbour, meta.chunk_size) == shard_path(entry.start_block, meta.chunk_size)
            ):
                continue
            where = _dir(meta.chain_id, meta.dataset) + shard_path(neighbour, meta.chunk_size)
            data = store.get(where)
            if data is not None:
                out.update(_entries(_parse(data, SHARD_FORMAT, where), where))
    return out


class View:
    """One dataset's manifest as a long-lived reader (a runner, a source, `status`) keeps it.

    Each `refresh` costs one conditional GET of the index; a shard is then read only when asked
    for, at most once per refresh, and with its ETag, so an unchanged one costs a 304 and no
    parse. Shards the index marks complete are never read: every chunk of their span is there.
    So what a poll pays follows the blocks it asks about, not the archive's length.
    """

    def __init__(self, store: Store, chain_id: int, dataset: str) -> None:
        self.store, self.chain_id, self.dataset = store, chain_id, dataset
        self._index: dict[str, Any] | None = None
        self._index_tag: str | None = None
        self._shards: dict[str, tuple[str | None, dict[int, Entry]]] = {}
        self._fresh: set[str] = set()
        self._listed: set[str] = set()
        self._complete: set[str] = set()  # as the index marks them, and as counted (indexes older than the mark)

    def refresh(self) -> None:
        got = self.store.get_if_changed(key(self.chain_id, self.dataset), self._index_tag)
        self._fresh.clear()
        if got is None:
            return
        data, self._index_tag = got
        self._index = None if data is None else _parse(data, FORMAT, key(self.chain_id, self.dataset))
        self._listed = set(self._index["shards"]) if self._index else set()
        self._complete |= set(self._index.get("complete", ())) if self._index else set()

    @property
    def chunk_size(self) -> int | None:
        return int(self._index["chunk_size"]) if self._index else None

    @property
    def shards(self) -> list[str]:
        return sorted(self._listed)

    def complete(self, shard: str) -> bool:
        return shard in self._listed and shard in self._complete

    def check_grid(self, chunk_size: int) -> None:
        if self.chunk_size is not None:
            check_grid(Manifest(self.chain_id, self.dataset, self.chunk_size), chunk_size)

    def first(self) -> int | None:
        """The first archived chunk's start block; None for an empty archive."""
        for shard in self.shards:
            if shard in self._complete:
                return shard_start(shard)
            if entries := self.entries(shard):
                return min(entries)
        return None

    def entries(self, shard: str) -> dict[int, Entry]:
        """The shard's entries by start block; {} for a shard the index does not list.

        Only shards that are not complete stay cached: a complete one is never needed to plan (and
        79 of them per dataset would hold a year's entries in memory); asked for, it is read again.
        """
        if shard not in self._listed:
            return {}
        tag, entries = self._shards.get(shard, (None, {}))
        if shard not in self._fresh or shard not in self._shards:
            where = _dir(self.chain_id, self.dataset) + shard
            got = self.store.get_if_changed(where, tag)
            if got is not None:
                data, tag = got
                if data is None:
                    raise IngestError(f"manifest {key(self.chain_id, self.dataset)} lists {shard}, which is missing")
                entries = _entries(_parse(data, SHARD_FORMAT, where), where)
            if len(entries) >= SHARD_CHUNKS:
                self._complete.add(shard)
                self._shards.pop(shard, None)
            else:
                self._shards[shard] = (tag, entries)
            self._fresh.add(shard)
        return entries

    def held(self, lo: int, hi: int) -> Collection[int]:
        """The start blocks of the chunks archived in lo..hi, which lie on the grid within one shard."""
        size = self.chunk_size
        if size is None:
            return ()
        shard = shard_path(lo, size)
        if shard not in self._listed:
            return ()
        if shard in self._complete:
            return range(lo, hi + 1, size)
        return {s for s in self.entries(shard) if lo <= s <= hi}


class Views:
    """The views of a job's datasets, as the operator's long-lived readers keep them (a runner, a
    source, `status`): one place that answers which chunks are held, and how far they run."""

    def __init__(self, store: Store, chain_id: int, datasets: Sequence[str], chunk_size: int) -> None:
        self.chunk_size, self.window = chunk_size, shard_span(chunk_size)
        self.of = {d: View(store, chain_id, d) for d in datasets}

    def refresh(self) -> None:
        for view in self.of.values():
            view.refresh()

    def held(self, dataset: str, lo: int, hi: int) -> Collection[int]:
        return self.of[dataset].held(lo, hi)

    def through(self, datasets: Sequence[str], base: int | None = None) -> int:
        """The last block of the run of chunks held for every one of `datasets`, from `base`'s chunk
        on (default: the first dataset's first archived chunk, on that dataset's own grid); -1 where
        none is archived."""
        size = self.chunk_size
        if base is None:
            view = self.of[datasets[0]]
            base, size = view.first(), view.chunk_size or size
            if base is None:
                return -1
        return contiguous_through(self.held, datasets, size, shard_span(size), base)

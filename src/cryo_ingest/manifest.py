"""`manifest.json`: the archive's source of truth, one per chain and dataset.

A file not in the manifest does not exist for readers; an entry is added only after its file is
fully stored. Updates go through `Store.update` (compare-and-swap), and the bytes written are a
pure function of the entries, so a re-run with identical content writes nothing.
The format is documented in docs/manifest.md; keep the keys stable.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from typing import Any

from .errors import ConfigError, ConflictError, IngestError
from .storage import Store

FORMAT = "cryo-ingest-manifest"
FORMAT_VERSION = 1
CRYO_VERSION = version("cryo")


@dataclass(frozen=True)
class Entry:
    path: str  # relative to the manifest
    start_block: int
    end_block: int
    rows: int
    bytes: int
    sha256: str
    first_parent_hash: str | None = None  # blocks only: parent of start_block
    last_block_hash: str | None = None  # blocks only: hash of end_block
    source: str | None = None  # traces only: the node API the rows came from

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Manifest:
    chain_id: int
    dataset: str
    chunk_size: int
    schema: list[dict[str, str]] = field(default_factory=list)
    cryo_version: str = CRYO_VERSION
    files: dict[int, Entry] = field(default_factory=dict)  # by start_block

    def dumps(self) -> bytes:
        """Deterministic bytes, one file entry per line (diffable, fast at 100k entries)."""
        head = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "chain_id": self.chain_id,
            "dataset": self.dataset,
            "chunk_size": self.chunk_size,
            "cryo_version": self.cryo_version,
            "schema": self.schema,
        }
        lines = [json.dumps(self.files[k].to_json(), separators=(",", ":")) for k in sorted(self.files)]
        body = json.dumps(head, indent=1)[:-2]
        return (body + ',\n "files": [\n  ' + ",\n  ".join(lines) + ("\n ]\n}\n" if lines else "]\n}\n")).encode()

    @classmethod
    def loads(cls, data: bytes, where: str) -> Manifest:
        try:
            doc = json.loads(data)
            if doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"unknown format {doc.get('format')!r} v{doc.get('format_version')!r}")
            return cls(
                chain_id=doc["chain_id"],
                dataset=doc["dataset"],
                chunk_size=doc["chunk_size"],
                schema=doc["schema"],
                cryo_version=doc["cryo_version"],
                files={e["start_block"]: Entry(**e) for e in doc["files"]},
            )
        except (ValueError, KeyError, TypeError) as err:
            raise IngestError(f"manifest {where} is unreadable: {err}") from None


def key(chain_id: int, dataset: str) -> str:
    return f"cold/{chain_id}/{dataset}/manifest.json"


def load(store: Store, chain_id: int, dataset: str) -> Manifest | None:
    data = store.get(key(chain_id, dataset))
    return None if data is None else Manifest.loads(data, key(chain_id, dataset))


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
    """Record `entries` with compare-and-swap; return those that changed the manifest."""
    changed: list[Entry] = []
    where = key(chain_id, dataset)

    def change(current: bytes | None) -> bytes | None:
        changed.clear()
        manifest = Manifest.loads(current, where) if current is not None else Manifest(chain_id, dataset, chunk_size)
        check_grid(manifest, chunk_size)
        if manifest.files and manifest.schema != schema:
            raise ConflictError(
                f"conflict: {dataset}: the new files' schema differs from the archive's "
                f"(archive written by Cryo {manifest.cryo_version}); nothing recorded"
            )
        for entry in entries:
            old = manifest.files.get(entry.start_block)
            if old == entry:
                continue
            if old is not None and not overwrite_conflicts:
                raise ConflictError(
                    f"conflict: {dataset} chunk {entry.start_block}-{entry.end_block}: archived sha256 "
                    f"{old.sha256[:12]}… differs from new {entry.sha256[:12]}…; nothing changed "
                    "(use --overwrite-conflicts to replace it)"
                )
            manifest.files[entry.start_block] = entry
            changed.append(entry)
        if not changed:
            return None
        breaks = continuity_breaks(manifest.files, chunk_size, [e.start_block for e in changed])
        if breaks:
            raise ConflictError(f"conflict: {dataset}: parent-hash chain broken: {breaks[0]}; nothing recorded")
        manifest.schema, manifest.cryo_version = schema, CRYO_VERSION
        return manifest.dumps()

    store.update(where, change)
    return list(changed)

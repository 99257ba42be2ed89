"""Objects under a dataset's prefix that no manifest names, and shards the index does not list.

A crash between storing a file and recording it leaves an orphan (publish.py stores every file of
a partition before any entry names it); a crash between a shard and the index leaves an unlisted
shard (manifest.py). Both are invisible to readers. A chunk replaced by `--overwrite-conflicts`
leaves its old file too (publish.py stores the new bytes under a new name): an orphan since the
replacement, which the Iceberg table's earlier snapshots may still read. The names a shard holds
count as named even when the index does not list the shard yet: the next run that records a chunk
there lists it, and its files must still be there then.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import obstore
from obstore.exceptions import BaseError, NotFoundError

from ..archive import manifest
from ..archive.storage import Store
from ..errors import StorageError

# A first publish's name, or a replacement's (publish.replacement_name).
DATA_FILE = re.compile(r"^(?P<dataset>[a-z]+)_(?P<start>\d{8,})_(?P<end>\d{8,})(?P<replacement>\.r[0-9a-f]+)?\.parquet$")


@dataclass(frozen=True)
class Orphan:
    key: str  # under the root
    size: int
    last_modified: datetime
    blocks: tuple[int, int] | None  # from a data file's name; None for any other object
    unlisted_shard: str | None = None  # set when only a shard the index does not list names the file
    # A replaced chunk's old file: when the file that replaced it (the one its chunk's entry names) was stored.
    replaced_at: datetime | None = None

    @property
    def since(self) -> datetime:
        """When it became an orphan, as far as the listing tells: a replaced file's grace starts at its replacement."""
        return max(self.last_modified, self.replaced_at or self.last_modified)

    @property
    def data_file(self) -> bool:
        return self.blocks is not None


@dataclass
class Listing:
    orphans: list[Orphan]
    unlisted_shards: list[str]  # keys


def _objects(store: Store, prefix: str) -> Iterator[dict[str, Any]]:
    """The objects under `prefix`, streamed: an archive of 100,000 entries has 100,000 of them per dataset."""
    if store.local_dir is not None and not store.local_dir.exists():
        return
    try:
        for batch in obstore.list(store.store, prefix):
            yield from (dict(meta) for meta in batch)
    except (NotFoundError, FileNotFoundError):
        return
    except BaseError as err:
        raise StorageError(f"storage: cannot list {prefix}: {type(err).__name__}: {str(err).splitlines()[0][:300]}") from None


def _names(data: bytes | None) -> list[str]:
    """The file names a shard document holds; [] when unreadable (verify reports the manifest)."""
    try:
        return [str(f["path"]) for f in json.loads(data or b"")["files"]]
    except (ValueError, KeyError, TypeError):
        return []


def list_orphans(store: Store, chain_id: int, dataset: str) -> Listing:
    """Everything under `cold/{chain_id}/{dataset}/` against what the index and every shard name."""
    folder = f"cold/{chain_id}/{dataset}/"
    index_key = manifest.key(chain_id, dataset)
    listed: set[str] = set()
    index = store.get(index_key)
    if index is not None:
        try:
            listed = {folder + str(s) for s in json.loads(index)["shards"]}
        except (ValueError, KeyError, TypeError):
            listed = set()
    shards = [o["path"] for o in _objects(store, folder + "manifest/") if o["path"].endswith(".json")]
    owner: dict[str, str] = {}  # data file key -> "" when a listed shard names it, else the unlisted shard that does
    for shard in shards:
        for name in _names(store.get(shard)):
            if shard in listed:
                owner[folder + name] = ""
            else:
                owner.setdefault(folder + name, shard)
    orphans, shard_keys = [], set(shards)
    stored: dict[int, datetime] = {}  # start block -> when the replacement a listed shard names for it was stored
    for meta in _objects(store, folder):
        key = meta["path"]
        if key == index_key or key in shard_keys:
            continue
        m = DATA_FILE.match(key[len(folder) :]) if "/" not in key[len(folder) :] else None
        blocks = (int(m["start"]), int(m["end"])) if m and m["dataset"] == dataset else None
        if owner.get(key) == "":
            if blocks is not None and m and m["replacement"]:  # only a replacement has a replaced file
                stored[blocks[0]] = meta["last_modified"]
            continue
        orphans.append(Orphan(key, int(meta["size"]), meta["last_modified"], blocks, owner.get(key) or None))
    orphans = [replace(o, replaced_at=stored.get(o.blocks[0])) if o.blocks else o for o in orphans]
    return Listing(orphans, [s for s in shards if s not in listed])

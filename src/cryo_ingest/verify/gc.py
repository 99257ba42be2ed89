"""`cryo-ingest gc`: delete orphaned data files, never one a manifest names or a running job may record.

What it may delete: an object under `cold/{chain}/{dataset}/` named like a data file
(`{dataset}_{start}_{end}.parquet`, or a replacement's `….r{sha256[:12]}.parquet`) that no shard
names (listed by the index or not), last modified longer ago than the grace period. A replaced
chunk's old file counts from its replacement (when the file that replaced it was stored), not from
when it was first written: the Iceberg table's snapshots of before the replacement read it until
then. Any other object (a manifest, a shard, a file of someone else's) is listed by `verify` and
left alone.

A job records a file soon after storing it, so an orphan younger than the grace period may still
be recorded. One older may be too: a re-run finds the object already there (same bytes, so not
rewritten, so still old) and records it. So each candidate is checked against a fresh read of its
shard just before it is deleted, and again just after; if a job recorded it in between, the bytes
read before the delete are put back. The manifest never ends up naming a missing file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import obstore
from obstore.exceptions import BaseError, NotFoundError

from ..archive import manifest
from ..archive.storage import Store, sha256
from ..config import DATASETS
from ..errors import ConfigError, StorageError
from .orphans import Orphan, list_orphans

DURATION = re.compile(r"^(\d+)(s|m|h|d)$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """`0s`, `90s`, `15m`, `1h`, `2d`."""
    m = DURATION.match(text.strip())
    if not m:
        raise ConfigError(f"invalid arguments: --older-than: {text!r} is not a duration such as 0s, 90s, 15m, 1h, 2d")
    return timedelta(seconds=int(m[1]) * UNITS[m[2]])


@dataclass
class GcResult:
    deleted: list[Orphan] = field(default_factory=list)
    kept_young: list[Orphan] = field(default_factory=list)  # within the grace period
    kept_other: list[Orphan] = field(default_factory=list)  # not a data file, or named by an unlisted shard
    restored: list[str] = field(default_factory=list)  # recorded by a job while being deleted, put back
    dry_run: bool = False


def _named_now(store: Store, chain_id: int, dataset: str, orphan: Orphan) -> bool:
    """Whether a shard names the file at this moment (the shard its chunk belongs to, listed or not)."""
    assert orphan.blocks is not None
    index = store.get(manifest.key(chain_id, dataset))
    chunk_size = json.loads(index)["chunk_size"] if index else orphan.blocks[1] - orphan.blocks[0] + 1
    shard = f"cold/{chain_id}/{dataset}/" + manifest.shard_path(orphan.blocks[0], chunk_size)
    data = store.get(shard)
    if data is None:
        return False
    name = orphan.key.rsplit("/", 1)[-1]
    return any(f.get("path") == name for f in json.loads(data).get("files", []))


def _delete(store: Store, key: str) -> None:
    try:
        obstore.delete(store.store, key)
    except (NotFoundError, FileNotFoundError):
        pass
    except BaseError as err:
        raise StorageError(f"storage: cannot delete {key}: {type(err).__name__}: {str(err).splitlines()[0][:300]}") from None


def gc(
    store: Store,
    chain_id: int,
    older_than: timedelta,
    datasets: tuple[str, ...] = DATASETS,
    dry_run: bool = False,
    now: datetime | None = None,
) -> GcResult:
    result = GcResult(dry_run=dry_run)
    cutoff = (now or datetime.now(UTC)) - older_than
    for dataset in datasets:
        for orphan in list_orphans(store, chain_id, dataset).orphans:
            if not orphan.data_file or orphan.unlisted_shard:
                result.kept_other.append(orphan)
            elif orphan.since > cutoff:
                result.kept_young.append(orphan)
            elif dry_run:
                result.deleted.append(orphan)
            else:
                data = store.get(orphan.key)
                if data is None or _named_now(store, chain_id, dataset, orphan):
                    continue  # gone already, or recorded since it was listed
                _delete(store, orphan.key)
                if _named_now(store, chain_id, dataset, orphan):
                    store.put_new(orphan.key, data)
                    result.restored.append(f"{orphan.key} (sha256 {sha256(data)[:12]}…)")
                else:
                    result.deleted.append(orphan)
    return result

"""One event per manifest entry, for the DAG's output dataset (e.g. `cold_blocks`).

Events are derived from the manifest, not from what one run happened to change: after every
partition, and again over the whole range when a job or request ends, each manifest entry in the
range gets its event unless the sink already holds it. So a crash between recording an entry and
emitting its event delays the event, never loses it, and the sink never holds one twice (an
event's key is its chain, dataset, first block and sha256). Two sinks: a JSON-lines file
(`--events-file`) and the output dataset on the archive's store (`datasets/{name}/events/`, one
object per event, written with If-None-Match so that concurrent writers cannot duplicate it).
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from . import manifest
from .storage import Store

log = logging.getLogger("cryo_ingest.archive.events")

# Above this many events, a listing of the blocks they cover beats one conditional PUT per event.
LIST_FIRST = 64


@dataclass(frozen=True)
class Event:
    output_dataset: str
    chain_id: int
    dataset: str
    start_block: int
    end_block: int
    uri: str
    rows: int
    sha256: str
    request_id: str | None = None

    @property
    def key(self) -> str:
        """Identity of the archived file it announces: the same entry always has the same key."""
        return f"{self.chain_id}/{self.dataset}/{self.start_block:012}-{self.sha256[:16]}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def dataset_prefix(name: str) -> str:
    """Where a dataset's events live under the root (docs/operator.md)."""
    return f"datasets/{name}/events/"


def object_uri(root: str, chain_id: int, dataset: str, path: str) -> str:
    return f"{root.rstrip('/')}/cold/{chain_id}/{dataset}/{path}"


@dataclass(frozen=True)
class Sinks:
    """Where events go; picklable, so that a worker process can write them itself."""

    output_dataset: str
    root: str
    events_file: Path | None = None
    to_store: bool = False  # the output dataset under the root
    request_id: str | None = None

    def __bool__(self) -> bool:
        return self.events_file is not None or self.to_store


def for_entries(sinks: Sinks, chain_id: int, dataset: str, entries: list[manifest.Entry]) -> list[Event]:
    return [
        Event(
            output_dataset=sinks.output_dataset,
            chain_id=chain_id,
            dataset=dataset,
            start_block=e.start_block,
            end_block=e.end_block,
            uri=object_uri(sinks.root, chain_id, dataset, e.path),
            rows=e.rows,
            sha256=e.sha256,
            request_id=sinks.request_id,
        )
        for e in entries
    ]


def emit(events: list[Event], sinks: Sinks, store: Store | None) -> list[Event]:
    """Record the events each sink does not hold yet; returns those that were new to some sink."""
    new: dict[str, Event] = {}
    if sinks.events_file is not None:
        new |= {e.key: e for e in _append_new(sinks.events_file, events)}
    if sinks.to_store:
        assert store is not None
        new |= {e.key: e for e in _put_new(store, sinks.output_dataset, events)}
    for event in new.values():
        log.info(
            "event %s: %s %d-%d (%d rows)", event.output_dataset, event.dataset, event.start_block, event.end_block, event.rows
        )
    return list(new.values())


def reconcile(store: Store, sinks: Sinks, chain_id: int, datasets: tuple[str, ...], start: int, end: int) -> list[Event]:
    """Emit the event of every manifest entry that starts in start..end, where a sink lacks it."""
    if not sinks:
        return []
    events: list[Event] = []
    for dataset in datasets:
        m = manifest.load(store, chain_id, dataset, (start, end))
        entries = [e for s, e in sorted(m.files.items()) if start <= s <= end] if m else []
        events += for_entries(sinks, chain_id, dataset, entries)
    return emit(events, sinks, store)


def _append_new(path: Path, events: list[Event]) -> list[Event]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=60):  # several workers append; read and append under one lock
        held = set()
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    d = json.loads(line)
                    held.add(f"{d['chain_id']}/{d['dataset']}/{d['start_block']:012}-{d['sha256'][:16]}")
        new = [e for e in events if e.key not in held]
        with path.open("a") as f:
            for event in new:
                f.write(json.dumps(event.to_json(), separators=(",", ":")) + "\n")
    return new


def _put_new(store: Store, name: str, events: list[Event]) -> list[Event]:
    prefix = dataset_prefix(name)
    if len(events) > LIST_FIRST:
        held = set()
        for chain_ds in {f"{e.chain_id}/{e.dataset}/" for e in events}:
            starts = [f"{e.start_block:012}" for e in events if e.key.startswith(chain_ds)]
            # the keys that share the events' first digits: the blocks they cover, not the dataset's history
            lo, hi = min(starts), max(starts)
            common = lo[: next((i for i, (a, b) in enumerate(zip(lo, hi, strict=True)) if a != b), len(lo))]
            held |= {k.removeprefix(prefix).removesuffix(".json") for k in store.list(prefix + chain_ds + common)}
        events = [e for e in events if e.key not in held]

    def put(event: Event) -> bool:
        body = json.dumps(event.to_json(), sort_keys=True).encode() + b"\n"
        return store.put_new(f"{prefix}{event.key}.json", body)

    with ThreadPoolExecutor(max_workers=16) as pool:
        written = list(pool.map(put, events))
    return [e for e, ok in zip(events, written, strict=True) if ok]

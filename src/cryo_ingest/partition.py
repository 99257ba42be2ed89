"""One partition in a worker process: extract -> validate -> publish -> manifest -> events."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from . import events, manifest
from .backfill import PartitionResult, Task
from .errors import ChunkError, ConflictError, IngestError
from .extract import extract, trace_source
from .publish import Staged, object_key, publish
from .storage import Store, open_store
from .validate import validate_chunk

log = logging.getLogger("cryo_ingest")


def run_partition(task: Task) -> PartitionResult:
    """extract -> validate -> publish -> manifest -> events; extraction and validation failures are retried."""
    result = PartitionResult(task.partition)
    store = open_store(task.root, task.storage_options)
    for attempt in range(1, task.attempts + 1):
        try:
            with tempfile.TemporaryDirectory(prefix="cryo-ingest-staging-") as tmp:
                result.published = _run_once(task, store, Path(tmp), result.seconds)
            result.error = None
            break
        except ConflictError as err:
            result.error, result.conflict = str(err), True
            break
        except ChunkError as err:
            result.error = str(err)
            log.warning(
                "partition %d-%d, attempt %d of %d: %s", task.partition.start, task.partition.end, attempt, task.attempts, err
            )
        except IngestError as err:
            result.error = str(err)
            break
    result.cas_retries = store.cas_retries
    return result


def _run_once(task: Task, store: Store, staging: Path, seconds: dict[str, float]) -> list[events.Event]:
    part = task.partition
    started = time.monotonic()
    files = extract(part, task.gateway_url, task.chunk_size, staging)
    seconds["extract"] = time.monotonic() - started
    source = trace_source(task.gateway_url) if "traces" in part.datasets else None
    # this partition's entries and its neighbours' (for the hash chain), not the whole archive
    around = (max(0, part.start - task.chunk_size), part.end + task.chunk_size)
    archived = {d: manifest.load(store, task.chain_id, d, around) for d in part.datasets}
    blocks = archived.get("blocks")
    prev_hash = None
    if blocks and (prev := blocks.files.get(part.start - task.chunk_size)):
        prev_hash = prev.last_block_hash
    staged: list[Staged] = []
    for chunk in part.chunks:
        nxt = blocks.files.get(chunk.end + 1) if blocks and chunk == part.chunks[-1] else None
        facts = validate_chunk(
            {d: files[d, chunk] for d in part.datasets}, chunk, prev_hash, nxt.first_parent_hash if nxt else None
        )
        if "blocks" in facts:
            prev_hash = facts["blocks"].last_block_hash
        staged += [Staged(d, chunk, files[d, chunk], facts[d], source if d == "traces" else None) for d in part.datasets]
    seconds["validate"] = time.monotonic() - started - seconds["extract"]
    changed = publish(store, task.chain_id, task.chunk_size, staged, archived, task.overwrite_conflicts)
    seconds["publish"] = time.monotonic() - started - seconds["extract"] - seconds["validate"]
    out = [
        events.Event(
            output_dataset=task.output_dataset,
            chain_id=task.chain_id,
            dataset=dataset,
            start_block=entry.start_block,
            end_block=entry.end_block,
            uri=f"{task.root.rstrip('/')}/{object_key(task.chain_id, dataset, entry.path)}",
            rows=entry.rows,
            sha256=entry.sha256,
        )
        for dataset, entry in changed
    ]
    events.emit(out, task.events_file)
    return out

"""One partition in a worker process: extract -> validate -> publish -> manifest -> events."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from ..archive import events, manifest, tables
from ..archive.storage import Store, open_store, sha256
from ..errors import CheckFailed, ChunkError, ConflictError, IngestError, register_secret_url
from .extract import blame, extract, receipt_counts, second_opinion, served, settle, trace_source
from .plan import Chunk
from .publish import Staged, crash_point, publish
from .task import PartitionResult, Task
from .validate import validate_chunk

log = logging.getLogger("cryo_ingest")

# Before fetching again a partition whose data failed a check, seconds x attempt: where the pool has one
# endpoint the refetch goes to the same one, and a node that lags in indexing (logs, receipts) may catch up.
CHECK_PAUSE = 1.0


def run_partition(task: Task) -> PartitionResult:
    """extract -> validate -> publish -> manifest -> events; extraction and validation failures are retried."""
    register_secret_url(task.gateway_url)  # its path is the gateway's secret: redacted in this process too
    result = PartitionResult(task.partition)
    store = open_store(task.root, task.storage_options)
    for attempt in range(1, task.attempts + 1):
        try:
            with tempfile.TemporaryDirectory(prefix="cryo-ingest-staging-", dir=task.staging_dir) as tmp:
                result.published, result.emitted = _run_once(task, store, Path(tmp), result)
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
            if isinstance(err, CheckFailed) and attempt < task.attempts:
                time.sleep(CHECK_PAUSE * attempt)
        except IngestError as err:
            result.error = str(err)
            break
    settle(task.gateway_url, task.partition)
    result.cas_retries = store.cas_retries
    return result


def _run_once(task: Task, store: Store, staging: Path, result: PartitionResult) -> tuple[list[events.Event], int]:
    """Returns the events of the entries this run changed, and how many events were new to the sinks."""
    part, seconds = task.partition, result.seconds
    started = time.monotonic()
    # a job of transactions or logs without blocks checks them against the archive's headers, else fetched ones: Cryo
    # extracts blocks too (about one request a block), for the checks only, never published (task.fetch_headers)
    needs_headers = "blocks" not in part.datasets and bool({"transactions", "logs"} & set(part.datasets))
    headers = _archived_headers(store, task, staging) if needs_headers else {}
    for_checks = ("blocks",) if needs_headers and task.fetch_headers and len(headers) < len(part.chunks) else ()
    files = extract(part, task.gateway_url, task.chunk_size, staging, for_checks)
    if for_checks:
        headers = {c: files["blocks", c] for c in part.chunks} | headers  # the archive's where it holds them
    seconds["extract"] = time.monotonic() - started
    source = trace_source(task.gateway_url) if "traces" in part.datasets else None
    receipts = receipt_counts(task.gateway_url, part) if "transactions" in part.datasets else None
    # this partition's entries and its neighbours' (for the hash chain), not the whole archive
    around = (max(0, part.start - task.chunk_size), part.end + task.chunk_size)
    archived = {d: manifest.load(store, task.chain_id, d, around) for d in part.datasets}
    blocks = archived.get("blocks")
    prev_hash = None
    if blocks and (prev := blocks.files.get(part.start - task.chunk_size)):
        prev_hash = prev.last_block_hash
    staged: list[Staged] = []
    counts: dict[str, int] = {}
    unchecked: dict[str, int] = {}
    lies: list[tuple[str, int, str]] = []  # (what, block, check) of each chunk that failed a check
    ask = second_opinion(task.gateway_url)
    for chunk in part.chunks:
        nxt = blocks.files.get(chunk.end + 1) if blocks and chunk == part.chunks[-1] else None
        try:
            facts, checked = validate_chunk(
                {d: files[d, chunk] for d in part.datasets},
                chunk,
                prev_hash,
                nxt.first_parent_hash if nxt else None,
                task.chain_id,
                receipts,
                headers.get(chunk),
                ask,
            )
        except CheckFailed as err:  # every chunk's lie told to the gateway, so that one refetch goes elsewhere for all
            answered = blame(task.gateway_url, err.block, err.check, chunk)
            lies.append((f"{err} (answered by {', '.join(answered)})" if answered else str(err), err.block, err.check))
            prev_hash = None  # its blocks passed the hash chain, but this attempt publishes nothing: no link to check
            continue
        for check, n in checked.counts.items():
            counts[check] = counts.get(check, 0) + n
        for why, block in checked.unchecked.items():
            unchecked.setdefault(why, block)
        if "blocks" in facts:
            prev_hash = facts["blocks"].last_block_hash
        names = served(task.gateway_url, chunk)
        staged += [
            Staged(d, chunk, files[d, chunk], facts[d], source if d == "traces" else None, names.get(d, ()))
            for d in part.datasets
        ]
    if lies:
        first = lies[0]
        more = f"; and {len(lies) - 1} more chunk(s) failed a check" if len(lies) > 1 else ""
        raise CheckFailed(first[0] + more, first[1], first[2])
    result.checked, result.unchecked = counts, unchecked  # this attempt's: every chunk of it passed
    seconds["validate"] = time.monotonic() - started - seconds["extract"]
    changed = publish(store, task.chain_id, task.chunk_size, staged, archived, task.overwrite_conflicts)
    seconds["publish"] = time.monotonic() - started - seconds["extract"] - seconds["validate"]
    by_dataset: dict[str, list[manifest.Entry]] = {}
    for dataset, entry in changed:
        by_dataset.setdefault(dataset, []).append(entry)
    published = [e for d, entries in by_dataset.items() for e in events.for_entries(task.sinks, task.chain_id, d, entries)]
    crash_point("before-events")
    # Every entry of these chunks, changed now or by an earlier run that died before its events.
    emitted = events.reconcile(store, task.sinks, task.chain_id, part.datasets, part.start, part.end)
    if task.catalog:  # the tables follow the manifest the same way, one commit per dataset (archive/catalog.py)
        span, namespace, options = (part.start, part.end), task.catalog_namespace, task.storage_options
        result.catalog_error = tables.follow(task.root, task.chain_id, task.catalog, part.datasets, namespace, span, options)
    if not task.sinks:
        events.emit(published, task.sinks, store)  # logged only
    return published, len(emitted)


def _archived_headers(store: Store, task: Task, staging: Path) -> dict[Chunk, Path]:
    """A job without blocks: the chunks' headers from the archive's own blocks, where it holds those chunks
    (intact, on the same grid): no RPC request."""
    part = task.partition
    if (archived := manifest.load(store, task.chain_id, "blocks", (part.start, part.end))) is None:
        return {}
    out: dict[Chunk, Path] = {}
    for chunk in part.chunks:
        entry = archived.files.get(chunk.start)
        if entry is None or entry.end_block != chunk.end:
            continue
        data = store.get(f"cold/{task.chain_id}/blocks/{entry.path}")
        if data is not None and sha256(data) == entry.sha256:  # else not used: a damaged archive is verify's to report
            out[chunk] = staging / f"archived-headers-{chunk.start}.parquet"
            out[chunk].write_bytes(data)
    return out

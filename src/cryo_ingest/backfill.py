"""A job end to end: the gateway and the plan in this process, partitions in worker processes.

Workers get the gateway's loopback URL and the storage root, never an RPC URL, so a secret
cannot reach a worker's logs, Cryo, or the archive.
"""

from __future__ import annotations

import logging
import multiprocessing
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import events, manifest
from .config import Job
from .errors import ChunkError, ConflictError, IngestError
from .extract import extract, trace_source
from .gateway import Gateway
from .plan import Chunk, Partition, make_plan
from .publish import Staged, object_key, publish
from .storage import open_store
from .validate import validate_chunk

log = logging.getLogger("cryo_ingest")


@dataclass(frozen=True)
class Task:
    """What a worker needs for one partition: no RPC URL among it."""

    partition: Partition
    gateway_url: str
    root: str
    storage_options: dict[str, str]
    chain_id: int
    chunk_size: int
    overwrite_conflicts: bool
    output_dataset: str
    events_file: Path | None
    attempts: int = 3


@dataclass
class PartitionResult:
    partition: Partition
    published: list[events.Event] = field(default_factory=list)
    error: str | None = None
    conflict: bool = False
    cas_retries: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # by stage: extract, validate, publish


@dataclass
class Result:
    chain_id: int
    datasets: tuple[str, ...]
    start_block: int
    end_block: int
    final_head: int = -1
    published: list[events.Event] = field(default_factory=list)
    done: list[Chunk] = field(default_factory=list)
    pending: list[Chunk] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    gateway: dict[str, Any] = field(default_factory=dict)
    trace_source: str | None = None
    cas_retries: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.conflicts


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


def _run_once(task: Task, store: Any, staging: Path, seconds: dict[str, float]) -> list[events.Event]:
    part = task.partition
    started = time.monotonic()
    files = extract(part, task.gateway_url, task.chunk_size, staging)
    seconds["extract"] = time.monotonic() - started
    source = trace_source(task.gateway_url) if "traces" in part.datasets else None
    archived = {d: manifest.load(store, task.chain_id, d) for d in part.datasets}
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


def backfill(
    job: Job,
    events_file: Path | None = None,
    on_partition: Callable[[PartitionResult, int], None] | None = None,
) -> Result:
    """Archive job.start_block..job.end_block (widened to the grid, capped at the final head)."""
    started = time.monotonic()
    store = open_store(job.root, job.storage_options)
    store.check_access()
    archived = {d: manifest.load(store, job.chain_id, d) for d in job.datasets}
    for m in archived.values():
        manifest.check_grid(m, job.chunk_size)
    result = Result(job.chain_id, job.datasets, job.start_block, job.end_block)
    # spawn, not fork: this process runs the gateway's thread, which a fork would copy half-way.
    pool = ProcessPoolExecutor(max_workers=job.max_concurrency, mp_context=multiprocessing.get_context("spawn"))
    with pool, Gateway(job.rpc, job.chain_id) as gw:
        pool.submit(_warm_up)  # a worker starts and imports Cryo while the gateway checks the endpoints
        result.final_head = gw.final_head(job.reorg_buffer)
        plan = make_plan(
            job.start_block,
            job.end_block,
            job.chunk_size,
            job.datasets,
            {d: set(m.files) if m else set() for d, m in archived.items()},
            result.final_head,
            job.force,
            job.chunks_per_partition,
        )
        result.done, result.pending = plan.done, plan.pending
        with_traces = [p for p in plan.partitions if "traces" in p.datasets]
        if with_traces:
            gw.require_traces(with_traces[0].start)
            result.trace_source = gw.trace_source
        if plan.pending:
            log.warning(
                "%d chunk(s) from block %d on are not final yet (final head %d): left for a later run",
                len(plan.pending),
                plan.pending[0].start,
                result.final_head,
            )
        tasks = [
            Task(
                p,
                gw.url,
                job.root,
                job.storage_options,
                job.chain_id,
                job.chunk_size,
                job.overwrite_conflicts,
                job.output_dataset or f"cold_{'_'.join(job.datasets)}",
                events_file,
            )
            for p in plan.partitions
        ]
        if tasks:
            _run_tasks(pool, tasks, result, on_partition)
        result.gateway = gw.metrics()
    result.seconds = time.monotonic() - started
    return result


def _warm_up() -> None:
    """Nothing: the worker's start-up (spawn, imports of Cryo and pyarrow) is the point."""


def _run_tasks(
    pool: ProcessPoolExecutor, tasks: list[Task], result: Result, on_partition: Callable[[PartitionResult, int], None] | None
) -> None:
    futures: dict[Future[PartitionResult], Task] = {pool.submit(run_partition, t): t for t in tasks}
    for future in as_completed(futures):
        part = futures[future].partition
        try:
            pr = future.result()
        except BrokenProcessPool:
            pr = PartitionResult(part, error=f"partition {part.start}-{part.end}: worker process died")
        result.published += pr.published
        result.cas_retries += pr.cas_retries
        if pr.error:
            (result.conflicts if pr.conflict else result.failed).append(pr.error)
        if on_partition:
            on_partition(pr, len(tasks))
    result.published.sort(key=lambda e: (e.dataset, e.start_block))

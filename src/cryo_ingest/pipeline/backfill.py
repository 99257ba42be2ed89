"""A job end to end: the gateway and the plan in this process, partitions in worker processes.

Workers get the gateway's loopback URL and the storage root, never an RPC URL, so a secret
cannot reach a worker's logs, Cryo, or the archive.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import chains
from ..archive import events, manifest, tables
from ..archive.storage import Store, open_store
from . import workers
from .plan import Chunk, Partition, Plan, grid, make_plan
from .task import PartitionResult, Task

if TYPE_CHECKING:  # the package imports this module: config's pydantic models would load in every worker
    from ..config import Job

log = logging.getLogger("cryo_ingest")


@dataclass
class Result:
    chain_id: int
    datasets: tuple[str, ...]
    start_block: int
    end_block: int
    final_head: int = -1
    published: list[events.Event] = field(default_factory=list)
    emitted: int = 0
    done: list[Chunk] = field(default_factory=list)
    pending: list[Chunk] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    gateway: dict[str, Any] = field(default_factory=dict)
    trace_source: str | None = None
    cas_retries: int = 0
    seconds: float = 0.0
    checked: dict[str, int] = field(default_factory=dict)  # blocks checked against their headers before publishing
    unchecked: dict[str, int] = field(default_factory=dict)  # "check: why it cannot apply" -> the first such block

    @property
    def ok(self) -> bool:
        return not self.failed and not self.conflicts


@dataclass
class Opened:
    """A job checked against its archive, before any RPC work: what every executor starts from."""

    job: Job
    store: Store
    archived: dict[str, manifest.Manifest | None]
    sinks: events.Sinks
    result: Result
    started: float = field(default_factory=time.monotonic)

    def plan(self, final_head: int) -> Plan:
        self.result.final_head = final_head
        job = self.job
        held = {d: set(m.files) if m else set() for d, m in self.archived.items()}
        plan = make_plan(
            job.start_block, job.end_block, job.chunk_size, job.datasets, held, final_head, job.force, job.chunks_per_partition
        )
        self.result.done, self.result.pending = plan.done, plan.pending
        if plan.pending:
            log.warning(
                "%d chunk(s) from block %d on are not final yet (final head %d): left for a later run",
                len(plan.pending),
                plan.pending[0].start,
                final_head,
            )
        return plan

    def task(self, partition: Partition, gateway_url: str) -> Task:
        j = self.job
        catalog = j.catalog.get_secret_value() if j.catalog else None
        return Task(
            partition,
            gateway_url,
            j.root,
            j.storage_options,
            j.chain_id,
            j.chunk_size,
            j.overwrite_conflicts,
            self.sinks,
            fetch_headers=j.header_checks == "fetch",
            catalog=catalog,
            catalog_namespace=j.catalog_namespace,
        )

    def record(self, pr: PartitionResult, on_partition: Callable[[PartitionResult], None] | None) -> None:
        self.result.published += pr.published
        self.result.emitted += pr.emitted
        self.result.cas_retries += pr.cas_retries
        for check, n in pr.checked.items():
            self.result.checked[check] = self.result.checked.get(check, 0) + n
        for why, block in pr.unchecked.items():
            if why not in self.result.unchecked:  # said once per run (a run is one chain)
                log.warning("not checked before publishing, from block %d: %s", block, why)
            self.result.unchecked[why] = min(block, self.result.unchecked.get(why, block))
        if pr.error:
            (self.result.conflicts if pr.conflict else self.result.failed).append(pr.error)
        if pr.catalog_error:
            self.result.failed.append(f"partition {pr.partition}: {pr.catalog_error}")
        if on_partition:
            on_partition(pr)

    def finish(self) -> Result:
        """Events of entries an earlier run recorded but died before announcing (the plan skips their chunks)."""
        job, result = self.job, self.result
        result.published.sort(key=lambda e: (e.dataset, e.start_block))
        first = job.start_block - job.start_block % job.chunk_size
        result.emitted += len(events.reconcile(self.store, self.sinks, job.chain_id, job.datasets, first, job.end_block))
        if job.catalog:  # what a partition that died, failed or had nothing to do left out of the tables
            url, blocks = job.catalog.get_secret_value(), (first, job.end_block)
            lag = tables.follow(job.root, job.chain_id, url, job.datasets, job.catalog_namespace, blocks, job.storage_options)
            if lag:
                result.failed.append(lag)
        result.seconds = time.monotonic() - self.started
        return result


def open_job(job: Job, events_file: Path | None) -> Opened:
    """Fail fast on storage and on the chunk grid, before any RPC work."""
    store = open_store(job.root, job.storage_options)
    store.check_access()
    archived: dict[str, manifest.Manifest | None] = {d: manifest.load(store, job.chain_id, d) for d in job.datasets}
    for m in archived.values():
        manifest.check_grid(m, job.chunk_size)
    if job.catalog:
        tables.check(job.catalog.get_secret_value(), job.root, job.chain_id, job.catalog_namespace, archived)
    sinks = events.Sinks(job.output_dataset or f"cold_{'_'.join(job.datasets)}", job.root, events_file)
    return Opened(job, store, archived, sinks, Result(job.chain_id, job.datasets, job.start_block, job.end_block))


def backfill(
    job: Job,
    events_file: Path | None = None,
    on_partition: Callable[[PartitionResult], None] | None = None,
) -> Result:
    """Archive job.start_block..job.end_block (widened to the grid, capped at the final head)."""
    run = open_job(job, events_file)
    # Workers start and import Cryo while the gateway is imported and starts: as many as will run partitions at once.
    chunks = len(grid(job.start_block, job.end_block, job.chunk_size))
    pool, warm = workers.pool(min(job.max_concurrency, -(-chunks // job.chunks_per_partition)))
    with pool:
        from ..gateway import Gateway
        from ..gateway.shared_budget import shared_budget

        with Gateway(job.rpc, job.chain_id, shared=shared_budget(job), canonical_check=job.canonical_check) as gw:
            plan = run.plan(chains.final_head(gw, job.chain_id, job.reorg_buffer))
            with_traces = [p for p in plan.partitions if "traces" in p.datasets]
            if with_traces:
                gw.require_traces(with_traces[0].start)
                run.result.trace_source = gw.trace_source
            tasks = [run.task(p, gw.url) for p in plan.partitions]
            if tasks:
                for w in warm:  # idle now: the partitions reuse them rather than spawning more workers
                    w.result()
                _run_tasks(pool, tasks, job.max_concurrency, run, on_partition)
            run.result.gateway = gw.metrics()
    return run.finish()


def _run_tasks(
    pool: ProcessPoolExecutor,
    tasks: list[Task],
    at_once: int,
    run: Opened,
    on_partition: Callable[[PartitionResult], None] | None,
) -> None:
    """At most `at_once` partitions in flight; a worker that dies breaks the pool, failing the partitions left."""
    queue = deque(tasks)
    running: dict[Future[PartitionResult], Task] = {}
    while queue or running:
        while queue and len(running) < at_once:
            task = queue.popleft()
            try:
                running[pool.submit(workers.run_in_worker, task)] = task
            except BrokenProcessPool:
                run.record(_died(task), on_partition)
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            task = running.pop(future)
            try:
                pr = future.result()
            except BrokenProcessPool:
                pr = _died(task)
            run.record(pr, on_partition)


def _died(task: Task) -> PartitionResult:
    part = task.partition
    return PartitionResult(part, error=f"partition {part.start}-{part.end}: worker process died")

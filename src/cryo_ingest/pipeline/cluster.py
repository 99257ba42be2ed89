"""The Dask executor: a job's partitions as tasks on a `dask.distributed` cluster.

A task carries the pool's *name* (and where a worker looks it up: a pool-file path, a secret id),
never an endpoint URL or key: task arguments travel through the scheduler and show up in its logs,
dashboards and tracebacks. Each worker resolves the pool from its own environment, runs its own
loopback gateway (its budget store, if any, from its own CRYO_INGEST_BUDGET_STORE), and runs the
partition as a child process killed at the timeout, since Dask cannot stop a running task. So
the submitting machine needs no secret: the final head, too, is asked for by a task. The
operator's runner uses the same tasks (operator/on_cluster.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from distributed import Client, Event, Future, Semaphore, as_completed

from .. import chains
from ..config import BUDGET_ENV, Job, make_job, resolve_pool
from ..errors import redact
from ..gateway import Gateway
from ..gateway.shared_budget import shared_budget
from ..operator.dispatch import Dispatcher
from .backfill import Result, open_job
from .plan import Partition
from .task import PartitionResult, Task


@dataclass(frozen=True)
class PoolRef:
    """How a worker finds the pool: its name and where to look, never what it holds."""

    name: str
    pool_file: str | None = None
    secret: str | None = None


def _worker_gateway(ref: PoolRef, chain_id: int) -> Gateway:
    """The pool from this worker's environment, behind a gateway of its own."""
    pool = resolve_pool(ref.name, Path(ref.pool_file) if ref.pool_file else None, ref.secret)
    job = make_job(
        chain_id=chain_id,
        start_block=0,
        end_block=0,
        datasets=("blocks",),
        rpc=pool,
        rpc_pool=ref.name,
        budget_store=os.environ.get(BUDGET_ENV) or None,
    )
    return Gateway(job.rpc, chain_id, shared=shared_budget(job), canonical_check=job.canonical_check)


def final_head_task(ref: PoolRef, chain_id: int, reorg_buffer: int) -> int:
    with _worker_gateway(ref, chain_id) as gw:
        return chains.final_head(gw, chain_id, reorg_buffer)


def partition_task(
    ref: PoolRef, task: Task, timeout: float | None, semaphore: Semaphore, stop: Event | None = None
) -> PartitionResult:
    """One partition on a worker, under the job's cluster-wide concurrency limit; killed within a second of `stop`."""
    part = task.partition
    stopped = PartitionResult(part, error=f"partition {part.start}-{part.end}: stopped")
    with semaphore:
        if stop is not None and stop.is_set():  # stopped while it waited for its turn
            return stopped
        with _worker_gateway(ref, task.chain_id) as gw:
            if "traces" in part.datasets:
                gw.require_traces(part.start)
            dispatcher = Dispatcher(spares=0)  # one partition per task: no spare to start ahead
            run = dispatcher.start(replace(task, gateway_url=gw.url), timeout)
            while True:
                for _, result in dispatcher.wait(1.0):
                    return result
                if stop is not None and stop.is_set():
                    dispatcher.stop(run)
                    return stopped


def backfill_on_cluster(
    job: Job,
    ref: PoolRef,
    scheduler: str,
    timeout: float | None = None,
    events_file: Path | None = None,
    on_partition: Callable[[PartitionResult], None] | None = None,
) -> Result:
    """backfill(), its partitions on the cluster at `scheduler`; this process holds no RPC secret."""
    run = open_job(job, events_file)
    with Client(scheduler) as client:
        plan = run.plan(client.submit(final_head_task, ref, job.chain_id, job.reorg_buffer, pure=False).result())
        semaphore = Semaphore(max_leases=job.max_concurrency, name=f"cryo-ingest-{job.chain_id}-{job.root}")
        futures = {
            client.submit(partition_task, ref, run.task(p, ""), timeout, semaphore, pure=False): p for p in plan.partitions
        }
        for future in as_completed(futures):
            run.record(task_result(future, futures[future]), on_partition)
    return run.finish()


def task_result(future: Future[PartitionResult], partition: Partition) -> PartitionResult:
    """A partition task's result, once done. A task the cluster gave up on (its workers died more often
    than Dask's `allowed-failures`), that raised or was cancelled is that partition failed, as a
    local partition would be: the other partitions' accounting goes on."""
    if future.status == "finished":
        result: PartitionResult = future.result()
        return result
    err = future.exception() if future.status == "error" else future.status
    what = f"{type(err).__name__}: {err}" if isinstance(err, BaseException) else str(err)
    return PartitionResult(partition, error=redact(f"partition {partition.start}-{partition.end}: on the cluster: {what}"))

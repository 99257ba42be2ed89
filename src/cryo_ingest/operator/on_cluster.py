"""The runner's executor on a Dask cluster (`run --scheduler`): imported only then, with Dask.

Partitions and the final head are cluster.py's tasks, as for backfill: a task carries the pool's
name, a worker resolves it, runs its own gateway and the partition in a child process, so this
process holds no RPC secret. Every runner of a node shares one distributed.Semaphore of
`scaling.max_concurrency` leases, named after the node and its root: the limit holds across the
cluster. A running task cannot be stopped from outside, so each carries a distributed.Event that
the runner sets to stop it (a lease lost, SIGTERM past the grace period): the task kills its
partition's process within a second.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import Any

from distributed import Client, Event, Future, Semaphore

from ..config import Job
from ..errors import IngestError
from ..pipeline.cluster import PoolRef, final_head_task, partition_task, task_result
from ..pipeline.task import PartitionResult, Task

# A final head not answered in this long: the runner logs it and asks again next poll.
FINAL_HEAD_SECONDS = 30.0


@dataclass
class _Submitted:
    tag: Any
    task: Task
    future: Future[PartitionResult]
    stop: Event


class OnCluster:
    def __init__(self, scheduler: str, ref: PoolRef, job: Job, name: str) -> None:
        self.scheduler, self.ref, self.job = scheduler, ref, job
        self.semaphore_name = f"cryo-ingest-{name}-{job.root}"
        self._client: Client | None = None
        self._semaphore: Semaphore | None = None
        self._runs: list[_Submitted] = []
        self._ended = threading.Event()  # set by Dask (in a thread of its own) as each task ends

    def __enter__(self) -> OnCluster:
        # not the process's default client: each runner (thread) of the DAG has its own
        try:
            self._client = Client(self.scheduler, set_as_default=False)
        except OSError as err:
            raise IngestError(f"--scheduler {self.scheduler}: cannot reach the scheduler ({err})") from None
        self._semaphore = Semaphore(self.job.max_concurrency, self.semaphore_name, self._client.scheduler, self._client.loop)
        return self

    def __exit__(self, *exc: object) -> None:
        for run in list(self._runs):  # the runner stopped them; this covers a runner that crashed
            self.stop(run.tag)
        if self._client is not None:
            self._client.close()

    @property
    def client(self) -> Client:
        assert self._client is not None, "the executor is not entered"
        return self._client

    @property
    def running(self) -> list[Any]:
        return [run.tag for run in self._runs]

    def final_head(self) -> int:
        future = self.client.submit(final_head_task, self.ref, self.job.chain_id, self.job.reorg_buffer, pure=False)
        try:
            return int(future.result(timeout=FINAL_HEAD_SECONDS))
        except TimeoutError:
            future.cancel()
            raise IngestError(f"final head: no answer from the cluster's workers in {FINAL_HEAD_SECONDS:.0f} s") from None

    def start(self, task: Task, timeout: float | None, tag: Any) -> None:
        stop = Event(f"cryo-ingest-stop-{uuid.uuid4().hex}", self.client)
        future = self.client.submit(partition_task, self.ref, task, timeout, self._semaphore, stop, pure=False)
        future.add_done_callback(lambda _: self._ended.set())
        self._runs.append(_Submitted(tag, task, future, stop))

    def wait(self, seconds: float) -> list[tuple[Any, PartitionResult]]:
        self._ended.wait(seconds)
        self._ended.clear()  # before looking: a task that ends meanwhile sets it again
        ended = [run for run in self._runs if run.future.done()]
        for run in ended:
            self._runs.remove(run)
        return [(run.tag, task_result(run.future, run.task.partition)) for run in ended]

    def stop(self, tag: Any) -> None:
        for run in self._runs:
            if run.tag is tag:
                run.stop.set()
                run.future.cancel()
                self._runs.remove(run)
                return

    def warm(self) -> None:
        """The workers hold the processes."""

    def kill(self, tag: Any) -> None:
        """The task kills its partition's process within a second and ends; `wait` then returns it."""
        for run in list(self._runs):
            if run.tag is tag:
                run.stop.set()

    def metrics(self) -> dict[str, Any]:
        """The gateways are the workers'."""
        return {}

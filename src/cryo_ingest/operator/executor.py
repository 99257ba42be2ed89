"""Where a runner's partitions run and who asks the chain for its final head: the runner's one seam.

The runner keeps the store-side bookkeeping (leases, request states, events) whatever the
executor; an executor only runs partitions, each known by the caller's tag (its lease), and
answers the final head. Here, this machine's: a loopback gateway and a child process per
partition (dispatch.py). On a Dask cluster: on_cluster.py, loaded only with --scheduler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol, TypeVar

from .. import chains
from ..config import Job
from ..gateway import Gateway
from ..gateway.shared_budget import shared_budget
from ..pipeline.task import PartitionResult, Task
from .dispatch import Dispatcher

T = TypeVar("T")


class Executor(Protocol[T]):
    def __enter__(self) -> Executor[T]: ...

    def __exit__(self, *exc: object) -> None: ...

    @property
    def running(self) -> list[T]:
        """The tags of the partitions started and not ended yet."""

    def final_head(self) -> int: ...

    def start(self, task: Task, timeout: float | None, tag: T) -> None:
        """Run `task` (its gateway_url is the executor's to fill in), killed after `timeout` seconds."""

    def wait(self, seconds: float) -> list[tuple[T, PartitionResult]]:
        """Wait up to `seconds` for partitions to end; those that did, by tag."""

    def stop(self, tag: T) -> None:
        """Kill the partition now; its lease is the caller's to release."""

    def kill(self, tag: T) -> None:
        """Kill the partition, from any thread: it then ends through `wait` like any other."""

    def warm(self) -> None:
        """Get ready to start partitions soon (a runner's, not a source's)."""

    def metrics(self) -> dict[str, Any]:
        """The gateway's metrics by endpoint, where the gateway is in this process."""


# An executor for a node (or source) by name and its job.
Executors = Callable[[str, Job], Executor[Any]]


class Local:
    """This machine: one gateway for the runner, one child process per partition."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.dispatcher = Dispatcher()
        self._gw: Gateway | None = None

    def __enter__(self) -> Local:
        self._gw = Gateway(
            self.job.rpc, self.job.chain_id, shared=shared_budget(self.job), canonical_check=self.job.canonical_check
        ).__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispatcher.close()
        if self._gw is not None:
            self._gw.__exit__(*exc)

    @property
    def gw(self) -> Gateway:
        assert self._gw is not None, "the executor is not entered"
        return self._gw

    @property
    def running(self) -> list[Any]:
        return [run.tag for run in self.dispatcher.running]

    def final_head(self) -> int:
        return chains.final_head(self.gw, self.job.chain_id, self.job.reorg_buffer)

    def start(self, task: Task, timeout: float | None, tag: Any) -> None:
        self.dispatcher.start(replace(task, gateway_url=self.gw.url), timeout, tag)

    def wait(self, seconds: float) -> list[tuple[Any, PartitionResult]]:
        return [(run.tag, result) for run, result in self.dispatcher.wait(seconds)]

    def stop(self, tag: Any) -> None:
        for run in self.dispatcher.running:
            if run.tag is tag:
                self.dispatcher.stop(run)
                return

    def warm(self) -> None:
        self.dispatcher.warm()

    def kill(self, tag: Any) -> None:
        for run in list(self.dispatcher.running):
            if run.tag is tag:
                run.process.kill()  # a signal: safe beside the loop's wait

    def metrics(self) -> dict[str, Any]:
        return self._gw.metrics() if self._gw is not None else {}


def local(name: str, job: Job) -> Executor[Any]:
    return Local(job)

"""The processes that run `backfill`'s partitions.

Spawned, not forked: the gateway's thread and the Rust runtimes of Cryo and obstore would be
copied half-way. A worker's start-up (Python, then Cryo's and pyarrow's imports) is a backfill's
fixed cost, so the console script calls `prestart` before the CLI is even imported: the first
worker starts up while this process imports the CLI, checks the config and starts the gateway
(about 0.3 s of wall time on 2 cores; docs/benchmarks.md).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .task import PartitionResult, Task

# Where partitions run instead, when set: the Dask cluster it names (docs/cluster.md).
SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
# Workers spawn on demand, one per partition in flight: the job's max_concurrency bounds them (the
# dispatch loop submits no more at once), this only bounds the pool.
MOST = 256

_prestarted: list[tuple[ProcessPoolExecutor, Future[None]]] = []


def prestart() -> None:
    """Start one worker now, for the backfill this process is about to run."""
    pool = _new()
    _prestarted.append((pool, pool.submit(warm_up)))


def pool(warm: int) -> tuple[ProcessPoolExecutor, list[Future[None]]]:
    """The pool, with `warm` workers starting up (the prestarted one among them, where there is one)."""
    if _prestarted:
        pool, first = _prestarted.pop()
        return pool, [first, *(pool.submit(warm_up) for _ in range(warm - 1))]
    pool = _new()
    return pool, [pool.submit(warm_up) for _ in range(warm)]


def run_in_worker(task: Task) -> PartitionResult:
    """In a worker process, which imports this module for it: Cryo and pyarrow load there only, and
    nothing of the dispatching side's (config's pydantic models would cost every worker 0.2 s)."""
    from .partition import run_partition

    return run_partition(task)


def warm_up() -> None:
    """A worker's start-up (spawn, the imports of Cryo and pyarrow), done before its first partition."""


def _new() -> ProcessPoolExecutor:
    spawn = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=MOST, mp_context=spawn, initializer=_follow_parent, initargs=(os.getpid(),))


def _follow_parent(parent: int) -> None:
    """No worker outlives its job: once the job's process is gone (SIGKILL, the OOM killer), an idle worker
    would wait on its call queue forever, holding the job's stdout open; a thread of its own ends it."""
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="parent-watch").start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)

"""Partitions in their own processes, each killed at its deadline.

A process pool cannot kill one task (concurrent.futures and Dask alike), so each partition gets
a process of its own and a pipe for its task and result. Starting one (spawn, then importing
Cryo and pyarrow) takes 1 to 3 s, so a spare or two are started ahead and wait for their task:
one process still serves one partition and dies with it. The parent owns the staging folder and
removes it whatever happens to the child, so a killed partition leaves nothing behind locally;
objects go up whole or not at all (publish), so it leaves nothing partial in the archive either.
A parent killed in turn (a Dask worker's SIGKILL) cannot: so the parent only names the folder and
the child makes it once it holds its task, and an orphaned child removes it and exits, as the
parent would have killed it. A parent killed at any point leaves no folder behind.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from ..task import PartitionResult, Task

# Processes kept started and idle, ready for a task; each holds Cryo and pyarrow in memory (about 150 MB).
SPARES = 2
# Partitions one process serves before it retires: a bound on whatever a long-lived process
# accumulates (allocator fragmentation, caches), at one spawn per this many partitions.
TASKS_PER_PROCESS = 50


def _child(conn: Connection) -> None:
    """Serve tasks one after another until the parent closes the pipe; a kill ends it anywhere.

    A process that ended its partition (result sent) goes back to the parent's spares, so that the
    next partition does not pay a spawn and the imports of Cryo and pyarrow (1 to 3 s of CPU,
    which on a busy host comes out of the running partitions).
    """
    from ..partition import run_partition  # Cryo and pyarrow load in the child only, before its task comes

    staging: list[str] = []  # the current task's folder, for the orphan watch
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the parent is done with this process
            return
        os.mkdir(task.staging_dir, 0o700)
        staging[:] = [task.staging_dir]
        if not any(t.name == "exit-with-parent" for t in threading.enumerate()):
            threading.Thread(target=_exit_with_parent, args=(staging,), name="exit-with-parent", daemon=True).start()
        conn.send(run_partition(task))


def _exit_with_parent(staging: list[str]) -> None:
    """Orphaned (the parent killed), nobody owns the staging folder or waits for the result: end both.

    The parent's end of the pipe that spawn gave this process closes when the parent dies, whenever
    that was (before this thread started too). Not PR_SET_PDEATHSIG: that fires when the parent's
    *thread* ends, and a Dask worker starts partitions from pool threads that come and go.
    """
    parent = multiprocessing.parent_process()
    assert parent is not None  # a spawned child
    parent.join()
    for folder in staging:
        shutil.rmtree(folder, ignore_errors=True)
    os._exit(1)


@dataclass
class _Spare:
    process: BaseProcess
    conn: Connection
    served: int = 0  # partitions it ran


@dataclass
class Running:
    task: Task
    process: BaseProcess
    conn: Connection
    staging: str
    deadline: float
    started: float = field(default_factory=time.monotonic)
    tag: Any = None  # the caller's (its lease)
    served: int = 0  # partitions its process ran before this one


class Dispatcher:
    def __init__(self, spares: int = SPARES) -> None:
        # spawn, not fork: the parent runs the gateway's thread, which a fork would copy half-way.
        self._ctx = multiprocessing.get_context("spawn")
        self.running: list[Running] = []
        self._want = spares
        self._spares: list[_Spare] = []  # started by `warm`, or with the first partition

    def _refill(self, at_least: int = 0) -> None:
        """Spawn up to `want` processes not busy with a partition: a running one comes back when its
        partition ends, so while partitions run the spares they will return count too."""
        self._spares = [s for s in self._spares if s.process.is_alive()]
        while len(self._spares) < max(self._want - len(self.running), at_least):
            mine, theirs = self._ctx.Pipe(duplex=True)
            process = self._ctx.Process(target=_child, args=(theirs,), daemon=True)
            process.start()
            theirs.close()
            self._spares.append(_Spare(process, mine))

    def warm(self) -> None:
        self._refill()

    def start(self, task: Task, timeout: float | None, tag: Any = None) -> Running:
        self._refill(at_least=1)
        spare = self._spares.pop(0)
        staging = os.path.join(tempfile.gettempdir(), f"cryo-ingest-partition-{uuid.uuid4().hex}")  # the child makes it
        task = Task(**{**task.__dict__, "staging_dir": staging})
        spare.conn.send(task)
        deadline = time.monotonic() + timeout if timeout else float("inf")
        run = Running(task, spare.process, spare.conn, staging, deadline, tag=tag, served=spare.served)
        self.running.append(run)
        self._refill()  # a spare starts while this partition runs, unless running ones will come back
        return run

    def close(self) -> None:
        """Stop the spares (running partitions are the caller's to finish or stop)."""
        for spare in self._spares:
            spare.conn.close()  # the spare's recv ends with EOFError and it returns
            spare.process.join(timeout=5)
            if spare.process.is_alive():
                spare.process.kill()
        self._spares = []

    def wait(self, seconds: float) -> list[tuple[Running, PartitionResult]]:
        """Wait up to `seconds` for partitions to end (or to pass their deadline); return those that ended."""
        if self.running:
            nearest = min(r.deadline for r in self.running) - time.monotonic()
            wait([r.conn for r in self.running] + [r.process.sentinel for r in self.running], max(0.0, min(seconds, nearest)))
        elif seconds > 0:
            time.sleep(seconds)
        ended = []
        for run in list(self.running):
            result = self._outcome(run)
            if result is not None:
                ended.append((run, result))
        return ended

    def _outcome(self, run: Running) -> PartitionResult | None:
        part = run.task.partition
        if run.conn.poll():
            try:
                result: PartitionResult = run.conn.recv()
            except (EOFError, OSError):  # killed mid-send: a reset, or the end of the pipe
                result = PartitionResult(part, error=f"partition {part.start}-{part.end}: worker process died")
            else:
                self._take_back(run)
                return result
        elif not run.process.is_alive():
            code = run.process.exitcode
            result = PartitionResult(part, error=f"partition {part.start}-{part.end}: worker process died (exit code {code})")
        elif time.monotonic() > run.deadline:
            seconds = time.monotonic() - run.started
            result = PartitionResult(part, error=f"partition {part.start}-{part.end}: timed out after {seconds:.0f} s, killed")
        else:
            return None
        self.stop(run)
        return result

    def _take_back(self, run: Running) -> None:
        """A process that sent its result serves the next partition, unless enough wait already."""
        shutil.rmtree(run.staging, ignore_errors=True)
        self.running.remove(run)
        self._spares = [s for s in self._spares if s.process.is_alive()]
        if run.served + 1 >= TASKS_PER_PROCESS or len(self._spares) >= self._want:
            run.conn.close()  # its recv ends with EOFError and it returns
            run.process.join(timeout=5)
            if run.process.is_alive():
                run.process.kill()
            return
        self._spares.append(_Spare(run.process, run.conn, run.served + 1))

    def stop(self, run: Running) -> None:
        """Kill (if still alive), reap, and remove the staging folder."""
        if run.process.is_alive():
            run.process.kill()
        run.process.join(timeout=10)
        run.conn.close()
        shutil.rmtree(run.staging, ignore_errors=True)
        if run in self.running:
            self.running.remove(run)

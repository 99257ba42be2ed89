"""Partitions in their own processes, each killed at its deadline.

A process pool cannot kill one task (concurrent.futures and Dask alike), so each partition gets a
process of its own and a socket for its task and result. The process is started with `subprocess`
(`python -m` this module), not `multiprocessing`: a daemonic process, such as a default `dask
worker`'s, may not start multiprocessing children, but may start any program. Starting one (Python,
then importing Cryo and pyarrow) takes 1 to 3 s of CPU, which on a busy host comes out of the
running partitions: so a spare or two are started ahead and wait for their task, and a process whose
partition ended well serves the next one (up to `TASKS_PER_PROCESS`); a killed one is gone with its
partition. The parent owns the staging folder and removes it whatever happens to the child, so a
killed partition leaves nothing behind locally; objects go up whole or not at all (publish), so it
leaves nothing partial in the archive either. A parent killed in turn (a Dask worker's SIGKILL)
cannot: so the parent only names the folder and the child makes it once it holds its task, and an
orphaned child removes it and exits, as the parent would have killed it. A parent killed at any
point leaves no folder behind.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from ..pipeline.task import PartitionResult, Task

# Processes kept started and idle; each holds Cryo and pyarrow in memory (about 150 MB).
SPARES = 2
# Partitions one process serves before it retires: a bound on whatever a long-lived process
# accumulates (allocator fragmentation, caches), at the price of one start per this many partitions.
TASKS_PER_PROCESS = 50
# What a partition's process runs: `python -P -m` this module (-P: not the working directory's modules).
CHILD = __name__  # read in the parent only, where this is the module's name


def _child(fd: int, parent: int) -> None:
    """A partition's process: tasks from the socket one after another, each result back on it,
    until the parent closes its end (the end of file ends the wait for a next task)."""
    os.set_inheritable(fd, False)  # whatever it starts must not keep the parent's socket open
    conn = Connection(fd)
    from ..pipeline.partition import run_partition

    staging: list[str] = []  # the current task's folder, for the orphan watch
    threading.Thread(target=_exit_with_parent, args=(parent, staging), daemon=True).start()
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the parent is done with this process
            return
        os.mkdir(task.staging_dir, 0o700)
        staging[:] = [task.staging_dir]
        conn.send(run_partition(task))


def _exit_with_parent(parent: int, staging: list[str]) -> None:
    """Orphaned (the parent killed), nobody owns the staging folder or waits for the result: end both.

    An orphan is given another parent (init, or a subreaper such as tini), which this sees within a
    second whenever the parent died (before this thread started too: `parent` is the pid the parent
    passed). Not the socket, which carries the next task; not PR_SET_PDEATHSIG, which fires when the
    parent's *thread* ends, and a Dask worker starts partitions from pool threads that come and go.
    """
    while os.getppid() == parent:
        time.sleep(0.5)
    for folder in staging:
        shutil.rmtree(folder, ignore_errors=True)
    os._exit(1)


@dataclass
class _Spare:
    process: subprocess.Popen[bytes]
    conn: Connection
    served: int = 0  # partitions it ran


@dataclass
class Running:
    task: Task
    process: subprocess.Popen[bytes]
    conn: Connection
    staging: str
    deadline: float
    started: float = field(default_factory=time.monotonic)
    tag: Any = None  # the caller's (its lease)
    served: int = 0  # partitions its process ran before this one


def _start() -> _Spare:
    mine, theirs = socket.socketpair()
    with theirs:
        process = subprocess.Popen(
            [sys.executable, "-P", "-m", CHILD, str(theirs.fileno()), str(os.getpid())],
            stdin=subprocess.DEVNULL,
            pass_fds=[theirs.fileno()],
        )
    return _Spare(process, Connection(mine.detach()))


def _died(run: Running) -> PartitionResult:
    part, code = run.task.partition, run.process.returncode
    return PartitionResult(part, error=f"partition {part.start}-{part.end}: worker process died (exit code {code})")


class Dispatcher:
    def __init__(self, spares: int = SPARES) -> None:
        self.running: list[Running] = []
        self._want = spares
        self._spares: list[_Spare] = []  # started by `warm`, or with the first partition

    def _refill(self, at_least: int = 0) -> None:
        """Start up to `want` processes not busy with a partition: a running one comes back when its
        partition ends, so while partitions run, the processes they will give back count too."""
        self._spares = [s for s in self._spares if s.process.poll() is None]
        while len(self._spares) < max(self._want - len(self.running), at_least):
            self._spares.append(_start())

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
            _retire(spare.process, spare.conn)
        self._spares = []

    def wait(self, seconds: float) -> list[tuple[Running, PartitionResult]]:
        """Wait up to `seconds` for partitions to end (or to pass their deadline); return those that ended.

        A process that ends, whatever the way, closes its end of the socket: the socket alone wakes this."""
        if self.running:
            nearest = min(r.deadline for r in self.running) - time.monotonic()
            wait([r.conn for r in self.running], max(0.0, min(seconds, nearest)))
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
            except (EOFError, OSError):  # it closed the socket without a result (or was killed mid-send): it is ending
                with suppress(subprocess.TimeoutExpired):
                    run.process.wait(timeout=5)
                result = _died(run)
            else:
                self._take_back(run)
                return result
        elif run.process.poll() is not None:
            result = _died(run)
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
        self._spares = [s for s in self._spares if s.process.poll() is None]
        if run.served + 1 >= TASKS_PER_PROCESS or len(self._spares) >= self._want or run.process.poll() is not None:
            _retire(run.process, run.conn)
        else:
            self._spares.append(_Spare(run.process, run.conn, run.served + 1))

    def stop(self, run: Running) -> None:
        """Kill (if still alive), reap, and remove the staging folder."""
        if run.process.poll() is None:
            run.process.kill()
        with suppress(subprocess.TimeoutExpired):
            run.process.wait(timeout=10)
        run.conn.close()
        shutil.rmtree(run.staging, ignore_errors=True)
        if run in self.running:
            self.running.remove(run)


def _retire(process: subprocess.Popen[bytes], conn: Connection) -> None:
    """End an idle process (no task: nothing of its own to clean up). Killed rather than asked, since
    a spare may still be importing Cryo, and a runner that stops would wait a second or two for it."""
    conn.close()
    process.kill()
    process.wait()


if __name__ == "__main__":
    _child(int(sys.argv[1]), int(sys.argv[2]))

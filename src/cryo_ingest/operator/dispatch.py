"""Partitions in their own processes, each killed at its deadline.

A process pool cannot kill one task (concurrent.futures and Dask alike), so each partition gets
a process of its own and a socket for its task and result. The process is started with
`subprocess` (`python -m` this module), not `multiprocessing`: a daemonic process, such as a default
`dask worker`'s, may not start multiprocessing children, but may start any program. Starting one
(Python, then importing Cryo and pyarrow) takes 1 to 3 s, so a spare or two are started ahead and
wait for their task: one process still serves one partition and dies with it. The parent owns the
staging folder and removes it whatever happens to the child, so a killed partition leaves nothing
behind locally; objects go up whole or not at all (publish), so it leaves nothing partial in the
archive either. A parent killed in turn (a Dask worker's SIGKILL) cannot: so the parent only names
the folder and the child makes it once it holds its task, and an orphaned child removes it and
exits, as the parent would have killed it. A parent killed at any point leaves no folder behind.
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

from ..task import PartitionResult, Task

# Spare processes kept started; each idle one holds Cryo and pyarrow in memory (about 150 MB).
SPARES = 2
# What a partition's process runs: `python -P -m` this module (-P: not the working directory's modules).
CHILD = __name__  # read in the parent only, where this is the module's name


def _child(fd: int) -> None:
    """A partition's process: its task from the socket, its result back on it."""
    os.set_inheritable(fd, False)  # whatever it starts must not keep the parent's socket open
    conn = Connection(fd)
    from ..partition import run_partition  # Cryo and pyarrow load before the task comes

    try:
        task = conn.recv()
    except EOFError:  # the parent is done with this spare
        return
    os.mkdir(task.staging_dir, 0o700)
    threading.Thread(target=_exit_with_parent, args=(fd, task.staging_dir), daemon=True).start()
    conn.send(run_partition(task))
    conn.close()


def _exit_with_parent(fd: int, staging: str) -> None:
    """Orphaned (the parent killed), nobody owns the staging folder or waits for the result: end both.

    The parent sends nothing after the task, and its end of the socket (which no other process
    holds: it is not inheritable) closes when the parent dies, whenever that was (before this thread
    started too): then a read returns end of file. Not PR_SET_PDEATHSIG: that fires when the
    parent's *thread* ends, and a Dask worker starts partitions from pool threads that come and go.
    """
    with suppress(OSError):
        while os.read(fd, 1):
            pass
    shutil.rmtree(staging, ignore_errors=True)
    os._exit(1)


@dataclass
class _Spare:
    process: subprocess.Popen[bytes]
    conn: Connection


@dataclass
class Running:
    task: Task
    process: subprocess.Popen[bytes]
    conn: Connection
    staging: str
    deadline: float
    started: float = field(default_factory=time.monotonic)
    tag: Any = None  # the caller's (its lease)


def _start() -> _Spare:
    mine, theirs = socket.socketpair()
    with theirs:
        process = subprocess.Popen(
            [sys.executable, "-P", "-m", CHILD, str(theirs.fileno())], stdin=subprocess.DEVNULL, pass_fds=[theirs.fileno()]
        )
    return _Spare(process, Connection(mine.detach()))


def _died(run: Running) -> PartitionResult:
    part, code = run.task.partition, run.process.returncode
    return PartitionResult(part, error=f"partition {part.start}-{part.end}: worker process died (exit code {code})")


class Dispatcher:
    def __init__(self, spares: int = SPARES) -> None:
        self.running: list[Running] = []
        self._want = spares
        self._spares: list[_Spare] = []  # started with the first partition: a runner without work starts none

    def _refill(self, at_least: int = 0) -> None:
        self._spares = [s for s in self._spares if s.process.poll() is None]
        while len(self._spares) < max(self._want, at_least):
            self._spares.append(_start())

    def start(self, task: Task, timeout: float | None, tag: Any = None) -> Running:
        self._refill(at_least=1)
        spare = self._spares.pop(0)
        staging = os.path.join(tempfile.gettempdir(), f"cryo-ingest-partition-{uuid.uuid4().hex}")  # the child makes it
        task = Task(**{**task.__dict__, "staging_dir": staging})
        spare.conn.send(task)
        self._refill()  # the next spare starts while this partition runs
        run = Running(task, spare.process, spare.conn, staging, time.monotonic() + timeout if timeout else float("inf"), tag=tag)
        self.running.append(run)
        return run

    def close(self) -> None:
        """Stop the spares (running partitions are the caller's to finish or stop)."""
        for spare in self._spares:
            spare.conn.close()  # the spare's recv ends with EOFError and it returns
            try:
                spare.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                spare.process.kill()
                spare.process.wait()
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
        result: PartitionResult | None = None
        if run.conn.poll():
            try:
                result = run.conn.recv()
            except EOFError:  # it closed the socket without a result: it is ending
                with suppress(subprocess.TimeoutExpired):
                    run.process.wait(timeout=5)
                result = _died(run)
        elif run.process.poll() is not None:
            result = _died(run)
        elif time.monotonic() > run.deadline:
            seconds = time.monotonic() - run.started
            result = PartitionResult(part, error=f"partition {part.start}-{part.end}: timed out after {seconds:.0f} s, killed")
        if result is not None:
            self.stop(run)
        return result

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


if __name__ == "__main__":
    _child(int(sys.argv[1]))

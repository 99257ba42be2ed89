"""A cryo_ingest node as the spec runs it: reactive, PerPartition, bounded, killed at its timeout.

One runner per process (several may serve one node on one root, on one machine or many). Each
poll it reads the input datasets' requests, plans each open one on the chunk grid, claims the
lease of each partition cell it can run (compare-and-swap on the store), and runs the partition
through its executor (executor.py: in a process of its own here, or on a Dask cluster). Partitions
write their chunks and their events themselves; the runner renews its leases, retries failures
with backoff, and moves requests to done, waiting (not final yet) or failed.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .. import events, manifest
from ..config import DagNode, Job
from ..errors import IngestError, redact
from ..plan import Chunk, Partition, high_water, make_plan
from ..storage import Store, open_store
from ..task import PartitionResult, Task
from . import datasets, requests
from .datasets import Request
from .executor import Executor

log = logging.getLogger("cryo_ingest.node")


def runner_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class Stats:
    """What a runner did, for its exit code, its progress lines and its metrics."""

    partitions: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0, "timed_out": 0, "stopped": 0})
    blocks: int = 0
    remaining: dict[tuple[str, int], int] = field(default_factory=dict)  # (request, cell) -> blocks left, as last planned
    busy_seconds: float = 0.0  # time with partitions running: the rate's denominator, so idle time does not dilute it
    failed_requests: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    heartbeat: float = field(default_factory=time.monotonic)  # the loop's last turn, for /healthz
    lag: dict[str, int] = field(default_factory=dict)  # by dataset: final head - contiguous high-water mark
    requests: dict[str, int] = field(default_factory=dict)  # by state


@dataclass
class _Claim:
    request: Request
    cell: int
    partition: Partition
    last_renewal: float = field(default_factory=time.monotonic)


class Runner:
    def __init__(
        self, node: DagNode, job: Job, executor: Executor[_Claim], stop: threading.Event, idle_timeout: float | None
    ) -> None:
        self.node, self.job, self.stop = node, job, stop
        self.cfg = node.config
        self.idle_timeout = idle_timeout  # None: never idle out (sources in the same process feed it)
        self.id = runner_id()
        self.store: Store = open_store(job.root, job.storage_options)
        self.executor = executor
        self.stats = Stats()
        self.slots = 1 if node.scaling.mode == "steady" else node.scaling.max_concurrency

    @property
    def cell_span(self) -> int:
        return self.job.chunk_size * self.job.chunks_per_partition

    @property
    def stall_seconds(self) -> float:
        """A loop that has not turned for this long is stuck (a pass can take a while on a big archive)."""
        return 3 * self.cfg.poll_seconds + self.cfg.lease_seconds

    def gateway_metrics(self) -> dict[str, Any]:
        return self.executor.metrics()

    # ---- the loop -----------------------------------------------------------------------------

    def run(self) -> int:
        """Exit code: 0 every request it took is done or waiting, 1 one failed."""
        self.store.check_access()
        with self.executor:
            idle_since, next_tick = time.monotonic(), 0.0
            while not self.stop.is_set():
                self.stats.heartbeat = time.monotonic()
                busy = bool(self.executor.running)
                ended = self.executor.wait(min(self.cfg.poll_seconds, self.cfg.lease_seconds / 3))
                if busy:
                    self.stats.busy_seconds += time.monotonic() - self.stats.heartbeat
                for claim, result in ended:
                    self._finish(claim, result)
                self._heartbeat()
                if self.stop.is_set():
                    break
                if ended or time.monotonic() >= next_tick:
                    try:
                        open_work = self._tick()
                    except IngestError as err:
                        log.warning("%s: %s (retrying)", self.node.name, err)
                        open_work = True
                    next_tick = time.monotonic() + self.cfg.poll_seconds
                    if open_work or self.executor.running:
                        idle_since = time.monotonic()
                    elif self.idle_timeout is not None and time.monotonic() - idle_since >= self.idle_timeout:
                        break
            self._shutdown()
        return 1 if self.stats.failed_requests else 0

    def _shutdown(self) -> None:
        """Let running partitions finish within the grace period, then kill them and release their leases."""
        if self.executor.running:
            log.info("%s: stopping: %d partition(s) running", self.node.name, len(self.executor.running))
        deadline = time.monotonic() + (self.cfg.grace_seconds if self.stop.is_set() else 0)
        while self.executor.running and time.monotonic() < deadline:
            for claim, result in self.executor.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
                self._finish(claim, result)
            self._heartbeat()
        for claim in list(self.executor.running):
            self.executor.stop(claim)
            requests.release(self.store, self.node.name, claim.cell, self.id, "stopped")
            self.stats.partitions["stopped"] += 1
            log.info("%s: partition %s stopped, lease released", self.node.name, _span(claim.partition))

    def _heartbeat(self) -> None:
        for claim in list(self.executor.running):
            if time.monotonic() - claim.last_renewal < self.cfg.lease_seconds / 3:
                continue
            if requests.renew(self.store, self.node.name, claim.cell, self.id, self.cfg.lease_seconds):
                claim.last_renewal = time.monotonic()
            else:  # it expired (we stalled) and another runner took it: it runs there now, not here
                log.warning("%s: lease of partition %s lost: stopping it here", self.node.name, _span(claim.partition))
                self.executor.stop(claim)

    # ---- requests -----------------------------------------------------------------------------

    def _tick(self) -> bool:
        """One pass over the requests; True while some request has work that is not waiting on finality."""
        final = self.executor.final_head()
        archived: dict[str, set[int]] = {
            d: set(m.files) if (m := manifest.load(self.store, self.job.chain_id, d)) else set() for d in self.job.datasets
        }
        states = requests.load_states(self.store, self.node.name)
        self.stats.lag = {d: final - high_water([held], self.job.chunk_size) for d, held in archived.items()}
        self.stats.requests = {}
        self.stats.remaining = {}
        open_work = False
        for name in self.node.input_datasets:
            for request_id, request in datasets.read(self.store, name):
                state = states.get(request_id) or requests.State(request_id)
                self.stats.requests[state.state] = self.stats.requests.get(state.state, 0) + 1
                if state.terminal:
                    continue
                problem = request if isinstance(request, str) else self._mismatch(request)
                if problem:
                    log.warning("%s: event %s in %s is invalid: %s", self.node.name, request_id, name, problem)
                    requests.set_state(self.store, self.node.name, request_id, "invalid", problem, self.id)
                    continue
                assert isinstance(request, Request)
                open_work |= self._advance(request, final, archived)
        return open_work

    def _mismatch(self, r: Request) -> str:
        if r.chain_id != self.job.chain_id:
            return f"chain {r.chain_id}, but node {self.node.name} archives chain {self.job.chain_id}"
        extra = [d for d in r.datasets or () if d not in self.job.datasets]
        return f"dataset {extra[0]} is not among node {self.node.name}'s datasets" if extra else ""

    def _advance(self, r: Request, final: int, archived: dict[str, set[int]]) -> bool:
        datasets_ = tuple(r.datasets or self.job.datasets)
        plan = make_plan(r.start_block, r.end_block, self.job.chunk_size, datasets_, archived, final, False, 1)
        cells: dict[int, list[Partition]] = {}
        for p in plan.partitions:
            cells.setdefault(p.start // self.cell_span, []).append(p)
            key = (r.id, p.start // self.cell_span)
            self.stats.remaining[key] = self.stats.remaining.get(key, 0) + p.end - p.start + 1
        here = {c.cell for c in self.executor.running if c.request.id == r.id}
        if not cells and not here:
            if plan.pending:
                reason = f"{len(plan.pending)} chunk(s) from block {plan.pending[0].start} on not final yet (final head {final})"
                requests.set_state(self.store, self.node.name, r.id, "waiting", reason, self.id)
                return False
            self._complete(r, datasets_)
            return False
        exhausted: list[str] = []
        for cell, parts in sorted(cells.items()):
            if cell in here or len(self.executor.running) >= self.slots:
                continue
            if self.node.scaling.mode == "steady" and self.executor.running:
                break
            lease = requests.claim(self.store, self.node.name, cell, r.id, self.id, self.cfg.lease_seconds, self.cfg.attempts)
            if lease is None:
                held = requests.read_lease(self.store, self.node.name, cell)
                if held.request == r.id and held.attempts >= self.cfg.attempts and not held.held_by_other(self.id, time.time()):
                    exhausted.append(f"partition {_span(_merge(parts))}: {held.last_error}")
                continue
            self._start(r, cell, _merge(parts), datasets_)
            here.add(cell)
        if exhausted and len(exhausted) == len(cells) and not here:
            reason = f"failed after {self.cfg.attempts} attempts: {exhausted[0]}"
            if requests.set_state(self.store, self.node.name, r.id, "failed", reason, self.id).state == "failed":
                log.error("%s: request %s failed: %s", self.node.name, r.id, redact(reason))
                self.stats.failed_requests.append(r.id)
            return False
        return True

    def _start(self, r: Request, cell: int, part: Partition, datasets_: tuple[str, ...]) -> None:
        sinks = events.Sinks(str(self.job.output_dataset), self.job.root, None, to_store=True, request_id=r.id)
        task = Task(
            part,
            "",  # the executor's gateway
            self.job.root,
            self.job.storage_options,
            self.job.chain_id,
            self.job.chunk_size,
            False,
            sinks,
            attempts=1,  # retries are the lease's: each in a fresh process, with backoff
        )
        self.executor.start(task, self.node.timeout_seconds, _Claim(r, cell, part))
        requests.set_state(self.store, self.node.name, r.id, "running", "", self.id)
        log.info("%s: request %s: partition %s started", self.node.name, r.id, _span(part))

    def _finish(self, claim: _Claim, result: PartitionResult) -> None:
        span = _span(claim.partition)
        if result.error is None:
            requests.release(self.store, self.node.name, claim.cell, self.id, "done")
            self.stats.partitions["ok"] += 1
            self.stats.blocks += claim.partition.end - claim.partition.start + 1
            self.stats.remaining.pop((claim.request.id, claim.cell), None)
            stages = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
            log.info(
                "%s: request %s: partition %s ok (%s; %d event(s)); %s",
                self.node.name,
                claim.request.id,
                span,
                stages,
                result.emitted,
                self._progress(),
            )
            return
        kind = "timed_out" if "timed out" in result.error else "failed"
        self.stats.partitions[kind] += 1
        lease = requests.read_lease(self.store, self.node.name, claim.cell)
        backoff = min(60.0, 2.0 ** max(0, lease.attempts - 1))
        requests.release(self.store, self.node.name, claim.cell, self.id, "failed", result.error, backoff)
        log.warning("%s: request %s: %s (attempt %d)", self.node.name, claim.request.id, redact(result.error), lease.attempts)
        if result.conflict:  # the archive disagrees with the chain: retrying cannot help
            reason = redact(result.error)
            if requests.set_state(self.store, self.node.name, claim.request.id, "failed", reason, self.id).state == "failed":
                self.stats.failed_requests.append(claim.request.id)

    def _progress(self) -> str:
        """Blocks done here, blocks left (for every runner), rate while busy, ETA, and per endpoint requests/s and 429s."""
        rate = self.stats.blocks / self.stats.busy_seconds if self.stats.busy_seconds > 0 else 0.0
        left = sum(self.stats.remaining.values())
        eta = f"{left / rate:.0f} s" if rate > 0 else "?"
        elapsed = max(1e-9, time.monotonic() - self.stats.started)
        rpc = "; ".join(
            f"{name} {m['requests'] / elapsed:.0f} req/s, {m['http_429']} 429s" for name, m in self.gateway_metrics().items()
        )
        return f"{self.stats.blocks:,} blocks done here, {left:,} left, {rate:.0f} blocks/s, ETA {eta}; {rpc}"

    def _complete(self, r: Request, datasets_: tuple[str, ...]) -> None:
        """Every chunk archived: make sure every entry in range has its event, then done."""
        sinks = events.Sinks(str(self.job.output_dataset), self.job.root, None, to_store=True, request_id=r.id)
        first = r.start_block - r.start_block % self.job.chunk_size
        events.reconcile(self.store, sinks, self.job.chain_id, datasets_, first, r.end_block)
        if requests.set_state(self.store, self.node.name, r.id, "done", "", self.id).state == "done":
            log.info("%s: request %s done (blocks %d-%d)", self.node.name, r.id, r.start_block, r.end_block)


def _merge(parts: list[Partition]) -> Partition:
    """The cell's chunks as one partition, extracting the union of what its chunks miss."""
    chunks: list[Chunk] = sorted({c for p in parts for c in p.chunks})
    names = {d for p in parts for d in p.datasets}
    return Partition(tuple(chunks), tuple(d for d in ("blocks", "transactions", "logs", "traces") if d in names))


def _span(p: Partition) -> str:
    return f"{p.start}-{p.end}"

"""A cryo_ingest node as the spec runs it: reactive, PerPartition, bounded, killed at its timeout.

One runner per process (several may serve one node on one root, on one machine or many). Each
poll it takes in the requests that arrived (intake.py), reads the open requests' states, looks
at each open request over ranges of chunks (plan.outlook, against a cached view of the
manifests), claims the lease of each cell it can run (compare-and-swap on the store), and runs
the partition through its executor (executor.py: in a process of its own here, or on a Dask
cluster). Partitions write their chunks and their events themselves; the runner moves requests
to done, waiting (not final yet) or failed. A poll costs what the open work costs: done
requests, old leases, events and archived chunks are not read (docs/operator.md, "Scale").

Leases, timeouts and SIGTERM are watched by a thread of their own (watch.py), so that neither a
slow poll nor a slow store lets a lease lapse or a partition outlive its timeout. A store error
anywhere is logged and retried; it never ends the runner.
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

from ..archive import events, manifest, tables
from ..archive.storage import Store, open_store
from ..config import DagNode, Job
from ..errors import TRANSIENT, ConfigError, redact
from ..pipeline.plan import Partition, outlook
from ..pipeline.task import PartitionResult, Task
from . import datasets, requests
from .datasets import Request
from .executor import Executor
from .intake import Intake
from .watch import Claim, Watch

log = logging.getLogger("cryo_ingest.node")


def runner_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class Stats:
    """What a runner did, for its exit code, its progress lines and its metrics."""

    partitions: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0, "timed_out": 0, "stopped": 0})
    blocks: int = 0
    remaining: dict[str, int] = field(default_factory=dict)  # by request: final blocks not archived, as last looked at
    busy_seconds: float = 0.0  # time with partitions running: the rate's denominator, so idle time does not dilute it
    failed_requests: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    heartbeat: float = field(default_factory=time.monotonic)  # the loop's last turn, for /healthz
    lag: dict[str, int] = field(default_factory=dict)  # by dataset: final head - contiguous high-water mark
    requests: dict[str, int] = field(default_factory=dict)  # open requests by state
    store_errors: int = 0


class Runner:
    def __init__(
        self, node: DagNode, job: Job, executor: Executor[Claim], stop: threading.Event, idle_timeout: float | None
    ) -> None:
        self.node, self.job, self.stop = node, job, stop
        self.cfg = node.config
        self.idle_timeout = idle_timeout  # None: never idle out (sources in the same process feed it)
        self.id = runner_id()
        self.store: Store = open_store(job.root, job.storage_options)
        self.executor = executor
        self.stats = Stats()
        self.slots = 1 if node.scaling.mode == "steady" else node.scaling.max_concurrency
        self.views = manifest.Views(self.store, job.chain_id, job.datasets, job.chunk_size)
        self.intake = Intake(self.store, node.name, node.input_datasets)
        self.open = requests.OpenStates(self.store, node.name)
        self.bodies: dict[str, Request | str] = {}  # requests are immutable: read once per runner
        self.exhausted: dict[str, dict[int, str]] = {}  # by request: cells out of attempts, with their last error
        self.unfinished: list[tuple[Claim, PartitionResult]] = []  # ended partitions whose bookkeeping failed

    @property
    def stall_seconds(self) -> float:
        """A loop that has not turned for this long is stuck."""
        return 3 * self.cfg.poll_seconds + self.cfg.lease_seconds

    @property
    def timeout(self) -> float:
        return float(self.node.timeout_seconds)

    def gateway_metrics(self) -> dict[str, Any]:
        return self.executor.metrics()

    # ---- the loop -----------------------------------------------------------------------------

    def run(self) -> int:
        """Exit code: 0 every request it took is done or waiting, 1 one failed."""
        self.store.check_access()
        self._quietly("removing dead runners' reports", requests.sweep_runners, self.store, self.node.name, 3600.0)
        # the spare processes spawn and import Cryo while the gateway starts and the first poll
        # runs: a runner is started because there is work (the spec's reactive activation)
        self.executor.warm()
        with self.executor, Watch(self.store, self.node.name, self.id, self.cfg, self.executor, self.stop, self._count_error):
            idle_since, next_tick, pause = time.monotonic(), 0.0, 0.0
            while not self.stop.is_set():
                self.stats.heartbeat = time.monotonic()
                busy = bool(self.executor.running)
                # until the next poll is due (the first at once), or a partition ends
                ended = self.executor.wait(max(pause, min(self.cfg.poll_seconds, next_tick - time.monotonic())))
                if busy:
                    self.stats.busy_seconds += time.monotonic() - self.stats.heartbeat
                self.unfinished += ended
                self._finish_all()
                if self.stop.is_set():
                    break
                if ended or time.monotonic() >= next_tick:
                    try:
                        open_work = self._tick()
                        pause = 0.0
                    except ConfigError:
                        raise
                    except TRANSIENT as err:
                        self.stats.store_errors += 1
                        pause = min(30.0, max(1.0, 2 * pause))
                        log.warning("%s: %s (retrying in %.0f s)", self.node.name, redact(str(err)), pause)
                        open_work = True
                    next_tick = time.monotonic() + self.cfg.poll_seconds
                    if open_work or self.executor.running or self.unfinished:
                        idle_since = time.monotonic()
                    elif self.idle_timeout is not None and time.monotonic() - idle_since >= self.idle_timeout:
                        break
            self._shutdown()
        return 1 if self.stats.failed_requests else 0

    def _quietly(self, what: str, fn: Any, *args: Any) -> None:
        """Bookkeeping that may fail without harm (it is redone, or it expires): logged, never raised."""
        try:
            fn(*args)
        except TRANSIENT as err:
            self._count_error()
            log.warning("%s: %s: %s", self.node.name, what, redact(str(err)))

    def _count_error(self) -> None:
        self.stats.store_errors += 1

    def _finish_all(self) -> None:
        """Each ended partition's bookkeeping; one the store refused stays queued for the next turn."""
        left = []
        for claim, result in self.unfinished:
            try:
                self._finish(claim, result)
            except TRANSIENT as err:
                self.stats.store_errors += 1
                log.warning("%s: partition %s: %s (retrying)", self.node.name, claim.partition, redact(str(err)))
                left.append((claim, result))
        self.unfinished = left

    def _shutdown(self) -> None:
        """Let running partitions finish within the grace period, then kill them and release their leases."""
        if self.executor.running:
            log.info("%s: stopping: %d partition(s) running", self.node.name, len(self.executor.running))
        deadline = time.monotonic() + (self.cfg.grace_seconds if self.stop.is_set() else 0)
        while self.executor.running and time.monotonic() < deadline:
            self.unfinished += self.executor.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            self._finish_all()
        for claim in list(self.executor.running):
            self.executor.stop(claim)
            claim.ended = "stopped"
            self.unfinished.append((claim, PartitionResult(claim.partition, error="stopped")))
        self._finish_all()  # one try; a lease the store did not let go of expires within lease_seconds
        self._quietly("noting the arrivals taken in", self.intake.save, True)

    # ---- requests -----------------------------------------------------------------------------

    def _tick(self) -> bool:
        """One pass over the open requests; True while some request has work that is not waiting on finality."""
        final = self.executor.final_head()
        self.views.refresh()
        for view in self.views.of.values():
            view.check_grid(self.job.chunk_size)
        self.intake.poll()
        self.intake.save()
        states = self.open.read()
        self._measure_lag(final)
        self.stats.requests = {}
        for s in states.values():
            self.stats.requests[s.state] = self.stats.requests.get(s.state, 0) + 1
        # what the runner keeps per request lives as long as the request is open: a year of runs holds no history
        self.stats.remaining = {k: v for k, v in self.stats.remaining.items() if k in states}
        self.bodies = {k: v for k, v in self.bodies.items() if k in states}
        self.exhausted = {k: v for k, v in self.exhausted.items() if k in states}
        open_work = False
        bodies = {s.id: self._body(s) for s in states.values()}
        for state in sorted(states.values(), key=lambda s: (_created(bodies[s.id]), s.id)):  # oldest first
            if self.stop.is_set():
                break
            request = bodies[state.id]
            problem = request if isinstance(request, str) else self._mismatch(request)
            if problem:
                log.warning("%s: event %s is invalid: %s", self.node.name, state.id, problem)
                requests.set_state(self.store, self.node.name, state.id, "invalid", problem, self.id)
                continue
            assert isinstance(request, Request)
            open_work |= self._advance(request, final)
        return open_work

    def _body(self, state: requests.State) -> Request | str:
        if state.id not in self.bodies:
            found = datasets.find(self.store, [state.dataset] if state.dataset else self.node.input_datasets, state.id)
            self.bodies[state.id] = "no such request in the input datasets" if found is None else found
        return self.bodies[state.id]

    def _measure_lag(self, final: int) -> None:
        """Final head minus the contiguous high-water mark, from each dataset's first archived chunk."""
        for d in self.job.datasets:
            self.stats.lag[d] = final - self.views.through((d,))

    def _mismatch(self, r: Request) -> str:
        if r.chain_id != self.job.chain_id:
            return f"chain {r.chain_id}, but node {self.node.name} archives chain {self.job.chain_id}"
        extra = [d for d in r.datasets or () if d not in self.job.datasets]
        return f"dataset {extra[0]} is not among node {self.node.name}'s datasets" if extra else ""

    def _advance(self, r: Request, final: int) -> bool:
        datasets_ = tuple(r.datasets or self.job.datasets)
        running = {c.cell for c in self.executor.running}
        mine = {c.cell for c in self.executor.running if c.request.id == r.id}
        exhausted = self.exhausted.setdefault(r.id, {})
        look = outlook(
            r.start_block,
            r.end_block,
            self.job.chunk_size,
            self.job.chunks_per_partition,
            self.views.window,
            datasets_,
            self.views.held,
            final,
            limit=self.slots + 2 * len(running) + 8,  # room past the cells other runners hold
            skip=running | exhausted.keys(),
        )
        self.stats.remaining[r.id] = look.missing_blocks
        if not look.cells and not look.skipped:
            if look.pending_from is not None:
                last = r.end_block - r.end_block % self.job.chunk_size + self.job.chunk_size - 1
                reason = f"blocks {look.pending_from}-{last} not final yet"
                requests.set_state(self.store, self.node.name, r.id, "waiting", reason, self.id)
                return False
            self._complete(r, datasets_)
            return False
        for cell, part in look.cells.items():
            if len(self.executor.running) >= self.slots or self.stop.is_set():
                break
            if self.node.scaling.mode == "steady" and self.executor.running:
                break
            lease, found = requests.claim(
                self.store, self.node.name, cell, r.id, r.created_at, self.id, self.cfg.lease_seconds, self.cfg.attempts
            )
            if lease is None:
                if found.attempts >= self.cfg.attempts and not found.held(time.time()):
                    exhausted[cell] = f"partition {part}: {found.last_error}"
                continue
            self._start(r, cell, part, datasets_, lease.expires)
            mine.add(cell)
        with_work = set(look.cells) | look.skipped
        if not mine and with_work and with_work <= exhausted.keys():
            reason = f"failed after {self.cfg.attempts} attempts: {exhausted[min(with_work)]}"
            self._fail(r, reason, datasets_)
            return False
        return True

    def _start(self, r: Request, cell: int, part: Partition, datasets_: tuple[str, ...], expires: float) -> None:
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
            fetch_headers=self.job.header_checks == "fetch",
            catalog=self.job.catalog.get_secret_value() if self.job.catalog else None,
            catalog_namespace=self.job.catalog_namespace,
        )
        self.executor.start(task, self.timeout, Claim(r, cell, part, expires, time.monotonic() + self.timeout))
        log.info("%s: request %s: partition %s started", self.node.name, r.id, part)
        requests.set_state(self.store, self.node.name, r.id, "running", "", self.id)

    def _finish(self, claim: Claim, result: PartitionResult) -> None:
        span = claim.partition
        if claim.ended == "lost":  # given up or taken over: let it go if it is still ours (a late renewal)
            log.warning("%s: partition %s stopped here: its lease was lost", self.node.name, span)
            requests.release(self.store, self.node.name, claim.cell, self.id, "stopped")
            return
        if claim.ended == "stopped":  # SIGTERM past the grace period: the attempt does not count
            self.stats.partitions["stopped"] += 1
            requests.release(self.store, self.node.name, claim.cell, self.id, "stopped")
            log.info("%s: partition %s stopped, lease released", self.node.name, span)
            return
        if result.error is None:
            requests.release(self.store, self.node.name, claim.cell, self.id, "done")
            self.stats.partitions["ok"] += 1
            self.stats.blocks += sum(c.end - c.start + 1 for c in claim.partition.chunks)
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
        error = result.error
        if claim.ended == "timed_out":
            error = f"partition {span}: timed out after {self.timeout:.0f} s, killed"
        kind = "timed_out" if "timed out" in error else "failed"
        self.stats.partitions[kind] += 1
        lease = requests.release(self.store, self.node.name, claim.cell, self.id, "failed", error, self.cfg.attempts)
        attempt = lease.attempts if lease else "?"  # ? where another runner holds it now
        log.warning("%s: request %s: %s (attempt %s)", self.node.name, claim.request.id, redact(error), attempt)
        if result.conflict:  # the archive disagrees with the chain: retrying cannot help
            self._fail(claim.request, redact(error), tuple(claim.request.datasets or self.job.datasets))

    def _fail(self, r: Request, reason: str, datasets_: tuple[str, ...]) -> None:
        """Failed, but every chunk it archived still gets its event (an entry never goes without one)."""
        self._reconcile(r, datasets_)
        if requests.set_state(self.store, self.node.name, r.id, "failed", reason, self.id).state == "failed":
            log.error("%s: request %s failed: %s", self.node.name, r.id, redact(reason))
            self.stats.failed_requests.append(r.id)
        self.exhausted.pop(r.id, None)

    def _complete(self, r: Request, datasets_: tuple[str, ...]) -> None:
        """Every chunk archived: make sure every entry in range has its event and its table row, then done.
        A table that cannot follow is logged (archive/tables.py) and left for the next request or `catalog sync`."""
        self._reconcile(r, datasets_)
        if (j := self.job).catalog:
            blocks = (r.start_block - r.start_block % j.chunk_size, r.end_block)
            url = j.catalog.get_secret_value()
            tables.follow(j.root, j.chain_id, url, datasets_, j.catalog_namespace, blocks, j.storage_options)
        if requests.set_state(self.store, self.node.name, r.id, "done", "", self.id).state == "done":
            log.info("%s: request %s done (blocks %d-%d)", self.node.name, r.id, r.start_block, r.end_block)
        self.exhausted.pop(r.id, None)

    def _reconcile(self, r: Request, datasets_: tuple[str, ...]) -> None:
        sinks = events.Sinks(str(self.job.output_dataset), self.job.root, None, to_store=True, request_id=r.id)
        first = r.start_block - r.start_block % self.job.chunk_size
        events.reconcile(self.store, sinks, self.job.chain_id, datasets_, first, r.end_block)

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


def _created(request: Request | str) -> str:
    return request.created_at if isinstance(request, Request) else ""

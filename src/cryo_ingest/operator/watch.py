"""A runner's clock, on a thread of its own: lease renewals, timeouts, and the SIGTERM grace.

Apart from the runner's loop (node.py) so that neither a slow poll nor a slow store lets a lease
lapse or a partition outlive its timeout; it also keeps the runner's report of its partitions in
flight (requests.report_claims), which `status` shows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..archive.storage import Store
from ..config import NodeConfig
from ..errors import TRANSIENT, redact
from ..pipeline.plan import Partition
from . import requests
from .datasets import Request
from .executor import Executor

log = logging.getLogger("cryo_ingest.node")


@dataclass(eq=False)
class Claim:
    """A partition this runner started, as its lease and its timeout see it (the executor's tag)."""

    request: Request
    cell: int
    partition: Partition
    expires: float  # the lease's, as last written (wall clock)
    deadline: float  # timeout_seconds after the start (monotonic)
    last_renewal: float = field(default_factory=time.monotonic)
    ended: str = ""  # set by the watch when it killed the partition: "lost", "timed_out", "stopped"


class Watch:
    """It only renews and kills (a signal, safe from any thread); the loop does the bookkeeping when
    the ended partition reaches it. Renewals run on a pool of their own, so that a store that
    stalls holds up a renewal, never this clock: a lease that has not been renewed when it is
    about to lapse is given up (its partition killed here, one second before any other runner
    may take it), so that no cell ever runs under two runners at once.
    """

    TICK = 0.5
    GIVE_UP = 2 * TICK  # seconds before the lease lapses

    def __init__(
        self,
        store: Store,
        node: str,
        runner: str,
        cfg: NodeConfig,
        executor: Executor[Claim],
        stop: threading.Event,
        count_error: Callable[[], None],
    ) -> None:
        self.store, self.node, self.runner, self.cfg, self.executor, self.stop = store, node, runner, cfg, executor, stop
        self.count_error = count_error
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"watch-{node}", daemon=True)
        self.renewals = ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"renew-{node}")
        self.inflight: set[int] = set()  # claims (by id) with a renewal under way
        self.stop_at: float | None = None
        self.reported: tuple[tuple[int, str], ...] = ()  # the claims last written to the runner's report
        self.report_at = 0.0
        self.reporting = False

    def __enter__(self) -> Watch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()
        self.renewals.shutdown(wait=False, cancel_futures=True)
        if self.reported:
            try:
                requests.forget_runner(self.store, self.node, self.runner)
            except TRANSIENT as err:  # a report left behind is swept by a runner an hour later
                self.count_error()
                log.warning("%s: removing its report: %s", self.node, redact(str(err)))

    def _loop(self) -> None:
        while not self.done.wait(self.TICK):
            try:
                self.turn()
            except Exception:  # the watch must outlive anything one turn meets
                log.exception("%s: lease watch", self.node)

    def turn(self) -> None:
        now = time.monotonic()
        if self.stop.is_set() and self.stop_at is None:
            self.stop_at = now
        for claim in list(self.executor.running):
            if claim.ended:
                continue
            if now > claim.deadline:
                self._kill(claim, "timed_out")
            elif self.stop_at is not None and now > self.stop_at + self.cfg.grace_seconds:
                self._kill(claim, "stopped")
            elif claim.expires - time.time() < self.GIVE_UP:
                log.warning("%s: lease of partition %s not renewed in time: giving it up", self.node, claim.partition)
                self._kill(claim, "lost")
            elif now - claim.last_renewal >= self.cfg.lease_seconds / 3 and id(claim) not in self.inflight:
                self.inflight.add(id(claim))
                self.renewals.submit(self._renew, claim)
        claims = [c for c in self.executor.running if not c.ended]
        held = tuple(sorted((c.cell, c.request.id) for c in claims))
        if not self.reporting and (held != self.reported or (held and now - self.report_at >= self.cfg.lease_seconds / 3)):
            self.reporting = True
            self.renewals.submit(self._report, held, [_in_flight(c) for c in claims])

    def _report(self, held: tuple[tuple[int, str], ...], claims: list[dict[str, Any]]) -> None:
        """This runner's partitions in flight, for `status` (requests.report_claims)."""
        try:
            if claims:
                requests.report_claims(self.store, self.node, self.runner, claims)
            else:
                requests.forget_runner(self.store, self.node, self.runner)
            self.reported, self.report_at = held, time.monotonic()
        except TRANSIENT as err:
            log.warning("%s: report of partitions in flight: %s", self.node, redact(str(err)))
        finally:
            self.reporting = False

    def _renew(self, claim: Claim) -> None:
        try:
            expires = requests.renew(self.store, self.node, claim.cell, self.runner, self.cfg.lease_seconds)
        except TRANSIENT as err:  # tried again next turn, until the lease is about to lapse
            self.count_error()
            log.warning("%s: lease of partition %s: %s", self.node, claim.partition, redact(str(err)))
            return
        finally:
            self.inflight.discard(id(claim))
        if expires is None:  # it expired (we stalled) and another runner took it: it runs there now, not here
            self._kill(claim, "lost")
        elif not claim.ended:
            claim.expires, claim.last_renewal = expires, time.monotonic()

    def _kill(self, claim: Claim, why: str) -> None:
        if not claim.ended:
            claim.ended = why
            self.executor.kill(claim)


def _in_flight(c: Claim) -> dict[str, Any]:
    return {"cell": c.cell, "blocks": [c.partition.start, c.partition.end], "request": c.request.id, "expires": c.expires}

"""How a runner learns of new requests without reading every request its node ever had.

It follows each input dataset's arrivals log (one listing of today's folder per poll, from where
it last looked): what a poll pays follows what came in. A producer's clock may lag by up to
`MARGIN` (its arrival key is named by its own clock), so each poll looks back that far and skips
the keys it has seen. Runners note in the node's summary.json how far they have taken arrivals in
(every ten minutes, and when they stop); a runner starts from there. Where there is no such note
(a root from before it, or one idle for over `RESUME` days), the start is one scan instead: the
input datasets' request ids, less those with a state (open or ended), are opened (a pending state
each), which also finds requests stored without an arrival.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, date, datetime, timedelta

from ..archive.storage import Store
from . import datasets, requests

log = logging.getLogger("cryo_ingest.intake")

MARGIN = timedelta(minutes=10)
RESUME = timedelta(days=14)  # beyond this, a listing a day costs more than the scan's listings of every id
SAVE_SECONDS = 600.0


class Intake:
    def __init__(self, store: Store, node: str, inputs: list[str]) -> None:
        self.store, self.node, self.inputs = store, node, inputs
        self.since: datetime | None = None  # arrivals from here on are looked at
        self.seen: set[str] = set()
        self.saved = (0.0, "")  # when, and what, was last noted in the summary

    def poll(self) -> int:
        """Open the requests that arrived since the last poll; how many were new."""
        now = datetime.now(UTC)
        since = self.since or self._resume(now)
        taken = self._scan(now - MARGIN) if since is None else sum(self._follow(d, since, now) for d in self.inputs)
        self.since = now - MARGIN
        floor = {d: datasets.arrival_key(d, "", self.since) for d in self.inputs}
        self.seen = {k for k in self.seen if any(k.startswith(datasets.arrivals_prefix(d)) and k > f for d, f in floor.items())}
        return taken

    def _resume(self, now: datetime) -> datetime | None:
        noted = requests.summary(self.store, self.node).get("arrivals", {})
        if not self.inputs or any(d not in noted for d in self.inputs):
            return None
        since = min(datetime.fromisoformat(noted[d]) for d in self.inputs)
        return since if now - since <= RESUME else None

    def save(self, force: bool = False) -> None:
        """Note how far arrivals are taken in: every `SAVE_SECONDS`, and when the runner stops."""
        if self.since is None or (not force and time.monotonic() - self.saved[0] < SAVE_SECONDS):
            return
        mark = self.since.isoformat()
        if mark != self.saved[1]:
            requests.note_arrivals(self.store, self.node, dict.fromkeys(self.inputs, mark))
        self.saved = (time.monotonic(), mark)

    def _follow(self, dataset: str, since: datetime, now: datetime) -> int:
        taken = 0
        for day in _days(since.date(), (now + MARGIN).date()):
            prefix = f"{datasets.arrivals_prefix(dataset)}{day:%Y-%m-%d}/"
            offset = datasets.arrival_key(dataset, "", since) if day == since.date() else None
            for key in self.store.list(prefix, offset):
                if key in self.seen:
                    continue
                taken += requests.take_in(self.store, self.node, datasets.arrival_id(key), dataset)
                self.seen.add(key)  # only once taken in: a store error leaves it to the next poll
        return taken

    def _scan(self, since: datetime) -> int:
        """Requests put before this runner started (or by a writer that left no arrival).

        The arrivals of the look-back window are listed first and marked seen: a request is stored
        before its arrival, so each of them is in the listing that follows, and the next poll
        need not look at them again.
        """
        for dataset in self.inputs:
            for day in _days(since.date(), (since + 2 * MARGIN).date()):
                offset = datasets.arrival_key(dataset, "", since) if day == since.date() else None
                self.seen.update(self.store.list(f"{datasets.arrivals_prefix(dataset)}{day:%Y-%m-%d}/", offset))
        known = requests.closed_ids(self.store, self.node)
        prefix = requests.open_prefix(self.node)
        known |= {k.removeprefix(prefix).removesuffix(".json") for k in self.store.list(prefix)}
        taken = 0
        for dataset in self.inputs:
            for request_id in datasets.ids(self.store, dataset):
                if request_id not in known:
                    taken += requests.take_in(self.store, self.node, request_id, dataset)
                    known.add(request_id)
        if taken:
            log.info("%s: %d request(s) found by the start-up scan", self.node, taken)
        return taken


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]

"""The two sources that emit backfill requests: cron (scheduled catch-up) and threshold (hot window full).

Both are idempotent by construction: a request's id is its scheduled time (cron) or its range
(threshold), and datasets store an id once. A cursor on the store (`operator/{source}/cursor.json`)
is written only after the request is stored, so a restarted source neither re-emits nor skips.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from croniter import croniter

from ..archive import manifest
from ..archive.storage import Store
from ..config import Job
from ..errors import TRANSIENT, ConfigError, redact
from . import datasets
from .dag import SourceNode

log = logging.getLogger("cryo_ingest.sources")


def retrying(name: str, stop: threading.Event, turn: Callable[[], None], every: float) -> None:
    """Run `turn` every `every` seconds until stopped; a transient error is logged and tried again
    with backoff (1 s, doubling to 30 s)."""
    pause = 0.0
    while not stop.is_set():
        try:
            turn()
            pause = 0.0
        except ConfigError:
            raise
        except TRANSIENT as err:
            pause = min(30.0, max(1.0, 2 * pause))
            log.warning("%s: %s (retrying in %.0f s)", name, redact(str(err)), pause)
        stop.wait(max(pause, every))


class Archived:
    """How far the archive is contiguous, for a source that asks every tick: cached manifest views,
    so that a tick pays one conditional read per dataset and the shards that are not complete."""

    def __init__(self, store: Store, job: Job) -> None:
        self.job = job
        self.views = manifest.Views(store, job.chain_id, job.datasets, job.chunk_size)

    def through(self, base: int) -> int:
        """The high-water mark of the job's datasets together, from `base` on."""
        self.views.refresh()
        return max(self.views.through(self.job.datasets, base), base - 1)


def _cursor_key(source: str) -> str:
    return f"operator/{source}/cursor.json"


def read_cursor(store: Store, source: str) -> dict[str, Any]:
    data = store.get(_cursor_key(source))
    return dict(json.loads(data)) if data else {}


def write_cursor(store: Store, source: str, cursor: dict[str, Any]) -> None:
    body = (json.dumps(cursor, sort_keys=True) + "\n").encode()
    store.update(_cursor_key(source), lambda current: None if current == body else body)


def catch_up_range(archived: Archived, final: int, base: int) -> tuple[int, int]:
    """From the archive's high-water mark to the last whole chunk at or below the final head."""
    size = archived.job.chunk_size
    return archived.through(base) + 1, (final + 1) // size * size - 1


def _emit(store: Store, source: SourceNode, job: Job, request_id: str, kind: str, start: int, end: int) -> None:
    request = datasets.make_request(
        id=request_id,
        kind=kind,
        source=source.name,
        chain_id=job.chain_id,
        start_block=start,
        end_block=end,
        created_at=datasets.now_iso(),
    )
    new = datasets.put(store, source.output_dataset, request)
    log.info("%s: request %s blocks %d-%d%s", source.name, request_id, start, end, "" if new else " (already emitted)")


def run_cron(
    source: SourceNode, job: Job, store: Store, stop: threading.Event, final_head: Callable[[], int], now: Callable[[], datetime]
) -> None:
    """At each scheduled tick, one catch-up request; ticks missed while down give one catch-up, not one each."""
    schedule = str(source.config.schedule)
    base = source.config.start_block or 0
    archived = Archived(store, job)
    cursor: dict[str, Any] = {}

    def turn() -> None:
        if not cursor:
            stored = read_cursor(store, source.name)
            if "last_tick" not in stored:  # first start: from the next tick on, not every tick in the past
                stored = {"last_tick": croniter(schedule, now()).get_prev(datetime).isoformat()}
                write_cursor(store, source.name, stored)
            cursor.update(stored)
        due = croniter(schedule, now()).get_prev(datetime)
        if due > datetime.fromisoformat(cursor["last_tick"]):
            start, end = catch_up_range(archived, final_head(), base)
            tick = due.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
            if end >= start:
                _emit(store, source, job, f"cron-{source.name}-{tick}", "cron", start, end)
            else:
                log.info("%s: tick %s: nothing final to archive (archived through %d)", source.name, tick, start - 1)
            write_cursor(store, source.name, {"last_tick": due.isoformat()})
            cursor["last_tick"] = due.isoformat()
        wait = (croniter(schedule, now()).get_next(datetime) - now()).total_seconds()
        stop.wait(max(0.0, min(wait, 60.0) - 0.05))

    retrying(source.name, stop, turn, 0.05)


def run_threshold(source: SourceNode, job: Job, store: Store, stop: threading.Event, final_head: Callable[[], int]) -> None:
    """When the final blocks not yet archived reach `blocks`, one request for the whole chunks among them."""
    blocks = int(source.config.blocks or 0)
    base = source.config.start_block or 0
    archived = Archived(store, job)

    def turn() -> None:
        start, end = catch_up_range(archived, final_head(), base)
        asked = int(read_cursor(store, source.name).get("requested_through", -1))
        start = max(start, asked + 1)
        if end - start + 1 >= blocks:
            _emit(store, source, job, f"threshold-{source.name}-{start}-{end}", "threshold", start, end)
            write_cursor(store, source.name, {"requested_through": end})

    retrying(source.name, stop, turn, source.config.poll_seconds)

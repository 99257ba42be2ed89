"""One event per published chunk, for the DAG's output dataset (e.g. `cold_blocks`).

Events go into the run's result and, when a sink file is given, are appended to it as JSON
lines; a downstream dispatcher tails or ships that file.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

log = logging.getLogger("cryo_ingest.events")


@dataclass(frozen=True)
class Event:
    output_dataset: str
    chain_id: int
    dataset: str
    start_block: int
    end_block: int
    uri: str
    rows: int
    sha256: str


def emit(events: list[Event], sink: Path | None) -> None:
    for event in events:
        log.info(
            "published %s %s %d-%d (%d rows)", event.output_dataset, event.dataset, event.start_block, event.end_block, event.rows
        )
    if sink is None or not events:
        return
    sink.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(sink) + ".lock", timeout=60), sink.open("a") as f:  # several workers append
        for event in events:
            f.write(json.dumps(asdict(event), separators=(",", ":")) + "\n")

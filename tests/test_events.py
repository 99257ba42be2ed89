"""Events: every manifest entry gets exactly one event in the sink, whatever crashes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Devnet, backfill, manifest

from cryo_ingest.faults import CRASH_SCOPE_ENV
from cryo_ingest.pipeline.publish import CRASH_ENV

DATASETS = ("blocks", "transactions", "logs", "traces")


def event_keys(path: Path) -> list[tuple[str, int, str]]:
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [(e["dataset"], e["start_block"], e["sha256"]) for e in lines]


def entry_keys(root: Path) -> list[tuple[str, int, str]]:
    return [
        (d, f["start_block"], f["sha256"])
        for d in DATASETS
        if (root / "cold/31337" / d / "manifest.json").exists()
        for f in manifest(root, 31337, d)["files"]
    ]


@pytest.mark.parametrize("scope", ["worker", "job"])
@pytest.mark.parametrize("point", ["mid-manifest", "before-events"])
def test_killed_before_its_events_loses_none(point: str, scope: str, chain: Devnet, tmp_path: Path) -> None:
    """Killed after recording entries and before their events: the worker alone, or the whole job."""
    root, sink = tmp_path / "archive", tmp_path / "events.jsonl"
    killed = backfill(root, chain.url, "--events-file", str(sink), end=149, env={CRASH_ENV: point, CRASH_SCOPE_ENV: scope})
    if scope == "worker":
        assert killed.code == 1 and "worker process died" in killed.text
    else:
        assert killed.code == -9
        assert not set(entry_keys(root)) <= set(event_keys(sink)), "entries left without events: the case under test"
    recorded = entry_keys(root)
    assert recorded, "the kill came after some entries were recorded"

    resumed = backfill(root, chain.url, "--events-file", str(sink), end=149)
    assert resumed.code == 0, resumed.text
    events = event_keys(sink)
    assert len(events) == len(set(events)), "an event was emitted twice"
    assert sorted(events) == sorted(entry_keys(root)) and len(events) == 4 * 3

    again = backfill(root, chain.url, "--events-file", str(sink), "--json", end=149)
    assert again.code == 0 and json.loads(again.out)["emitted"] == 0
    assert event_keys(sink) == events, "a re-run that changes nothing emits nothing"

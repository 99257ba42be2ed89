"""`cryo-ingest verify`: prove an archive at rest whole, file by file, down to the chain's own commitments.

Publishing validates each chunk before it is stored, but nothing else re-reads an archive: a
deleted object, a flipped byte, a chunk written by an older buggy version, a gap, an orphan from a
crash all go unseen. This reads every file the manifests name, once, in block order, one window
of chunks at a time (memory is bounded by one chunk of each dataset, not by the archive), has
checks.py check each window, and reports gaps, coverage and orphans.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator

from ..archive import manifest
from ..archive.manifest import Entry, Manifest
from ..archive.storage import Store
from ..config import DATASETS
from ..errors import ConfigError, IngestError, StorageError
from .checks import Held, Refetch, Verifier
from .orphans import list_orphans
from .report import Report

END = 2**63  # the last block when no --to is given


def merge(runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(runs):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def subtract(runs: list[tuple[int, int]], minus: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for a, b in merge(runs):
        for c, d in merge(minus):
            if d < a or c > b:
                continue
            if c > a:
                out.append((a, c - 1))
            a = d + 1
            if a > b:
                break
        if a <= b:
            out.append((a, b))
    return out


def _overlaps(runs: list[tuple[int, int]], a: int, b: int) -> bool:
    return any(x <= b and y >= a for x, y in runs)


def _open(store: Store, chain_id: int, dataset: str, report: Report) -> tuple[Manifest, list[int]] | None:
    """A dataset's manifest metadata and the first blocks of its listed shards, no entry read yet.

    Entries are read a shard range at a time as the walk reaches them, so memory holds one shard
    (1,000 entries) per dataset, not the whole manifest (100,000 entries are 37 MB of JSON).
    """
    try:
        meta = manifest.load(store, chain_id, dataset, (END, END))  # the index alone: no shard covers END
        index = store.get(manifest.key(chain_id, dataset))
    except StorageError:
        raise
    except IngestError as err:
        report.add(dataset, manifest.key(chain_id, dataset), None, None, "manifest", str(err))
        return None
    if meta is None or index is None:
        return None
    starts = sorted(int(str(path).split("/")[-1].split("_")[0]) for path in json.loads(index)["shards"])
    return meta, starts


def _entries(
    store: Store, chain_id: int, archives: dict[str, tuple[Manifest, list[int]]], lo: int, hi: int, report: Report
) -> Iterator[dict[str, list[Entry]]]:
    """Each dataset's entries overlapping lo..hi, in block order, one stretch of shards at a time."""
    span = math.lcm(*(manifest.shard_span(m.chunk_size) for m, _ in archives.values()))
    stretches = sorted({s // span for _, starts in archives.values() for s in starts if s <= hi and s + span > lo})
    for k in stretches:
        a, b = max(k * span, lo), min((k + 1) * span - 1, hi)
        out: dict[str, list[Entry]] = {}
        for d in archives:
            try:
                m = manifest.load(store, chain_id, d, (a, b))
            except StorageError:
                raise
            except IngestError as err:
                report.add(d, manifest.key(chain_id, d), a, b, "manifest", str(err))
                continue
            if m is not None:
                out[d] = [e for _, e in sorted(m.files.items()) if e.end_block >= a and e.start_block <= b]
        yield out


def _coverage(report: Report, runs: dict[str, list[tuple[int, int]]], first: int | None, last: int | None) -> None:
    """Gaps between files, datasets that disagree on what they hold, and blocks asked for but not held."""
    report.archived = runs
    everything = merge([r for rs in runs.values() for r in rs])
    if not everything:
        return
    lo = first if first is not None else everything[0][0]
    hi = last if last is not None else everything[-1][1]
    for d, mine in runs.items():
        hull = [(mine[0][0], mine[-1][1])] if mine else []
        asked = [(lo, hi)] if first is not None or last is not None else []
        target = [(max(a, lo), min(b, hi)) for a, b in merge(everything + hull + asked) if b >= lo and a <= hi]
        for a, b in subtract(target, mine):
            others = [o for o in runs if o != d and _overlaps(runs[o], a, b)]
            held = f"; {', '.join(others)} hold{'s' if len(others) == 1 else ''} them" if others else ""
            inside = bool(hull) and hull[0][0] < a and b < hull[0][1]
            what = f"no file (a gap between files){held}" if inside else f"not archived{held}"
            report.add(d, "", a, b, "gap" if inside else "coverage", what)


def _orphans(store: Store, report: Report, chain_id: int, datasets: tuple[str, ...], first: int | None, last: int | None) -> None:
    lo, hi = first if first is not None else 0, last if last is not None else END
    for d in datasets:
        listing = list_orphans(store, chain_id, d)
        for shard in listing.unlisted_shards:
            report.add(
                d,
                shard,
                None,
                None,
                "orphans",
                "shard not listed by manifest.json (a crash before the index): readers do not see its entries",
            )
        for o in listing.orphans:
            if o.blocks is not None and not (o.blocks[0] <= hi and o.blocks[1] >= lo):
                continue
            if o.replaced_at is not None and not o.unlisted_shard:
                report.count("replaced")  # a reorg's old chunk, kept for time travel until gc: expected, no problem
                continue
            if o.unlisted_shard:
                what = f"named only by the unlisted shard {o.unlisted_shard.rsplit('/', 1)[-1]}"
            elif o.data_file:
                when = f"{o.last_modified:%Y-%m-%d %H:%M:%S} UTC"
                what = f"orphan: no manifest entry names it ({o.size:,} bytes, last modified {when})"
            else:
                what = f"unexpected object under the dataset's folder ({o.size:,} bytes); gc leaves it alone"
            a, b = o.blocks or (None, None)
            report.add(d, o.key, a, b, "orphans", what)


def _windows(entries: dict[str, list[Entry]], width: int) -> Iterator[tuple[int, dict[str, list[Entry]]]]:
    """Windows of `width` blocks on the grid, in order, with each dataset's entries in them."""
    pos = dict.fromkeys(entries, 0)
    starts = sorted({e.start_block // width for es in entries.values() for e in es})
    for w in starts:
        out: dict[str, list[Entry]] = {}
        for d, es in entries.items():
            i = pos[d]
            while i < len(es) and es[i].start_block // width == w:
                out.setdefault(d, []).append(es[i])
                i += 1
            pos[d] = i
        yield w * width, out


def verify(
    store: Store,
    chain_id: int,
    root: str,
    datasets: tuple[str, ...] | None = None,
    first: int | None = None,
    last: int | None = None,
    refetch: Refetch | None = None,
    read_files: bool = True,
) -> Report:
    """Every check on the archive of `chain_id` (blocks `first`..`last` if given); `read_files=False`:
    coverage and orphans from the manifests and listings only (the coverage page of `status`)."""
    if first is not None and last is not None and first > last:
        raise ConfigError(f"invalid arguments: --from {first} is after --to {last}")
    started = time.monotonic()
    chosen = datasets or DATASETS
    report = Report(root, chain_id, list(chosen), first, last, checked=read_files)
    archives = {d: a for d in chosen if (a := _open(store, chain_id, d, report)) is not None}
    empty = read_files and not archives and not report.problems
    if empty and not any(store.list(f"cold/{chain_id}/{d}/") for d in chosen):
        what = f"dataset {chosen[0]}" if datasets and len(chosen) == 1 else f"chain {chain_id}"
        raise ConfigError(f"invalid arguments: no archive of {what} under {root}")
    report.datasets = [d for d in chosen if d in archives] or list(chosen)
    lo, hi = first if first is not None else 0, last if last is not None else END
    walk = read_files and bool(archives)
    runs: dict[str, list[tuple[int, int]]] = {d: [] for d in archives}
    if not walk or refetch is not None:  # the coverage first: --deep draws its blocks from it
        for stretch in _entries(store, chain_id, archives, lo, hi, report):
            for d, es in stretch.items():
                runs[d] = merge(runs[d] + [(e.start_block, e.end_block) for e in es])
        if refetch is not None:
            refetch.choose([(max(a, lo), min(b, hi)) for a, b in merge([r for rs in runs.values() for r in rs])])
    if walk:
        width = math.lcm(*(m.chunk_size for m, _ in archives.values()))
        v = Verifier(store, chain_id, {d: m for d, (m, _) in archives.items()}, report, refetch)
        for stretch in _entries(store, chain_id, archives, lo, hi, report):
            if refetch is None:
                for d, es in stretch.items():
                    runs[d] = merge(runs[d] + [(e.start_block, e.end_block) for e in es])
            for start, window in _windows(stretch, width):
                _check_window(v, refetch, start, width, window)
    _coverage(report, runs, first, last)
    _orphans(store, report, chain_id, chosen, first, last)
    report.seconds = time.monotonic() - started
    return report


def _check_window(v: Verifier, refetch: Refetch | None, start: int, width: int, window: dict[str, list[Entry]]) -> None:
    deep = refetch is not None and any(start <= b < start + width for b in refetch.blocks)
    held = {d: v.load(d, es, keep_all=deep) for d, es in window.items()}
    headers = v.check_blocks(held["blocks"]) if "blocks" in held else {}
    for d in ("transactions", "logs", "traces"):
        if d in held:
            v.check_block_hashes(d, held[d], headers)
    blocks = set(headers).union(*(h.spans for h in held.values()))
    if "transactions" in held:  # blocks without a transaction have no row: check them too
        blocks.update(*(range(e.start_block, e.end_block + 1) for e in held["transactions"].entries))
    for b in sorted(blocks):
        v.check_block(b, headers.get(b), held)
    if refetch is not None and deep:
        _deep(v, refetch, start, width, held)


def _deep(v: Verifier, refetch: Refetch, start: int, width: int, held: dict[str, Held]) -> None:
    sources = {d: (e.source if d == "traces" and (e := next(iter(h.entries), None)) else None) for d, h in held.items()}
    for b in sorted(x for x in refetch.blocks if start <= x < start + width):
        archived = {}
        for d, h in held.items():
            if h.covers(b) and h.table is not None:
                offset, n = h.spans.get(b, (0, 0))
                archived[d] = h.table.slice(offset, n)
        if not archived:
            continue
        v.report.deep_blocks.append(b)
        problems, skipped = refetch.compare(b, archived, sources)
        for d, what in problems:
            v.report.add(d, v.file_of(d, held[d], b), b, b, "deep", what)
        for reason in skipped:
            v.report.skip("deep", b, reason, extend=False)

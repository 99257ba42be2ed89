"""Which chunks to do: the range widened to the grid, capped at the final head, minus what is archived."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, order=True)
class Chunk:
    start: int
    end: int  # inclusive

    def filename(self, dataset: str) -> str:
        return f"{dataset}_{self.start:08}_{self.end:08}.parquet"

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


def grid(start: int, end: int, chunk_size: int) -> list[Chunk]:
    """The chunks of the fixed grid that cover start..end, widened outward."""
    first, last = start // chunk_size, end // chunk_size
    return [Chunk(k * chunk_size, (k + 1) * chunk_size - 1) for k in range(first, last + 1)]


@dataclass(frozen=True)
class Partition:
    """Consecutive chunks that one worker extracts with a single Cryo call."""

    chunks: tuple[Chunk, ...]
    datasets: tuple[str, ...]

    @property
    def start(self) -> int:
        return self.chunks[0].start

    @property
    def end(self) -> int:
        return self.chunks[-1].end

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


@dataclass
class Plan:
    partitions: list[Partition] = field(default_factory=list)
    done: list[Chunk] = field(default_factory=list)  # already archived for every dataset
    pending: list[Chunk] = field(default_factory=list)  # not final yet


def make_plan(
    start: int,
    end: int,
    chunk_size: int,
    datasets: tuple[str, ...],
    archived: dict[str, set[int]],
    final_head: int,
    force: bool,
    chunks_per_partition: int,
) -> Plan:
    """`archived` maps each dataset to the start blocks its manifest lists."""
    plan = Plan()
    todo: list[tuple[Chunk, tuple[str, ...]]] = []
    for chunk in grid(start, end, chunk_size):
        if chunk.end > final_head:
            plan.pending.append(chunk)
            continue
        missing = datasets if force else tuple(d for d in datasets if chunk.start not in archived.get(d, set()))
        if missing:
            todo.append((chunk, missing))
        else:
            plan.done.append(chunk)
    current: list[Chunk] = []
    current_ds: tuple[str, ...] = ()
    for chunk, ds in todo:
        adjacent = current and current[-1].end + 1 == chunk.start
        if current and (ds != current_ds or not adjacent or len(current) == chunks_per_partition):
            plan.partitions.append(Partition(tuple(current), current_ds))
            current = []
        current.append(chunk)
        current_ds = ds
    if current:
        plan.partitions.append(Partition(tuple(current), current_ds))
    return plan


# (dataset, lo, hi) -> the start blocks of the chunks archived in lo..hi, which lie on the grid
# within one window (a manifest shard's span): what a long-lived reader answers from its cache.
Held = Callable[[str, int, int], Collection[int]]


@dataclass
class Outlook:
    """What one request has left, looked at lazily: the cells to start first, the rest as counts.

    Memory and time follow the cells asked for and the windows that are not whole, never the
    length of the range: a request up to block 10^12 costs what its final, unarchived part costs.
    """

    cells: dict[int, Partition] = field(default_factory=dict)  # the first cells with work, by cell number
    skipped: set[int] = field(default_factory=set)  # cells with work that the caller asked to skip
    missing_blocks: int = 0  # final and not archived, in every cell (not only in `cells`)
    pending_from: int | None = None  # first block of the first chunk not final yet
    pending_chunks: int = 0


def outlook(
    start: int,
    end: int,
    chunk_size: int,
    cell_chunks: int,
    window: int,
    datasets: tuple[str, ...],
    held: Held,
    final_head: int,
    limit: int,
    skip: Collection[int] = (),
) -> Outlook:
    """The request start..end on the grid: up to `limit` cells (of `cell_chunks` chunks) with work,
    each as one partition extracting the union of what its chunks miss; `window` is a multiple of
    `chunk_size` (a manifest shard's span) within which `held` answers."""
    out = Outlook()
    first, last = start - start % chunk_size, end - end % chunk_size
    last_final = (final_head + 1) // chunk_size * chunk_size - chunk_size  # the last chunk whose end is final
    hi = min(last, last_final)
    if last > hi:
        out.pending_from = max(first, hi + chunk_size)
        out.pending_chunks = (last - out.pending_from) // chunk_size + 1
    span = chunk_size * cell_chunks
    chunks: dict[int, list[Chunk]] = {}
    names: dict[int, set[str]] = {}
    collecting = True
    lo = first
    while lo <= hi:
        hi_w = min(hi, lo - lo % window + window - chunk_size)
        n = (hi_w - lo) // chunk_size + 1
        have = {d: held(d, lo, hi_w) for d in datasets}
        if all(len(h) == n for h in have.values()):
            lo = hi_w + chunk_size
            continue
        if not collecting:
            partial = [h for h in have.values() if len(h) < n]
            common = set(partial[0]).intersection(*partial[1:]) if all(partial) else set()
            out.missing_blocks += (n - len(common)) * chunk_size
            lo = hi_w + chunk_size
            continue
        for s in range(lo, hi_w + 1, chunk_size):
            missing = [d for d in datasets if s not in have[d]]
            if not missing:
                continue
            out.missing_blocks += chunk_size
            cell = s // span
            if cell in skip:
                out.skipped.add(cell)
            elif cell in chunks or len(chunks) < limit:
                chunks.setdefault(cell, []).append(Chunk(s, s + chunk_size - 1))
                names.setdefault(cell, set()).update(missing)
        # a cell that goes on past this window is finished in the next before counting starts
        collecting = len(chunks) < limit or (hi_w + chunk_size) // span in chunks
        lo = hi_w + chunk_size
    for cell in sorted(chunks):
        out.cells[cell] = Partition(tuple(chunks[cell]), tuple(d for d in datasets if d in names[cell]))
    return out


def contiguous_through(held: Held, datasets: Sequence[str], chunk_size: int, window: int, base: int) -> int:
    """The last block of the run of chunks, from `base`'s chunk on, archived for every dataset
    (the block before that chunk if there is none); whole windows are skipped unread."""
    lo = base - base % chunk_size
    while True:
        hi_w = lo - lo % window + window - chunk_size
        n = (hi_w - lo) // chunk_size + 1
        have = [held(d, lo, hi_w) for d in datasets]
        if not all(len(h) == n for h in have):
            while lo <= hi_w and all(lo in h for h in have):
                lo += chunk_size
            return lo - 1
        lo = hi_w + chunk_size

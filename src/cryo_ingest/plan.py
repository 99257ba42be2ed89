"""Which chunks to do: the range widened to the grid, capped at the final head, minus what is archived."""

from __future__ import annotations

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


def high_water(held: list[set[int]], chunk_size: int, base: int | None = None) -> int:
    """The last block of the run of chunks, from `base`'s chunk (default: the first one held) on,
    that every set of chunk starts holds; the block before that chunk if none."""
    common = set.intersection(*held) if held else set()
    start = min(common, default=0) if base is None else base - base % chunk_size
    while start in common:
        start += chunk_size
    return start - 1

"""What a verification found: problems (each with dataset, file, blocks, what), skipped checks, coverage."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, order=True)
class Problem:
    dataset: str
    first_block: int | None  # None: not about blocks (an orphan, a manifest)
    last_block: int | None
    file: str  # the object key under the root, or "" for a range no file holds
    check: str
    what: str

    @property
    def blocks(self) -> str:
        if self.first_block is None:
            return ""
        return str(self.first_block) if self.first_block == self.last_block else f"{self.first_block}-{self.last_block}"


@dataclass(frozen=True)
class Skipped:
    """A check that cannot apply to a block range, and why (e.g. receipts root before Byzantium)."""

    check: str
    first_block: int
    last_block: int
    reason: str


@dataclass
class Report:
    root: str
    chain_id: int
    datasets: list[str]
    first_block: int | None = None  # the range asked for (None: the whole archive)
    last_block: int | None = None
    checked: bool = True  # False: coverage from the manifests only (status --html), no file read
    problems: list[Problem] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    archived: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # per dataset, runs of files
    counts: dict[str, int] = field(default_factory=dict)
    deep_blocks: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def add(self, dataset: str, file: str, first: int | None, last: int | None, check: str, what: str) -> None:
        self.problems.append(Problem(dataset, first, last, file, check, what))

    def skip(self, check: str, block: int, reason: str, extend: bool) -> None:
        """`extend`: nothing was checked since this check's last skipped block, so one range holds both."""
        for i in range(len(self.skipped) - 1, -1, -1):
            s = self.skipped[i]
            if s.check == check:
                if s.reason == reason and extend:
                    self.skipped[i] = Skipped(check, s.first_block, block, reason)
                    return
                break
        self.skipped.append(Skipped(check, block, block, reason))

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["problems"] = [asdict(p) | {"blocks": p.blocks} for p in sorted(self.problems, key=_order)]
        doc["archived"] = {d: [list(r) for r in runs] for d, runs in self.archived.items()}
        return {"ok": self.ok} | doc


def _order(p: Problem) -> tuple[str, int, str, str]:
    return (p.dataset, -1 if p.first_block is None else p.first_block, p.file, p.check)


def sorted_problems(report: Report) -> list[Problem]:
    return sorted(report.problems, key=_order)

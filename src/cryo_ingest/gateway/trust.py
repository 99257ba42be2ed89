"""Which endpoint answered each block's data, and what a failed check (validate.py) says about it.

A failed check is a lie until proven otherwise: the endpoints that answered the data it tests are
counted (`lies` where one endpoint alone answered it, `suspected` where several did), the chunk's
refetch avoids, per method, the endpoint that answered the failing block (where another is left),
and an endpoint with LIES_TO_BENCH lies is benched for the run, like a failing one, while another
is left. Kept per block until the partition that fetched it is done (`settle`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .logs import bounds

if TYPE_CHECKING:
    from .pool import Pool

log = logging.getLogger("cryo_ingest.gateway")

LIES_TO_BENCH = 3
BLOCK_METHODS = ("eth_getBlockByNumber", "eth_getBlockReceipts")
# The answers whose data each check of validate.py tests (the header, from eth_getBlockByNumber, is taken as true).
TESTED_BY = {
    "receipts": ("eth_getBlockByNumber", "eth_getBlockReceipts"),  # the transactions against the receipts
    "logs_bloom": ("eth_getLogs",),
    "gas_used": ("eth_getBlockReceipts",),
    "receipts_root": ("eth_getLogs", "eth_getBlockReceipts"),
}


def block_range(req: dict[str, Any]) -> tuple[int, int] | None:
    """The blocks a request asks about, where it names them by number."""
    method, params = req.get("method"), req.get("params") or [None]
    if method == "eth_getLogs":
        return bounds(req)
    if method in BLOCK_METHODS:
        try:
            n = int(params[0], 16)
        except (TypeError, ValueError):
            return None
        return n, n
    return None


class Trust:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.sources: dict[tuple[int, str], str] = {}  # (block, method) -> the endpoint that answered last
        self.avoided: dict[tuple[int, str], set[str]] = {}  # (block, method) -> endpoints whose answer failed a check

    def answered(self, req: dict[str, Any], name: str) -> None:
        if (span := block_range(req)) is not None:
            for b in range(span[0], span[1] + 1):
                self.sources[b, req["method"]] = name

    def avoid(self, req: dict[str, Any]) -> frozenset[str]:
        if not self.avoided or (span := block_range(req)) is None:
            return frozenset()
        method = req["method"]
        return frozenset(n for b in range(span[0], span[1] + 1) for n in self.avoided.get((b, method), ()))

    def blame(self, block: int, check: str, lo: int, hi: int) -> list[str]:
        """Count what the check says about the endpoints that answered `block`; the refetch of lo..hi avoids
        them, method by method. Returns the names, for the partition's error."""
        methods = TESTED_BY.get(check, ())
        answered = {m: self.sources[block, m] for m in methods if (block, m) in self.sources}
        names = sorted(set(answered.values()))
        for up in self.pool.upstreams:
            if up.name not in names:
                continue
            if len(names) == 1:
                up.lies += 1
            else:
                up.suspected += 1
            others = [u for u in self.pool.upstreams if u is not up and u.disabled is None]
            if up.lies >= LIES_TO_BENCH and up.disabled is None and others:
                up.disabled = f"benched: {up.lies} failed checks of its answers"
                log.warning("endpoint %s: %s; out of the pool for this run", up.name, up.disabled)
        for method, name in answered.items():
            for b in range(lo, hi + 1):
                self.avoided.setdefault((b, method), set()).add(name)
        return [f"{m} {n}" for m, n in sorted(answered.items())]

    def settle(self, lo: int, hi: int) -> None:
        """The partition of lo..hi is done: what was kept for its blocks goes."""
        for b in range(lo, hi + 1):
            for method in (*BLOCK_METHODS, "eth_getLogs"):
                self.sources.pop((b, method), None)
                self.avoided.pop((b, method), None)

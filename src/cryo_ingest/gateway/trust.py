"""Which endpoint answered each block's data, and what a failed check (validate.py) says about it.

A failed check is a lie until proven otherwise: the endpoints that answered the data it tests are
counted (`lies` where one endpoint alone answered it, `suspected` where several did), the chunk's
refetch avoids, per method, the endpoint that answered the failing block (where another is left),
and an endpoint with LIES_TO_BENCH lies is benched for the run, like a failing one, while another
is left. Kept per block until the partition that fetched it is done (`settle`).

Canonical, not just consistent: a chain of hashes proves a chunk consistent, and an endpoint on a
stale fork answers a consistent chain. Where the pool has two or more endpoints (the pool setting
`canonical_check`), the last block hash of each chunk is asked of a second endpoint; where the two
differ, the endpoint whose head is lower is on the stale fork (a tie: the one that answered the
chunk), and that answer is a lie like any other.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from .logs import bounds
from .pool import Retry

if TYPE_CHECKING:
    from .endpoint import Upstream
    from .pool import Pool

log = logging.getLogger("cryo_ingest.gateway")

LIES_TO_BENCH = 3
BLOCK_METHODS = ("eth_getBlockByNumber", "eth_getBlockReceipts")
TRACE_METHODS = ("trace_block", "debug_traceBlockByNumber")
KEPT = (*BLOCK_METHODS, "eth_getLogs", *TRACE_METHODS)  # the methods whose answerer is kept per block
# The answers each dataset's rows come from: the endpoints a manifest entry names (its provenance).
SERVED_BY = {
    "blocks": ("eth_getBlockByNumber",),
    "transactions": BLOCK_METHODS,
    "logs": ("eth_getLogs",),
    "traces": TRACE_METHODS,
}
# The answers whose data each check of validate.py tests (the header, from eth_getBlockByNumber, is taken as true).
TESTED_BY = {
    "receipts": ("eth_getBlockByNumber", "eth_getBlockReceipts"),  # the transactions against the receipts
    "logs_bloom": ("eth_getLogs",),
    "gas_used": ("eth_getBlockReceipts",),
    "receipts_root": ("eth_getLogs", "eth_getBlockReceipts"),
    "canonical": ("eth_getBlockByNumber",),
}
# A check whose failure says the endpoint is on another chain, not that it left something out: the
# refetch avoids it for every method of the chunk, or its logs and receipts would not match the blocks.
WHOLE_CHAIN = {"canonical"}


def block_range(req: dict[str, Any]) -> tuple[int, int] | None:
    """The blocks a request asks about, where it names them by number."""
    method, params = req.get("method"), req.get("params") or [None]
    if method == "eth_getLogs":
        return bounds(req)
    if method in BLOCK_METHODS or method in TRACE_METHODS:
        try:
            n = int(params[0], 16)
        except (TypeError, ValueError):
            return None
        return n, n
    return None


class Trust:
    def __init__(self, pool: Pool, canonical_check: bool | None = None) -> None:
        self.pool = pool
        # None: on where the pool has two or more endpoints (a second one to ask)
        self.canonical_check = len(pool.specs) > 1 if canonical_check is None else canonical_check
        self.sources: dict[tuple[int, str], str] = {}  # (block, method) -> the endpoint that answered last
        self.avoided: dict[tuple[int, str], set[str]] = {}  # (block, method) -> endpoints whose answer failed a check
        self.settled: dict[int, str] = {}  # block -> its hash, as two endpoints agreed or the longer chain says

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
            if up.name in names:
                self._count(up, alone=len(names) == 1)
        for method, name in answered.items():
            for m in KEPT if check in WHOLE_CHAIN else (method,):
                for b in range(lo, hi + 1):
                    self.avoided.setdefault((b, m), set()).add(name)
        return [f"{m} {n}" for m, n in sorted(answered.items())]

    def _count(self, up: Upstream, alone: bool) -> None:
        """A lie where the endpoint alone answered the failing data (else a suspicion); benched at LIES_TO_BENCH."""
        if alone:
            up.lies += 1
        else:
            up.suspected += 1
        others = [u for u in self.pool.upstreams if u is not up and u.disabled is None]
        if up.lies >= LIES_TO_BENCH and up.disabled is None and others:
            up.disabled = f"benched: {up.lies} failed checks of its answers"
            log.warning("endpoint %s: %s; out of the pool for this run", up.name, up.disabled)

    async def canonical(self, block: int, block_hash: str) -> dict[str, Any] | None:
        """Whether a second endpoint gives `block` the hash the chunk has (one request): {"agrees": bool,
        "detail": …}, {"unchecked": why} where no second endpoint answers, None where the check is off."""
        if not self.canonical_check:
            return None
        if block not in self.settled:
            first = self.sources.get((block, "eth_getBlockByNumber"))
            avoided = self.avoided.get((block, "eth_getBlockByNumber"), set())
            live = [u for u in self.pool.upstreams if u.disabled is None and u.name != first and u.name not in avoided]
            if not live:
                return {"unchecked": "no second endpoint left to ask"}
            now = time.monotonic()
            second = min(live, key=lambda u: (not u.usable(now), u.latency))  # the fastest not cooling down
            theirs = await self._hash(second, block)
            if theirs is None:
                return {"unchecked": f"{second.name}, the second endpoint, did not answer"}  # said once, not per block
            if theirs == block_hash:
                self.settled[block] = theirs
            else:
                return await self._settle_fork(block, block_hash, first, second, theirs)
        ours = self.settled[block]
        return {"agrees": ours == block_hash, "detail": f"two endpoints or the longer chain say {ours}"}

    async def _settle_fork(self, block: int, block_hash: str, first: str | None, second: Upstream, theirs: str) -> dict[str, Any]:
        """Two endpoints on two forks: the one whose head is lower is on the stale one (a tie: the answerer)."""
        up = next((u for u in self.pool.upstreams if u.name == first), None)
        heads = [await self._head(u) for u in (up, second)]
        said = f"{first} answered {block_hash} (head {heads[0]}), {second.name} {theirs} (head {heads[1]})"
        if heads[0] is not None and heads[1] is not None and heads[0] > heads[1]:
            self.settled[block] = block_hash
            self._count(second, alone=True)
            log.warning("canonical check of block %d: %s; %s is on a stale fork", block, said, second.name)
            return {"agrees": True, "detail": said}
        self.settled[block] = theirs
        return {"agrees": False, "detail": said}

    async def _hash(self, up: Upstream, block: int) -> str | None:
        req = {"jsonrpc": "2.0", "id": 1, "method": "eth_getBlockByNumber", "params": [hex(block), False]}
        try:
            result = (await self.pool.ask(up, req)).get("result")
        except Retry:
            return None
        return result.get("hash") if isinstance(result, dict) else None

    async def _head(self, up: Upstream | None) -> int | None:
        if up is None:
            return None
        req = {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}
        try:
            return int(str((await self.pool.ask(up, req)).get("result")), 16)
        except (Retry, ValueError):
            return None

    def served(self, lo: int, hi: int) -> dict[str, list[str]]:
        """By dataset, the endpoints that answered the data of blocks lo..hi (a manifest entry's provenance)."""
        out = {}
        for dataset, methods in SERVED_BY.items():
            names = {self.sources[b, m] for b in range(lo, hi + 1) for m in methods if (b, m) in self.sources}
            if names:
                out[dataset] = sorted(names)
        return out

    def settle(self, lo: int, hi: int) -> None:
        """The partition of lo..hi is done: what was kept for its blocks goes."""
        for b in range(lo, hi + 1):
            self.settled.pop(b, None)
            for method in KEPT:
                self.sources.pop((b, method), None)
                self.avoided.pop((b, method), None)

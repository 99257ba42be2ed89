"""Ranged eth_getLogs: Cryo asks for a chunk's logs in one call (extract.py's inner_request_size),
and a range an endpoint refuses is halved until it is served, the halves' logs joined in block order.

The span that last worked is remembered for the pool (not per endpoint: the pool picks the endpoint,
so the narrowest refusing endpoint sets it), and later ranges are cut to it before they are sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any, Protocol

from .replies import Reply, error, scrubbed

log = logging.getLogger("cryo_ingest.gateway")

# What providers and nodes answer for a range too wide or a result too large (code, message, source):
#   -32005 "query returned more than 10000 results"                              geth, Infura (docs)
#   -32602 "range 1000000 exceeds limit of 10000"                                Infura (live)
#   -32602 "Log response size exceeded. You can make eth_getLogs requests with up to a 2K block range ..."  Alchemy
#          "Log response size exceeded. Please reduce query block range."        Alchemy
#   -32614 "eth_getLogs is limited to a 10,000 range" (with HTTP 413)            QuickNode
#   -32602 "invalid params", data.payload "range 9009594 is bigger than range limit 2000"  Tenderly
#   -32602 "query exceeds max block range 5000"; "query exceeds max results 20000, retry with the range a-b"  reth
#          "query block range exceeds server limit, narrow your filter: 1000"; "query returns too many logs, ..."  erigon
#   -32005 "block range too large, max range: N"                                 cdk-erigon
#   -32602 "invalid block range"                                                 Monad
#   -32000 "block range is bigger than maxBlockRange"; "block range is larger than max block range, ..."  l2geth, Morph
#          "block range is too wide (maximum 1024)" (Frontier); -32600 "block range too high" (Candle)
# A plain "limit exceeded" (-32005) is a rate limit: not matched, the pool retries it.
REFUSED = re.compile(
    r"more than [\d,]+ results|too many logs|max results|block range|range \d+ (?:exceeds|is bigger)|limited to a [\d,]+ range",
    re.I,
)


def refused(err: Any) -> bool:
    """An error that a narrower range may not get (message or data: Tenderly puts the reason in data)."""
    if not isinstance(err, dict):
        return False
    return REFUSED.search(f"{err.get('message', '')} {err.get('data', '')}") is not None


def refusal(status: int, raw: bytes) -> Reply | None:
    """An upstream eth_getLogs reply that refuses the range, whatever its HTTP status (QuickNode's is 413):
    a definite answer, to be split, never retried as it is. A success (no "error" key) is not parsed."""
    if b'"error"' not in raw[:4096] or len(raw) > 65536:
        return None
    try:
        parsed = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(parsed, dict) or not refused(parsed.get("error")):
        return None
    log.debug("eth_getLogs: range refused (HTTP %d)", status)
    return scrubbed(Reply(parsed))


class Sender(Protocol):
    """What this needs of the pool (pool.Pool), named here so that the two modules do not import each other."""

    async def send(self, req: dict[str, Any], passthrough: bool = False) -> dict[str, Any]: ...


class RangedLogs:
    """eth_getLogs over fromBlock..toBlock through the pool, split where refused; lives on the gateway's loop."""

    def __init__(self, pool: Sender) -> None:
        self.pool = pool
        self.span: int | None = None  # the widest range worth sending; None: no refusal seen

    async def get_logs(self, req: dict[str, Any], passthrough: bool) -> dict[str, Any]:
        asked = bounds(req)
        if asked is None:  # a block hash, a tag such as "latest", a malformed filter: the endpoint's business
            return await self.pool.send(req, passthrough)
        lo, hi = asked
        if self.span is None or hi - lo < self.span:
            reply = await self.pool.send(req, passthrough)
            if not refused(reply.get("error")) or lo == hi:
                return reply
            self._narrow(lo, hi)
        assert self.span is not None
        span = self.span
        parts = await asyncio.gather(*(self._fetch(req, a, min(a + span - 1, hi)) for a in range(lo, hi + 1, span)))
        logs: list[Any] = []
        for part in parts:
            if isinstance(part, dict):
                return {**part, "id": req.get("id")}
            logs += part
        return {"jsonrpc": "2.0", "id": req.get("id"), "result": logs}

    async def _fetch(self, req: dict[str, Any], lo: int, hi: int) -> list[Any] | dict[str, Any]:
        """The logs of lo..hi in order, halving while refused; an error reply if any piece fails."""
        params = [{**req["params"][0], "fromBlock": hex(lo), "toBlock": hex(hi)}, *req["params"][1:]]
        reply = await self.pool.send({**req, "params": params})
        err = reply.get("error")
        if refused(err) and lo < hi:
            self._narrow(lo, hi)
            mid = (lo + hi) // 2
            left, right = await asyncio.gather(self._fetch(req, lo, mid), self._fetch(req, mid + 1, hi))
            for part in (left, right):
                if isinstance(part, dict):
                    return part
            assert isinstance(left, list) and isinstance(right, list)
            return left + right
        result = reply.get("result")
        if err is not None or not isinstance(result, list):
            return reply if err is not None else error(req.get("id"), f"eth_getLogs {lo}-{hi}: no list of logs in reply")
        return result

    def _narrow(self, lo: int, hi: int) -> None:
        """lo..hi was refused: from now on ranges are at most half as wide."""
        span = (hi - lo) // 2 + 1
        if self.span is None or span < self.span:
            log.info("eth_getLogs: %d blocks refused; ranges of at most %d blocks from now on", hi - lo + 1, span)
            self.span = span


def bounds(req: dict[str, Any]) -> tuple[int, int] | None:
    params = req.get("params")
    query = params[0] if isinstance(params, list) and params else None
    if not isinstance(query, dict) or "blockHash" in query:
        return None
    try:
        lo, hi = int(query["fromBlock"], 16), int(query["toBlock"], 16)
    except (KeyError, TypeError, ValueError):
        return None
    return (lo, hi) if 0 <= lo <= hi else None

"""Old chains made readable by Cryo (docs/history.md): receipts without `from`/`to` get them from
the block's own transactions, and receipts without `status` (pre-Byzantium) are recorded so that
`success` is written as null, never as the placeholder Cryo needs to parse them."""

from __future__ import annotations

from typing import Any

import orjson

from .pool import Pool
from .replies import Reply
from .trust import block_range


class Unknown:
    """Values the chain does not determine, by block: extract writes them as null (docs/history.md)."""

    def __init__(self) -> None:
        self.cells: dict[int, list[dict[str, Any]]] = {}

    def record(self, block: int, cells: list[dict[str, Any]]) -> None:
        known = self.cells.setdefault(block, [])
        known += [c for c in cells if c not in known]

    def between(self, lo: int, hi: int) -> list[dict[str, Any]]:
        return [{**cell, "block": b} for b in sorted(self.cells) if lo <= b <= hi for cell in self.cells[b]]


class ReceiptCounts:
    """How many receipts the pool's answer gave for each block, taken by the partition that fetched them:
    validate compares them with the block's transactions (Cryo pairs a transaction with a receipt
    by position and writes a block's transactions whatever the count of receipts)."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def take(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The counts of lo..hi, forgotten here (a refetch records them anew): the gateway keeps no history."""
        return [(b, self.counts.pop(b)) for b in range(lo, hi + 1) if b in self.counts]


async def block_receipts(pool: Pool, req: dict[str, Any], unknown: Unknown, counts: ReceiptCounts) -> dict[str, Any]:
    """A modern chain's receipts need nothing but counting: read with orjson, passed on as received (the
    stdlib's json.loads of every block's receipts was most of the gateway's CPU)."""
    reply = await pool.send(req, passthrough=True)
    body: dict[str, Any] = reply
    if isinstance(reply, Reply) and reply.raw is not None and "result" not in reply and "error" not in reply:
        try:
            body = orjson.loads(reply.raw)
        except orjson.JSONDecodeError:
            return await pool.send(req)  # shaped like a success, yet no JSON: the pool's checks, a retry elsewhere
    receipts = body.get("result")
    if isinstance(receipts, list) and (span := block_range(req)) is not None:
        counts.counts[span[0]] = len(receipts)
    if not isinstance(receipts, list) or all("from" in r and r.get("status") is not None for r in receipts):
        return reply  # one pass on every block's receipts: the rest is for old chains only
    missing_from = any("from" not in r for r in receipts)
    lacking = [r for r in receipts if r.get("status") is None]
    reply = Reply(body)  # changed below: encoded anew, not passed on as received
    if missing_from:
        block = await pool.send({**req, "method": "eth_getBlockByNumber", "params": [req["params"][0], True]})
        txs = {t["hash"]: t for t in (block.get("result") or {}).get("transactions", [])}
        for r in receipts:
            tx = txs.get(r.get("transactionHash"))
            if tx is not None and "from" not in r:
                r["from"], r["to"] = tx["from"], tx.get("to")
    # Cryo stops on a receipt without status; the placeholder keeps it going, and the
    # block is recorded so that extract writes `success` as null, never the placeholder.
    for r in lacking:
        r["status"] = "0x1"
        unknown.record(int(r["blockNumber"], 16), [{"dataset": "transactions", "columns": ["success"]}])
    return reply

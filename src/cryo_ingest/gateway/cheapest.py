"""Receipts by the calls an endpoint charges least for (docs/rpc-pool.md, "The cheapest calls for the same
answer").

Cryo asks every block's receipts with one `eth_getBlockReceipts`; providers that meter compute
units price it far above one `eth_getTransactionReceipt` (Alchemy: 500 against 20). Where the
endpoint picked for the call charges less for the block's n receipts one by one, they go to it as
one JSON-RPC batch (priced call by call) and come back assembled, in transaction order, into the
block call's reply. The transaction hashes are those of the block Cryo fetched just before
(`eth_getBlockByNumber` with full transactions), read from its reply as it passes; a block not
seen so is asked for by the block call. The pool consults `Cheapest.exchange` on every attempt,
so each endpoint of a mixed pool is sent what it charges least for.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from ..config import Endpoint
from .endpoint import Upstream
from .pool import RATE_LIMIT_CODES, RATE_LIMIT_MESSAGE, Retry
from .replies import encode
from .upstream import Answer

BLOCK, BLOCK_RECEIPTS, RECEIPT = "eth_getBlockByNumber", "eth_getBlockReceipts", "eth_getTransactionReceipt"
# Alchemy takes up to 1000 calls in a batch over HTTP (https://www.alchemy.com/docs/reference/batch-requests);
# a block with more goes by the block call whatever the prices.
MAX_BATCH = 1000
# Blocks whose hashes are kept: far more than the partitions a gateway serves at once fetch between
# a block and its receipts (Cryo asks them one after the other); each partition's go when it settles.
MAX_BLOCKS = 20_000


def largest_cheaper(spec: Endpoint) -> int:
    """The most transactions a block may have for its receipts one by one to cost this endpoint less
    than the block call: n x eth_getTransactionReceipt < eth_getBlockReceipts. -1: never (no table)."""
    one, block = spec.cost(RECEIPT), spec.cost(BLOCK_RECEIPTS)
    if spec.costs is None or block <= 0:
        return -1
    most = MAX_BATCH if one == 0 else math.ceil(block / one) - 1
    return min(MAX_BATCH, most)


@dataclass(frozen=True)
class Known:
    """A block as its full transactions showed it: its hash and its transactions' hashes, in order."""

    hash: str
    transactions: tuple[str, ...]


class Cheapest:
    """What the gateway remembers of the blocks that passed (bounded) and the batches it sent instead."""

    def __init__(self, endpoints: Iterable[Endpoint]) -> None:
        self.limits = {e.name: largest_cheaper(e) for e in endpoints}
        self.most = max(self.limits.values(), default=-1)  # larger blocks: no endpoint's receipts come cheaper one by one
        self.blocks: OrderedDict[int, Known] = OrderedDict()
        self.refused: set[str] = set()  # endpoints that answered a batch with something else: block calls only
        self.batches = 0  # blocks whose receipts came one by one (or, with no transactions, with nothing sent)

    def exchange(self, up: Upstream, req: dict[str, Any]) -> Exchange | None:
        """What to send `up` for `req` instead of `req` itself, or None: `req` as it is."""
        if self.most < 0:
            return None
        method, params = req["method"], req.get("params") or [None]
        if method == BLOCK and len(params) > 1 and params[1] is True:
            return Watch(self, req)
        if method != BLOCK_RECEIPTS or up.name in self.refused:
            return None
        known = self.blocks.get(_number(params[0]))
        if known is None or len(known.transactions) > self.limits.get(up.name, -1):
            return None
        return Receipts(self, req, known)

    def remember(self, raw: bytes) -> None:
        """A full block's hashes, if it is small enough for some endpoint to want them (counted, not parsed, if not)."""
        if raw.count(b'"transactionIndex"') > self.most:
            return
        try:
            block = orjson.loads(raw).get("result")
            number, known = int(block["number"], 16), Known(block["hash"], tuple(t["hash"] for t in block["transactions"]))
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
            return  # an error, a null, a shape we do not know: its receipts go by the block call
        self.blocks[number] = known
        self.blocks.move_to_end(number)
        while len(self.blocks) > MAX_BLOCKS:
            self.blocks.popitem(last=False)

    def settle(self, lo: int, hi: int) -> None:
        """The partition of lo..hi is done: its blocks are forgotten."""
        for b in range(lo, hi + 1):
            self.blocks.pop(b, None)


class Exchange:
    """One attempt's calls to one endpoint: what to charge its budget for, and what to post."""

    def __init__(self, cheapest: Cheapest, req: dict[str, Any]) -> None:
        self.cheapest, self.req = cheapest, req

    def charge(self) -> tuple[str, int]:
        """The method the provider charges the attempt as, and how many calls of it (none: nothing is sent)."""
        return self.req["method"], 1

    async def post(self, up: Upstream) -> Answer:
        return await up.client.post(encode(self.req))


class Watch(Exchange):
    """A block with full transactions, sent as asked; its transactions' hashes are kept from the reply."""

    async def post(self, up: Upstream) -> Answer:
        answer = await super().post(up)
        if answer.status == 200:
            self.cheapest.remember(answer.body)
        return answer


class Receipts(Exchange):
    """A block's receipts as one batch of eth_getTransactionReceipt, answered as eth_getBlockReceipts would be."""

    def __init__(self, cheapest: Cheapest, req: dict[str, Any], known: Known) -> None:
        super().__init__(cheapest, req)
        self.known = known

    def charge(self) -> tuple[str, int]:
        """Each call of the batch charged as the provider charges it (one by one), in one slot."""
        return RECEIPT, len(self.known.transactions)

    async def post(self, up: Upstream) -> Answer:
        txs = self.known.transactions
        if not txs:  # nothing to ask: a block without transactions has no receipts
            self.cheapest.batches += 1
            return Answer(200, self._reply(b"[]"), None)
        calls = [{"jsonrpc": "2.0", "id": i, "method": RECEIPT, "params": [h]} for i, h in enumerate(txs)]
        answer = await up.client.post(orjson.dumps(calls))
        if answer.status != 200:
            return answer  # the pool's to read: 429, 5xx, auth
        try:
            body = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            return answer  # not JSON: the pool's bad_body
        if isinstance(body, dict):  # one answer for the whole batch: a rate limit, or no batches here
            err = body.get("error")
            if isinstance(err, dict) and (err.get("code") in RATE_LIMIT_CODES or RATE_LIMIT_MESSAGE.search(str(err))):
                return Answer(200, self._error(err), None)
            self.cheapest.refused.add(up.name)
            up.errors["batch_refused"] += 1
            raise Retry("batch_refused", detail="the endpoint answered a batch with one reply: block calls from now on")
        replies = {r.get("id"): r for r in body if isinstance(r, dict)} if isinstance(body, list) else {}
        results = []
        for i, tx in enumerate(txs):
            reply = replies.get(i)
            if reply is None:
                raise Retry("bad_batch", detail=f"no reply for call {i} of {len(txs)}")
            if "error" in reply:
                return Answer(200, self._error(reply["error"]), None)  # classified by the pool as if the block call's
            receipt = reply.get("result")
            if receipt is None:
                return Answer(200, self._reply(b"null"), None)  # a lagging node: the pool retries elsewhere
            if (
                not isinstance(receipt, dict)
                or receipt.get("transactionHash") != tx
                or receipt.get("blockHash") != self.known.hash
            ):
                self.cheapest.blocks.pop(_number(self.req["params"][0]), None)  # reorged since: the block call next
                raise Retry("receipts_mismatch", detail=f"the receipt of {tx} is not of block {self.known.hash}")
            results.append(orjson.dumps(receipt))
        self.cheapest.batches += 1
        return Answer(200, self._reply(b"[" + b",".join(results) + b"]"), None)

    def _reply(self, result: bytes) -> bytes:
        return b'{"jsonrpc":"2.0","id":' + json.dumps(self.req.get("id")).encode() + b',"result":' + result + b"}"

    def _error(self, err: Any) -> bytes:
        return encode({"jsonrpc": "2.0", "id": self.req.get("id"), "error": err})


def _number(tag: Any) -> int:
    try:
        return int(tag, 16)
    except (TypeError, ValueError):
        return -1  # a tag or a hash: never remembered

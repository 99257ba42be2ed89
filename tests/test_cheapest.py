"""Receipts by the calls the endpoint charges least for (gateway/cheapest.py): per-transaction receipts in
one batch where the cost table makes them cheaper than the block call, the archive byte for byte the
block call's. Real anvil and replay nodes behind a real counting proxy, Cryo through the real gateway."""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from conftest import Devnet
from modern_replay import MODERN, ModernReplay, served
from servers import FaultProxy

from cryo_ingest import devnet
from cryo_ingest.config import Endpoint
from cryo_ingest.costs import ALCHEMY
from cryo_ingest.gateway import Gateway
from cryo_ingest.gateway.cheapest import MAX_BATCH, largest_cheaper
from cryo_ingest.pipeline.extract import extract, settle
from cryo_ingest.pipeline.plan import Partition, grid

DATASETS = ("blocks", "transactions")
METERED = {"compute_units_per_second": 1_000_000}  # a limit that never holds back: what is charged is counted


@dataclass
class Archived:
    files: dict[str, bytes]  # the Parquet files, by name
    gateway: Gateway  # closed: for its counts
    remembered: int  # blocks the gateway kept before the partition settled


def archive(endpoints: list[dict[str, Any]], chain_id: int, lo: int, hi: int, chunk: int, out: Path) -> Archived:
    """What extract writes through a gateway of `endpoints`; the partition is settled after, as the runner does."""
    with Gateway([Endpoint.model_validate(e) for e in endpoints], chain_id) as gw:
        partition = Partition(tuple(grid(lo, hi, chunk)), DATASETS)
        files = extract(partition, gw.url, chunk, out)
        remembered = len(gw.cheapest.blocks)
        settle(gw.url, partition)
    return Archived({p.name: p.read_bytes() for p in sorted(files.values())}, gw, remembered)


def calls(proxy: FaultProxy) -> Counter[str]:
    """The calls the node was sent, a batch's one by one; eth_chainId and eth_blockNumber (start-up) left out."""
    return Counter({m: n for m, n in proxy.methods.items() if m not in ("eth_chainId", "eth_blockNumber")})


def test_break_even_per_table() -> None:
    """Alchemy: 500 against 20 a receipt, so up to 24 transactions; Infura 1000 against 80, 12; QuickNode
    prices both 20, so only a block without transactions; no table, never."""
    table = {"url": "http://127.0.0.1:1", **METERED}
    assert largest_cheaper(Endpoint.model_validate({**table, "costs": "alchemy"})) == 24
    assert largest_cheaper(Endpoint.model_validate({**table, "costs": "infura"})) == 12
    assert largest_cheaper(Endpoint.model_validate({**table, "costs": "quicknode"})) == 0
    free = {"eth_getTransactionReceipt": 0, "default": 20}
    assert largest_cheaper(Endpoint.model_validate({**table, "costs": free})) == MAX_BATCH
    assert largest_cheaper(Endpoint.model_validate({**table, "costs": {**free, "eth_getBlockReceipts": 0}})) == -1
    assert largest_cheaper(Endpoint.model_validate({"url": "http://127.0.0.1:1"})) == -1


def test_devnet_receipts_one_by_one_are_the_block_calls_archive(chain: Devnet, tmp_path: Path) -> None:
    """Blocks of 10 transactions (and the genesis block, of none) under Alchemy's table: no eth_getBlockReceipts
    sent, a batch of 10 receipts a block, the files byte for byte those of the block call; the budget is
    charged what was sent, and the blocks are forgotten once the partition settled."""
    lo, hi, chunk = 0, 39, 20
    with FaultProxy(chain.url) as plain:
        expected = archive([{"url": plain.url(), "name": "node"}], devnet.CHAIN_ID, lo, hi, chunk, tmp_path / "block").files
    assert calls(plain)["eth_getBlockReceipts"] == hi - lo + 1
    alchemy = {"name": "alchemy", "costs": "alchemy", **METERED}
    with FaultProxy(chain.url) as metered:
        got = archive([{"url": metered.url(), **alchemy}], devnet.CHAIN_ID, lo, hi, chunk, tmp_path / "tx")
    gw = got.gateway
    assert len(expected) == 4 and got.files == expected
    sent = calls(metered)
    transactions = sum(sizes(chain.url, lo, hi))  # block 0 has none: answered [] with nothing sent
    assert sent["eth_getBlockReceipts"] == 0 and sent["eth_getTransactionReceipt"] == transactions, sent
    assert gw.cheapest.batches == hi - lo + 1
    spent = sum(ALCHEMY.get(m, ALCHEMY["default"]) * n for m, n in metered.methods.items())
    assert gw.metrics()["alchemy"]["compute_units"] == spent
    assert got.remembered == hi - lo + 1 and not gw.cheapest.blocks


def test_large_blocks_keep_the_block_call(chain: Devnet, tmp_path: Path) -> None:
    """A table where 5 receipts cost what the block's do (Monad's blocks against Alchemy's prices, in small):
    the block call for the blocks of 5 transactions or more, receipts one by one for the others."""
    table = {"eth_getBlockReceipts": 100, "eth_getTransactionReceipt": 20, "default": 20}
    with FaultProxy(chain.url) as proxy:
        archive([{"url": proxy.url(), "name": "node", "costs": table, **METERED}], devnet.CHAIN_ID, 0, 9, 10, tmp_path)
    n = sizes(chain.url, 0, 9)
    sent = calls(proxy)
    large = [k for k in n if k > 4]
    assert len(large) >= 5 and len(large) < len(n)  # both ways taken
    assert sent["eth_getBlockReceipts"] == len(large), sent
    assert sent["eth_getTransactionReceipt"] == sum(k for k in n if k <= 4), sent


def test_a_mixed_pool_pays_each_endpoint_its_cheapest(chain: Devnet, tmp_path: Path) -> None:
    """Two endpoints, one priced by Alchemy and one unmetered: each receipts call that goes to the first is
    a batch of receipts, each to the second the block call, and the files are the same."""
    with FaultProxy(chain.url) as plain:
        expected = archive([{"url": plain.url(), "name": "node"}], devnet.CHAIN_ID, 0, 39, 20, tmp_path / "block").files
    with FaultProxy(chain.url) as metered, FaultProxy(chain.url) as other:
        pool = [
            {"url": metered.url(), "name": "alchemy", "costs": "alchemy", **METERED},
            {"url": other.url(), "name": "own", "requests_per_second": 1000},
        ]
        got = archive(pool, devnet.CHAIN_ID, 0, 39, 20, tmp_path / "mixed")
    assert got.files == expected
    assert calls(metered)["eth_getBlockReceipts"] == 0 and calls(metered)["eth_getTransactionReceipt"] > 0
    assert calls(other)["eth_getTransactionReceipt"] == 0 and calls(other)["eth_getBlockReceipts"] > 0
    assert calls(other)["eth_getBlockReceipts"] + got.gateway.cheapest.batches == 40


def sizes(url: str, lo: int, hi: int) -> list[int]:
    """Each block's number of transactions, asked of the node."""
    ask = {"jsonrpc": "2.0", "id": 1, "method": "eth_getBlockByNumber"}
    return [len(post(url, {**ask, "params": [hex(b), False]})["result"]["transactions"]) for b in range(lo, hi + 1)]


def post(url: str, body: Any) -> Any:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


# ---- real mainnet: block 18,000,000 (94 transactions) ----

CHEAP_RECEIPTS = {"eth_getBlockReceipts": 100_000, "eth_getTransactionReceipt": 1, "default": 20}
LAST_TX = "0x6b2fe3575bc0e2b9220daf457d7bde7a118d8674b920a0c888bbf547d683d0b7"


def test_mainnet_receipts_one_by_one_are_the_recorded_block_receipts(tmp_path: Path) -> None:
    """Through a replay node of the real block: the assembled reply is, byte for byte, the recorded block
    receipts; its last receipt the real per-transaction answer; the archive the block call's."""
    block = served("ethereum-18000000")
    one = json.loads((MODERN / "eth_getTransactionReceipt" / f"{LAST_TX}.json").read_text())[0]["response"]["result"]
    with ModernReplay(block) as node:
        n = block.number
        expected = archive([{"url": node.url, "name": "node"}], block.chain_id, n, n, 1, tmp_path / "block").files
        before = node.methods["eth_getBlockReceipts"]
        metered = {"url": node.url, "name": "metered", "costs": CHEAP_RECEIPTS, **METERED}
        got = archive([metered], block.chain_id, n, n, 1, tmp_path / "tx")
        assert node.methods["eth_getBlockReceipts"] == before and node.methods["eth_getTransactionReceipt"] == 94
        assert got.files == expected and got.gateway.cheapest.batches == 1
        with Gateway([Endpoint.model_validate(metered)], 1) as gw:
            post(gw.url, {"jsonrpc": "2.0", "id": 1, "method": "eth_getBlockByNumber", "params": [hex(n), True]})
            req = urllib.request.Request(
                gw.url, orjson.dumps({"jsonrpc": "2.0", "id": 7, "method": "eth_getBlockReceipts", "params": [hex(n)]})
            )
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
            assert gw.cheapest.batches == 1
    assert raw == orjson.dumps({"jsonrpc": "2.0", "id": 7, "result": block.receipts})
    assert orjson.dumps(orjson.loads(raw)["result"][-1]) == orjson.dumps(one)


@pytest.mark.parametrize("costs", ["alchemy", "infura"])
def test_mainnet_block_above_break_even_keeps_the_block_call(tmp_path: Path, costs: str) -> None:
    """94 transactions: above Alchemy's (24) and Infura's (12) break-even, so the block call."""
    block = served("ethereum-18000000")
    with ModernReplay(block) as node:
        n = block.number
        archive([{"url": node.url, "name": "node", "costs": costs, **METERED}], block.chain_id, n, n, 1, tmp_path)
    assert node.methods["eth_getTransactionReceipt"] == 0 and node.methods["eth_getBlockReceipts"] == 1


class NoBatches(ModernReplay):
    """A node that answers any batch with one error, as servers without batch support do."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if isinstance(json.loads(await request.read()), list):
            return web.json_response(
                {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "batches not supported"}}
            )
        return await super().handle(request)


class Reorged(ModernReplay):
    """A node whose receipts now say another block: the chain reorganised since the block was read."""

    def answer(self, method: str, params: list[Any]) -> Any:
        receipt = super().answer(method, params)
        return {**receipt, "blockHash": "0x" + "ab" * 32} if method == "eth_getTransactionReceipt" else receipt


class Throttling(ModernReplay):
    """A node that answers the first batch with a rate-limit error for each call (HTTP 200), as Alchemy does."""

    throttled = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        if isinstance(body, list) and not self.throttled:
            self.throttled += 1
            over = {"code": 429, "message": "Your app has exceeded its compute units per second capacity"}
            return web.json_response([{"jsonrpc": "2.0", "id": c["id"], "error": over} for c in body])
        return await super().handle(request)


@pytest.mark.parametrize(("node", "fallback"), [(NoBatches, "batch_refused"), (Reorged, "receipts_mismatch"), (Throttling, "")])
def test_a_batch_that_fails_falls_back_or_is_retried(tmp_path: Path, node: type[ModernReplay], fallback: str) -> None:
    """No batches at the endpoint: block calls from then on. Receipts of another block: the block call for
    this one. A rate limit answered in the batch: retried as a batch. The archive is the block call's each time."""
    block = served("ethereum-18000000")
    n = block.number
    with ModernReplay(block) as plain:
        expected = archive([{"url": plain.url, "name": "node"}], block.chain_id, n, n, 1, tmp_path / "block").files
    with node(block) as replay:
        got = archive(
            [{"url": replay.url, "name": "metered", "costs": CHEAP_RECEIPTS, **METERED}], block.chain_id, n, n, 1, tmp_path / "x"
        )
    assert got.files == expected
    errors = got.gateway.metrics()["metered"]["errors"]
    if fallback:
        assert replay.methods["eth_getBlockReceipts"] == 1 and got.gateway.cheapest.batches == 0
        assert fallback == "batch_refused" or replay.methods["eth_getTransactionReceipt"] == 94
    else:
        assert replay.methods["eth_getBlockReceipts"] == 0 and got.gateway.cheapest.batches == 1
        assert errors.get("rpc_rate_limit") == 1 and replay.methods["eth_getTransactionReceipt"] == 94
    assert got.gateway.cheapest.refused == ({"metered"} if fallback == "batch_refused" else set())

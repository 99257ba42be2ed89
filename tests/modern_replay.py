"""Real post-Byzantium blocks (../shared/fixtures/mainnet-modern): a replay node and hand-built archive rows.

Blocks with full transactions and every receipt (Ethereum 18,000,000; Arbitrum Sepolia
185,232,421) are served over JSON-RPC so that the whole pipeline (Cryo included) archives them.
The others come as a header alone, as RLP or with transaction hashes only, which Cryo cannot read;
for them `rows` builds the columns that verify's checks read, straight from the receipts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rlp
from aiohttp import web
from servers import Replay

MODERN = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "mainnet-modern"


def _load(path: str) -> Any:
    """A fixture's result: rpc-tests files are [{request, response}], helios files bare results."""
    doc = json.loads((MODERN / path).read_text())
    return doc[0]["response"]["result"] if isinstance(doc, list) and doc and "response" in doc[0] else doc


@dataclass(frozen=True)
class Served:
    """A block served whole: chain id, number, the block with full transactions, its receipts."""

    chain_id: int
    number: int
    block: dict[str, Any]
    receipts: list[dict[str, Any]]


SERVED = {
    "ethereum-18000000": ("eth_getBlockByNumber/18000000.json", "eth_getBlockReceipts/18000000.json"),
    "arb-sepolia-185232421": (
        "eth_getBlockByNumber/arb-sepolia-185232421.json",
        "eth_getBlockReceipts/arb-sepolia-185232421.json",
    ),
}


def served(name: str) -> Served:
    block_file, receipts_file = SERVED[name]
    block = _load(block_file)
    chain_id = int(block["transactions"][0].get("chainId", "0x1"), 16)
    return Served(chain_id, int(block["number"], 16), block, _load(receipts_file))


class ModernReplay(Replay):
    """A node of one chain serving one block with all its receipts, and a head far enough above it to be final.
    A transaction's receipt is the one of the block's recorded list; batches are answered call by call."""

    def __init__(self, block: Served) -> None:
        self.b = block
        self.receipts = {r["transactionHash"]: r for r in block.receipts}
        super().__init__()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        if not isinstance(body, list):
            return await super().handle(request)
        self.methods.update(call["method"] for call in body)
        replies = []
        for call in body:
            try:
                replies.append({"jsonrpc": "2.0", "id": call["id"], "result": self.answer(call["method"], call["params"])})
            except LookupError as err:
                replies.append({"jsonrpc": "2.0", "id": call["id"], "error": {"code": -32000, "message": str(err)}})
        return web.json_response(replies)

    def answer(self, method: str, params: list[Any]) -> Any:
        head = self.b.number + 1000
        if method == "eth_chainId":
            return hex(self.b.chain_id)
        if method == "eth_blockNumber":
            return hex(head)
        if method == "eth_getBlockByNumber":
            if params[0] in ("finalized", "latest", "safe"):
                return {"number": hex(head), "hash": "0x" + "00" * 32, "transactions": []}
            if int(params[0], 16) == self.b.number:
                block = self.b.block
                return block if params[1] else {**block, "transactions": [t["hash"] for t in block["transactions"]]}
        if method == "eth_getBlockReceipts" and int(params[0], 16) == self.b.number:
            return self.b.receipts
        if method == "eth_getTransactionReceipt":
            return self.receipts.get(params[0])  # null for a transaction the node does not know, as nodes answer
        if method == "eth_getLogs":
            lo, hi = int(params[0]["fromBlock"], 16), int(params[0]["toBlock"], 16)
            return [log for r in self.b.receipts for log in r["logs"]] if lo <= self.b.number <= hi else []
        raise LookupError(f"{method} {params} is not in the fixtures")


# ---- blocks Cryo cannot read from these fixtures: the columns verify reads, from the receipts ----


def _b(hex_string: str) -> bytes:
    return bytes.fromhex(hex_string[2:])


def _q(hex_string: str) -> int:
    return int(hex_string, 16)


@dataclass
class Rows:
    """One block as archive rows (only the columns verify's checks read)."""

    number: int
    blocks: list[dict[str, Any]]
    transactions: list[dict[str, Any]]
    logs: list[dict[str, Any]]


def _from_json(header: dict[str, Any], receipts: list[dict[str, Any]]) -> Rows:
    number, block_hash = _q(header["number"]), _b(header["hash"])
    blocks = [
        {
            "block_number": number,
            "block_hash": block_hash,
            "parent_hash": _b(header["parentHash"]),
            "receipts_root": _b(header["receiptsRoot"]),
            "logs_bloom": _b(header["logsBloom"]),
            "gas_used": _q(header["gasUsed"]),
        }
    ]
    txs = [
        {
            "block_number": number,
            "transaction_index": _q(r["transactionIndex"]),
            "transaction_hash": _b(r["transactionHash"]),
            "transaction_type": _q(r.get("type", "0x0")),
            "success": _q(r["status"]) == 1,
            "gas_used": _q(r["gasUsed"]),
            "block_hash": block_hash,
        }
        for r in receipts
    ]
    logs = [
        {
            "block_number": number,
            "log_index": _q(log["logIndex"]),
            "transaction_index": _q(log["transactionIndex"]),
            "transaction_hash": _b(log["transactionHash"]),
            "address": _b(log["address"]),
            **{f"topic{i}": _b(log["topics"][i]) if i < len(log["topics"]) else None for i in range(4)},
            "data": _b(log["data"]),
            "block_hash": block_hash,
        }
        for r in receipts
        for log in r["logs"]
    ]
    return Rows(number, blocks, txs, logs)


def _from_rlp(block_file: str, receipts_file: str) -> Rows:
    """debug_getRawBlock and debug_getRawReceipts: header fields and consensus receipts decoded."""
    raw_block = _b(_load(block_file))
    header = rlp.decode(raw_block)[0]
    parent, receipts_root, bloom, number, gas_used = header[0], header[5], header[6], header[8], header[10]
    from eth_hash.auto import keccak

    block_hash = keccak(rlp.encode(header))
    number_int = int.from_bytes(number, "big")
    txs: list[dict[str, Any]] = []
    logs: list[dict[str, Any]] = []
    cumulative = 0
    for index, raw in enumerate(_load(receipts_file)):
        data = _b(raw)
        tx_type, body = (0, data) if data[0] >= 0xC0 else (data[0], data[1:])
        status, cum, _, receipt_logs = rlp.decode(body)
        cum_int = int.from_bytes(cum, "big")
        txs.append(
            {
                "block_number": number_int,
                "transaction_index": index,
                "transaction_hash": b"",
                "transaction_type": tx_type,
                "success": status == b"\x01",
                "gas_used": cum_int - cumulative,
                "block_hash": block_hash,
            }
        )
        cumulative = cum_int
        for address, topics, payload in receipt_logs:
            logs.append(
                {
                    "block_number": number_int,
                    "log_index": len(logs),
                    "transaction_index": index,
                    "transaction_hash": b"",
                    "address": address,
                    **{f"topic{i}": topics[i] if i < len(topics) else None for i in range(4)},
                    "data": payload,
                    "block_hash": block_hash,
                }
            )
    blocks = [
        {
            "block_number": number_int,
            "block_hash": block_hash,
            "parent_hash": parent,
            "receipts_root": receipts_root,
            "logs_bloom": bloom,
            "gas_used": int.from_bytes(gas_used, "big"),
        }
    ]
    return Rows(number_int, blocks, txs, logs)


def rows(name: str) -> Rows:
    if name in SERVED:
        block = served(name)
        return _from_json(block.block, block.receipts)
    if name == "ethereum-15000000":
        return _from_json(
            _load("erigon_getHeaderByNumber/15000000.json"), _load("erigon_getBlockReceiptsByBlockHash/15000000.json")
        )
    if name == "ethereum-21925176":
        return _from_json(_load("eth_getBlockByNumber/21925176.txhashes-only.json"), _load("eth_getBlockReceipts/21925176.json"))
    number = name.removeprefix("ethereum-")
    return _from_rlp(f"debug_getRawBlock/{number}.json", f"debug_getRawReceipts/{number}.json")


HAND_BUILT = ["ethereum-15000000", "ethereum-20000000", "ethereum-20066032", "ethereum-21925176"]

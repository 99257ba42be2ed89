"""Real Monad execution output (../shared/fixtures/monad-exec): blocks with their own receipts, as RPC-shaped rows.

The files are the test data of Monad's execution client, zstd-compressed JSON (README there);
`zstd` (Debian's) decompresses them.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servers import Replay

from cryo_ingest import roots

MONAD_EXEC = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "monad-exec"
FILES = {
    "devnet": "exec-events-mdn-500b-genesis.expected.json.zst",  # chain 20143, blocks 1-504
    "ethereum": "exec-events-emn-30b-15m.expected.json.zst",  # Ethereum 15,000,001-15,000,031 run by Monad's client
}


@dataclass(frozen=True)
class Block:
    chain_id: int
    number: int
    receipts_root: bytes
    logs_bloom: bytes
    gas_used: int
    txs: list[roots.Tx]
    logs: list[roots.Log]


def _b(value: str) -> bytes:
    return bytes.fromhex(value[2:])


def blocks(name: str) -> Iterator[Block]:
    """Every executed block of one file, in order."""
    raw = subprocess.run(["zstd", "-dc", str(MONAD_EXEC / FILES[name])], capture_output=True, check=True).stdout
    for event in json.loads(raw):
        executed = event.get("Executed")
        if executed is None:
            continue
        header = executed["eth_header"]
        txs, logs = [], []
        for t in executed["transactions"]:
            index = t["txn_index"]
            txs.append(roots.Tx(index, int(t["txn_envelope"]["type"]), t["receipt"]["status"] == 1, t["txn_gas_used"]))
            logs += [
                roots.Log(index, _b(x["address"]), tuple(_b(y) for y in x["topics"]), _b(x["data"])) for x in t["receipt"]["logs"]
            ]
        yield Block(
            executed["chain_id"],
            header["number"],
            _b(header["receiptsRoot"]),
            _b(header["logsBloom"]),
            header["gasUsed"],
            txs,
            logs,
        )


class MonadReplay(Replay):
    """Monad's devnet blocks (chain 20143) served as JSON-RPC, shaped as a Monad node answers (its README maps
    the fields): headers, full transactions, receipts, logs; finalized = the last block."""

    def __init__(self, name: str = "devnet") -> None:
        raw = subprocess.run(["zstd", "-dc", str(MONAD_EXEC / FILES[name])], capture_output=True, check=True).stdout
        self.blocks = {e["Executed"]["eth_header"]["number"]: e["Executed"] for e in json.loads(raw) if "Executed" in e}
        self.chain_id = next(iter(self.blocks.values()))["chain_id"]
        self.head = max(self.blocks)
        super().__init__()

    def header(self, n: int) -> dict[str, Any]:
        e = self.blocks[n]
        h = e["eth_header"]
        return {
            **{k: (hex(v) if isinstance(v, int) else v) for k, v in h.items()},
            "hash": e["eth_block_hash"],
            "totalDifficulty": "0x0",
            "uncles": [],
            "withdrawals": [],
        }

    def transactions(self, n: int) -> list[dict[str, Any]]:
        e, out = self.blocks[n], []
        for t in e["transactions"]:
            env = t["txn_envelope"]
            fields = {k: (hex(v) if isinstance(v, int) else v) for k, v in env.items()}
            out.append(
                {
                    **fields,
                    "gas": hex(env["gasLimit"]),
                    "from": t["sender"],
                    "blockHash": e["eth_block_hash"],
                    "blockNumber": hex(n),
                    "transactionIndex": hex(t["txn_index"]),
                    "gasPrice": hex(env.get("gasPrice", env.get("maxFeePerGas", 0))),
                }
            )
        return out

    def receipts(self, n: int) -> list[dict[str, Any]]:
        e, out, index = self.blocks[n], [], 0
        for t in e["transactions"]:
            env, r = t["txn_envelope"], t["receipt"]
            logs = []
            for x in r["logs"]:
                logs.append(
                    {
                        **x,
                        "blockHash": e["eth_block_hash"],
                        "blockNumber": hex(n),
                        "transactionHash": env["hash"],
                        "transactionIndex": hex(t["txn_index"]),
                        "logIndex": hex(index),
                        "removed": False,
                    }
                )
                index += 1
            bloom = roots.bloom(
                [roots.Log(0, _b(x["address"]), tuple(_b(y) for y in x["topics"]), _b(x["data"])) for x in r["logs"]]
            )
            out.append(
                {
                    "transactionHash": env["hash"],
                    "transactionIndex": hex(t["txn_index"]),
                    "blockHash": e["eth_block_hash"],
                    "blockNumber": hex(n),
                    "from": t["sender"],
                    "to": env.get("to"),
                    "cumulativeGasUsed": hex(r["cumulativeGasUsed"]),
                    "gasUsed": hex(t["txn_gas_used"]),
                    "effectiveGasPrice": hex(env.get("gasPrice", env.get("maxFeePerGas", 0))),
                    "contractAddress": None,
                    "logs": logs,
                    "logsBloom": "0x" + roots.bloom_bytes(bloom).hex(),
                    "status": hex(r["status"]),
                    "type": hex(env["type"]),
                }
            )
        return out

    def answer(self, method: str, params: list[Any]) -> Any:
        if method == "eth_chainId":
            return hex(self.chain_id)
        if method == "eth_blockNumber":
            return hex(self.head)
        if method == "eth_getBlockByNumber":
            n = self.head if params[0] in ("finalized", "latest", "safe") else int(params[0], 16)
            if n not in self.blocks:
                raise LookupError(f"block {n} is not in the fixture")
            txs = self.transactions(n)
            return self.header(n) | {"transactions": txs if params[1] else [t["hash"] for t in txs]}
        if method == "eth_getBlockReceipts":
            return self.receipts(int(params[0], 16))
        if method == "eth_getLogs":
            lo, hi = int(params[0]["fromBlock"], 16), int(params[0]["toBlock"], 16)
            return [x for n in range(lo, hi + 1) if n in self.blocks for r in self.receipts(n) for x in r["logs"]]
        raise LookupError(f"{method} {params} is not in the fixture")

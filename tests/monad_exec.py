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

"""A deterministic local chain on anvil, shared by the demo, the tests and the benchmarks.

Every input (accounts, nonces, gas, fees, calldata, block timestamps) is fixed, so the same
parameters give the same chain, block hashes included, and so the same archive on every run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

CHAIN_ID = 31337
GENESIS_TIMESTAMP = 1_700_000_000
BLOCK_TIME = 12

# Hand-written EVM bytecode: no compiler needed.
# logger: CALLDATACOPY(0, 0, CALLDATASIZE); LOG1(0, CALLDATASIZE, topic=0xaa); STOP
LOGGER_RUNTIME = "36600060003760aa366000a100"
# reverter: REVERT(0, 0)
REVERTER_RUNTIME = "60006000fd"


def router_runtime(logger: str) -> str:
    """CALLDATACOPY, then CALL(gas, logger, 0, 0, CALLDATASIZE, 0, 0): an internal call with a log."""
    copy = "366000600037"
    call_args = "600060003660006000"  # retSize, retOffset, argsSize, argsOffset, value
    return copy + call_args + "73" + logger.removeprefix("0x") + "5af15000"  # GAS CALL POP STOP


def init_code(runtime: str) -> str:
    """Init code that CODECOPYs the runtime appended to it and RETURNs it."""
    size = len(runtime) // 2
    return "0x60" + f"{size:02x}" + "80600b6000396000f3" + runtime


def anvil_binary() -> Path:
    """anvil from the npm package (in this folder or a parent), else on PATH; CRYO_INGEST_ANVIL overrides.

    Missing, it is an operational error that says how to get it: an installed wheel has no npm folder.
    """
    from .errors import IngestError  # local: the rest of this module never raises it

    if env := os.environ.get("CRYO_INGEST_ANVIL"):
        if not Path(env).is_file():
            raise IngestError(f"anvil not found: CRYO_INGEST_ANVIL={env} is not a file")
        return Path(env)
    rel = Path("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
    for base in (Path.cwd(), *Path.cwd().parents, *Path(__file__).resolve().parents):
        if (base / rel).exists():
            return base / rel
    found = shutil.which("anvil")
    if found:
        return Path(found)
    raise IngestError(
        "anvil not found: the demo runs a local chain on anvil (Foundry). Get it with "
        "`npm install @foundry-rs/anvil-linux-amd64@1.7.1` (Linux x86-64; run it here or in a parent folder), "
        "or Foundry's installer `foundryup` (puts anvil on PATH), or set CRYO_INGEST_ANVIL to its path"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Anvil:
    url: str
    process: subprocess.Popen[bytes]


@contextmanager
def anvil(
    load_state: Path | None = None,
    dump_state: Path | None = None,
    chain_id: int = CHAIN_ID,
    host: str = "127.0.0.1",
    launcher: Sequence[str] = (),
    genesis: int = 0,
) -> Iterator[Anvil]:
    """An anvil node on a free port of `host` (loopback), started through `launcher` (e.g. `ip netns exec NS`:
    a host of its own, tests/test_netns.py); finalized = head - 2 (`--slots-in-an-epoch 1`); its first
    block numbered `genesis` (a chain's tip after a long history, bench/scale.py)."""
    port = free_port()
    args = [
        *launcher,
        str(anvil_binary()),
        "--host",
        host,
        "--port",
        str(port),
        "--chain-id",
        str(chain_id),
        "--no-mining",
        "--timestamp",
        str(GENESIS_TIMESTAMP),
        "--slots-in-an-epoch",
        "1",
        "--silent",
    ]
    if genesis:
        args += ["--number", str(genesis)]
    if load_state:
        args += ["--load-state", str(load_state)]
    if dump_state:
        args += ["--dump-state", str(dump_state)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise RuntimeError(f"anvil did not start: {err.strip()}") from None
                time.sleep(0.05)
        yield Anvil(url=url, process=proc)
    finally:
        proc.terminate()  # SIGTERM lets anvil write --dump-state
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Rpc:
    """A minimal JSON-RPC client for driving the devnet (batches included)."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url, self.next_id = session, url, 0

    async def batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        body = []
        for method, params in calls:
            self.next_id += 1
            body.append({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        async with self.session.post(self.url, json=body) as resp:
            replies = await resp.json(content_type=None)
        by_id = {r["id"]: r for r in replies}
        out = []
        for req in body:
            reply = by_id[req["id"]]
            if "error" in reply:
                raise RuntimeError(f"{req['method']}: {reply['error']}")
            out.append(reply["result"])
        return out

    async def call(self, method: str, *params: Any) -> Any:
        return (await self.batch([(method, list(params))]))[0]


@dataclass
class Chain:
    """What was generated: the counts that an archive of blocks 0..head must reproduce."""

    head: int
    transactions: int
    reverted: int
    creations: int


def _tx(sender: str, nonce: int, to: str | None, gas: int, value: int = 0, data: str = "0x") -> dict[str, Any]:
    tx = {
        "from": sender,
        "nonce": hex(nonce),
        "gas": hex(gas),
        "maxFeePerGas": hex(100 * 10**9),
        "maxPriorityFeePerGas": hex(10**9),
        "value": hex(value),
        "data": data,
    }
    if to is not None:
        tx["to"] = to
    return tx


async def generate(url: str, blocks: int, txs_per_block: int = 10) -> Chain:
    """Mine blocks 1..blocks with a fixed mix of activity, then 2 more so that all of them are final.

    Per block, in a fixed rotation: ETH transfers, log-emitting calls, calls through a router
    (internal call + log, so traces have depth), a reverted call every 5th block, and a contract
    creation every 7th block.
    """
    async with aiohttp.ClientSession() as session:
        rpc = Rpc(session, url)
        # anvil's unlocked default accounts (fixed mnemonic), so eth_sendTransaction signs for us.
        accounts: list[str] = await rpc.call("eth_accounts")
        nonces = [0] * len(accounts)
        counts = Chain(head=0, transactions=0, reverted=0, creations=0)

        async def mine(txs: list[dict[str, Any]]) -> list[str]:
            hashes = await rpc.batch([("eth_sendTransaction", [tx]) for tx in txs]) if txs else []
            number = int(await rpc.call("eth_blockNumber"), 16) + 1
            await rpc.call("evm_mine", GENESIS_TIMESTAMP + BLOCK_TIME * number)
            counts.head = number
            counts.transactions += len(txs)
            return list(hashes)

        def send(sender: int, to: str | None, gas: int, value: int = 0, data: str = "0x") -> dict[str, Any]:
            tx = _tx(accounts[sender], nonces[sender], to, gas, value, data)
            nonces[sender] += 1
            return tx

        deploy = [
            send(0, None, 200_000, data=init_code(LOGGER_RUNTIME)),
            send(0, None, 200_000, data=init_code(REVERTER_RUNTIME)),
        ]
        logger_hash, reverter_hash = await mine(deploy)
        logger = (await rpc.call("eth_getTransactionReceipt", logger_hash))["contractAddress"]
        reverter = (await rpc.call("eth_getTransactionReceipt", reverter_hash))["contractAddress"]
        (router_hash,) = await mine([send(0, None, 300_000, data=init_code(router_runtime(logger)))])
        router = (await rpc.call("eth_getTransactionReceipt", router_hash))["contractAddress"]
        counts.creations = 3

        for number in range(3, blocks + 1):
            txs = []
            for i in range(txs_per_block):
                sender = (number + i) % len(accounts)
                payload = "0x" + f"{number:08x}{i:08x}" * (1 + i % 3)
                slot = i % 10
                if slot == 9 and number % 5 == 0:
                    txs.append(send(sender, reverter, 60_000, data=payload))
                    counts.reverted += 1
                elif slot == 9 and number % 7 == 0:
                    txs.append(send(sender, None, 200_000, data=init_code(LOGGER_RUNTIME)))
                    counts.creations += 1
                elif slot in (5, 6):
                    txs.append(send(sender, logger, 60_000, data=payload))
                elif slot in (7, 8):
                    txs.append(send(sender, router, 120_000, data=payload))
                else:
                    to = accounts[(sender + 1 + i) % len(accounts)]
                    txs.append(send(sender, to, 21_000, value=10**12 * (number + i)))
            await mine(txs)
        for _ in range(2):
            await mine([])
        return counts


def generate_sync(url: str, blocks: int, txs_per_block: int = 10) -> Chain:
    return asyncio.run(generate(url, blocks, txs_per_block))

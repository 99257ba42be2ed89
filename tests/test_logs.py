"""Logs in one eth_getLogs per chunk (gateway/logs.py), split where an endpoint refuses the range,
and identical requests in flight sent once (gateway/inflight.py). Real anvil and replay nodes,
behind a real counting proxy; the logs Parquet is compared byte for byte with Cryo's own per-block path."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cryo
import pytest
from conftest import ALL, Devnet, backfill, rpc
from modern_replay import ModernReplay, served
from servers import LOGS_REFUSALS, FaultProxy, Faults, MainnetReplay

from cryo_ingest import devnet
from cryo_ingest.config import Endpoint
from cryo_ingest.gateway import Gateway
from cryo_ingest.gateway.inflight import InFlight
from cryo_ingest.gateway.logs import refused
from cryo_ingest.pipeline.extract import extract
from cryo_ingest.pipeline.plan import Partition, grid


def per_block(proxy: FaultProxy, lo: int, hi: int) -> Counter[str]:
    """The requests that name a block of lo..hi (so not eth_chainId, eth_blockNumber, the `finalized` lookup), by method."""
    counts: Counter[str] = Counter()
    for body in proxy.bodies:
        first = (body.get("params") or [None])[0]
        start = first.get("fromBlock") if isinstance(first, dict) else first
        if isinstance(start, str) and start.startswith("0x") and lo <= int(start, 16) <= hi:
            counts[body["method"]] += 1
    return counts


@pytest.mark.parametrize(("datasets", "target"), [("blocks,transactions,logs", 2.02), (ALL, 3.02)])
def test_requests_per_block(chain: Devnet, tmp_path: Path, datasets: str, target: float) -> None:
    """Raw Cryo makes 3 (4 with traces) requests per block, logs 1. Here: one eth_getLogs per chunk
    (100 blocks; at the default 1000, a tenth of that), the rest as before, and with traces the one
    trace_block that picks the traces source. Logs alone: below."""
    with FaultProxy(chain.url) as proxy:
        run = backfill(tmp_path / "a", proxy.url(), datasets=datasets, end=99, chunk=100)
    assert run.code == 0, run.text
    counts = per_block(proxy, 0, 99)
    assert counts["eth_getLogs"] == 1, counts
    assert sum(counts.values()) / 100 <= target, counts


@pytest.mark.parametrize(
    ("datasets", "header_checks", "expected"),
    [
        ("logs", "fetch", {"eth_getLogs": 1, "eth_getBlockByNumber": 100}),
        ("logs", "archived", {"eth_getLogs": 1}),
        ("transactions,logs", "fetch", {"eth_getLogs": 1, "eth_getBlockByNumber": 100, "eth_getBlockReceipts": 100}),
    ],
)
def test_requests_per_block_of_the_header_checks(
    chain: Devnet, tmp_path: Path, datasets: str, header_checks: str, expected: dict[str, int]
) -> None:
    """A job without blocks, none archived: its headers fetched for the checks cost one eth_getBlockByNumber a block,
    1.01 requests a block for logs alone (0.01 with `--header-checks archived`); with transactions, none more (Cryo
    takes blocks and transactions from the same answers)."""
    with FaultProxy(chain.url) as proxy:
        run = backfill(
            tmp_path / "a", proxy.url(), "--json", "--header-checks", header_checks, datasets=datasets, end=99, chunk=100
        )
    assert run.code == 0, run.text
    assert per_block(proxy, 0, 99) == expected
    assert ("logs_bloom" in json.loads(run.out)["checked"]) is (header_checks == "fetch")


@pytest.fixture(scope="module")
def dense() -> Iterator[str]:
    """A devnet of 60 blocks with 40 transactions each: 16 logs a block (the session chain has 4)."""
    with devnet.anvil() as node:
        devnet.generate_sync(node.url, 60, 40)
        yield node.url


def cryo_per_block(url: str, lo: int, hi: int, chunk: int, out: Path) -> dict[str, bytes]:
    """The logs files Cryo writes on its own: one eth_getLogs per block, straight to the node."""
    cryo.freeze(
        ["logs"],
        blocks=[f"{lo}:{hi + 1}"],
        rpc=url,
        output_dir=str(out),
        chunk_size=chunk,
        include_columns=["all"],
        no_report=True,
        verbose=False,
        max_retries=0,
        inner_request_size=1,
    )
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.parquet"))}


def through_gateway(url: str, chain_id: int, lo: int, hi: int, chunk: int, out: Path) -> tuple[dict[str, bytes], int]:
    """The logs files extract writes through the gateway, and the endpoint's count of refused ranges."""
    with Gateway([Endpoint.model_validate({"url": url, "name": "node"})], chain_id) as gw:
        files = extract(Partition(tuple(grid(lo, hi, chunk)), ("logs",)), gw.url, chunk, out)
        refusals = gw.metrics()["node"]["errors"].get("range_refused", 0)
    return {p.name: p.read_bytes() for p in sorted(files.values())}, refusals


# (refusal, Faults limits): a range limit in blocks, or a limit on the logs a reply may hold
LIMITS = [
    ("infura_range", {"logs_range": 7}),
    ("quicknode", {"logs_range": 7}),
    ("tenderly", {"logs_range": 7}),
    ("geth_results", {"logs_results": 40}),
    ("alchemy", {"logs_results": 40}),
]


def test_ranged_logs_are_the_per_block_logs(dense: str, tmp_path: Path) -> None:
    expected = cryo_per_block(dense, 0, 59, 20, tmp_path / "per-block")
    assert len(expected) == 3
    with FaultProxy(dense) as proxy:
        got, refusals = through_gateway(proxy.url(), devnet.CHAIN_ID, 0, 59, 20, tmp_path / "ranged")
    assert got == expected
    assert refusals == 0 and per_block(proxy, 0, 59) == Counter(eth_getLogs=3)


@pytest.mark.parametrize(("refusal", "limits"), LIMITS, ids=[name for name, _ in LIMITS])
def test_refused_ranges_are_split(dense: str, tmp_path: Path, refusal: str, limits: dict[str, int]) -> None:
    """The provider refuses (its own code, message and HTTP status); the halves' logs make the same files."""
    expected = cryo_per_block(dense, 0, 59, 20, tmp_path / "per-block")
    with FaultProxy(dense, Faults(logs_refusal=refusal, **limits)) as proxy:  # type: ignore[arg-type]
        got, refusals = through_gateway(proxy.url(), devnet.CHAIN_ID, 0, 59, 20, tmp_path / "split")
    assert got == expected
    assert refusals == proxy.logs_refused > 0
    served = per_block(proxy, 0, 59)["eth_getLogs"] - proxy.logs_refused
    assert served > 3  # split: more than one a chunk
    assert served < 60  # never down to one a block: the halves are as wide as the provider serves


def test_a_refused_span_is_remembered(dense: str) -> None:
    """Once 50 blocks were refused, the next 50 are sent in pieces the endpoint serves: no refusal again."""
    with (
        FaultProxy(dense, Faults(logs_range=13)) as proxy,
        Gateway([Endpoint.model_validate({"url": proxy.url(), "name": "node"})], devnet.CHAIN_ID) as gw,
    ):
        first = gw.call("eth_getLogs", {"fromBlock": hex(0), "toBlock": hex(49)})
        refused_first = proxy.logs_refused
        second = gw.call("eth_getLogs", {"fromBlock": hex(5), "toBlock": hex(54)})
    assert first == rpc(dense, "eth_getLogs", {"fromBlock": hex(0), "toBlock": hex(49)})
    assert second == rpc(dense, "eth_getLogs", {"fromBlock": hex(5), "toBlock": hex(54)})
    assert len(first) == 16 * 47  # blocks 3.. carry the logs
    assert refused_first == 3  # 50 blocks, then both halves of 25; 13 and 12 served
    assert proxy.logs_refused == refused_first


def test_a_block_refused_alone_is_an_error(dense: str) -> None:
    """A single block cannot be split: its refusal reaches the caller, never an empty list."""
    with (
        FaultProxy(dense, Faults(logs_results=10, logs_refusal="geth_results")) as proxy,
        Gateway([Endpoint.model_validate({"url": proxy.url(), "name": "node"})], devnet.CHAIN_ID) as gw,
    ):
        reply = gw._run(
            gw.forward({"jsonrpc": "2.0", "id": 7, "method": "eth_getLogs", "params": [{"fromBlock": "0x8", "toBlock": "0xb"}]})
        )
    assert reply["id"] == 7 and "more than 10000 results" in reply["error"]["message"], reply
    assert per_block(proxy, 0, 59)["eth_getLogs"] == 1 + 2 + 4  # split down to single blocks, each refused, then given up


# The messages gateway/logs.py lists, as providers and nodes send them.
REFUSAL_MESSAGES = [
    "query returned more than 10000 results",
    "range 1000000 exceeds limit of 10000",
    "Log response size exceeded. You can make eth_getLogs requests with up to a 2K block range and no limit on "
    "the response size, or you can request any block range with a cap of 10K logs in the response.",
    "Log response size exceeded. Please reduce query block range.",
    "eth_getLogs is limited to a 10,000 range",
    "query exceeds max block range 5000",
    "query exceeds max results 20000, retry with the range 25766988-25775072",
    "query block range exceeds server limit, narrow your filter: 1000",
    "query returns too many logs, narrow your filter: 20000",
    "block range too large, max range: 1000",
    "invalid block range",
    "block range is bigger than maxBlockRange",
    "block range is larger than max block range, block range = 5120, max block range = 5000",
    "block range is too wide (maximum 1024)",
    "block range too high",
]


def test_what_is_a_refusal() -> None:
    for _, err in LOGS_REFUSALS.values():
        assert refused(err), err
    for message in REFUSAL_MESSAGES:
        assert refused({"code": -32602, "message": message}), message
    for err in (
        {"code": -32005, "message": "limit exceeded"},  # a rate limit: retried, not split
        {"code": -32005, "message": "daily request count exceeded, request rate limited"},
        {"code": -32000, "message": "header not found"},
        {"code": -32601, "message": "the method eth_getLogs does not exist/is not available"},
    ):
        assert not refused(err), err


# ---- real mainnet blocks: ../shared/fixtures/mainnet (pre-Byzantium) and mainnet-modern ----


@pytest.mark.parametrize("number", [483920, 1755635])
def test_mainnet_logs_byte_identical(tmp_path: Path, number: int) -> None:
    with MainnetReplay() as node:
        lo = number // 4 * 4
        expected = cryo_per_block(node.url, lo, lo + 3, 4, tmp_path / "per-block")
        got, _ = through_gateway(node.url, 1, lo, lo + 3, 4, tmp_path / "ranged")
        with FaultProxy(node.url, Faults(logs_range=1)) as proxy:
            split, refusals = through_gateway(proxy.url(), 1, lo, lo + 3, 4, tmp_path / "split")
    assert len(expected) == 1 and got == expected and split == expected
    assert refusals == proxy.logs_refused == 3  # 4 blocks, then two of 2, then each block alone


@pytest.mark.parametrize("name", ["ethereum-18000000", "arb-sepolia-185232421"])
def test_modern_logs_byte_identical(tmp_path: Path, name: str) -> None:
    block = served(name)
    lo = block.number // 4 * 4
    with ModernReplay(block) as node:
        expected = cryo_per_block(node.url, lo, lo + 3, 4, tmp_path / "per-block")
        got, _ = through_gateway(node.url, block.chain_id, lo, lo + 3, 4, tmp_path / "ranged")
        with FaultProxy(node.url, Faults(logs_range=1, logs_refusal="quicknode")) as proxy:
            split, refusals = through_gateway(proxy.url(), block.chain_id, lo, lo + 3, 4, tmp_path / "split")
    assert len(expected) == 1 and got == expected and split == expected
    assert refusals == 3


# ---- multiplexing ----


def post(url: str, body: Any) -> Any:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_identical_requests_in_flight_go_upstream_once(chain: Devnet) -> None:
    """A batch's calls are relayed at once: identical ones share one upstream request, each reply
    under its own id (number or string), a success or an error alike."""
    block = {"jsonrpc": "2.0", "method": "eth_getBlockByNumber", "params": ["0x5", True]}
    blocked = {"jsonrpc": "2.0", "method": "eth_getBlockByHash", "params": ["0x" + "11" * 32, False]}
    with (
        FaultProxy(chain.url, Faults(block_methods={"eth_getBlockByHash"})) as proxy,
        Gateway([Endpoint.model_validate({"url": proxy.url(), "name": "node"})], devnet.CHAIN_ID) as gw,
    ):
        before = Counter(proxy.methods)
        calls = [{**block, "id": 1}, {**block, "id": "two"}, {**block, "id": 3, "params": ["0x6", True]}]
        replies = post(gw.url, [*calls, {**blocked, "id": 4}, {**blocked, "id": 5}])
        again = post(gw.url, {**block, "id": 6})  # no longer in flight: asked again
        sent = proxy.methods - before
    assert sent == Counter(eth_getBlockByNumber=3, eth_getBlockByHash=1)
    assert [r["id"] for r in replies] == [1, "two", 3, 4, 5]
    want = rpc(chain.url, "eth_getBlockByNumber", "0x5", True)
    assert replies[0]["result"] == replies[1]["result"] == again["result"] == want
    assert replies[2]["result"] == rpc(chain.url, "eth_getBlockByNumber", "0x6", True)
    assert replies[3]["error"] == replies[4]["error"] and replies[3]["error"]["code"] == -32601
    assert gw.inflight.shared == 2


def test_a_call_no_one_waits_for_is_cancelled() -> None:
    """Both clients hung up (the gateway's listener cancels their handlers): the upstream call stops, and the next
    identical request starts afresh instead of joining the cancelled one. (asyncio alone: a unit test.)"""

    async def scenario() -> tuple[list[str], dict[str, Any]]:
        inflight, events, release = InFlight(), [], asyncio.Event()

        async def upstream() -> dict[str, Any]:
            events.append("sent")
            try:
                await release.wait()
            except asyncio.CancelledError:
                events.append("cancelled")
                raise
            return {"jsonrpc": "2.0", "id": 1, "result": "0x1"}

        req = {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}
        waiters = [asyncio.ensure_future(inflight.run({**req, "id": i}, True, upstream)) for i in (1, 2)]
        await asyncio.sleep(0.01)
        for w in waiters:
            w.cancel()
        await asyncio.sleep(0)  # the waiters leave; the call is cancelled but has not stopped yet
        release.set()
        return events, await inflight.run({**req, "id": 3}, True, upstream)

    events, reply = asyncio.run(scenario())
    assert events == ["sent", "cancelled", "sent"]
    assert reply == {"jsonrpc": "2.0", "id": 3, "result": "0x1"}

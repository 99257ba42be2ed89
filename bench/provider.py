"""cryo-ingest, raw Cryo and ethereum-etl against a stand-in for a commercial RPC provider.

The provider is a proxy in front of the anvil devnet: every answer takes 40 ± 10 ms, a key in the
URL path (`/<key>`) selects a budget of 25 requests per fixed one-second window (or, with
--cu-per-second, Alchemy's throughput compute units per window), and HTTP 429 with a JSON-RPC
error body answers what is over it. It counts per key and method the calls (a batch's elements one
by one), the 429s and the calls served per window. On one chain, in one run, for each set of
datasets: raw Cryo on one key (its own limiter set to the key's limit), cryo-ingest with `--rpc`
(nothing configured), with a pool of one key and of three keys (told each key's limit:
`requests_per_second`, or with --cu-per-second `compute_units_per_second` and the stand-in's prices), and
ethereum-etl on one key (as bench/run.py runs it, on the first --etl-blocks blocks: its requests
grow with the transactions).

    .venv/bin/python bench/provider.py [--blocks 400] [--sets btl,all,logs] [--rps 25 | --cu-per-second 2500] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from common import cached_chain, command_line, etl, ingest, measure, raw_cryo, rows_and_bytes, save
from servers import Proxy

# Alchemy's "Throughput CU" per method, what its per-second limit counts
# (https://www.alchemy.com/docs/reference/compute-unit-costs, and for debug_traceBlockByNumber its own
# page, https://www.alchemy.com/docs/chains/debug-api/debug-api-endpoints/debug-trace-block-by-number).
# trace_block is not priced there: taken as debug_traceBlockByNumber, the same work.
THROUGHPUT_CU = {
    "eth_chainId": 0,
    "net_version": 0,
    "eth_blockNumber": 10,
    "eth_getBlockByNumber": 20,
    "eth_getBlockByHash": 20,
    "eth_getTransactionByHash": 20,
    "eth_getTransactionReceipt": 20,
    "eth_call": 26,
    "eth_getLogs": 60,
    "eth_getBlockReceipts": 500,
    "debug_traceBlockByNumber": 1000,
    "debug_traceBlockByHash": 1000,
    "trace_block": 1000,
}
UNLISTED_CU = 20  # the table's most common price
SETS = {
    "btl": ("blocks", "transactions", "logs"),
    "all": ("blocks", "transactions", "logs", "traces"),
    "logs": ("logs",),
}
# What Cryo asks per block for each dataset (bench/run.py's counts): for a per-call limit in CU mode.
CRYO_METHODS = {
    "blocks": "eth_getBlockByNumber",
    "transactions": "eth_getBlockReceipts",
    "logs": "eth_getLogs",
    "traces": "trace_block",
}


@dataclass
class Key:
    """What one key was asked, served and refused; windows are whole seconds of the monotonic clock."""

    requests: Counter[str] = field(default_factory=Counter)  # calls received, by method
    http_429: Counter[str] = field(default_factory=Counter)  # calls refused, by method
    received: Counter[int] = field(default_factory=Counter)  # calls received per window
    served: Counter[int] = field(default_factory=Counter)  # calls answered by the node per window
    units: Counter[int] = field(default_factory=Counter)  # budget spent per window (calls, or CU)
    arrivals: list[float] = field(default_factory=list)  # monotonic time of each HTTP request


class ProviderProxy(Proxy):
    """A commercial RPC provider's behaviour in front of a node: latency, keys, per-window limits, 429s.

    Our own code rather than a library: it is a measuring instrument, and what it must do (fixed
    windows per key, Alchemy's CU prices, counts per key, method and window) is what no mock server
    offers; it builds on the tests' proxy (tests/servers.py)."""

    def __init__(
        self,
        upstream: str,
        keys: Sequence[str],
        limit: int,
        cost: Callable[[str], int] | None = None,
        latency: tuple[float, float] = (0.040, 0.010),
        seed: int = 13,
    ) -> None:
        super().__init__()
        self.upstream = upstream
        self.keys = {k: Key() for k in keys}
        self.limit = limit  # per key and window: calls, or the sum of `cost`
        self.cost = cost or (lambda _method: 1)
        self.latency = latency
        self.random = random.Random(seed)

    def url(self, key: str) -> str:
        return f"{self.server.url}/{key}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        now = time.monotonic()
        second = int(now)
        mean, jitter = self.latency
        await asyncio.sleep(self.random.uniform(mean - jitter, mean + jitter))
        key = self.keys.get(request.path.strip("/"))
        body = json.loads(raw)
        calls = body if isinstance(body, list) else [body]
        if key is None:
            return self._error(401, body, -32001, "unknown API key")
        methods = [str(c.get("method")) for c in calls]
        key.arrivals.append(now)
        key.requests.update(methods)
        key.received[second] += len(calls)
        units = sum(self.cost(m) for m in methods)
        spent = key.units[second]
        # A single call dearer than the whole limit (eth_getBlockReceipts at 500 CU under a lower
        # limit) passes alone in an empty window, as Alchemy lets it through rather than never.
        if spent + units > self.limit and (spent or isinstance(body, list)):
            key.http_429.update(methods)
            return self._error(429, body, 429, f"Too Many Requests: over this key's {self.limit} per second")
        key.units[second] += units
        async with self.client().post(self.upstream, data=raw, headers={"content-type": "application/json"}) as resp:
            data = await resp.read()
        key.served[second] += len(calls)
        return web.Response(body=data, content_type="application/json")

    @staticmethod
    def _error(status: int, body: Any, code: int, message: str) -> web.Response:
        """HTTP `status` with a JSON-RPC error for each call, as providers send it."""

        def one(call: Any) -> dict[str, Any]:
            return {"jsonrpc": "2.0", "id": call.get("id"), "error": {"code": code, "message": message}}

        payload = [one(c) for c in body] if isinstance(body, list) else one(body)
        return web.json_response(payload, status=status)


TOOLS = ("raw", "rpc", "pool1", "pool3", "etl")


def cu_cost(method: str) -> int:
    return THROUGHPUT_CU.get(method, UNLISTED_CU)


@dataclass
class Budget:
    """The provider's terms for each key, and the requests per second Cryo and the pool are given for them."""

    per_key: int  # per window: calls, or CU where `cost` is set
    rps: int
    cost: Callable[[str], int] | None
    latency: tuple[float, float]


def budget_for(datasets: Sequence[str], args: argparse.Namespace) -> Budget:
    """In CU mode the tools are given the calls per second that the mean price of Cryo's methods allows."""
    latency = (args.latency_ms / 1000, args.jitter_ms / 1000)
    if args.cu_per_second is None:
        return Budget(args.rps, args.rps, None, latency)
    methods = {CRYO_METHODS[d] for d in datasets}
    mean = sum(cu_cost(m) for m in methods) / len(methods)
    return Budget(args.cu_per_second, max(1, int(args.cu_per_second / mean)), cu_cost, latency)


@dataclass
class Run:
    label: str
    tool: str  # raw_cryo, cryo_ingest, ethereum_etl: how its output is read
    keys: int
    blocks: int
    command: Callable[[list[str], Path], list[str]]  # (the keys' URLs, a scratch folder) -> the command, writing to folder/out


def run_one(url: str, run: Run, budget: Budget) -> dict[str, Any]:
    """`run` through a fresh provider of `run.keys` keys: the proxy's counts and the tool's time and rows."""
    names = [f"key-{i}" for i in range(run.keys)]
    with ProviderProxy(url, names, budget.per_key, budget.cost, budget.latency) as proxy, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        out.mkdir()
        m = measure(run.command([proxy.url(k) for k in names], Path(tmp)))
        rows, _ = rows_and_bytes(run.tool, out)
    ks = proxy.keys.values()
    served = sum(sum(k.served.values()) for k in ks)
    units = sum(sum(k.units.values()) for k in ks)
    arrivals = [t for k in ks for t in k.arrivals]
    active = max(arrivals) - min(arrivals) if len(arrivals) > 1 else 0.0
    methods: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    for k in ks:
        methods.update(k.requests)
        refused.update(k.http_429)
    limit = budget.per_key * run.keys
    result = {
        "tool": run.label,
        "keys": run.keys,
        "ok": m.returncode == 0,
        "seconds": round(m.seconds, 2),
        "blocks": run.blocks,
        "blocks_per_s": round(run.blocks / m.seconds, 2) if m.returncode == 0 else None,
        "requests": sum(methods.values()),
        "served": served,
        "http_429": sum(refused.values()),
        "served_per_block": round(served / run.blocks, 3),
        "budget_used": round(units / (limit * m.seconds), 3),
        "budget_used_active": round(units / (limit * active), 3) if active else None,
        "active_seconds": round(active, 2),  # first request to last: the tool's start-up and finish left out
        "max_window_served": max((max(k.served.values(), default=0) for k in ks), default=0),
        "max_window_received": max((max(k.received.values(), default=0) for k in ks), default=0),
        "by_method": dict(sorted(methods.items())),
        "http_429_by_method": dict(sorted(refused.items())),
        "rows": rows,
    }
    if m.returncode != 0:
        result["stderr_tail"] = m.stderr[-2000:]
    state = "ok" if m.returncode == 0 else f"FAILED (exit {m.returncode})"
    print(f"{run.label:34} {m.seconds:6.1f} s  served {served:5}  429s {result['http_429']:5}  {state}", file=sys.stderr)
    return result


def pool_file(urls: list[str], budget: Budget, directory: Path) -> Path:
    """The pool told each key's budget: in CU mode its compute units per second and the stand-in's prices
    (so the gateway can pick the calls it charges least for, gateway/cheapest.py), else its requests per second."""
    told: dict[str, Any] = {"requests_per_second": budget.rps}
    if budget.cost is not None:
        told = {"compute_units_per_second": budget.per_key, "costs": THROUGHPUT_CU | {"default": UNLISTED_CU}}
    endpoints = [{"name": f"key-{i}", "url": u} | told for i, u in enumerate(urls)]
    path = directory / "pools.yaml"
    path.write_text(json.dumps({"pools": {"bench": {"endpoints": endpoints}}}))  # JSON is YAML
    return path


def compare(url: str, datasets: Sequence[str], args: argparse.Namespace) -> dict[str, Any]:
    """Every tool on `datasets`; the row counts of the tools that finished the same range must agree."""
    budget = budget_for(datasets, args)
    blocks, chunk, rps = args.blocks, args.chunk_size, budget.rps

    def pooled(urls: list[str], tmp: Path) -> list[str]:
        pool = ["--rpc-pool", "bench", "--rpc-pool-file", str(pool_file(urls, budget, tmp))]
        return ingest(None, tmp / "out", blocks, chunk, *pool, datasets=datasets)

    def plain(url: str, tmp: Path) -> list[str]:
        return ingest(url, tmp / "out", blocks, chunk, datasets=datasets)

    runs = {
        "raw": Run("raw Cryo", "raw_cryo", 1, blocks, lambda u, tmp: raw_cryo(u[0], tmp / "out", blocks, chunk, datasets, rps)),
        "rpc": Run("cryo-ingest --rpc (no limit set)", "cryo_ingest", 1, blocks, lambda u, tmp: plain(u[0], tmp)),
        "pool1": Run("cryo-ingest, pool of 1 key", "cryo_ingest", 1, blocks, pooled),
        "pool3": Run("cryo-ingest, pool of 3 keys", "cryo_ingest", 3, blocks, pooled),
    }
    if {"blocks", "transactions"} <= set(datasets):  # ethereum-etl exports those first, whatever else is asked
        n = args.etl_blocks
        runs["etl"] = Run("ethereum-etl", "ethereum_etl", 1, n, lambda u, tmp: etl(u[0], tmp / "out", n, chunk, datasets))
    done = [run_one(url, r, budget) for name, r in runs.items() if name in args.tools]
    same = [r for r in done if r["ok"] and r["blocks"] == blocks]
    for r in same:
        if r["rows"] != same[0]["rows"]:
            raise SystemExit(f"row counts disagree: {same[0]['tool']} {same[0]['rows']} vs {r['tool']} {r['rows']}")
    by = {r["tool"]: r for r in done}

    def ratio(a: str, b: str) -> float | None:
        if a not in by or b not in by:
            return None
        x, y = by[a]["blocks_per_s"], by[b]["blocks_per_s"]
        return round(x / y, 2) if x and y else None

    return {
        "datasets": list(datasets),
        "calls_per_second_given": budget.rps,
        "runs": done,
        "ingest_vs_raw_cryo_one_key": ratio("cryo-ingest, pool of 1 key", "raw Cryo"),
        "ingest_rpc_vs_raw_cryo_one_key": ratio("cryo-ingest --rpc (no limit set)", "raw Cryo"),
        "three_keys_vs_one": ratio("cryo-ingest, pool of 3 keys", "cryo-ingest, pool of 1 key"),
    }


def markdown(results: list[dict[str, Any]], args: argparse.Namespace, budget_text: str, load: list[float]) -> str:
    lines = [
        f"### Provider-shaped: {budget_text} per key, {args.latency_ms:g} ± {args.jitter_ms:g} ms per request; "
        f"{args.blocks:,} blocks ({args.txs_per_block} transactions each), ethereum-etl on the first {args.etl_blocks:,}"
        + (f" ({args.note})" if args.note else ""),
        "",
        f"Load average (1 min) before and after the runs: {load[0]:.1f}, {load[1]:.1f} on {os.cpu_count()} cores. "
        "Budget used: the calls (or CU) served over the key's limit × the tool's wall time; after the semicolon, "
        "× the time from its first request to its last.",
    ]
    for res in results:
        lines += [
            "",
            f"**{', '.join(res['datasets'])}**: cryo-ingest (pool of 1) / raw Cryo blocks/s "
            f"{res['ingest_vs_raw_cryo_one_key'] or '–'}; three keys / one key {res['three_keys_vs_one'] or '–'}",
            "",
            "| tool | keys | s | blocks/s | requests/block (served) | 429s | budget used (wall; first to last request) "
            "| max served in a window (a key) | calls received by method (429s included) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in res["runs"]:
            bps = f"{r['blocks_per_s']:.2f}" if r["ok"] else f"failed (exit after {r['seconds']:.0f} s)"
            active = f"{r['budget_used_active']:.2f}" if r["budget_used_active"] is not None else "–"
            methods = ", ".join(f"{k} {v:,}" for k, v in r["by_method"].items())
            lines.append(
                f"| {r['tool']} | {r['keys']} | {r['seconds']:.1f} | {bps} | {r['served_per_block']:.3f} | {r['http_429']:,} "
                f"| {r['budget_used']:.2f}; {active} | {r['max_window_served']} | {methods} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=400)
    ap.add_argument("--txs-per-block", type=int, default=10)
    ap.add_argument("--chunk-size", type=int, default=100)
    ap.add_argument("--etl-blocks", type=int, default=100, help="ethereum-etl's range (its requests grow with transactions)")
    ap.add_argument("--sets", default="btl,all,logs", help="comma-separated: btl (blocks,transactions,logs), all (+traces), logs")
    ap.add_argument("--rps", type=int, default=25, help="requests per one-second window per key (Monad's public keys)")
    ap.add_argument("--cu-per-second", type=int, help="limit keys by Alchemy's throughput compute units per window instead")
    ap.add_argument("--latency-ms", type=float, default=40)
    ap.add_argument("--jitter-ms", type=float, default=10)
    ap.add_argument("--smoke", action="store_true", help="20 blocks, blocks+transactions+logs, nothing saved (so it cannot rot)")
    ap.add_argument("--no-save", action="store_true", help="print only")
    ap.add_argument("--tools", default=",".join(TOOLS), help=f"of {','.join(TOOLS)}; fewer than all saves nothing")
    ap.add_argument("--note", help="said in the heading, e.g. which change the figures are before or after")
    args = ap.parse_args()
    if args.smoke:
        args.blocks, args.chunk_size, args.etl_blocks, args.sets, args.no_save = 20, 10, 20, "btl", True
    sets, args.tools = args.sets.split(","), args.tools.split(",")
    if unknown := [t for t in args.tools if t not in TOOLS]:
        ap.error(f"unknown --tools {unknown}: choose from {', '.join(TOOLS)}")
    args.no_save = args.no_save or set(args.tools) != set(TOOLS)
    if unknown := [s for s in sets if s not in SETS]:
        ap.error(f"unknown --sets {unknown}: choose from {', '.join(SETS)}")
    if args.blocks % args.chunk_size:
        ap.error("--blocks must be a multiple of --chunk-size (cryo-ingest archives whole, final chunks only)")
    if not 0 < args.etl_blocks <= args.blocks:
        ap.error("--etl-blocks must be between 1 and --blocks")
    load = [os.getloadavg()[0]]
    with cached_chain(args.blocks + 2, args.txs_per_block) as url:
        results = [compare(url, SETS[name], args) for name in sets]
    load.append(os.getloadavg()[0])
    cu = f"{args.cu_per_second:,} throughput CU per second (Alchemy's prices)" if args.cu_per_second else ""
    budget_text = cu or f"{args.rps} requests per second"
    text = markdown(results, args, budget_text, load)
    print(text)
    if not args.no_save:
        command = command_line()
        # CU metering has its own sections (docs/benchmarks.md), one per block size: the per-request runs stay as they are
        name = f"provider-cu-{args.txs_per_block}tx" if args.cu_per_second else "provider"
        print(save(name, command.strip(), {"results": results, "load_average": load}, text), file=sys.stderr)


if __name__ == "__main__":
    main()

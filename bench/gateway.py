"""The gateway's cost and its use of a rate-limited pool.

1. Overhead: raw Cryo on the benchmark chain straight at anvil, and through the gateway (in this
   process, as in a real run, with Cryo in its own process), alternating; ratio of wall times.
2. Rate-limited throughput: upstreams that allow R requests per 1-second window per key (429
   beyond it); cryo-ingest with pools of 1 and 3 such keys configured at R: useful requests per
   second as a fraction of the pool's limit, and the 429s provoked.

    .venv/bin/python bench/gateway.py [--blocks 2000] [--txs-per-block 40] [--iterations 3] [--rate 50]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import cached_chain, command_line, ingest, measure, raw_cryo, save, spread
from servers import FaultProxy, Faults

from cryo_ingest.config import Endpoint
from cryo_ingest.gateway import Gateway


def overhead(url: str, blocks: int, iterations: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {"direct": [], "gateway": []}
    with Gateway([Endpoint.model_validate({"url": url, "name": "anvil"})], 31337) as gw:
        for i in range(iterations):
            for mode in ["direct", "gateway"] if i % 2 == 0 else ["gateway", "direct"]:
                with tempfile.TemporaryDirectory() as tmp:
                    m = measure(raw_cryo(url if mode == "direct" else gw.url, Path(tmp), blocks, 1000))
                    assert m.returncode == 0, m.stderr
                    times[mode].append(m.seconds)
                    print(f"{mode:8} {m.seconds:.1f} s", file=sys.stderr)
        metrics = gw.metrics()["anvil"]
    direct, via = spread(times["direct"]), spread(times["gateway"])
    return {"direct": direct, "gateway": via, "ratio": via["median"] / direct["median"], "gateway_metrics": metrics}


def rate_limited(url: str, keys: int, rate: int, blocks: int) -> dict[str, Any]:
    proxies = [FaultProxy(url, Faults(rate_limit=rate)) for _ in range(keys)]
    for p in proxies:
        p.__enter__()
    try:
        pool = {"endpoints": [{"name": f"key-{i}", "url": p.url(), "requests_per_second": rate} for i, p in enumerate(proxies)]}
        with tempfile.TemporaryDirectory() as tmp:
            cmd = ingest(None, Path(tmp), blocks, 100, "--rpc-pool", "bench")
            m = measure(cmd, env={"CRYO_INGEST_RPC_POOL_BENCH": json.dumps(pool)})
            assert m.returncode == 0, m.stderr
    finally:
        for p in proxies:
            p.__exit__()
    answered = sorted(t for p in proxies for t in p.answered)
    achieved = (len(answered) - 1) / (answered[-1] - answered[0])
    return {
        "keys": keys,
        "limit_rps": rate * keys,
        "useful_requests": len(answered),
        "achieved_rps": round(achieved, 1),
        "fraction_of_limit": round(achieved / (rate * keys), 3),
        "http_429": sum(p.injected["http_429"] for p in proxies),
        "wall_seconds": round(m.seconds, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=2000)
    ap.add_argument("--txs-per-block", type=int, default=40)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--rate", type=int, default=50, help="requests per second per key, for the rate-limited runs")
    ap.add_argument("--rate-blocks", type=int, default=300, help="blocks archived in each rate-limited run")
    args = ap.parse_args()
    with cached_chain(args.blocks + 2, args.txs_per_block) as url:
        over = overhead(url, args.blocks, args.iterations)
        limited = [rate_limited(url, keys, args.rate, args.rate_blocks) for keys in (1, 3)]
    d, g = over["direct"], over["gateway"]
    lines = [
        f"### Gateway overhead: raw Cryo on {args.blocks:,} blocks ({args.txs_per_block} transactions each), all four datasets",
        "",
        "| Cryo's RPC | wall s (median, min–max) | × direct |",
        "| --- | --- | --- |",
        f"| anvil, direct | {d['median']:.1f} ({d['min']:.1f}–{d['max']:.1f}) | 1.00 |",
        f"| through the gateway | {g['median']:.1f} ({g['min']:.1f}–{g['max']:.1f}) | {over['ratio']:.2f} |",
        "",
        f"### Rate-limited pool: keys allowing {args.rate} requests per 1-second window each (HTTP 429 beyond), "
        f"cryo-ingest on {args.rate_blocks} blocks",
        "",
        "| keys | pool limit rps | achieved useful rps | fraction of limit | 429s provoked | useful requests | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['keys']} | {r['limit_rps']} | {r['achieved_rps']} | {r['fraction_of_limit']:.2f} | {r['http_429']} "
        f"| {r['useful_requests']:,} | {r['wall_seconds']} |"
        for r in limited
    ]
    text = "\n".join(lines)
    print(text)
    command = command_line()
    print(save("gateway", command.strip(), {"overhead": over, "rate_limited": limited}, text), file=sys.stderr)


if __name__ == "__main__":
    main()

"""How fast `backfill --rpc` learns an endpoint's rate limit that nobody configured.

The only endpoint is the devnet behind a proxy that answers HTTP 429 (`Retry-After: 1`) above N
requests in a one-second window (tests/servers.py FaultProxy), as a local eRPC or a provider's key
does. A short job (blocks 0..B-1, blocks and logs, chunks of 100: about B requests) is the job a
threshold source starts, so the first seconds are most of it. For each run: the requests the
endpoint answered per second from the command's start to its end, as a share of N (the command's
own start-up, imports and Cryo's, counts against it), and the share of requests answered 429.

    .venv/bin/python bench/rate_learning.py [--rate-limit 20] [--blocks 200] [--runs 5] [--no-save]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import psutil
from common import INGEST, cached_chain, command_line, save
from servers import FaultProxy, Faults


def run(url: str, limit: int, blocks: int) -> dict[str, Any]:
    with FaultProxy(url, Faults(rate_limit=limit)) as proxy, tempfile.TemporaryDirectory() as root:
        cmd = [INGEST, "backfill", "--chain-id", "31337", "--start", "0", "--end", str(blocks - 1)]
        cmd += ["--datasets", "blocks,logs", "--chunk-size", "100", "--root", root, "--rpc", proxy.url(), "--json"]
        load = psutil.getloadavg()[0]
        started = time.monotonic()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        seconds = time.monotonic() - started
        if done.returncode != 0:
            raise SystemExit(f"backfill failed ({done.returncode}): {done.stderr[-2000:]}")
        answered, sent, refused = len(proxy.answered), len(proxy.calls), proxy.injected["http_429"]
        first = proxy.calls[0][0] - started
    return {
        "seconds": round(seconds, 2),
        "first_request_s": round(first, 2),
        "answered": answered,
        "sent": sent,
        "http_429": refused,
        "share_of_limit": round(answered / seconds / limit, 3),
        "share_429": round(refused / sent, 3),
        "load_before": load,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate-limit", type=int, default=20)
    ap.add_argument("--blocks", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-save", action="store_true", help="print only")
    args = ap.parse_args()
    with cached_chain(max(args.blocks, 2000), 10) as url:
        runs = []
        for i in range(args.runs):
            runs.append(run(url, args.rate_limit, args.blocks))
            print(i, runs[-1], file=sys.stderr)
    shares = [r["share_of_limit"] for r in runs]
    refused = [r["share_429"] for r in runs]
    rows = [
        f"| {i + 1} | {r['seconds']:.1f} | {r['first_request_s']:.1f} | {r['answered']} | {r['http_429']} "
        f"| {r['share_of_limit']:.2f} | {r['share_429']:.1%} | {r['load_before']:.1f} |"
        for i, r in enumerate(runs)
    ]
    text = "\n".join(
        [
            f"### A rate limit learnt: `backfill --rpc` (no limit configured), blocks 0..{args.blocks - 1} (blocks, logs), "
            f"the only endpoint answering 429 above {args.rate_limit} requests/s",
            "",
            "| run | command s | first request at s | answered | 429s | answered/s ÷ limit | share 429 | load (1 min) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
            f"Answered per second from the command's start ÷ the limit: median {statistics.median(shares):.2f} "
            f"({min(shares):.2f}–{max(shares):.2f}); answered 429: median {statistics.median(refused):.1%} "
            f"({min(refused):.1%}–{max(refused):.1%}).",
        ]
    )
    print(text)
    if not args.no_save:
        command = command_line()
        doc = {"rate_limit": args.rate_limit, "blocks": args.blocks, "runs": runs}
        print(save("rate-learning", command.strip(), doc, text), file=sys.stderr)


if __name__ == "__main__":
    main()

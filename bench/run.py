"""cryo-ingest against raw Cryo and ethereum-etl on the same devnet chain, in the same run.

Each tool archives blocks 0..N-1 (blocks, transactions, logs, traces) N times, in alternating
order, straight from the node; one more run of each goes through a counting proxy for the
request counts. Row counts must agree across the tools, or the benchmark fails.

    .venv/bin/python bench/run.py [--blocks 2000] [--txs-per-block 40] [--iterations 3] [--scaling]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import DATASETS, cached_chain, command_line, etl, ingest, measure, raw_cryo, rows_and_bytes, save, spread
from servers import FaultProxy

TOOLS: dict[str, Callable[[str, Path, int, int], list[str]]] = {"raw_cryo": raw_cryo, "cryo_ingest": ingest, "ethereum_etl": etl}
SCALING_CHUNK = 100


def compare(url: str, blocks: int, chunk: int, iterations: int, tools: list[str]) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in tools}
    for i in range(iterations + 1):
        counted = i == iterations  # the last round goes through the counting proxy, untimed
        for tool in tools[i % len(tools) :] + tools[: i % len(tools)]:
            with tempfile.TemporaryDirectory(prefix=f"bench-{tool}-") as tmp, FaultProxy(url) as proxy:
                target = proxy.url() if counted else url
                m = measure(TOOLS[tool](target, Path(tmp), blocks, chunk))
                if m.returncode != 0:
                    raise SystemExit(f"{tool} failed:\n{m.stderr[-3000:]}")
                rows, size = rows_and_bytes(tool, Path(tmp))
                if counted:
                    runs[tool][-1]["requests"] = dict(sorted(proxy.methods.items()))
                else:
                    run = {"seconds": m.seconds, "cpu": m.cpu_seconds, "peak_rss": m.peak_rss, "rows": rows, "bytes": size}
                    runs[tool].append(run)
                print(f"{tool:13} {'counted' if counted else f'run {i + 1}'}: {m.seconds:6.1f} s", file=sys.stderr)
    summary: dict[str, Any] = {}
    for tool, rs in runs.items():
        summary[tool] = {
            "seconds": spread([r["seconds"] for r in rs]),
            "cpu_seconds": spread([r["cpu"] for r in rs]),
            "peak_rss_mb": round(max(r["peak_rss"] for r in rs) / 2**20, 1),
            "rows": rs[0]["rows"],
            "bytes_on_disk": rs[0]["bytes"],
            "requests": rs[-1]["requests"],
            "requests_total": sum(rs[-1]["requests"].values()),
        }
    reference = summary[tools[0]]["rows"]
    for tool in tools:
        if summary[tool]["rows"] != reference:
            raise SystemExit(f"row counts disagree: {tools[0]} {reference} vs {tool} {summary[tool]['rows']}")
    return summary


def markdown(summary: dict[str, Any], blocks: int, txs: int, scaling: dict[str, Any] | None) -> str:
    base = summary["raw_cryo"]
    lines = [
        f"### Archive {blocks:,} blocks ({txs} transactions each) to local Parquet: all four datasets",
        "",
        "| tool | wall s (median, min–max) | × raw Cryo | CPU s (median, min–max) | requests | × raw Cryo "
        "| peak RSS MB | × raw Cryo | bytes on disk |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for tool, s in summary.items():
        w, c = s["seconds"], s["cpu_seconds"]
        lines.append(
            f"| {tool} | {w['median']:.1f} ({w['min']:.1f}–{w['max']:.1f}) | {w['median'] / base['seconds']['median']:.2f} "
            f"| {c['median']:.1f} ({c['min']:.1f}–{c['max']:.1f}) "
            f"| {s['requests_total']:,} | {s['requests_total'] / base['requests_total']:.2f} | {s['peak_rss_mb']:.0f} "
            f"| {s['peak_rss_mb'] / base['peak_rss_mb']:.2f} | {s['bytes_on_disk']:,} |"
        )
    rows = base["rows"]
    lines += ["", "Rows (equal for every tool, checked): " + ", ".join(f"{d} {rows[d]:,}" for d in DATASETS), ""]
    lines.append(
        "Requests by method: "
        + "; ".join(f"{t}: " + ", ".join(f"{k} {v:,}" for k, v in s["requests"].items()) for t, s in summary.items())
    )
    if scaling:
        lines += [
            "",
            f"Memory scaling of cryo-ingest (10 transactions per block, chunks of {SCALING_CHUNK}): "
            + ", ".join(f"{int(b):,} blocks: peak RSS {mb:.0f} MB" for b, mb in scaling.items()),
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=2000)
    ap.add_argument("--txs-per-block", type=int, default=40)
    ap.add_argument("--chunk-size", type=int, default=1000)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--no-etl", action="store_true", help="leave ethereum-etl out")
    ap.add_argument("--scaling", action="store_true", help="also cryo-ingest's peak RSS on 2,000 and 20,000 blocks")
    ap.add_argument("--no-save", action="store_true", help="print only (the CI smoke run)")
    args = ap.parse_args()
    if args.blocks % args.chunk_size:
        ap.error("--blocks must be a multiple of --chunk-size (cryo-ingest archives whole, final chunks only)")
    tools = ["raw_cryo", "cryo_ingest"] + ([] if args.no_etl else ["ethereum_etl"])
    with cached_chain(args.blocks + 2, args.txs_per_block) as url:
        summary = compare(url, args.blocks, args.chunk_size, args.iterations, tools)
    scaling = None
    if args.scaling:
        scaling = {}
        for n in (2000, 20000):  # chunks of 100: both ranges keep the same work in flight (2 workers x 4 chunks)
            with cached_chain(n + 2, 10) as url, tempfile.TemporaryDirectory() as tmp:
                m = measure(ingest(url, Path(tmp), n, SCALING_CHUNK))
                assert m.returncode == 0, m.stderr
                scaling[str(n)] = round(m.peak_rss / 2**20, 1)
    text = markdown(summary, args.blocks, args.txs_per_block, scaling)
    print(text)
    if not args.no_save:
        command = command_line()
        print(save("pipeline", command.strip(), {"summary": summary, "scaling": scaling}, text), file=sys.stderr)


if __name__ == "__main__":
    main()

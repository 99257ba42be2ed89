"""cryo-ingest against raw Cryo and ethereum-etl on the same devnet chain, in the same run.

Each tool archives blocks 0..N-1 (blocks, transactions, logs, traces) N times, in alternating
order, straight from the node; one more run of each goes through a counting proxy for the
request counts. Row counts must agree across the tools, or the benchmark fails.

    .venv/bin/python bench/run.py [--blocks 2000] [--txs-per-block 40] [--iterations 3] [--scaling]
"""

from __future__ import annotations

import argparse
import csv
import shlex
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from common import CACHE, ROOT, cached_chain, measure, save, spread
from servers import FaultProxy

DATASETS = ("blocks", "transactions", "logs", "traces")
PY = sys.executable
INGEST = str(Path(PY).parent / "cryo-ingest")
ETL_VENV = CACHE / "etl-venv"


def etl_bin() -> Path:
    """ethereum-etl 2.4.2 in its own venv, exactly as pinned (its parsimonious pin breaks on 3.11: see the file)."""
    exe = ETL_VENV / "bin" / "ethereumetl"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(ETL_VENV)], check=True)
        pip = [str(ETL_VENV / "bin" / "pip"), "install", "-q", "--no-deps", "-r", str(ROOT / "bench" / "etl-requirements.txt")]
        subprocess.run(pip, check=True)
    return exe


def raw_cryo(url: str, out: Path, blocks: int, chunk: int) -> list[str]:
    code = (
        "import cryo; r = cryo.freeze(['blocks','transactions','logs','traces'], "
        f"blocks=['0:{blocks}'], rpc={url!r}, output_dir={str(out)!r}, chunk_size={chunk}, "
        "include_columns=['all'], no_report=True, verbose=False); assert r['n_errored'] == 0, r"
    )
    return [PY, "-c", code]


def ingest(url: str | None, out: Path, blocks: int, chunk: int, *pool: str) -> list[str]:
    """cryo-ingest on blocks 0..blocks-1, all four datasets; `pool` (e.g. --rpc-pool NAME) where `url` is None."""
    rpc = ["--rpc", url] if url else list(pool)
    args = ["--chain-id", "31337", "--start", "0", "--end", str(blocks - 1), "--datasets", ",".join(DATASETS)]
    return [INGEST, "backfill", *args, *rpc, "--root", str(out), "--chunk-size", str(chunk)]


def etl(url: str, out: Path, blocks: int, chunk: int) -> list[str]:
    e, rng = shlex.quote(str(etl_bin())), f"--start-block 0 --end-block {blocks - 1} --provider-uri {url}"
    script = (
        f"cd {shlex.quote(str(out))} && "
        f"{e} export_blocks_and_transactions {rng} --blocks-output blocks.csv --transactions-output transactions.csv && "
        f"{e} extract_csv_column --input transactions.csv --column hash --output hashes.txt && "
        f"{e} export_receipts_and_logs --transaction-hashes hashes.txt --provider-uri {url} "
        "--receipts-output receipts.csv --logs-output logs.csv && "
        f"{e} export_traces {rng} --output traces.csv"
    )
    return ["bash", "-c", script]


TOOLS = {"raw_cryo": raw_cryo, "cryo_ingest": ingest, "ethereum_etl": etl}
SCALING_CHUNK = 100


def rows_and_bytes(tool: str, out: Path) -> tuple[dict[str, int], int]:
    rows: Counter[str] = Counter()
    files = [p for p in out.rglob("*") if p.is_file() and ".cryo" not in p.parts]
    for p in files:
        if tool == "ethereum_etl" and p.suffix == ".csv" and p.stem in DATASETS:
            with p.open() as f:
                rows[p.stem] += sum(1 for _ in csv.reader(f)) - 1
        elif p.suffix == ".parquet":
            dataset = p.name.split("__")[1] if tool == "raw_cryo" else p.parent.name
            rows[dataset] += pq.read_metadata(p).num_rows
    return {d: rows[d] for d in DATASETS}, sum(p.stat().st_size for p in files)


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
        command = "python bench/run.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        print(save("pipeline", command.strip(), {"summary": summary, "scaling": scaling}, text), file=sys.stderr)


if __name__ == "__main__":
    main()

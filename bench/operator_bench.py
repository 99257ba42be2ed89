"""The operator (`cryo-ingest request` + `cryo-ingest run`) against `cryo-ingest backfill` on the same range, in the same run.

Not named operator.py: `python bench/X.py` puts bench/ first on sys.path, and a bench/operator.py
would shadow the standard library's `operator` (enum imports it), breaking every benchmark here.

The DAG file is the spec's node (tests/test_config.py: SPEC_YAML) on the devnet's chain id, its
pool `monad` given as CRYO_INGEST_RPC_POOL_MONAD, plus chunk_size and chunks_per_partition.

1. Dispatcher overhead: blocks 0..N-1 (blocks, transactions, logs) with `backfill --config DAG
   --max-concurrency 2 --chunk-size C` and with `request` + `run` (idle_timeout 0,
   scaling.max_concurrency 2), each into a fresh root, in alternating order: wall time and peak
   RSS of the process tree; ratio operator / backfill.
2. Throughput with runners: the same range, requested, then 1 runner (max_concurrency 2) or
   2 runners (max_concurrency 1 each) started at once on one local root: wall time until every
   runner exits; blocks/s.
3. Claim latency: a runner with idle_timeout 60, idle after a warm-up request; each request
   (one chunk, a distinct one each) is written with `cryo-ingest request` at a phase spread over
   the poll interval, and timed from the request object's mtime (the command itself exits a few
   hundred ms after storing it) until the runner logs "partition … started" for it (its log read
   line by line in a thread, COLUMNS=400 so that rich does not wrap lines), and until "done".

With `--rate-limit N`, only 1., against the devnet behind a proxy that answers HTTP 429 above N
requests in any one-second window (tests/servers.py FaultProxy), as a provider's key does: the
runner then has time to spare, and its overhead should vanish into the provider's pace.

Every variant's cold/ files must be byte-identical to the backfill's (manifests included; the
latency runs' Parquet files against the same files), or the benchmark fails.

    .venv/bin/python bench/operator_bench.py [--blocks 2000] [--txs-per-block 10] [--chunk-size 100]
        [--chunks-per-partition 2] [--iterations 2] [--latency-requests 5] [--poll-seconds 2 0.5]
        [--rate-limit N] [--no-save]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from common import cached_chain, command_line, measure, save, spread
from servers import FaultProxy, Faults
from test_config import SPEC_YAML

PY = sys.executable
INGEST = str(Path(PY).parent / "cryo-ingest")
NODE = "cryo_backfill"
INPUT = "backfill_requests"  # the spec's input dataset
CHAIN_ID = 31337
DATASETS = ("blocks", "transactions", "logs")


@dataclass
class Setup:
    url: str
    blocks: int
    chunk: int
    per_partition: int

    def env(self) -> dict[str, str]:
        pool = {"endpoints": [{"name": "local", "url": self.url}]}
        return {"CRYO_INGEST_RPC_POOL_MONAD": json.dumps(pool), "COLUMNS": "400"}

    def dag(self, folder: Path, max_concurrency: int, idle_timeout: int, poll_seconds: float | None = None) -> Path:
        """The spec's node as written, on the devnet's chain, with the benchmark's grid and limits."""
        (node,) = yaml.safe_load(SPEC_YAML)
        node["idle_timeout"] = idle_timeout
        node["config"].update(chain_id=CHAIN_ID, chunk_size=self.chunk, chunks_per_partition=self.per_partition)
        if poll_seconds is not None:
            node["config"]["poll_seconds"] = poll_seconds
        node["scaling"]["max_concurrency"] = max_concurrency
        path = folder / "dag.yaml"
        path.write_text(yaml.safe_dump([node], sort_keys=False))
        return path


def backfill_cmd(s: Setup, dag: Path, root: Path) -> list[str]:
    rng = ["--start", "0", "--end", str(s.blocks - 1), "--chunk-size", str(s.chunk), "--max-concurrency", "2"]
    return [INGEST, "backfill", "--config", str(dag), *rng, "--root", str(root)]


def request_cmd(dag: Path, root: Path, start: int, end: int) -> list[str]:
    return [INGEST, "request", "--config", str(dag), "--root", str(root), "--start", str(start), "--end", str(end)]


def run_cmd(dag: Path, root: Path) -> list[str]:
    return [INGEST, "run", "--config", str(dag), "--root", str(root), "--node", NODE]


def runners_cmd(dag: Path, root: Path, logs: list[Path]) -> list[str]:
    """Every runner started at once (one per log file), each logging to its file; exit status: any failure."""
    run = shlex.join(run_cmd(dag, root))
    starts = " ".join(f"{run} 2>{shlex.quote(str(log))} & p{i}=$!;" for i, log in enumerate(logs))
    waits = " ".join(f"wait $p{i} || rc=1;" for i in range(len(logs)))
    return ["bash", "-c", f"rc=0; {starts} {waits} exit $rc"]


# ---- checks -------------------------------------------------------------------------------------


def cold_files(root: Path) -> dict[str, str]:
    """sha256 of every file under cold/ (Parquet and manifests), by path."""
    base = root / "cold"
    return {str(p.relative_to(base)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(base.rglob("*")) if p.is_file()}


def check_archive(root: Path, reference: dict[str, str], what: str, whole: bool = True) -> None:
    """The archive equals the backfill's byte for byte (`whole`), or each of its Parquet files does."""
    got = cold_files(root)
    if whole:
        if got != reference:
            differ = sorted(k for k in got.keys() | reference.keys() if got.get(k) != reference.get(k))
            raise SystemExit(f"{what}: cold/ differs from the backfill's: {differ[:10]}")
        return
    parquet = {k: v for k, v in got.items() if k.endswith(".parquet")}
    if not parquet or any(reference.get(k) != v for k, v in parquet.items()):
        raise SystemExit(f"{what}: Parquet files differ from the backfill's: {sorted(parquet)}")


def check_operator(root: Path, s: Setup, what: str) -> None:
    """Every request done, and one event per manifest entry."""
    # ended requests move to closed/; none may be left open
    open_ = [json.loads(p.read_text()) for p in (root / "operator" / NODE / "requests").glob("*.json")]
    states = open_ + [json.loads(p.read_text()) for p in (root / "operator" / NODE / "closed").glob("*.json")]
    if not states or open_ or any(st["state"] != "done" for st in states):
        raise SystemExit(f"{what}: requests not done: {states}")
    events = list((root / "datasets" / "cold_blocks" / "events" / str(CHAIN_ID)).rglob("*.json"))
    if len(events) != len(DATASETS) * s.blocks // s.chunk:
        raise SystemExit(f"{what}: {len(events)} events, expected {len(DATASETS) * s.blocks // s.chunk}")


def log_summary(text: str) -> dict[str, Any]:
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    noisy = [ln for ln in lines if ln.startswith(("WARNING", "ERROR")) or "Traceback" in ln]
    return {"lines": len(lines), "warnings": len(noisy), "first_warnings": noisy[:3]}


def load() -> float:
    return os.getloadavg()[0]


def ok(m: Any, what: str) -> None:
    if m.returncode != 0:
        raise SystemExit(f"{what} failed (exit {m.returncode}):\n{m.stderr[-3000:]}")


# ---- 1. dispatcher overhead ---------------------------------------------------------------------


def overhead(s: Setup, iterations: int) -> tuple[dict[str, Any], dict[str, str]]:
    runs: dict[str, list[dict[str, Any]]] = {"backfill": [], "operator": []}
    reference: dict[str, str] = {}
    for i in range(iterations):
        for variant in ["backfill", "operator"] if i % 2 == 0 else ["operator", "backfill"]:
            with tempfile.TemporaryDirectory(prefix=f"bench-op-{variant}-") as tmp:
                folder, root = Path(tmp), Path(tmp) / "archive"
                dag, before = s.dag(folder, max_concurrency=2, idle_timeout=0), load()
                if variant == "backfill":
                    m = measure(backfill_cmd(s, dag, root), env=s.env())
                    ok(m, "backfill")
                    run = {"seconds": m.seconds, "peak_rss": m.peak_rss, "log": log_summary(m.stderr)}
                else:
                    rq = measure(request_cmd(dag, root, 0, s.blocks - 1), env=s.env())
                    ok(rq, "request")
                    m = measure(run_cmd(dag, root), env=s.env())
                    ok(m, "run")
                    check_operator(root, s, "operator")
                    run = {
                        "seconds": rq.seconds + m.seconds,
                        "request_seconds": rq.seconds,
                        "run_seconds": m.seconds,
                        "peak_rss": max(rq.peak_rss, m.peak_rss),
                        "log": log_summary(m.stderr),
                    }
                if not reference:
                    if variant != "backfill":
                        raise AssertionError("the backfill runs first: it is the reference")
                    reference = cold_files(root)
                check_archive(root, reference, variant)
                runs[variant].append(run | {"load_before": before})
                print(f"overhead {variant:8} run {i + 1}: {run['seconds']:6.1f} s (load {before:.1f})", file=sys.stderr)
    summary: dict[str, Any] = {}
    for variant, rs in runs.items():
        summary[variant] = {
            "seconds": spread([r["seconds"] for r in rs]),
            "peak_rss_mb": round(max(r["peak_rss"] for r in rs) / 2**20, 1),
            "runs": rs,
        }
        if variant == "operator":
            summary[variant]["request_seconds"] = spread([r["request_seconds"] for r in rs])
            summary[variant]["run_seconds"] = spread([r["run_seconds"] for r in rs])
    return summary, reference


# ---- 2. throughput with runners -----------------------------------------------------------------


PARTITION_OK = re.compile(r"partition (\d+)-(\d+) ok")


def runners(s: Setup, iterations: int, reference: dict[str, str]) -> dict[str, Any]:
    shapes = {"1": (1, 2), "2": (2, 1)}  # runners: (how many, max_concurrency each)
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in shapes}
    for i in range(iterations):
        for key in ["1", "2"] if i % 2 == 0 else ["2", "1"]:
            n, concurrency = shapes[key]
            with tempfile.TemporaryDirectory(prefix=f"bench-op-runners{n}-") as tmp:
                folder, root = Path(tmp), Path(tmp) / "archive"
                dag = s.dag(folder, max_concurrency=concurrency, idle_timeout=0)
                rq = measure(request_cmd(dag, root, 0, s.blocks - 1), env=s.env())
                ok(rq, "request")
                logs, before = [folder / f"runner-{j}.log" for j in range(n)], load()
                m = measure(runners_cmd(dag, root, logs), env=s.env())
                texts = [log.read_text() for log in logs]
                if m.returncode != 0:
                    raise SystemExit(f"{n} runner(s) failed:\n" + "\n".join(t[-2000:] for t in texts))
                check_operator(root, s, f"{n} runner(s)")
                check_archive(root, reference, f"{n} runner(s)")
                partitions = [len(PARTITION_OK.findall(t)) for t in texts]
                runs[key].append(
                    {
                        "seconds": m.seconds,
                        "peak_rss": m.peak_rss,
                        "partitions_per_runner": partitions,
                        "logs": [log_summary(t) for t in texts],
                        "load_before": before,
                    }
                )
                print(
                    f"runners  {n} run {i + 1}: {m.seconds:6.1f} s, partitions {partitions} (load {before:.1f})", file=sys.stderr
                )
    summary: dict[str, Any] = {}
    for key, rs in runs.items():
        n, concurrency = shapes[key]
        secs = spread([r["seconds"] for r in rs])
        summary[key] = {
            "runners": n,
            "max_concurrency_each": concurrency,
            "seconds": secs,
            "blocks_per_second": round(s.blocks / secs["median"], 1),
            "peak_rss_mb": round(max(r["peak_rss"] for r in rs) / 2**20, 1),
            "partitions_per_runner": [r["partitions_per_runner"] for r in rs],
            "runs": rs,
        }
    return summary


# ---- 3. claim latency ---------------------------------------------------------------------------


class LogTail:
    """A process's merged stdout/stderr, read line by line in a thread, each line with its arrival time."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.seen: list[tuple[float, str]] = []
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.put((time.time(), line.rstrip()))  # wall clock: compared with the request object's mtime

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 120.0) -> float:
        """The arrival time (wall clock) of the next line matching `pattern`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                at, line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                tail = "\n".join(ln for _, ln in self.seen[-20:])
                raise SystemExit(f"no line matching {pattern.pattern!r} within {timeout:.0f} s; last lines:\n{tail}") from None
            self.seen.append((at, line))
            if pattern.search(line):
                return at


def write_request(dag: Path, root: Path, s: Setup, start: int, end: int) -> tuple[str, float, float, float]:
    """Write a request with the CLI: its id, when the command started, when the object was stored (its mtime;
    the command exits a few hundred ms later, sometimes after the runner has claimed it) and when it exited."""
    started = time.time()
    done = subprocess.run(request_cmd(dag, root, start, end), env={**os.environ, **s.env()}, capture_output=True, text=True)
    exited = time.time()
    if done.returncode != 0:
        raise SystemExit(f"request failed: {done.stderr[-2000:]}")
    rid = done.stdout.strip().split()[0]
    written = (root / "datasets" / INPUT / "events" / f"{rid}.json").stat().st_mtime
    return rid, started, written, exited


def latency(s: Setup, poll: float, requests: int, reference: dict[str, str]) -> dict[str, Any]:
    samples: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-op-latency-") as tmp:
        folder, root = Path(tmp), Path(tmp) / "archive"
        dag = s.dag(folder, max_concurrency=2, idle_timeout=60, poll_seconds=poll)
        proc = subprocess.Popen(
            run_cmd(dag, root),
            env={**os.environ, **s.env()},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        tail = LogTail(proc)
        try:
            warm, *_ = write_request(dag, root, s, 0, s.chunk - 1)  # the runner is up, its gateway too; then idle
            tail.wait_for(re.compile(rf"request {re.escape(warm)} done"))
            for j in range(requests):
                # Phases spread over the poll interval, counted from the runner's last pass (its "done" line).
                time.sleep((j + 0.5) / requests * poll)
                start = (j + 1) * s.chunk
                rid, cmd_started, written, exited = write_request(dag, root, s, start, start + s.chunk - 1)
                claimed = tail.wait_for(re.compile(rf"request {re.escape(rid)}: partition \d+-\d+ started"))
                done = tail.wait_for(re.compile(rf"request {re.escape(rid)} done"))
                sample = {
                    "written_to_started": claimed - written,
                    "command_to_started": claimed - cmd_started,
                    "request_command": exited - cmd_started,
                    "written_to_done": done - written,
                    "load": load(),
                }
                samples.append(sample)
                print(
                    f"latency  poll {poll} s, request {j + 1}: started {sample['written_to_started']:5.2f} s after the write, "
                    f"done {sample['written_to_done']:5.2f} s (load {sample['load']:.1f})",
                    file=sys.stderr,
                )
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
            tail.thread.join(timeout=10)
        while not tail.lines.empty():
            tail.seen.append(tail.lines.get())
        if code != 0:
            raise SystemExit(f"latency runner exited {code}:\n" + "\n".join(ln for _, ln in tail.seen[-20:]))
        check_archive(root, reference, f"latency (poll {poll} s)", whole=False)
        lines = "\n".join(ln for _, ln in tail.seen)
    return {
        "poll_seconds": poll,
        "requests": requests,
        **{
            k: spread([x[k] for x in samples])
            for k in ("written_to_started", "command_to_started", "request_command", "written_to_done")
        },
        "samples": samples,
        "log": log_summary(lines),
    }


# ---- report -------------------------------------------------------------------------------------


def fmt(w: dict[str, float], digits: int = 1) -> str:
    return f"{w['median']:.{digits}f} ({w['min']:.{digits}f}–{w['max']:.{digits}f})"


def markdown(
    s: Setup, txs: int, over: dict[str, Any], many: dict[str, Any], lat: list[dict[str, Any]], loads: list[float]
) -> str:
    base, op = over["backfill"], over["operator"]
    b_med = base["seconds"]["median"]
    span = s.chunk * s.per_partition
    lines = [
        f"### The operator against `backfill`: blocks 0..{s.blocks - 1:,} ({txs} transactions each), "
        f"blocks, transactions, logs; chunks of {s.chunk}, partitions of {span} blocks",
        "",
        "| variant | wall s (median, min–max) | × backfill | blocks/s | peak RSS MB | × backfill |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| `backfill --max-concurrency 2` | {fmt(base['seconds'])} | 1.00 | {s.blocks / b_med:.0f} "
        f"| {base['peak_rss_mb']:.0f} | 1.00 |",
        f"| `request` + `run` (max_concurrency 2) | {fmt(op['seconds'])} | {op['seconds']['median'] / b_med:.2f} "
        f"| {s.blocks / op['seconds']['median']:.0f} | {op['peak_rss_mb']:.0f} | {op['peak_rss_mb'] / base['peak_rss_mb']:.2f} |",
        f"| of which `request` | {fmt(op['request_seconds'])} | {op['request_seconds']['median'] / b_med:.2f} | | | |",
        f"| of which `run` | {fmt(op['run_seconds'])} | {op['run_seconds']['median'] / b_med:.2f} | | | |",
        "",
        "### Runners on one local root: the same range, requested first, wall time until every runner exits",
        "",
        "| runners | wall s (median, min–max) | × 1 runner | × backfill | blocks/s | peak RSS MB (all) | partitions per runner |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    one = many["1"]["seconds"]["median"]
    for r in many.values():
        per = "; ".join("/".join(str(p) for p in run) for run in r["partitions_per_runner"])
        lines.append(
            f"| {r['runners']} × max_concurrency {r['max_concurrency_each']} | {fmt(r['seconds'])} "
            f"| {r['seconds']['median'] / one:.2f} | {r['seconds']['median'] / b_med:.2f} | {r['blocks_per_second']:.0f} "
            f"| {r['peak_rss_mb']:.0f} | {per} |"
        )
    lines += [
        "",
        "### Claim latency: an idle runner (idle_timeout 60), one-chunk requests at phases spread over the poll interval",
        "",
        "| poll_seconds | requests | request stored → “partition … started” s (median, min–max) "
        "| `request` command start → started s | `request` command s | request stored → “done” s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for x in lat:
        lines.append(
            f"| {x['poll_seconds']:g} | {x['requests']} | {fmt(x['written_to_started'], 2)} | {fmt(x['command_to_started'], 2)} "
            f"| {fmt(x['request_command'], 2)} | {fmt(x['written_to_done'], 2)} |"
        )
    lines += [
        "",
        f"Archives: every variant's cold/ files are byte-identical to the backfill's (checked). "
        f"Iterations alternate the order. Load average (1 min) before the runs: {min(loads):.1f}–{max(loads):.1f} "
        "on 2 cores shared with other work: read the spread.",
    ]
    return "\n".join(lines)


def limited(args: argparse.Namespace) -> None:
    """Section 1 against an endpoint that answers 429 above `--rate-limit` requests a second."""
    with cached_chain(args.blocks, args.txs_per_block) as url, FaultProxy(url, Faults(rate_limit=args.rate_limit)) as proxy:
        s = Setup(proxy.url(), args.blocks, args.chunk_size, args.chunks_per_partition)
        over, _ = overhead(s, args.iterations)
    base, op = over["backfill"], over["operator"]
    b_med = base["seconds"]["median"]
    loads = [r["load_before"] for v in over.values() for r in v["runs"]]
    text = "\n".join(
        [
            f"### The operator against `backfill` behind a limit of {args.rate_limit} requests/s (429 beyond): "
            f"blocks 0..{s.blocks - 1:,} ({args.txs_per_block} transactions each), chunks of {s.chunk}, "
            f"partitions of {s.chunk * s.per_partition} blocks",
            "",
            "| variant | wall s (median, min–max) | × backfill |",
            "| --- | --- | --- |",
            f"| `backfill --max-concurrency 2` | {fmt(base['seconds'])} | 1.00 |",
            f"| `request` + `run` (max_concurrency 2) | {fmt(op['seconds'])} | {op['seconds']['median'] / b_med:.2f} |",
            "",
            f"Archives byte-identical (checked). Load average (1 min) before the runs: {min(loads):.1f}–{max(loads):.1f}.",
        ]
    )
    print(text)
    if not args.no_save:
        command = command_line()
        doc = {"blocks": args.blocks, "rate_limit": args.rate_limit, "overhead": over}
        print(save("operator-limited", command.strip(), doc, text), file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=2000)
    ap.add_argument("--txs-per-block", type=int, default=10)
    ap.add_argument("--chunk-size", type=int, default=100)
    ap.add_argument("--chunks-per-partition", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--latency-requests", type=int, default=5, help="requests per poll_seconds setting")
    ap.add_argument("--poll-seconds", type=float, nargs="+", default=[2.0, 0.5])
    ap.add_argument("--rate-limit", type=int, help="requests/s the endpoint allows (429 beyond): the overhead section only")
    ap.add_argument("--no-save", action="store_true", help="print only (a smoke run)")
    args = ap.parse_args()
    if args.blocks % args.chunk_size:
        ap.error("--blocks must be a multiple of --chunk-size (whole chunks only)")
    if args.latency_requests + 1 > args.blocks // args.chunk_size:
        ap.error("--latency-requests needs that many chunks (plus one for the warm-up) in --blocks")
    started = time.monotonic()
    # generate() mines 2 blocks past `blocks`: finalized (head - 2) covers 0..blocks, so every chunk is final.
    if args.rate_limit:
        limited(args)
        return
    with cached_chain(args.blocks, args.txs_per_block) as url:
        s = Setup(url, args.blocks, args.chunk_size, args.chunks_per_partition)
        over, reference = overhead(s, args.iterations)
        many = runners(s, args.iterations, reference)
        lat = [latency(s, poll, args.latency_requests, reference) for poll in args.poll_seconds]
    loads = [r["load_before"] for v in over.values() for r in v["runs"]]
    loads += [r["load_before"] for v in many.values() for r in v["runs"]]
    loads += [x["load"] for v in lat for x in v["samples"]]
    text = markdown(s, args.txs_per_block, over, many, lat, loads)
    print(text)
    print(f"total {time.monotonic() - started:.0f} s", file=sys.stderr)
    if not args.no_save:
        command = command_line()
        doc = {
            "blocks": args.blocks,
            "txs_per_block": args.txs_per_block,
            "chunk_size": args.chunk_size,
            "chunks_per_partition": args.chunks_per_partition,
            "overhead": over,
            "runners": many,
            "latency": lat,
            "load_average_1min": spread(loads) | {"mean": statistics.mean(loads)},
        }
        print(save("operator", command.strip(), doc, text), file=sys.stderr)


if __name__ == "__main__":
    main()

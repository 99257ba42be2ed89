"""What the benchmarks share: the cached devnet chain, the three tools' command lines (cryo-ingest,
raw Cryo, ethereum-etl) and their row counts, timing with the peak RSS of a process tree, and
writing results (JSON under bench/results, a section of docs/benchmarks.md)."""

from __future__ import annotations

import compileall
import csv
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / ".cache"
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
DATASETS = ("blocks", "transactions", "logs", "traces")
PY = sys.executable
INGEST = str(Path(PY).parent / "cryo-ingest")
ETL_VENV = CACHE / "etl-venv"
sys.path.insert(0, str(ROOT / "tests"))  # the counting/fault proxy of the tests serves here too

from cryo_ingest import devnet  # noqa: E402

# cryo-ingest measured as installed: pip writes an installed package's bytecode (raw Cryo's is), an
# editable one's is not written where PYTHONDONTWRITEBYTECODE is set (each process would compile it).
compileall.compile_dir(ROOT / "src", quiet=1)


@contextmanager
def cached_chain(blocks: int, txs_per_block: int) -> Iterator[str]:
    """An anvil node on the benchmark chain: generated once, then loaded from anvil's state dump.
    A longer chain already cached with as many transactions per block serves too (the chain is
    deterministic: its first blocks are the shorter chain's)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    longer = sorted((n, p) for p in CACHE.glob(f"chain-*x{txs_per_block}.json") if (n := int(p.stem[6:].split("x")[0])) >= blocks)
    state = longer[0][1] if longer else CACHE / f"chain-{blocks}x{txs_per_block}.json"
    if not state.exists():
        tmp = state.with_suffix(".tmp")
        started = time.monotonic()
        with devnet.anvil(dump_state=tmp) as node:
            devnet.generate_sync(node.url, blocks, txs_per_block)
        tmp.rename(state)
        print(f"generated chain {blocks}x{txs_per_block} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    with devnet.anvil(load_state=state) as node:
        yield node.url


def etl_bin() -> Path:
    """ethereum-etl 2.4.2 in its own venv, exactly as pinned (its parsimonious pin breaks on 3.11: see the file)."""
    exe = ETL_VENV / "bin" / "ethereumetl"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(ETL_VENV)], check=True)
        pip = [str(ETL_VENV / "bin" / "pip"), "install", "-q", "--no-deps", "-r", str(ROOT / "bench" / "etl-requirements.txt")]
        subprocess.run(pip, check=True)
    return exe


def raw_cryo(
    url: str, out: Path, blocks: int, chunk: int, datasets: Sequence[str] = DATASETS, requests_per_second: int | None = None
) -> list[str]:
    """`cryo.freeze` of blocks 0..blocks-1, all columns; at most `requests_per_second` where given (Cryo's own limiter)."""
    code = (
        f"import cryo; r = cryo.freeze({list(datasets)!r}, "
        f"blocks=['0:{blocks}'], rpc={url!r}, output_dir={str(out)!r}, chunk_size={chunk}, "
        f"requests_per_second={requests_per_second!r}, "
        "include_columns=['all'], no_report=True, verbose=False); assert r['n_errored'] == 0, r"
    )
    return [PY, "-c", code]


def ingest(url: str | None, out: Path, blocks: int, chunk: int, *pool: str, datasets: Sequence[str] = DATASETS) -> list[str]:
    """cryo-ingest on blocks 0..blocks-1; `pool` (e.g. --rpc-pool NAME) where `url` is None."""
    rpc = ["--rpc", url] if url else list(pool)
    args = ["--chain-id", "31337", "--start", "0", "--end", str(blocks - 1), "--datasets", ",".join(datasets)]
    return [INGEST, "backfill", *args, *rpc, "--root", str(out), "--chunk-size", str(chunk)]


def etl(url: str, out: Path, blocks: int, chunk: int, datasets: Sequence[str] = DATASETS) -> list[str]:
    """ethereum-etl's exports for `datasets` (blocks and transactions always; receipts for logs; traces) as CSV.

    `chunk` is not used: ethereum-etl has its own batches."""
    e, rng = shlex.quote(str(etl_bin())), f"--start-block 0 --end-block {blocks - 1} --provider-uri {url}"
    steps = [
        f"cd {shlex.quote(str(out))}",
        f"{e} export_blocks_and_transactions {rng} --blocks-output blocks.csv --transactions-output transactions.csv",
    ]
    if "logs" in datasets:
        steps += [
            f"{e} extract_csv_column --input transactions.csv --column hash --output hashes.txt",
            f"{e} export_receipts_and_logs --transaction-hashes hashes.txt --provider-uri {url} "
            "--receipts-output receipts.csv --logs-output logs.csv",
        ]
    if "traces" in datasets:
        steps.append(f"{e} export_traces {rng} --output traces.csv")
    return ["bash", "-c", " && ".join(steps)]


def rows_and_bytes(tool: str, out: Path, datasets: Sequence[str] = DATASETS) -> tuple[dict[str, int], int]:
    """Rows per dataset in a tool's output (Parquet, or ethereum-etl's CSV) and the bytes of all its files."""
    rows: Counter[str] = Counter()
    files = [p for p in out.rglob("*") if p.is_file() and ".cryo" not in p.parts]
    for p in files:
        if tool == "ethereum_etl" and p.suffix == ".csv" and p.stem in datasets:
            with p.open() as f:
                rows[p.stem] += sum(1 for _ in csv.reader(f)) - 1
        elif p.suffix == ".parquet":
            dataset = p.name.split("__")[1] if tool == "raw_cryo" else p.parent.name
            rows[dataset] += pq.read_metadata(p).num_rows
    return {d: rows[d] for d in datasets}, sum(p.stat().st_size for p in files)


@dataclass
class Measured:
    seconds: float
    peak_rss: int  # bytes, the whole process tree
    returncode: int
    stderr: str
    cpu_seconds: float = 0.0  # user + sys of the process and its descendants (steadier than wall time on a loaded machine)


def measure(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Measured:
    """Wall time, CPU time and peak RSS summed over the process and all its descendants (RSS sampled
    every 20 ms).

    stderr goes to a file, not a pipe: a pipe read only at the end blocks a tool that logs more than
    its buffer (ethereum-etl logs a traceback for each HTTP 429)."""
    started, before = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        root = psutil.Process(proc.pid)
        peak = 0
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                rss = 0
                for p in tree:
                    with suppress(psutil.Error):  # a process may end between listing and reading it
                        rss += p.memory_info().rss
                peak = max(peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.02)
        err.seek(0)
        stderr = err.read()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the process is waited for: its CPU, and its children's, are counted
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return Measured(time.monotonic() - started, peak, proc.returncode, stderr, cpu)


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def command_line() -> str:
    """The command that ran this benchmark, as docs/benchmarks.md names it."""
    return f"python bench/{Path(sys.argv[0]).name} {shlex.join(sys.argv[1:])}".strip()


def save(name: str, command: str, doc: dict[str, Any], markdown: str) -> Path:
    """bench/results/{name}-{time}.json, and the section `name` of docs/benchmarks.md replaced."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(json.dumps({"command": command, "machine": machine(), "at": stamp, **doc}, indent=1) + "\n")
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    m = machine()
    section = (
        f"{begin}\n{markdown.strip()}\n\nMeasured {stamp} on {m['cores']} cores, {m['memory_gib']} GiB, "
        f"Python {m['python']}; raw data: `bench/results/{path.name}`.\nCommand: `{command}`\n{end}"
    )
    if begin in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    DOC.write_text(text)
    return path

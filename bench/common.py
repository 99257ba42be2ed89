"""What the benchmarks share: the cached devnet chain, timing with the peak RSS of a process tree,
and writing results (JSON under bench/results, a section of docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / ".cache"
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
sys.path.insert(0, str(ROOT / "tests"))  # the counting/fault proxy of the tests serves here too

from cryo_ingest import devnet  # noqa: E402


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


@dataclass
class Measured:
    seconds: float
    peak_rss: int  # bytes, the whole process tree
    returncode: int
    stderr: str
    cpu_seconds: float = 0.0  # user + sys of the process and its descendants (steadier than wall time on a loaded machine)


def measure(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Measured:
    """Wall time and peak RSS summed over the process and all its descendants, sampled every 20 ms."""
    started, before = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(
        cmd, env={**os.environ, **(env or {})}, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
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
    stderr = proc.stderr.read() if proc.stderr else ""
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

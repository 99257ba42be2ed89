"""A year of Monad on the store (issue 19): what the operator pays for its history, against an empty root.

A synthetic year is built on a root, then the same operations are measured on an empty root and
on the year's, on the local filesystem and on a local S3 server (moto) behind a proxy that adds
20 ms to each request (as S3 itself costs) and counts requests by kind:

- runner start-up: `Runner._tick` in-process, first turn (the intake's start-up scan);
- idle poll: the next turns of the same runner, nothing open (median of `--polls`);
- threshold tick: `sources.Archived` + `catch_up_range` (first tick, then a warm one);
- `cryo-ingest status --json --no-rpc` and `cryo-ingest request` (a one-chunk request at the tip);
- tip request stored -> done: `cryo-ingest run` with idle_timeout 0 on that request, and its peak RSS
  (the runner's process alone, and with the partition's process).

The chain is an anvil devnet whose genesis is numbered to be the tip (`anvil --number`): the year's
archive holds chunks 0 .. tip-1 of 1,000 blocks, the devnet blocks tip .. tip+1004 (one transaction
each), so the tip request extracts real blocks next to 79 M archived ones.

The synthetic year (`--chunks` chunks of 1,000 blocks per dataset; the last is the tip, left to the
tip request; default 79,000), built with the code's own functions and formats:
- manifests of blocks, transactions and logs: `manifest.encode_shard`/`encode_index`, the index's
  `complete` list as `manifest.add` leaves it (shards of 1,000 entries; the last shard has 999 and is
  not); the schema and Cryo version are those the empty-root tip run wrote. FAKED: sha256, rows and
  bytes of each entry, and the blocks entries carry no `first_parent_hash`/`last_block_hash` (so the
  continuity check `manifest.continuity_breaks` has nothing to compare against at the tip); the
  Parquet files do not exist (nothing measured reads them: plans and status read manifests only);
- `--requests` done threshold requests (default 8,000) covering the chunks in order, created over
  the 365 days up to now (one every ~66 minutes): request objects under
  `datasets/backfill_requests/events/{id}.json` (the body as `datasets.put` encodes it), their
  arrivals under `datasets/backfill_requests/arrivals/{day}/...` (`datasets.arrival_key`, at the
  request's creation time), their ended states moved to `operator/{node}/closed/` and counted in
  `summary.json` by `requests.close` (in batches of 20, as runners would close them), and the
  arrivals point the last runner noted there when it stopped (`requests.note_arrivals`);
- the events they left: `events.emit` of `events.for_entries` per request and dataset, one object
  per entry under `datasets/cold_blocks/events/31337/{dataset}/{start:012}-{sha[:16]}.json`
  (their `uri` names the local root the year was built on: nothing reads it);
- `--leases` leftover lease objects (default 3,000) under `operator/{node}/leases/`, released
  (owner none), as the layout before 2fd5488 left one per cell ever run.

The year is built once on the local filesystem, then copied into the S3 server's backend in-process
(moto's `put_object`, no HTTP), before anything is measured on either copy. Storage requests: on
S3, what the proxy saw (HTTP requests, a 304 counted apart; one LIST per page of 1,000 keys); on
the local root, calls of the Store's methods (bench/storecount.py, in every process of a command).
moto lists a prefix by scanning every key of the bucket: here it lists from a sorted index of the
names instead (`index_moto_listing`, same results), and its own time serving the requests is
reported beside the wall times (it still spends a fraction of a second serializing a LIST page of
1,000 keys). moto's objects are frozen out of the garbage collector once copied in.

    .venv/bin/python bench/scale.py [--chunks 79000] [--requests 8000] [--leases 3000] [--polls 5]
        [--stores local s3] [--latency-ms 20] [--moto-scan] [--keep DIR] [--smoke] [--no-save]

About 3 minutes on 2 cores (the year's build: about 1 minute on the local root, 30 s into moto,
1.3 GB of memory in this process for moto's copy); `--smoke` under a minute.

`--smoke`: 3,000 chunks, 300 requests, 100 leases, nothing saved.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import psutil
import storecount
import yaml
from aiohttp import web
from common import command_line, save
from servers import Proxy, S3Server, s3_env
from test_config import SPEC_YAML

from cryo_ingest import devnet
from cryo_ingest.archive import events, manifest
from cryo_ingest.archive.manifest import Entry, Manifest
from cryo_ingest.archive.storage import Store, open_store
from cryo_ingest.operator import datasets, intake, requests, sources
from cryo_ingest.operator.dag import Pools, load_dag
from cryo_ingest.operator.executor import Local
from cryo_ingest.operator.node import Runner

PY = sys.executable
INGEST = str(Path(PY).parent / "cryo-ingest")
BENCH = Path(__file__).resolve().parent
NODE = "cryo_backfill"
INPUT = "backfill_requests"
OUTPUT = "cold_blocks"
SOURCE = "monad_threshold"
CHAIN_ID = 31337
CHUNK = 1000
DATASETS = ("blocks", "transactions", "logs")
KINDS = ("GET", "GET_304", "PUT", "LIST", "HEAD", "DELETE", "POST")
OPS = ("startup", "idle_poll", "tick_first", "tick", "status", "request", "tip_run")
LABELS = {
    "startup": "runner start-up (first `_tick`: intake scan)",
    "idle_poll": "idle poll (`_tick`, median)",
    "tick_first": "threshold tick, first (cold views)",
    "tick": "threshold tick (warm)",
    "status": "`status --json --no-rpc`",
    "request": "`request` (one chunk at the tip)",
    "tip_run": "`run` (idle_timeout 0): tip request stored → done",
}


# ---- the counting proxy --------------------------------------------------------------------------


class CountingS3Proxy(Proxy):
    """In front of the S3 server: `delay` seconds added to every request; requests counted by kind and key pattern."""

    relay_encoded = True

    def __init__(self, upstream: str, delay: float) -> None:
        super().__init__()
        self.upstream, self.delay = upstream, delay
        self.counts: Counter[str] = Counter()
        self.keys: Counter[str] = Counter()
        self.upstream_seconds: dict[str, float] = {}
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return self.server.url

    def reset(self) -> None:
        with self.lock:
            self.counts, self.keys, self.upstream_seconds = Counter(), Counter(), {}

    def take(self) -> tuple[Counter[str], Counter[str], dict[str, float]]:
        with self.lock:
            got = (self.counts, self.keys, self.upstream_seconds)
            self.counts, self.keys, self.upstream_seconds = Counter(), Counter(), {}
        return got

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        await asyncio.sleep(self.delay)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("content-length", "transfer-encoding")}
        started = time.monotonic()
        async with self.client().request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body, allow_redirects=False
        ) as resp:
            data = await resp.read()
            status = resp.status
            drop = (
                ("transfer-encoding", "connection")
                if request.method == "HEAD"
                else ("content-length", "transfer-encoding", "connection")
            )
            out = {k: v for k, v in resp.headers.items() if k.lower() not in drop}
        spent = time.monotonic() - started
        key = request.path.lstrip("/").partition("/")[2]  # path-style: /{bucket}/{key}
        if request.method == "GET" and ("list-type" in request.query or not key):
            kind, key = "LIST", request.query.get("prefix", "")
        elif request.method == "GET":
            kind = "GET_304" if status == 304 else "GET"
        elif request.method == "POST" and "delete" in request.query:
            kind = "DELETE"  # DeleteObjects: how obstore deletes a key
        else:
            kind = request.method
        with self.lock:
            self.counts[kind] += 1
            self.keys[f"{kind} {storecount.pattern(key)}"] += 1
            self.upstream_seconds[kind] = self.upstream_seconds.get(kind, 0.0) + spent
        if request.method == "HEAD":  # the object's Content-Length, which obstore needs, and no body
            return web.Response(status=status, headers=out)
        return web.Response(status=status, body=data, headers=out)


def index_moto_listing() -> None:
    """moto lists a prefix by copying and scanning every key of the bucket (0.45 s a LIST at 264,000
    keys, where S3 answers from an index in tens of ms): its `list_objects` is swapped here for one
    over a sorted index of each bucket's key names, kept up to date as keys come and go, with the
    same results. `--moto-scan` keeps moto's own."""
    from bisect import bisect_left, insort

    from moto.s3.models import FakeDeleteMarker, S3Backend
    from moto.s3.utils import _VersionedKeyStore

    store_cls: Any = _VersionedKeyStore
    backend_cls: Any = S3Backend
    set_item, set_list, pop = store_cls.__setitem__, store_cls.setlist, store_cls.pop

    def names(keys: Any) -> list[str]:
        if "_names" not in keys.__dict__:
            keys._names = sorted(dict.keys(keys))
        return list(keys._names)

    def added(keys: Any, key: str, fresh: bool) -> None:
        if fresh and "_names" in keys.__dict__:
            insort(keys._names, key)

    def setitem(self: Any, key: str, value: Any) -> Any:
        fresh = not dict.__contains__(self, key)
        set_item(self, key, value)
        added(self, key, fresh)

    def setlist(self: Any, key: str, list_: Any) -> Any:
        fresh = not dict.__contains__(self, key)
        set_list(self, key, list_)
        added(self, key, fresh)

    def pop_(self: Any, key: str) -> None:
        pop(self, key)
        if "_names" in self.__dict__:
            i = bisect_left(self._names, key)
            if i < len(self._names) and self._names[i] == key:
                del self._names[i]

    def delitem(self: Any, key: str) -> None:
        dict.__delitem__(self, key)
        if "_names" in self.__dict__:
            i = bisect_left(self._names, key)
            if i < len(self._names) and self._names[i] == key:
                del self._names[i]

    def list_objects(self: Any, bucket: Any, prefix: Any, delimiter: Any, marker: Any, max_keys: Any) -> Any:
        prefix = prefix or ""
        key_results: list[Any] = []
        folder_results: set[str] = set()
        all_names = names(bucket.keys)
        for name in all_names[bisect_left(all_names, prefix) :]:
            if not name.startswith(prefix):
                break
            rest = name[len(prefix) :]
            if delimiter and delimiter in rest:
                folder_results.add(f"{prefix}{rest.split(delimiter)[0]}{delimiter}")
                continue
            key = bucket.keys.get(name)
            if key is not None and not isinstance(key, FakeDeleteMarker):
                key_results.append(key)
        if marker:
            key_results = self._get_results_from_token(key_results, self._pagination_tokens.get(marker) or marker)
        if max_keys is not None:
            key_results, is_truncated, next_marker = self._truncate_result(key_results, max_keys)
        else:
            is_truncated, next_marker = False, None
        return key_results, sorted(folder_results), is_truncated, next_marker

    store_cls.__setitem__, store_cls.setlist, store_cls.pop, store_cls.__delitem__ = setitem, setlist, pop_, delitem
    backend_cls.list_objects = list_objects


# ---- the devnet ---------------------------------------------------------------------------------


@contextmanager
def tip_devnet(genesis: int, blocks: int) -> Iterator[str]:
    """anvil with its genesis numbered `genesis` (finalized = head - 2), `blocks` more blocks of one transaction each."""
    with devnet.anvil(chain_id=CHAIN_ID, genesis=genesis) as node:
        started = time.monotonic()
        devnet.generate_sync(node.url, blocks, 1)
        print(f"devnet: blocks {genesis}..{genesis + blocks + 2} in {time.monotonic() - started:.0f} s", file=sys.stderr)
        yield node.url


# ---- the synthetic year -------------------------------------------------------------------------


@dataclass
class Year:
    chunks: int  # per dataset, the tip included (the year holds chunks 0 .. chunks-2)
    requests: int
    leases: int

    @property
    def tip(self) -> int:
        return (self.chunks - 1) * CHUNK

    def request_chunks(self, i: int) -> tuple[int, int]:
        """Request i's first and last chunk (indexes), the archived chunks split evenly in order."""
        archived = self.chunks - 1
        return i * archived // self.requests, (i + 1) * archived // self.requests - 1


def fake_sha(dataset: str, start: int) -> str:
    return hashlib.sha256(f"{dataset}-{start}".encode()).hexdigest()


def entry(dataset: str, start: int) -> Entry:
    return Entry(
        path=f"{dataset}_{start:08}_{start + CHUNK - 1:08}.parquet",
        start_block=start,
        end_block=start + CHUNK - 1,
        rows=1000,
        bytes=100_000,
        sha256=fake_sha(dataset, start),
    )


def build_year(store: Store, root: str, year: Year, schemas: dict[str, tuple[list[dict[str, str]], str]]) -> dict[str, Any]:
    """The year's objects on `store` (a local root); how long each part took, and how many objects."""
    took: dict[str, float] = {}
    objects = Counter[str]()
    t = time.monotonic()
    for d in DATASETS:
        schema, cryo_version = schemas[d]
        m = Manifest(CHAIN_ID, d, CHUNK, schema, cryo_version)
        shards: dict[str, dict[int, Entry]] = {}
        for k in range(year.chunks - 1):
            shards.setdefault(manifest.shard_path(k * CHUNK, CHUNK), {})[k * CHUNK] = entry(d, k * CHUNK)
        for path, files in shards.items():
            store.put(f"cold/{CHAIN_ID}/{d}/{path}", manifest.encode_shard(m, files))
        complete = [p for p, files in shards.items() if len(files) == manifest.SHARD_CHUNKS]
        store.put(manifest.key(CHAIN_ID, d), manifest.encode_index(m, list(shards), complete))
        objects["manifest"] += len(shards) + 1
    took["manifests"] = time.monotonic() - t

    t = time.monotonic()
    now = datetime.now(UTC)
    first = now - timedelta(days=365)
    step = timedelta(days=365) / year.requests
    states: list[requests.State] = []

    def one(i: int) -> requests.State:
        lo, hi = year.request_chunks(i)
        created = first + step * (i + 1) - timedelta(minutes=2)
        rid = f"threshold-{SOURCE}-{lo * CHUNK}-{hi * CHUNK + CHUNK - 1}"
        req = datasets.make_request(
            id=rid,
            kind="threshold",
            source=SOURCE,
            chain_id=CHAIN_ID,
            start_block=lo * CHUNK,
            end_block=hi * CHUNK + CHUNK - 1,
            created_at=created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        body = json.dumps(req.model_dump(mode="json"), sort_keys=True).encode() + b"\n"  # as datasets.put writes it
        store.put_new(datasets.key(INPUT, rid), body)
        store.put_new(datasets.arrival_key(INPUT, rid, created), b"")
        sinks = events.Sinks(OUTPUT, root, None, to_store=True, request_id=rid)
        evs = [
            ev
            for d in DATASETS
            for ev in events.for_entries(sinks, CHAIN_ID, d, [entry(d, k * CHUNK) for k in range(lo, hi + 1)])
        ]
        events.emit(evs, sinks, store)
        done_at = (created + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return requests.State(rid, "done", "", done_at, "synthetic-runner", INPUT)

    with ThreadPoolExecutor(max_workers=4) as pool:
        states = list(pool.map(one, range(year.requests)))
    objects["request"] = objects["arrival"] = year.requests
    objects["event"] = 3 * (year.chunks - 1)
    took["requests_arrivals_events"] = time.monotonic() - t

    t = time.monotonic()
    for i in range(0, len(states), requests.RECENT):  # as runners close them: a few at a time
        requests.close(store, NODE, states[i : i + requests.RECENT])
    objects["closed"] = len(states)
    objects["summary"] = 1
    # what the runner that closed the last request noted at its stop: arrivals taken in up to its last
    # poll (the request's end) less the intake's look-back
    last_poll = datetime.strptime(states[-1].updated_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    requests.note_arrivals(store, NODE, {INPUT: (last_poll - intake.MARGIN).isoformat()})
    for j in range(year.leases):
        cell = j * (year.chunks - 1) // max(1, year.leases)
        rid = states[j * year.requests // max(1, year.leases)].id
        lease = requests.Lease(cell, None, 0.0, rid, 0)
        store.put(requests.lease_key(NODE, cell), requests._dump(lease))  # the lease format, as release() left it
    objects["lease"] = year.leases
    took["closed_summary_leases"] = time.monotonic() - t
    return {"seconds": took, "objects": dict(objects), "total_objects": sum(objects.values())}


def copy_to_moto(local: Path, bucket: str) -> tuple[int, float]:
    """Every file under `local` into the moto backend of this process (no HTTP); (objects, seconds)."""
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    started, n = time.monotonic(), 0
    for dirpath, dirnames, filenames in os.walk(local):
        dirnames[:] = [x for x in dirnames if x != ".locks"]
        for name in filenames:
            path = Path(dirpath) / name
            backend.put_object(bucket, str(path.relative_to(local)), path.read_bytes())
            n += 1
    return n, time.monotonic() - started


# ---- the operations -----------------------------------------------------------------------------


@dataclass
class Target:
    """A root to measure, on one store: how to count its requests and the environment of its commands."""

    store: str  # "local" or "s3"
    root: str
    env: dict[str, str]
    proxy: CountingS3Proxy | None = None
    counts_dir: Path | None = None

    def begin(self) -> Any:
        if self.proxy is not None:
            self.proxy.reset()
            return None
        return storecount.snapshot()

    def end(self, before: Any) -> dict[str, Any]:
        if self.proxy is not None:
            counts, keys, upstream = self.proxy.take()
            return {"counts": dict(counts), "keys": dict(keys), "upstream_seconds": dict(upstream)}
        counts, keys = storecount.since(before)
        return {"counts": dict(counts), "keys": dict(keys)}

    def cli_env(self) -> dict[str, str]:
        env = dict(self.env)
        if self.store == "local":
            assert self.counts_dir is not None
            for p in self.counts_dir.glob("*.txt"):
                p.unlink()
            env["SCALE_COUNTS_DIR"] = str(self.counts_dir)
            env["PYTHONPATH"] = os.pathsep.join([str(self.counts_dir.parent / "site"), str(BENCH)])
        return env

    def cli_counts(self) -> dict[str, Any]:
        if self.proxy is not None:
            return self.end(None)
        assert self.counts_dir is not None
        counts, keys = storecount.collect(self.counts_dir)
        return {"counts": dict(counts), "keys": dict(keys)}


def dag_file(folder: Path) -> Path:
    (node,) = yaml.safe_load(SPEC_YAML)
    node["idle_timeout"] = 0
    node["config"].update(chain_id=CHAIN_ID, chunk_size=CHUNK, chunks_per_partition=1)
    node["scaling"]["max_concurrency"] = 2
    path = folder / "dag.yaml"
    path.write_text(yaml.safe_dump([node], sort_keys=False))
    return path


def pool_env(url: str) -> dict[str, str]:
    return {"CRYO_INGEST_RPC_POOL_MONAD": json.dumps({"endpoints": [{"name": "local", "url": url}]}), "COLUMNS": "400"}


@dataclass
class Ran:
    seconds: float
    code: int
    stdout: str
    stderr: str
    rss_runner: int
    rss_tree: int


def run_cli(cmd: list[str], env: dict[str, str]) -> Ran:
    """Wall time and peak RSS (the process alone, and with its children) sampled every 20 ms."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=out, stderr=err)
        root = psutil.Process(proc.pid)
        peak_self = peak_tree = 0
        children: dict[int, psutil.Process] = {}
        while proc.poll() is None:
            with suppress(psutil.Error):
                own = root.memory_info().rss
                tree = own
                for c in root.children(recursive=True):
                    children.setdefault(c.pid, c)
                    with suppress(psutil.Error):
                        tree += c.memory_info().rss
                peak_self, peak_tree = max(peak_self, own), max(peak_tree, tree)
            time.sleep(0.02)
        seconds = time.monotonic() - started
        # its children (a partition, spares) may outlive it by a moment: their counts are written at their exit
        psutil.wait_procs(list(children.values()), timeout=30)
        out.seek(0)
        err.seek(0)
        return Ran(seconds, proc.returncode, out.read(), err.read(), peak_self, peak_tree)


def timed(target: Target, fn: Callable[[], Any]) -> tuple[dict[str, Any], Any]:
    before = target.begin()
    started = time.monotonic()
    value = fn()
    seconds = time.monotonic() - started
    return {"seconds": seconds, **target.end(before)}, value


def measure_root(target: Target, dag: Path, url: str, tip: int, polls: int) -> dict[str, Any]:
    """Every operation on one root, in order: runner start-up and idle polls, threshold ticks, status, request, tip run."""
    out: dict[str, Any] = {}
    saved = {k: os.environ.get(k) for k in target.env}
    os.environ.update(target.env)
    try:
        d = load_dag(dag, target.root)
        node = d.node(NODE)
        job = d.job(node, Pools())
        stop = threading.Event()
        runner = Runner(node, job, Local(job), stop, 0.0)
        with runner.executor:
            final = runner.executor.final_head()
            out["startup"], _ = timed(target, runner._tick)
            ticks = [timed(target, runner._tick)[0] for _ in range(polls)]
            ticks.sort(key=lambda t: t["seconds"])
            out["idle_poll"] = ticks[len(ticks) // 2] | {
                "all_seconds": [t["seconds"] for t in ticks],
                "all_requests": [sum(t["counts"].values()) for t in ticks],
            }
        archived = sources.Archived(open_store(job.root, job.storage_options), job)
        out["tick_first"], first_range = timed(target, lambda: sources.catch_up_range(archived, final, 0))
        out["tick"], rng = timed(target, lambda: sources.catch_up_range(archived, final, 0))
        out["tick"]["range"] = list(rng)
        out["tick_first"]["range"] = list(first_range)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    common = ["--config", str(dag), "--root", target.root]
    env = target.cli_env()
    target.begin()
    st = run_cli([INGEST, "status", *common, "--json", "--no-rpc"], env)
    if st.code != 0:
        raise SystemExit(f"status failed on {target.store} {target.root}:\n{st.stderr[-3000:]}")
    out["status"] = {"seconds": st.seconds, "rss_mb": st.rss_runner / 2**20, **target.cli_counts()}
    doc = json.loads(st.stdout)["nodes"][0]
    out["status"]["requests_counts"] = doc["requests"]["counts"]
    env = target.cli_env()
    target.begin()
    rq = run_cli([INGEST, "request", *common, "--start", str(tip), "--end", str(tip + CHUNK - 1)], env)
    if rq.code != 0:
        raise SystemExit(f"request failed on {target.store}:\n{rq.stderr[-3000:]}")
    out["request"] = {"seconds": rq.seconds, **target.cli_counts()}
    rid = rq.stdout.strip().split()[0]
    env = target.cli_env()
    target.begin()
    run = run_cli([INGEST, "run", *common, "--node", NODE], env)
    if run.code != 0:
        raise SystemExit(f"run failed on {target.store}:\n{run.stderr[-5000:]}")
    out["tip_run"] = {
        "seconds": run.seconds,
        "rss_runner_mb": run.rss_runner / 2**20,
        "rss_tree_mb": run.rss_tree / 2**20,
        **target.cli_counts(),
    }
    if f"request {rid} done" not in run.stderr:
        raise SystemExit(f"the tip request {rid} did not end done on {target.store}:\n{run.stderr[-5000:]}")
    return out


def schemas_of(store: Store) -> dict[str, tuple[list[dict[str, str]], str]]:
    got = {}
    for d in DATASETS:
        data = store.get(manifest.key(CHAIN_ID, d))
        assert data is not None, f"no {d} manifest after the empty-root tip run"
        index = json.loads(data)
        got[d] = (index["schema"], index["cryo_version"])
    return got


# ---- report -------------------------------------------------------------------------------------


def kinds(x: dict[str, Any]) -> str:
    c = x["counts"]
    return ", ".join(f"{k} {c[k]}" for k in KINDS if c.get(k)) or "none"


def total(x: dict[str, Any]) -> int:
    return int(sum(x["counts"].values()))


def secs(x: dict[str, Any]) -> str:
    """Wall seconds; on S3, with moto's own time serving the requests (summed: concurrent requests overlap)."""
    if "upstream_seconds" not in x:
        return f"{x['seconds']:.2f}"
    return f"{x['seconds']:.2f} (moto {sum(x['upstream_seconds'].values()):.2f})"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else ("1.00" if a == b else "∞")


def markdown(results: dict[str, dict[str, Any]], year: Year, build: dict[str, Any], latency_ms: float) -> str:
    lines = [
        f"### A year of Monad (issue 19): {year.chunks - 1:,} chunks of {CHUNK:,} blocks × 3 datasets, "
        f"{year.requests:,} done requests, {year.leases:,} leftover leases; empty root beside it",
        "",
        "| store | operation | empty: requests | empty s | year: requests | year s | × requests | × s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for store, by_root in results.items():
        name = "local" if store == "local" else f"S3 + {latency_ms:g} ms"
        for op in OPS:
            e, y = by_root["empty"][op], by_root["year"][op]
            lines.append(
                f"| {name} | {LABELS[op]} | {total(e)} ({kinds(e)}) | {secs(e)} | {total(y)} ({kinds(y)}) "
                f"| {secs(y)} | {ratio(total(y), total(e))} | {ratio(y['seconds'], e['seconds'])} |"
            )
    lines += [
        "",
        "| store | root | `run` peak RSS MB: runner | runner + partition | `status` peak RSS MB |",
        "| --- | --- | --- | --- | --- |",
    ]
    for store, by_root in results.items():
        for root in ("empty", "year"):
            r = by_root[root]
            lines.append(
                f"| {store} | {root} | {r['tip_run']['rss_runner_mb']:.0f} | {r['tip_run']['rss_tree_mb']:.0f} "
                f"| {r['status']['rss_mb']:.0f} |"
            )
    took = build["seconds"]
    lines += [
        "",
        "Requests on S3: what the proxy saw (one LIST per page of 1,000 keys; GET_304: a conditional GET answered "
        "304). On the local root: calls of the Store's methods in every process of the command. “moto”: the S3 "
        "server's own time serving the requests, summed (concurrent requests overlap: `status` reads 16 at a time); "
        "moto spends 0.2–0.7 s (measured here) serializing a LIST page of 1,000 keys, where S3 answers one in tens of ms.",
        "",
        f"Build of the year: {build['total_objects']:,} objects on the local root in "
        f"{sum(took.values()):.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in took.items())})"
        + (f"; copied into moto in {build['moto_seconds']:.0f} s" if "moto_seconds" in build else "")
        + ".",
    ]
    return "\n".join(lines)


def targets(results: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for store, by_root in results.items():
        y, e = by_root["year"], by_root["empty"]
        poll = y["idle_poll"]
        tip_s = e["request"]["seconds"] + e["tip_run"]["seconds"]
        tip_y = y["request"]["seconds"] + y["tip_run"]["seconds"]
        tip_rq_e, tip_rq_y = total(e["request"]) + total(e["tip_run"]), total(y["request"]) + total(y["tip_run"])
        checks = [
            (f"idle poll ≤ 20 requests: {total(poll)} (each poll: {poll['all_requests']})", max(poll["all_requests"]) <= 20),
            (
                f"idle poll ≤ 1 s: {poll['seconds']:.2f} s (slowest {max(poll['all_seconds']):.2f} s)",
                max(poll["all_seconds"]) <= 1.0,
            ),
            (f"tip request time ≤ 1.5× or +5 s: {tip_y:.1f} s vs {tip_s:.1f} s", tip_y <= max(1.5 * tip_s, tip_s + 5)),
            (f"tip request storage requests ≤ 1.5×: {tip_rq_y} vs {tip_rq_e}", tip_rq_y <= 1.5 * tip_rq_e),
            (f"status ≤ 3 s: {y['status']['seconds']:.2f} s", y["status"]["seconds"] <= 3.0),
            (f"runner RSS ≤ 400 MB: {y['tip_run']['rss_runner_mb']:.0f} MB", y["tip_run"]["rss_runner_mb"] <= 400),
        ]
        out += [f"- {store}: {'met' if ok else 'MISSED'}: {what}" for what, ok in checks]
        if store == "s3":  # the tip request's requests are sequential: moto's time can be taken out of the wall time
            moto_e = sum(sum(e[op].get("upstream_seconds", {}).values()) for op in ("request", "tip_run"))
            moto_y = sum(sum(y[op].get("upstream_seconds", {}).values()) for op in ("request", "tip_run"))
            out.append(
                f"- s3: tip request less moto's own time: {tip_y - moto_y:.1f} s vs {tip_s - moto_e:.1f} s "
                f"({(tip_y - moto_y) / (tip_s - moto_e):.2f}×)"
            )
    return out


# ---- main ---------------------------------------------------------------------------------------


SITE = "import storecount\nstorecount.install_from_env()\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=79_000, help="chunks per dataset, the tip's included")
    ap.add_argument("--requests", type=int, default=8000)
    ap.add_argument("--leases", type=int, default=3000)
    ap.add_argument("--polls", type=int, default=5)
    ap.add_argument("--stores", nargs="+", default=["local", "s3"], choices=["local", "s3"])
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--smoke", action="store_true", help="3,000 chunks, 300 requests, 100 leases; nothing saved")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--moto-scan", action="store_true", help="moto's own listing (a scan of every key), not an index")
    ap.add_argument("--keep", type=Path, help="build under this folder and keep it")
    args = ap.parse_args()
    if args.smoke:
        args.chunks, args.requests, args.leases, args.no_save = 3000, 300, 100, True
    command = command_line()
    print(command, file=sys.stderr)
    year = Year(args.chunks, args.requests, args.leases)
    storecount.install()
    if not args.moto_scan:
        index_moto_listing()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's access log
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {s: {} for s in args.stores}
    work = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.keep))
    try:
        (work / "site").mkdir()
        (work / "site" / "sitecustomize.py").write_text(SITE)
        counts_dir = work / "counts"
        counts_dir.mkdir()
        dag = dag_file(work)
        with tip_devnet(year.tip, CHUNK + 5) as url, S3Server() as s3:
            env = pool_env(url)
            os.environ.update({k: v for k, v in s3.env.items() if k.startswith("AWS_") and k != "AWS_ENDPOINT_URL"})
            client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
            with CountingS3Proxy(s3.endpoint, args.latency_ms / 1000) as proxy:
                s3_env_proxy = s3_env(proxy.url)

                def target(store: str, name: str) -> Target:
                    if store == "local":
                        return Target("local", str(work / name), env, None, counts_dir)
                    bucket = f"bench-scale-{name}"
                    client.create_bucket(Bucket=bucket)
                    return Target("s3", f"s3://{bucket}", {**env, **s3_env_proxy}, proxy)

                # 1. the empty roots (the local one first: its manifests give the year its schema)
                empty = {s: target(s, "empty") for s in args.stores}
                for s in args.stores:
                    results[s]["empty"] = measure_root(empty[s], dag, url, year.tip, args.polls)
                    print(f"{s} empty: done ({time.monotonic() - started:.0f} s)", file=sys.stderr)
                os.environ["AWS_ENDPOINT_URL"] = s3.endpoint  # an S3 root read directly, not through the proxy
                schemas = schemas_of(open_store(empty[args.stores[0]].root))
                del os.environ["AWS_ENDPOINT_URL"]
                # 2. the year: built on a local root, copied into moto before anything is measured
                year_root = work / "year"
                store = open_store(str(year_root))
                build = build_year(store, str(year_root), year, schemas)
                print(f"year built: {build} ({time.monotonic() - started:.0f} s)", file=sys.stderr)
                year_targets = {"local": Target("local", str(year_root), env, None, counts_dir)}
                if "s3" in args.stores:
                    year_targets["s3"] = target("s3", "year")
                    n, build["moto_seconds"] = copy_to_moto(year_root, "bench-scale-year")
                    build["moto_objects"] = n
                    print(f"copied {n:,} objects into moto in {build['moto_seconds']:.0f} s", file=sys.stderr)
                # moto's million objects out of the collector's sight: else a full collection (seconds, with
                # the GIL held) stalls the S3 server and the proxy, which live in this process, now and then
                gc.collect()
                gc.freeze()
                for s in args.stores:
                    results[s]["year"] = measure_root(year_targets[s], dag, url, year.tip, args.polls)
                    print(f"{s} year: done ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    text = markdown(results, year, build, args.latency_ms)
    checks = targets(results)
    text += "\n\nTargets (issue 19, year against empty):\n\n" + "\n".join(checks)
    print(text)
    print(f"total {time.monotonic() - started:.0f} s", file=sys.stderr)
    doc = {"year": vars(year), "latency_ms": args.latency_ms, "build": build, "results": results, "targets": checks}
    if args.no_save:
        out = work.parent / f"scale-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
        out.write_text(json.dumps(doc, indent=1, default=str))
        print(f"raw data: {out}", file=sys.stderr)
    else:
        print(save("scale", command.strip(), doc, text), file=sys.stderr)


if __name__ == "__main__":
    main()

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from cryo_ingest import backfill as backfill_api
from cryo_ingest import devnet, make_job
from cryo_ingest.archive import manifest as manifest_module
from cryo_ingest.archive.storage import open_store

sys.path.insert(0, str(Path(__file__).parent))
from emulators import Azurite, FakeGcs
from servers import S3Server

CANARY = "CANARY-SECRET-123"
DEVNET_BLOCKS = 250
CHUNK = 50


def rpc(url: str, method: str, *params: Any) -> Any:
    req = urllib.request.Request(
        url,
        json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode(),
        {"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())["result"]


@dataclass
class Devnet:
    url: str
    chain: devnet.Chain


@pytest.fixture(scope="session")
def chain() -> Iterator[Devnet]:
    """A deterministic devnet of 250 blocks (+2 so all are final), shared by the session."""
    with devnet.anvil() as node:
        yield Devnet(node.url, devnet.generate_sync(node.url, DEVNET_BLOCKS, 10))


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def cli(*args: str, env: dict[str, str] | None = None) -> Run:
    """The real `cryo-ingest` console script in its own process."""
    return run_command([str(Path(sys.executable).parent / "cryo-ingest"), *args], env)


def run_command(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 240) -> Run:
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200", **(env or {})}, timeout=timeout)
    return Run(p.returncode, p.stdout, p.stderr)


ALL = "blocks,transactions,logs,traces"


def backfill_command(
    root: Path | str,
    rpc: str | None,
    *extra: str,
    start: int = 0,
    end: int = DEVNET_BLOCKS - 1,
    datasets: str = ALL,
    chunk: int = CHUNK,
    chain_id: int = 31337,
) -> list[str]:
    """`cryo-ingest backfill` on the devnet's grid; `rpc` None when `extra` names a pool instead."""
    args = ["--chain-id", str(chain_id), "--start", str(start), "--end", str(end), "--datasets", datasets]
    args += ["--root", str(root), "--chunk-size", str(chunk)] + (["--rpc", rpc] if rpc else [])
    return [str(Path(sys.executable).parent / "cryo-ingest"), "backfill", *args, *extra]


def backfill(root: Path | str, rpc: str | None, *extra: str, env: dict[str, str] | None = None, **kw: Any) -> Run:
    return run_command(backfill_command(root, rpc, *extra, **kw), env)


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def without_provenance(files: dict[str, bytes]) -> dict[str, object]:
    """An archive less its provenance (which endpoints served each chunk, docs/manifest.md: a run's own): the files' bytes, the
    manifests' documents."""
    return {
        k: {key: v for key, v in json.loads(data).items() if key != "sources"} if k.endswith(".json") else data
        for k, data in files.items()
    }


def archive_blocks(url: str, chain_id: int, first: int, last: int, datasets: list[str], root: Path, chunk_size: int = 1) -> Any:
    """A backfill through the Python API, in this process: how the tests archive a few blocks of a replay node."""
    job = make_job(
        chain_id=chain_id, start_block=first, end_block=last, datasets=datasets, rpc=[url], root=str(root), chunk_size=chunk_size
    )
    return backfill_api(job)


def manifest_doc(root: str, chain_id: int, dataset: str) -> dict[str, Any]:
    """What the manifest says (index and shards, through the package's one reader), as plain JSON values."""
    m = manifest_module.load(open_store(root), chain_id, dataset)
    assert m is not None, f"no manifest for {dataset}"
    doc = {k: getattr(m, k) for k in ("chain_id", "dataset", "chunk_size", "schema", "cryo_version")}
    return doc | {"files": [m.files[k].to_json() for k in sorted(m.files)]}


def manifest(root: Path, chain_id: int, dataset: str) -> dict[str, Any]:
    return manifest_doc(str(root), chain_id, dataset)


@dataclass
class S3:
    endpoint: str
    env: dict[str, str]

    def bucket(self, name: str) -> str:
        boto3.client("s3").create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3() -> Iterator[S3]:
    """moto's S3 server on loopback: real HTTP, SigV4-signed requests, conditional writes."""
    with S3Server() as server:
        os.environ.update(server.env)  # for the test process's own reads of the archive
        yield S3(server.endpoint, server.env)


@dataclass
class Backend:
    """An archive root on one storage backend, and the environment a CLI run needs for it."""

    name: str
    root: str
    env: dict[str, str]

    def snapshot(self) -> dict[str, bytes]:
        """Every object under cold/ (what readers can see), by key."""
        store = open_store(self.root)
        return {key: store.get(key) or b"" for key in sorted(store.list("cold/"))}

    def manifest(self, chain_id: int, dataset: str) -> dict[str, Any]:
        return manifest_doc(self.root, chain_id, dataset)


@pytest.fixture(scope="session")
def gcs() -> Iterator[FakeGcs]:
    """fake-gcs-server on loopback (behind a shim for obstore's XML-API PUT): generation preconditions."""
    with FakeGcs() as server:
        os.environ.update(server.env)
        yield server


@pytest.fixture(scope="session")
def azure() -> Iterator[Azurite]:
    """Azurite's blob service on loopback: If-None-Match / If-Match on Put Blob."""
    with Azurite() as server:
        os.environ.update(server.env)
        yield server


def remote_backend(request: pytest.FixtureRequest, name: str) -> Backend:
    """A fresh bucket (container) on the server of `name`, archive under a prefix."""
    bucket = f"cold-{uuid.uuid4().hex[:16]}"
    if name == "s3":
        s3: S3 = request.getfixturevalue("s3")
        return Backend("s3", f"s3://{s3.bucket(bucket)}/archive", s3.env)
    server: FakeGcs | Azurite = request.getfixturevalue(name)
    return Backend(name, f"{'gs' if name == 'gcs' else 'az'}://{server.bucket(bucket)}/archive", server.env)


@pytest.fixture(params=["local", "s3", "gcs", "azure"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        return Backend("local", str(tmp_path / "archive"), {})
    return remote_backend(request, request.param)


@pytest.fixture(params=["s3", "gcs", "azure"])
def cloud(request: pytest.FixtureRequest) -> Backend:
    """The object stores only: where compare-and-swap is the server's conditional write."""
    return remote_backend(request, request.param)

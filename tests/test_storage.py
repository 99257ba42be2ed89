"""Object storage: the same cases on the local filesystem and on S3 (moto), GCS and Azure emulators on loopback."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import conftest
import obstore
import pytest
from conftest import S3, Backend, Devnet, Run, backfill_command, cli
from obstore.exceptions import PreconditionError
from obstore.store import S3Store
from servers import AuthS3Server, S3FaultProxy

from cryo_ingest import devnet
from cryo_ingest.archive import manifest, storage
from cryo_ingest.archive.storage import open_store
from cryo_ingest.errors import ConfigError, ConflictError, StorageError
from cryo_ingest.pipeline.plan import Chunk
from cryo_ingest.pipeline.publish import CRASH_ENV, CRASH_POINTS, Staged, publish
from cryo_ingest.pipeline.validate import Facts
from cryo_ingest.verify.gc import gc
from cryo_ingest.verify.orphans import list_orphans

if TYPE_CHECKING:
    from obstore import UpdateVersion

DATASETS = "blocks,transactions,logs,traces"


def backfill(
    backend: Backend, url: str, *extra: str, end: int = 149, datasets: str = DATASETS, env: dict[str, str] | None = None
) -> Run:
    return conftest.backfill(backend.root, url, *extra, end=end, datasets=datasets, env={**backend.env, **(env or {})})


@pytest.fixture(scope="module")
def clean(chain: Devnet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The archive of an uninterrupted run on the local filesystem: every backend must match it byte for byte."""
    b = Backend("local", str(tmp_path_factory.mktemp("clean") / "archive"), {})
    assert backfill(b, chain.url).code == 0
    return b.snapshot()


def check_consistent(backend: Backend) -> None:
    """The manifest parses and names only complete objects whose sha256 matches."""
    store = open_store(backend.root)
    for dataset in DATASETS.split(","):
        m = manifest.load(store, 31337, dataset)
        for entry in m.files.values() if m else []:
            obj = store.get(f"cold/31337/{dataset}/{entry.path}")
            assert obj is not None and hashlib.sha256(obj).hexdigest() == entry.sha256 and len(obj) == entry.bytes


def test_end_to_end_and_rerun(backend: Backend, chain: Devnet, clean: dict[str, bytes]) -> None:
    run = backfill(backend, chain.url)
    assert run.code == 0, run.text
    assert backend.snapshot() == clean  # byte-identical on every backend
    check_consistent(backend)
    rerun = backfill(backend, chain.url, "--force", "--json")
    assert rerun.code == 0, rerun.text
    forced = json.loads(rerun.out)
    assert forced["done"] == [] and forced["published"] == []  # every chunk redone, none changed
    # every block extracted again: its block, receipts and traces, and one eth_getLogs a chunk
    assert forced["gateway"]["rpc-0"]["requests"] >= 3 * 150 + 3
    assert backend.snapshot() == clean  # files and manifest byte-identical
    listed = cli("ls", backend.root, "--chain-id", "31337", "--files", env=backend.env)
    assert listed.code == 0
    assert len(listed.out.strip().splitlines()) == 4 * 3
    assert "transactions_00000100_00000149.parquet" in listed.out


def unlisted_shards(backend: Backend) -> list[str]:
    """Shards stored under cold/ that their dataset's index does not list (readers do not see them)."""
    store = open_store(backend.root)
    unlisted = []
    for key in store.list("cold/"):
        folder, sep, name = key.partition("/manifest/")
        if sep:
            index = store.get(folder + "/manifest.json")
            if index is None or "manifest/" + name not in json.loads(index)["shards"]:
                unlisted.append(key)
    return unlisted


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_killed_at_each_publishing_step(point: str, backend: Backend, chain: Devnet, clean: dict[str, bytes]) -> None:
    killed = backfill(backend, chain.url, env={CRASH_ENV: point})
    assert killed.code == 1
    assert "worker process died" in killed.text
    check_consistent(backend)  # every listed shard is there, every listed file complete
    # mid-index: the first dataset's new shard is written, and the index does not list it yet
    expected = ["cold/31337/blocks/manifest/00000000_00049999.json"] if point == "mid-index" else []
    assert unlisted_shards(backend) == expected
    resumed = backfill(backend, chain.url)
    assert resumed.code == 0, resumed.text
    assert backend.snapshot() == clean


@pytest.fixture(scope="module")
def reorged() -> Iterator[str]:
    """The URL of a node with the same chain id and another history: a reorg as the archive sees it."""
    with devnet.anvil() as other:
        devnet.generate_sync(other.url, 120, 3)
        yield other.url


@pytest.mark.parametrize("point", [p for p in CRASH_POINTS if p != "mid-index"])  # a replacement makes no new shard
def test_killed_at_each_step_of_a_replacement(point: str, chain: Devnet, reorged: str, tmp_path: Path) -> None:
    """`--overwrite-conflicts` stores the new bytes under a new name: killed anywhere, each entry names the old
    file or the new one, both whole; the old files are never touched (time travel reads them)."""
    b = Backend("local", str(tmp_path / "archive"), {})
    assert backfill(b, chain.url, end=99, datasets="blocks,txs").code == 0
    old = b.snapshot()
    entries = {d: b.manifest(31337, d)["files"] for d in ("blocks", "transactions")}
    killed = backfill(b, reorged, "--force", "--overwrite-conflicts", end=99, datasets="blocks,txs", env={CRASH_ENV: point})
    assert killed.code == 1 and "worker process died" in killed.text
    check_consistent(b)
    listed = {d: b.manifest(31337, d)["files"] for d in entries}
    assert all(len(listed[d]) == len(entries[d]) for d in entries)  # none missing
    assert {k: v for k, v in b.snapshot().items() if k in old and "/manifest" not in k} == {
        k: v for k, v in old.items() if "/manifest" not in k
    }
    resumed = backfill(b, reorged, "--force", "--overwrite-conflicts", end=99, datasets="blocks,txs")
    assert resumed.code == 0, resumed.text
    check_consistent(b)
    for dataset, was in entries.items():
        now = b.manifest(31337, dataset)["files"]
        renamed = [f"{w['path'].removesuffix('.parquet')}.r{n['sha256'][:12]}.parquet" for w, n in zip(was, now, strict=True)]
        assert [n["path"] for n in now] == renamed


def test_gc_counts_a_replaced_files_grace_from_its_replacement(chain: Devnet, reorged: str, tmp_path: Path) -> None:
    """A chunk first stored ten days ago and replaced now: its old file is an orphan the table's earlier
    snapshots may read, kept for the grace period from the replacement, then deleted; the new file stays."""
    b = Backend("local", str(tmp_path / "archive"), {})
    assert backfill(b, chain.url, end=49, datasets="blocks").code == 0
    (first,) = b.manifest(31337, "blocks")["files"]
    old_file = Path(b.root) / "cold/31337/blocks" / first["path"]
    long_ago = time.time() - 10 * 86400
    os.utime(old_file, (long_ago, long_ago))
    assert backfill(b, reorged, "--force", "--overwrite-conflicts", end=49, datasets="blocks").code == 0
    (entry,) = b.manifest(31337, "blocks")["files"]
    (orphan,) = list_orphans(open_store(b.root), 31337, "blocks").orphans
    assert orphan.key == f"cold/31337/blocks/{first['path']}" and orphan.blocks == (0, 49) and orphan.replaced_at
    assert orphan.since == orphan.replaced_at > orphan.last_modified
    kept = gc(open_store(b.root), 31337, timedelta(hours=1), ("blocks",))
    assert kept.kept_young == [orphan] and kept.deleted == [] and old_file.exists()
    later = gc(open_store(b.root), 31337, timedelta(hours=1), ("blocks",), now=datetime.now(UTC) + timedelta(hours=2))
    assert later.deleted == [orphan] and not old_file.exists()
    assert (Path(b.root) / "cold/31337/blocks" / entry["path"]).exists()
    assert list_orphans(open_store(b.root), 31337, "blocks").orphans == []


def test_stored_object_with_other_bytes_is_a_conflict(backend: Backend, chain: Devnet) -> None:
    store = open_store(backend.root)
    key = "cold/31337/blocks/blocks_00000050_00000099.parquet"
    store.put(key, b"not what the chain says")
    run = backfill(backend, chain.url, datasets="blocks")
    assert run.code == 1
    assert "conflict" in run.text and key in run.text
    assert store.get(key) == b"not what the chain says"
    assert store.get("cold/31337/blocks/manifest.json") is None  # the conflict stops its partition: nothing recorded
    repaired = backfill(backend, chain.url, "--overwrite-conflicts", datasets="blocks")
    assert repaired.code == 0, repaired.text
    entries = backend.manifest(31337, "blocks")["files"]
    assert [e["start_block"] for e in entries] == [0, 50, 100]
    check_consistent(backend)


def test_twenty_concurrent_writers_one_manifest(cloud: Backend, chain: Devnet) -> None:
    procs = [
        subprocess.Popen(
            backfill_command(
                cloud.root,
                chain.url,
                "--json",
                "--max-concurrency",
                "1",
                start=10 * i,
                end=10 * i + 9,
                datasets="blocks",
                chunk=10,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **cloud.env},
        )
        for i in range(20)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    retries = [json.loads(out)["cas_retries"] for out, _ in outputs]
    starts = [e["start_block"] for e in cloud.manifest(31337, "blocks")["files"]]
    assert starts == [10 * i for i in range(20)]
    # On moto the writers meet on the shard (about 45 precondition retries a run): compare-and-swap really
    # turned writers away. Azurite and fake-gcs serve them too slowly to meet reliably; that each refuses
    # a stale update is proven deterministically by test_the_server_enforces_conditional_writes.
    if cloud.name == "s3":
        assert sum(retries) > 0, retries
    print(f"20 concurrent writers on {cloud.name}: {sum(retries)} precondition retries")


def test_the_server_enforces_conditional_writes(cloud: Backend) -> None:
    """Create-only and replace-if-unchanged, asked of each server directly: compare-and-swap is its check, not ours."""
    store = open_store(cloud.root)
    assert store.put_new("cold/k", b"one") is True
    assert store.put_new("cold/k", b"two") is False  # S3/Azure If-None-Match: *, GCS ifGenerationMatch=0
    seen = obstore.get(store.store, "cold/k").meta
    stale: UpdateVersion = {"e_tag": seen["e_tag"]}
    if seen["version"] is not None:  # GCS: the generation; S3 (unversioned) and Azure: the ETag alone
        stale["version"] = seen["version"]
    obstore.put(store.store, "cold/k", b"three", mode=stale)  # unchanged since read: accepted
    with pytest.raises(PreconditionError):  # changed since read: refused (If-Match, ifGenerationMatch=N)
        obstore.put(store.store, "cold/k", b"four", mode=stale)
    assert store.get("cold/k") == b"three"


def test_storage_faults_are_retried(s3: S3, chain: Devnet, clean: dict[str, bytes]) -> None:
    bucket = s3.bucket("cold-faulty")
    with S3FaultProxy(s3.endpoint, http_500=0.1, http_503=0.1, drop=0.1) as proxy:
        b = Backend("s3", f"s3://{bucket}/archive", {**s3.env, "AWS_ENDPOINT_URL": proxy.url})
        run = backfill(b, chain.url)
    assert run.code == 0, run.text
    assert sum(proxy.injected.values()) > 5
    assert Backend("s3", f"s3://{bucket}/archive", s3.env).snapshot() == clean


def test_missing_bucket_is_a_clear_error(s3: S3, chain: Devnet) -> None:
    b = Backend("s3", "s3://no-such-bucket/archive", s3.env)
    run = backfill(b, chain.url)
    assert run.code == 1
    assert "storage: cannot list cold/" in run.text and "404" in run.text


def test_wrong_credentials_are_a_clear_error(chain: Devnet, tmp_path: Path) -> None:
    """moto in its own process enforcing auth (up before the run): an unknown key gets 403, exit 1."""
    with AuthS3Server(devnet.free_port()) as server:
        env = {
            "AWS_ENDPOINT_URL": server.endpoint,
            "AWS_ACCESS_KEY_ID": "AKIAUNKNOWNKEY000000",
            "AWS_SECRET_ACCESS_KEY": "not-the-secret",
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }
        run = conftest.backfill("s3://locked/archive", chain.url, env=env)
    assert run.code == 1, run.text
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    expected = (
        r"error: storage: cannot list cold/: GenericError: Generic S3 error: Error performing list request: "
        rf"Error performing GET {re.escape(server.endpoint)}/locked\?list-type=2&prefix=archive%2Fcold%2F in [\d.]+m?s "
        r"- Server returned non-2xx status code: 403 Forbidden: <\?xml version=\"1.0\" encoding=\"utf-8\"\?>"
    )
    assert re.fullmatch(expected, lines[0]), lines[0]


@pytest.mark.parametrize(
    ("root", "store_class"),
    [("gs://bucket/prefix", "GCSStore"), ("az://container/prefix", "AzureStore"), ("s3://bucket/prefix", "S3Store")],
)
def test_cloud_roots_build_their_store(root: str, store_class: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "devaccount")
    store = open_store(root)
    assert type(store.store).__name__ == store_class
    assert store.local_dir is None


def test_bad_store_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="invalid config: root: cannot open s3://bucket"):
        open_store("s3://bucket", {"no_such_option": "x"})


def test_two_writers_of_a_large_object_one_wins(cloud: Backend, tmp_path: Path) -> None:
    """A chunk file over 64 MiB (where writes were once unconditional multipart uploads) published by
    two writers at once with other bytes: one conditional request each, so one wins and records it,
    the other finds the winner's bytes under the key and stops on a conflict; the manifest names the
    bytes that are stored."""
    first = os.urandom(65 * 1024 * 1024)
    files = [tmp_path / "first.parquet", tmp_path / "second.parquet"]
    files[0].write_bytes(first)
    files[1].write_bytes(first[:-1] + bytes([first[-1] ^ 1]))
    del first
    barrier = threading.Barrier(2)

    def write(path: Path) -> str:
        store = open_store(cloud.root)  # a client each, as two workers would have
        staged = [Staged("blocks", Chunk(0, 49), path, Facts(rows=50, schema=[]))]
        barrier.wait(timeout=30)
        try:
            publish(store, 31337, 50, staged, {}, overwrite_conflicts=False)
            return "published"
        except ConflictError:
            return "conflict"

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(write, files))
    assert sorted(outcomes) == ["conflict", "published"], outcomes
    winner = files[outcomes.index("published")].read_bytes()
    store = open_store(cloud.root)
    stored = store.get("cold/31337/blocks/blocks_00000000_00000049.parquet")
    m = manifest.load(store, 31337, "blocks")
    assert m is not None and [e.sha256 for e in m.files.values()] == [hashlib.sha256(winner).hexdigest()]
    assert stored == winner


def test_an_object_above_one_request_is_refused(s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(storage.SINGLE_PUT_LIMITS, S3Store, 1024)  # S3's 5 GiB, made small
    store = open_store(f"s3://{s3.bucket('cold-limit')}")
    for write in (store.put_new, store.put):
        with pytest.raises(StorageError, match=r"cannot write cold/k: 1025 bytes, above the 1024 bytes that S3Store writes"):
            write("cold/k", os.urandom(1025))
    assert store.put_new("cold/k", os.urandom(1024)) is True  # at the limit: written


def test_a_partition_with_a_file_above_one_request_publishes_nothing(
    s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal names a chunk_size that fits and comes before the first upload: not even the
    partition's smaller files go up, and no manifest is written."""
    store = open_store(f"s3://{s3.bucket('cold-too-large')}")
    monkeypatch.setitem(storage.SINGLE_PUT_LIMITS, S3Store, 1024)
    staged = []
    for dataset, size in (("blocks", 100), ("transactions", 5000)):
        path = tmp_path / f"{dataset}.parquet"
        path.write_bytes(os.urandom(size))
        staged.append(Staged(dataset, Chunk(0, 49), path, Facts(rows=1, schema=[])))
    with pytest.raises(StorageError) as err:
        publish(store, 31337, 50, staged, {}, overwrite_conflicts=False)
    assert str(err.value) == (
        "storage: transactions chunk 0-49 is 5000 bytes, above the 1024 bytes one request writes to S3Store: "
        "use a chunk_size of at most 10 (now 50); nothing published"
    )
    assert store.list("") == []
    # the large file archived already, byte for byte (as before the limit): not uploaded again, not refused
    small, large = (s.entry(s.path.read_bytes()) for s in staged)
    obstore.put(store.store, f"cold/31337/transactions/{large.path}", staged[1].path.read_bytes())
    manifest.add(store, 31337, "transactions", 50, [], [large], False)
    archived = {"transactions": manifest.load(store, 31337, "transactions")}
    assert publish(store, 31337, 50, staged, archived, overwrite_conflicts=False) == [("blocks", small)]

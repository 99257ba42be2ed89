"""The archive as Iceberg tables (issue 23): real catalogs (SQLite, and a PostgreSQL server started here), a real
devnet archive made by `cryo-ingest backfill`, the real `cryo-ingest catalog sync`; read back with pyiceberg and Polars."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import daft
import duckdb
import polars as pl
import psycopg2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import CANARY, S3, Devnet, backfill, cli, files_under, manifest, manifest_doc
from pyiceberg.conversions import from_bytes
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.types import LongType, NestedField, StringType
from servers import PostgresServer
from test_config import SPEC_YAML

from cryo_ingest import devnet
from cryo_ingest.archive import catalog
from cryo_ingest.archive import manifest as manifest_module
from cryo_ingest.archive.storage import open_store, sha256
from cryo_ingest.faults import CRASH_ENV, CRASH_SCOPE_ENV
from cryo_ingest.verify.gc import gc

CRYO = str(Path(sys.executable).parent / "cryo-ingest")
PASSWORD = f"pw-{CANARY}"  # must never be printed
DATASETS = ("blocks", "transactions", "logs", "traces")


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer(PASSWORD) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh catalog per test: a SQLite file, or a database of its own on the PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/catalog.db"
    server: PostgresServer = request.getfixturevalue("postgres")
    name = f"t{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(server.url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    conn.close()
    return server.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="module")
def archived(chain: Devnet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The devnet's 250 blocks, every dataset, archived once; tests take copies."""
    root = tmp_path_factory.mktemp("archived") / "root"
    run = backfill(root, chain.url)
    assert run.code == 0, run.text
    return root


def sync(root: Path | str, url: str, *extra: str) -> dict[str, dict[str, Any]]:
    run = cli("catalog", "sync", str(root), "--chain-id", "31337", "--catalog", url, "--json", *extra)
    assert run.code == 0, run.text
    assert PASSWORD not in run.text
    return {t["dataset"]: t for t in json.loads(run.out)["tables"]}


def table(root: Path | str, url: str, dataset: str) -> Table:
    return catalog.open_catalog(url, str(root)).load_table(f"cold_31337.{dataset}")


def snapshots(root: Path, url: str, dataset: str) -> int | None:
    """How many snapshots the dataset's table has; None when there is no table."""
    try:
        return len(table(root, url, dataset).snapshots())
    except NoSuchTableError:
        return None


def paths(root: Path | str, dataset: str) -> set[str]:
    return {f"{root}/cold/31337/{dataset}/{e['path']}" for e in manifest_doc(str(root), 31337, dataset)["files"]}


def as_longs(frame: pl.DataFrame) -> pl.DataFrame:
    """Unsigned columns as the table's longs."""
    unsigned = [n for n, t in frame.schema.items() if t in (pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64)]
    return frame.with_columns(pl.col(unsigned).cast(pl.Int64))


def by_glob(root: Path | str, dataset: str) -> pl.DataFrame:
    """The archive as a glob reads it (an archive without replaced chunks: a glob reads those twice until gc)."""
    return as_longs(pl.read_parquet(f"{root}/cold/31337/{dataset}/*.parquet"))


def by_manifest(root: Path | str, dataset: str) -> pl.DataFrame:
    """The archive as its manifest's file list reads it (docs/reading.md): exact after a replacement too."""
    return as_longs(pl.read_parquet(sorted(paths(root, dataset))))


def same_rows(a: pl.DataFrame, b: pl.DataFrame) -> bool:
    return a.columns == b.columns and a.sort(pl.all()).equals(b.sort(pl.all()))


def scan_iceberg(t: Table) -> pl.LazyFrame:
    """Polars through pyiceberg's reader: Polars' own refuses to read a uint64 Parquet column as the table's long."""
    return pl.scan_iceberg(t, reader_override="pyiceberg")


def check_in_step(root: Path, url: str) -> None:
    """Live files equal the manifest's entries; pyiceberg's scan and Polars' scan_iceberg read what the glob reads."""
    for dataset in DATASETS:
        t = table(root, url, dataset)
        assert set(catalog.live_files(t)) == paths(root, dataset), dataset
        glob = by_glob(root, dataset)
        scanned = pl.from_arrow(t.scan().to_arrow())
        assert isinstance(scanned, pl.DataFrame)
        assert same_rows(scanned, glob), dataset
        assert same_rows(scan_iceberg(t).collect(), glob), dataset
    gas = scan_iceberg(table(root, url, "transactions")).select(pl.col("gas_used").sum()).collect().item()
    assert gas == by_glob(root, "transactions")["gas_used"].sum() > 0


def test_backfill_then_sync_registers_every_file_in_place(archived: Path, catalog_url: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(archived, root)
    before = files_under(root / "cold")
    changed = sync(root, catalog_url)
    assert {d: sorted(c["added"]) for d, c in changed.items()} == {
        d: sorted(e["path"] for e in manifest(root, 31337, d)["files"]) for d in DATASETS
    }
    assert files_under(root / "cold") == before  # registered where they are: nothing copied, rewritten or added
    assert (root / "iceberg" / "cold_31337" / "blocks" / "metadata").is_dir()
    check_in_step(root, catalog_url)
    t = table(root, catalog_url, "blocks")
    assert len(t.snapshots()) == 1  # one commit per dataset and sync, not per chunk
    assert str(t.spec().fields[0].transform) == "truncate[50000]"  # a manifest shard's span: chunk 50 x 1000
    # A block range skips files by the bounds taken from the manifest (Cryo's files carry no min/max).
    planned = [task.file.file_path for task in t.scan(row_filter="block_number >= 120 and block_number <= 160").plan_files()]
    assert sorted(Path(p).name for p in planned) == ["blocks_00000100_00000149.parquet", "blocks_00000150_00000199.parquet"]
    # And a time range by the timestamps read at registration (blocks and transactions have the column).
    glob = by_glob(root, "blocks")
    since = glob.filter(pl.col("block_number") == 120)["timestamp"].item()
    planned = [task.file.file_path for task in t.scan(row_filter=f"timestamp >= {since}").plan_files()]
    chunks = glob.group_by(pl.col("block_number") // 50 * 50).agg(pl.col("timestamp").max()).filter(pl.col("timestamp") >= since)
    assert sorted(Path(p).name for p in planned) == sorted(f"blocks_{s:08}_{s + 49:08}.parquet" for s in chunks["block_number"])
    assert len(planned) == 3
    again = sync(root, catalog_url)
    assert all(c["added"] == c["replaced"] == [] and c["snapshot_id"] is None for c in again.values())
    assert len(table(root, catalog_url, "blocks").snapshots()) == 1


@pytest.mark.parametrize("step", catalog.CRASH_POINTS)
def test_a_sync_killed_at_each_step_is_reconciled_by_the_next(archived: Path, step: str, tmp_path: Path) -> None:
    root, url = tmp_path / "root", f"sqlite:///{tmp_path}/catalog.db"
    shutil.copytree(archived, root)
    killed = cli("catalog", "sync", str(root), "--chain-id", "31337", "--catalog", url, env={CRASH_ENV: step})
    assert killed.code == -9, killed.text
    committed = {d: snapshots(root, url, d) for d in DATASETS}
    # The first dataset's table exists (made in one commit of its own), with its files' snapshot or none.
    assert committed == {"blocks": 0 if step == "catalog-before-commit" else 1, **dict.fromkeys(DATASETS[1:])}
    changed = sync(root, url)
    assert {d: len(c["added"]) for d, c in changed.items()} == {d: 0 if committed[d] else 5 for d in DATASETS}
    assert {d: snapshots(root, url, d) for d in DATASETS} == dict.fromkeys(DATASETS, 1)
    check_in_step(root, url)


def test_sync_of_a_growing_archive_adds_only_new_chunks(chain: Devnet, catalog_url: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert backfill(root, chain.url, end=99).code == 0
    first = sync(root, catalog_url)
    assert [len(first[d]["added"]) for d in DATASETS] == [2, 2, 2, 2]
    assert backfill(root, chain.url, start=100).code == 0
    second = sync(root, catalog_url, "--datasets", "blocks,txs,events,traces")
    assert {d: c["added"] for d, c in second.items()} == {
        d: [f"{d}_{s:08}_{s + 49:08}.parquet" for s in (100, 150, 200)] for d in DATASETS
    }
    assert len(table(root, catalog_url, "logs").snapshots()) == 2
    check_in_step(root, catalog_url)


def test_overwrite_conflicts_swaps_chunks_in_one_snapshot(chain: Devnet, catalog_url: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert backfill(root, chain.url, end=99, datasets="blocks,txs").code == 0
    sync(root, catalog_url, "--datasets", "blocks,txs")
    old = {d: manifest(root, 31337, d)["files"] for d in ("blocks", "transactions")}
    before = table(root, catalog_url, "transactions").current_snapshot()
    assert before is not None
    with devnet.anvil() as other:  # same chain id, other history: a reorg as the archive sees it
        devnet.generate_sync(other.url, 120, 3)
        replaced = backfill(root, other.url, "--force", "--overwrite-conflicts", end=99, datasets="blocks,txs")
        assert replaced.code == 0, replaced.text
    changed = sync(root, catalog_url, "--datasets", "blocks,txs")
    for dataset in ("blocks", "transactions"):
        assert changed[dataset]["added"] == []
        now = [e["path"] for e in manifest(root, 31337, dataset)["files"]]
        assert changed[dataset]["replaced"] == now
        assert [p.split(".")[0] for p in now] == [e["path"].removesuffix(".parquet") for e in old[dataset]]
        assert set(now).isdisjoint(e["path"] for e in old[dataset])  # each replacement a new file, the old one left
    t = table(root, catalog_url, "transactions")
    after = t.current_snapshot()
    assert after is not None and after.parent_snapshot_id == before.snapshot_id  # one snapshot: delete + add
    assert [s.snapshot_id for s in t.snapshots()] == [before.snapshot_id, after.snapshot_id]
    assert after.summary is not None and after.summary.operation.value == "overwrite"
    assert set(catalog.live_files(t)) == paths(root, "transactions")
    # The previous snapshot still lists the old chunks as they were (10 transactions a block, not 3).
    previous = {
        Path(task.file.file_path).name: task.file.record_count for task in t.scan(snapshot_id=before.snapshot_id).plan_files()
    }
    assert previous == {e["path"]: e["rows"] for e in old["transactions"]}
    current = {Path(task.file.file_path).name: task.file.record_count for task in t.scan().plan_files()}
    assert current == {e["path"]: e["rows"] for e in manifest(root, 31337, "transactions")["files"]} != previous
    for dataset in ("blocks", "transactions"):
        t = table(root, catalog_url, dataset)
        assert set(catalog.live_files(t)) == paths(root, dataset)
        assert same_rows(scan_iceberg(t).collect(), by_manifest(root, dataset))


def test_a_namespace_another_sync_just_created_is_used(archived: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race of two first syncs, made certain: the namespace is absent when pyiceberg's SQL catalog looks,
    there when it inserts it. Its insert fails on the key (an IntegrityError, not NamespaceAlreadyExistsError),
    and the sync goes on with the namespace the other one created."""
    from pyiceberg.catalog.sql import SqlCatalog

    root = tmp_path / "root"
    shutil.copytree(archived, root)
    cat = catalog.open_catalog(f"sqlite:///{tmp_path}/catalog.db", str(root))
    cat.create_namespace("raced")
    real, looked = SqlCatalog.namespace_exists, []

    def absent_once(self: SqlCatalog, namespace: Any) -> bool:
        looked.append(namespace)
        return len(looked) > 1 and real(self, namespace)

    monkeypatch.setattr(SqlCatalog, "namespace_exists", absent_once)
    synced = catalog.sync_table(cat, str(root), 31337, "blocks", "raced")
    assert synced is not None and len(synced.added) == len(manifest(root, 31337, "blocks")["files"])
    assert looked[0] == "raced"  # the check that missed it, before pyiceberg's insert


def test_concurrent_syncs_register_each_file_once(postgres: PostgresServer, archived: Path, tmp_path: Path) -> None:
    """Three syncs at once on one PostgreSQL catalog: whichever commits first, the others redo their difference."""
    root = tmp_path / "root"
    shutil.copytree(archived, root)
    url = postgres.url
    args = [
        "catalog",
        "sync",
        str(root),
        "--chain-id",
        "31337",
        "--catalog",
        url,
        "--namespace",
        f"n{uuid.uuid4().hex[:8]}",
        "--json",
    ]
    runs = [subprocess.Popen([CRYO, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [run.communicate(timeout=240) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    namespace = args[args.index("--namespace") + 1]
    for dataset in DATASETS:
        added = [t["added"] for out, _ in outputs for t in json.loads(out)["tables"] if t["dataset"] == dataset]
        assert sorted(path for paths_ in added for path in paths_) == sorted(
            e["path"] for e in manifest(root, 31337, dataset)["files"]
        )  # each file added by exactly one of them
        t = catalog.open_catalog(url, str(root)).load_table(f"{namespace}.{dataset}")
        snapshot = t.current_snapshot()
        assert snapshot is not None
        files = [
            e.data_file.file_path for m in snapshot.manifests(t.io) for e in m.fetch_manifest_entry(t.io, discard_deleted=True)
        ]
        assert sorted(files) == sorted(paths(root, dataset))  # no file twice


def synthetic(root: Path, chunks: dict[int, dict[str, list[int]]]) -> None:
    """Chunks of 50 blocks with Cryo's unsigned types, recorded in a manifest as the pipeline records them."""
    store = open_store(str(root))
    types = {"block_number": pa.uint32(), "log_index": pa.uint32(), "chain_id": pa.uint64()}
    schema = pa.schema(types.items())
    entries = []
    for start, columns in chunks.items():
        name = f"logs_{start:08}_{start + 49:08}.parquet"
        path = root / "cold/31337/logs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns, schema=schema), path)
        data = path.read_bytes()
        entries.append(manifest_module.Entry(name, start, start + 49, len(columns["block_number"]), len(data), sha256(data)))
    manifest_module.add(store, 31337, "logs", 50, [{"name": n, "type": str(t)} for n, t in types.items()], entries, False)


def test_largest_unsigned_values_round_trip_and_larger_ones_are_refused(catalog_url: str, tmp_path: Path) -> None:
    top32, top64 = 2**31 - 1, 2**63 - 1
    # One past the largest: an Iceberg long would read it changed (or a reader of the signed INT32/INT64 would).
    for column, beyond in (("chain_id", 2**63), ("log_index", 2**31)):
        root = tmp_path / column
        synthetic(root, {0: {"block_number": [0, 1, 49], "log_index": [0, 7, top32], "chain_id": [0, 1, top64]}})
        changed = sync(root, catalog_url, "--datasets", "logs", "--namespace", column)
        assert changed["logs"]["added"] == ["logs_00000000_00000049.parquet"]
        t = catalog.open_catalog(catalog_url, str(root)).load_table(f"{column}.logs")
        assert [(f.name, str(f.field_type)) for f in t.schema().fields] == [
            ("block_number", "long"),
            ("log_index", "long"),
            ("chain_id", "long"),
        ]
        rows = t.scan().to_arrow().sort_by("block_number").to_pylist()
        assert rows == [
            {"block_number": 0, "log_index": 0, "chain_id": 0},
            {"block_number": 1, "log_index": 7, "chain_id": 1},
            {"block_number": 49, "log_index": top32, "chain_id": top64},
        ]
        assert scan_iceberg(t).select("chain_id").collect()["chain_id"].max() == top64
        synthetic(root, {50: {"block_number": [50], "log_index": [0], "chain_id": [0]} | {column: [beyond]}})
        before = files_under(root)
        args = ("--chain-id", "31337", "--catalog", catalog_url, "--datasets", "logs", "--namespace", column)
        run = cli("catalog", "sync", str(root), *args)
        assert run.code == 1, run.text
        assert f"column {column}" in run.text and str(beyond) in run.text and "not registered" in run.text
        assert len(run.text.strip().splitlines()) == 1
        assert files_under(root) == before  # neither the archive nor the table's metadata changed
        t = catalog.open_catalog(catalog_url, str(root)).load_table(f"{column}.logs")
        assert set(catalog.live_files(t)) == {f"{root}/cold/31337/logs/logs_00000000_00000049.parquet"}


def test_sync_of_a_block_range_reads_only_its_shards(tmp_path: Path) -> None:
    """What a partition's hook asks: the shards holding its blocks, not the whole archive."""
    root, url = tmp_path / "root", f"sqlite:///{tmp_path}/catalog.db"
    row = {"block_number": [0], "log_index": [0], "chain_id": [1]}
    synthetic(root, {0: row, 50_000: row | {"block_number": [50_000]}})  # two shards of 1,000 chunks of 50
    (late,) = catalog.sync(str(root), 31337, url, ("logs",), blocks=(50_000, 50_049))
    assert (late.added, late.replaced) == (["logs_00050000_00050049.parquet"], [])
    (rest,) = catalog.sync(str(root), 31337, url, ("logs",))
    assert (rest.added, rest.replaced) == (["logs_00000000_00000049.parquet"], [])
    partitions = {task.file.partition[0] for task in table(root, url, "logs").scan().plan_files()}
    assert partitions == {0, 50_000}
    # Each commit's manifest has one partition's bounds: the other's is not read (its file is not listed).
    late_file = f"{root}/cold/31337/logs/logs_00050000_00050049.parquet"
    assert set(catalog.live_files(table(root, url, "logs"), {50_000})) == {late_file}


def test_one_sync_over_several_partitions_writes_a_manifest_for_each(tmp_path: Path) -> None:
    """One commit, a snapshot per partition: planning a block range reads its partition's manifest, not the archive's."""
    root, url = tmp_path / "root", f"sqlite:///{tmp_path}/catalog.db"
    row = {"block_number": [0], "log_index": [0], "chain_id": [1]}
    synthetic(root, {s: row | {"block_number": [s]} for s in (0, 50, 50_000, 100_000)})
    (synced,) = catalog.sync(str(root), 31337, url, ("logs",))
    assert len(synced.added) == 4
    t = table(root, url, "logs")
    snapshot = t.current_snapshot()
    assert snapshot is not None and len(t.snapshots()) == 3
    bounds = sorted(
        (int(from_bytes(LongType(), m.partitions[0].lower_bound)), int(from_bytes(LongType(), m.partitions[0].upper_bound)))
        for m in snapshot.manifests(t.io)
        if m.partitions and m.partitions[0].lower_bound and m.partitions[0].upper_bound
    )
    assert bounds == [(0, 0), (50_000, 50_000), (100_000, 100_000)]


def test_a_table_whose_schema_disagrees_is_refused(archived: Path, catalog_url: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(archived, root)
    sync(root, catalog_url, "--datasets", "logs")
    with table(root, catalog_url, "logs").update_schema() as update:
        update.add_column("extra", StringType())
    before = files_under(root)
    snapshot = table(root, catalog_url, "logs").current_snapshot()
    run = cli("catalog", "sync", str(root), "--chain-id", "31337", "--catalog", catalog_url, "--datasets", "logs")
    assert run.code == 1
    assert run.text.strip() == (
        "error: table cold_31337.logs: its schema disagrees with the archive (extra: table string, archive absent); "
        "nothing changed"
    )
    assert files_under(root) == before
    assert table(root, catalog_url, "logs").current_snapshot() == snapshot


def test_unreachable_catalog_and_wrong_credentials(postgres: PostgresServer, archived: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(archived, root)
    before = files_under(root)
    wrong = postgres.url.replace(PASSWORD, f"not-{PASSWORD}")
    unreachable = postgres.url.replace(f":{postgres.port}/", f":{devnet.free_port()}/")
    for url, why in ((wrong, "password authentication failed"), (unreachable, "Connection refused")):
        run = cli("catalog", "sync", str(root), "--chain-id", "31337", "--catalog", url)
        assert run.code == 1, run.text
        assert why in run.text and PASSWORD not in run.text
        assert len(run.text.strip().splitlines()) == 1 and run.text.startswith("error: catalog <redacted>: cannot open it")
        assert files_under(root) == before  # not even {root}/iceberg/
    # argparse echoes a bad value before any catalog is opened: the URL is redacted there too.
    echoed = cli("catalog", "sync", str(root), "--chain-id", postgres.url, "--catalog", postgres.url)
    assert echoed.code == 2 and "<redacted>" in echoed.text and PASSWORD not in echoed.text


def test_warehouse_on_s3(archived: Path, s3: S3, tmp_path: Path) -> None:
    """The archive and the tables' metadata on the local S3 server, the catalog in SQLite."""
    root = f"s3://{s3.bucket(f'catalog-{uuid.uuid4().hex[:12]}')}/archive"
    local, remote = open_store(str(archived)), open_store(root)
    for key in local.list("cold/"):
        remote.put(key, local.get(key) or b"")
    before = {key: remote.get(key) for key in remote.list("cold/")}
    url = f"sqlite:///{tmp_path}/catalog.db"
    changed = sync(root, url, "--datasets", "blocks,logs")
    assert {d: len(c["added"]) for d, c in changed.items()} == {"blocks": 5, "logs": 5}
    assert {key: remote.get(key) for key in remote.list("cold/")} == before
    assert any(key.startswith("iceberg/cold_31337/logs/metadata/") for key in remote.list("iceberg/"))
    for dataset in ("blocks", "logs"):
        t = table(root, url, dataset)
        assert set(catalog.live_files(t)) == paths(root, dataset)
        assert same_rows(scan_iceberg(t).collect(), by_glob(archived, dataset))


# ---- the tables follow the archive as it is made: backfill --catalog, a node's `catalog:`, the operator ------------


def live_counts(t: Table) -> dict[str, int]:
    """How many times each path is live in the current snapshot: 1 each, or a file was registered twice."""
    snapshot = t.current_snapshot()
    found: dict[str, int] = {}
    for m in snapshot.manifests(t.io) if snapshot else []:
        for e in m.fetch_manifest_entry(t.io, discard_deleted=True):
            found[e.data_file.file_path] = found.get(e.data_file.file_path, 0) + 1
    return found


def test_backfill_with_a_catalog_commits_once_per_partition(chain: Devnet, catalog_url: str, tmp_path: Path) -> None:
    root, sink = tmp_path / "root", tmp_path / "events.jsonl"
    # one partition at a time: two at once may both publish before either syncs, and one commit takes both
    run = backfill(root, chain.url, "--catalog", catalog_url, "--events-file", str(sink), "--json", "--max-concurrency", "1")
    assert run.code == 0, run.text
    assert PASSWORD not in run.text
    assert all(PASSWORD.encode() not in data for data in files_under(tmp_path).values())  # events, metadata, archive
    check_in_step(root, catalog_url)
    # 5 chunks, 4 to a partition: two partitions, one commit each per dataset; the run's last sync has nothing to add.
    for dataset in DATASETS:
        t = table(root, catalog_url, dataset)
        added = [int(s.summary["cryo-ingest.added"] or 0) for s in t.snapshots() if s.summary is not None]
        assert added == [4, 1], dataset
        assert set(live_counts(t).values()) == {1}
    again = backfill(root, chain.url, "--catalog", catalog_url)
    assert again.code == 0, again.text
    assert len(table(root, catalog_url, "logs").snapshots()) == 2


def test_a_nodes_catalog_and_namespace(chain: Devnet, tmp_path: Path) -> None:
    root, db = tmp_path / "root", tmp_path / "catalog.db"
    node = (
        "name: cold\noperator: cryo_ingest\nconfig:\n  chain_id: 31337\n  datasets: [blocks, logs]\n"
        f"  catalog:\n    url: sqlite:///{db}\n    namespace: team\n"
    )
    (tmp_path / "node.yaml").write_text(node)
    run = backfill(root, chain.url, "--config", str(tmp_path / "node.yaml"), end=99, datasets="blocks,logs")
    assert run.code == 0, run.text
    tables = catalog.open_catalog(f"sqlite:///{db}", str(root))
    assert sorted(tables.list_tables("team")) == [("team", "blocks"), ("team", "logs")]
    assert set(catalog.live_files(tables.load_table("team.logs"))) == paths(root, "logs")
    # A catalog URL pyiceberg cannot open is refused with the config's other errors: one line, not echoed.
    (tmp_path / "node.yaml").write_text(node.replace(f"url: sqlite:///{db}", f"url: mysql://u:{PASSWORD}@h/db"))
    bad = backfill(tmp_path / "other", chain.url, "--config", str(tmp_path / "node.yaml"), end=99, datasets="blocks,logs")
    assert bad.code == 2  # as every invalid config
    assert bad.text.strip() == (
        "error: invalid config: config.catalog.url: catalog must be sqlite:///PATH, postgresql://USER:PASSWORD@HOST/DB, "
        "rest+https://HOST/PATH or glue"
    )
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("step", ["before-events", *catalog.CRASH_POINTS])
def test_a_backfill_killed_at_each_step_leaves_the_table_behind_never_wrong(chain: Devnet, step: str, tmp_path: Path) -> None:
    """The whole job killed (as a container is): the tables lag the archive; the next run brings them in step."""
    root, url = tmp_path / "root", f"sqlite:///{tmp_path}/catalog.db"
    killed = backfill(root, chain.url, "--catalog", url, env={CRASH_ENV: step, CRASH_SCOPE_ENV: "job"})
    assert killed.code == -9, killed.text
    for dataset in DATASETS:
        try:
            t = table(root, url, dataset)
        except NoSuchTableError:
            continue
        assert set(live_counts(t).values()) <= {1}
        assert set(live_counts(t)) <= paths(root, dataset)  # only what the manifest records
    assert snapshots(root, url, "logs") is None  # a worker dies at its first sync, before the logs table's
    rerun = backfill(root, chain.url, "--catalog", url)
    assert rerun.code == 0, rerun.text
    check_in_step(root, url)
    for dataset in DATASETS:
        assert set(live_counts(table(root, url, dataset)).values()) == {1}


def test_backfill_refuses_a_catalog_it_cannot_use_before_touching_the_archive(
    chain: Devnet, postgres: PostgresServer, tmp_path: Path
) -> None:
    root, url = tmp_path / "root", f"sqlite:///{tmp_path}/catalog.db"
    assert backfill(root, chain.url, "--catalog", url, end=99).code == 0
    with table(root, url, "logs").update_schema() as update:
        update.add_column("extra", StringType())
    before = files_under(root)
    wrong = postgres.url.replace(PASSWORD, f"not-{PASSWORD}")
    unreachable = postgres.url.replace(f":{postgres.port}/", f":{devnet.free_port()}/")
    for bad, why in (
        (wrong, "error: catalog <redacted>: cannot open it: (psycopg2.OperationalError) connection to server at"),
        (unreachable, "error: catalog <redacted>: cannot open it: (psycopg2.OperationalError) connection to server at"),
        (url, "error: table cold_31337.logs: its schema disagrees with the archive (extra: table string, archive absent)"),
    ):
        run = backfill(root, chain.url, "--catalog", bad)  # blocks 100-249 left to do
        assert run.code == 1, run.text
        assert run.text.startswith(why) and len(run.text.strip().splitlines()) == 1, run.text
        assert PASSWORD not in run.text
        assert files_under(root) == before  # nothing published, the table's metadata unchanged


def test_backfill_on_s3_with_a_catalog(chain: Devnet, s3: S3, tmp_path: Path) -> None:
    """The archive and the tables' metadata on the local S3 server, made by the backfill's own syncs."""
    root, url = f"s3://{s3.bucket(f'catalog-{uuid.uuid4().hex[:12]}')}/archive", f"sqlite:///{tmp_path}/catalog.db"
    run = backfill(root, chain.url, "--catalog", url, datasets="blocks,logs", env=s3.env)
    assert run.code == 0, run.text
    remote = open_store(root)
    assert any(key.startswith("iceberg/cold_31337/logs/metadata/") for key in remote.list("iceberg/"))
    for dataset in ("blocks", "logs"):
        t = table(root, url, dataset)
        assert set(catalog.live_files(t)) == paths(root, dataset)
        assert same_rows(scan_iceberg(t).collect(), by_glob(root, dataset))  # Polars reads the glob on S3 too


def test_the_operator_keeps_a_nodes_tables_in_step(chain: Devnet, postgres: PostgresServer, tmp_path: Path) -> None:
    """`request` then `run` (the operator's runner): each partition syncs, and the request's completion."""
    config, root = tmp_path / "dag.yaml", tmp_path / "archive"
    extra = f"    chunk_size: 50\n    chunks_per_partition: 1\n    catalog: {postgres.url}\n"
    config.write_text(
        SPEC_YAML.replace("chain_id: 10143", "chain_id: 31337").replace("rpc_pool: monad\n", "rpc_pool: monad\n" + extra)
    )
    env = {"CRYO_INGEST_RPC_POOL_MONAD": json.dumps({"endpoints": [{"name": "local", "url": chain.url}]})}
    req = cli("request", "--config", str(config), "--root", str(root), "--start", "0", "--end", "99", env=env)
    assert req.code == 0, req.text
    run = cli("run", "--config", str(config), "--root", str(root), env=env)
    assert run.code == 0, run.text
    assert PASSWORD not in run.text + req.text
    assert all(PASSWORD.encode() not in data for data in files_under(root).values())
    for dataset in ("blocks", "transactions", "logs"):
        t = table(root, postgres.url, dataset)
        assert set(live_counts(t)) == paths(root, dataset) and set(live_counts(t).values()) == {1}
        assert 1 <= len(t.snapshots()) <= 2  # a commit per partition at most; the completion's sync found nothing new
        assert same_rows(scan_iceberg(t).collect(), by_glob(root, dataset))


def test_a_table_that_cannot_follow_fails_the_run_not_the_archive(chain: Devnet, tmp_path: Path) -> None:
    """A logs table made elsewhere with other columns, before the archive had logs: the check before the run has no
    manifest to compare it with, so the partitions publish, their syncs refuse the table, and the run exits 1 saying
    so; the archive is whole, and once the table is dropped `catalog sync` brings every table in step."""
    root, url = tmp_path / "root", f"sqlite:///{tmp_path}/catalog.db"
    tables = catalog.open_catalog(url, str(root))
    tables.create_namespace("cold_31337")
    tables.create_table("cold_31337.logs", schema=Schema(NestedField(1, "other", StringType())))
    run = backfill(root, chain.url, "--catalog", url, end=99)
    assert run.code == 1, run.text
    refused = "table cold_31337.logs: its schema disagrees with the archive"
    lag = "the archive is published; its table follows on the next run or `cryo-ingest catalog sync`"
    errors = [line for line in run.text.splitlines() if line.startswith("error:")]
    assert errors and all(refused in line and line.endswith(lag) for line in errors), run.text
    assert [len(manifest(root, 31337, d)["files"]) for d in DATASETS] == [2, 2, 2, 2]  # published, every dataset
    assert set(catalog.live_files(table(root, url, "blocks"))) == paths(root, "blocks")  # synced before logs
    tables.drop_table("cold_31337.logs")
    changed = sync(root, url)
    assert {d: len(c["added"]) for d, c in changed.items()} == {"blocks": 0, "transactions": 0, "logs": 2, "traces": 2}
    check_in_step(root, url)


def test_engines_read_what_the_glob_reads(archived: Path, tmp_path: Path) -> None:
    """pyiceberg and Polars (check_in_step), Daft's own Iceberg reader, DuckDB on the scan's Arrow: the glob's rows
    and aggregates. (Spark, Trino and Athena do not run here: docs/reading.md gives their configuration.)"""
    root, url = tmp_path / "root", f"sqlite:///{tmp_path}/catalog.db"
    shutil.copytree(archived, root)
    sync(root, url)
    check_in_step(root, url)
    for dataset in DATASETS:
        t = table(root, url, dataset)
        daft_rows = pl.from_arrow(daft.read_iceberg(t).to_arrow())
        assert isinstance(daft_rows, pl.DataFrame)
        assert same_rows(daft_rows, by_glob(root, dataset)), dataset
        db = duckdb.connect()
        db.register("scanned", t.scan().to_arrow())
        query = "SELECT count(*), min(block_number), max(block_number), sum(block_number), count(DISTINCT block_number) FROM {}"
        through_table = db.sql(query.format("scanned")).fetchall()
        assert through_table == db.sql(query.format(f"read_parquet('{root}/cold/31337/{dataset}/*.parquet')")).fetchall()
        assert through_table[0][0] == sum(e["rows"] for e in manifest(root, 31337, dataset)["files"]), dataset
    in_range = table(root, url, "transactions").scan(row_filter="block_number >= 100 and block_number < 200")
    db.register("scanned", in_range.to_arrow())
    glob = f"read_parquet('{root}/cold/31337/transactions/*.parquet') WHERE block_number >= 100 AND block_number < 200"
    by_sender = "SELECT from_address, sum(gas_used), count(*) FROM {} GROUP BY 1 ORDER BY 1"
    assert db.sql(by_sender.format("scanned")).fetchall() == db.sql(by_sender.format(glob)).fetchall() != []


def test_backfill_overwrite_conflicts_swaps_in_the_partitions_commit(chain: Devnet, tmp_path: Path) -> None:
    """The partition that replaces chunks swaps them in its own commit: one snapshot, delete + add."""
    root, url = tmp_path / "root", f"sqlite:///{tmp_path}/catalog.db"
    assert backfill(root, chain.url, "--catalog", url, end=99, datasets="blocks,txs").code == 0
    old = manifest(root, 31337, "transactions")["files"]
    old_bytes = {p: Path(p).read_bytes() for d in ("blocks", "transactions") for p in paths(root, d)}
    old_rows = {d: by_manifest(root, d) for d in ("blocks", "transactions")}
    before = {d: table(root, url, d).current_snapshot() for d in ("blocks", "transactions")}
    previous_id = {d: s.snapshot_id for d, s in before.items() if s is not None}
    with devnet.anvil() as other:  # same chain id, other history: a reorg as the archive sees it
        devnet.generate_sync(other.url, 120, 3)
        args = ("--force", "--overwrite-conflicts", "--catalog", url)
        replaced = backfill(root, other.url, *args, end=99, datasets="blocks,txs")
        assert replaced.code == 0, replaced.text
    for dataset in ("blocks", "transactions"):
        t = table(root, url, dataset)
        assert len(t.snapshots()) == 2
        after = t.current_snapshot()
        assert after is not None and after.summary is not None
        assert after.summary.operation.value == "overwrite" and after.summary["cryo-ingest.replaced"] == "2"
        assert set(live_counts(t)) == paths(root, dataset) and set(live_counts(t).values()) == {1}
        assert same_rows(scan_iceberg(t).collect(), by_manifest(root, dataset))
        # Time travel: the previous snapshot reads the old rows, from the old files, left byte for byte.
        assert after.parent_snapshot_id == previous_id[dataset]
        back = pl.from_arrow(t.scan(snapshot_id=previous_id[dataset]).to_arrow())
        assert isinstance(back, pl.DataFrame) and same_rows(back, old_rows[dataset])
        assert not same_rows(old_rows[dataset], by_manifest(root, dataset))  # the reorg changed the rows
    assert {p: Path(p).read_bytes() for p in old_bytes} == old_bytes
    assert not old_bytes.keys() & (paths(root, "blocks") | paths(root, "transactions"))
    t = table(root, url, "transactions")
    planned = t.scan(snapshot_id=previous_id["transactions"]).plan_files()
    previous = {Path(task.file.file_path).name: task.file.record_count for task in planned}
    assert previous == {e["path"]: e["rows"] for e in old}  # the old chunks as the previous snapshot lists them
    assert previous != {e["path"]: e["rows"] for e in manifest(root, 31337, "transactions")["files"]}
    # verify counts the old files (kept for time travel), no problem; gc keeps them for its grace period from the
    # replacement; past it, that snapshot cannot be read
    checked = cli("verify", str(root), "--chain-id", "31337", "--json")
    assert checked.code == 0, checked.text
    assert json.loads(checked.out)["counts"]["replaced"] == len(old_bytes)
    store = open_store(str(root))
    assert gc(store, 31337, timedelta(hours=24), ("blocks", "transactions")).deleted == []
    later = datetime.now(UTC) + timedelta(hours=25)
    assert len(gc(store, 31337, timedelta(hours=24), ("blocks", "transactions"), now=later).deleted) == len(old_bytes)
    with pytest.raises(FileNotFoundError):
        t.scan(snapshot_id=previous_id["transactions"]).to_arrow()
    assert same_rows(scan_iceberg(t).collect(), by_glob(root, "transactions"))  # the glob reads one version again


def test_a_year_of_commits_stays_small(tmp_path: Path) -> None:
    """Expiry at each commit by the table's own policy (here: nothing is too young, keep 3), old metadata files
    deleted past the table's limit (here 2), small manifests merged (here from 3): what a year of commits,
    one per partition, would otherwise pile up."""
    root, url = tmp_path / "root", f"sqlite:///{tmp_path}/catalog.db"
    row = {"block_number": [0], "log_index": [0], "chain_id": [1]}
    synthetic(root, {0: row})
    catalog.sync(str(root), 31337, url, ("logs",))
    t = table(root, url, "logs")
    assert {k: t.properties[k] for k in catalog.POLICY} == catalog.POLICY
    policy = {catalog.MAX_SNAPSHOT_AGE: "0", catalog.MIN_SNAPSHOTS: "3", "write.metadata.previous-versions-max": "2"}
    t.transaction().set_properties(policy | {"commit.manifest.min-count-to-merge": "3"}).commit_transaction()
    for start in range(50, 400, 50):
        synthetic(root, {start: row | {"block_number": [start]}})
        (synced,) = catalog.sync(str(root), 31337, url, ("logs",), blocks=(start, start + 49))
        assert synced.added == [f"logs_{start:08}_{start + 49:08}.parquet"]
    t = table(root, url, "logs")
    assert len(t.snapshots()) == 3
    assert len(list((root / "iceberg/cold_31337/logs/metadata").glob("*.metadata.json"))) == 3  # the current and 2 before
    assert set(live_counts(t).values()) == {1} and len(live_counts(t)) == 8
    snapshot = t.current_snapshot()
    assert snapshot is not None and len(snapshot.manifests(t.io)) < 3
    oldest = min(t.snapshots(), key=lambda s: s.timestamp_ms)  # time travel within the snapshots kept
    assert t.scan(snapshot_id=oldest.snapshot_id).to_arrow().num_rows == 6
    assert sorted(t.scan().to_arrow()["block_number"].to_pylist()) == list(range(0, 400, 50))
    # The shas by which a sync finds replaced chunks: a file per shard, named in the metadata (which stays small).
    shas = {k: v for k, v in t.properties.items() if k.startswith(catalog.SHA_PROPERTY)}
    assert list(shas) == [catalog.SHA_PROPERTY + "manifest/00000000_00049999.json"]
    (path,) = shas.values()
    held = Path(path).read_text()
    assert held.count(":") == 8 and path.endswith(f"-{sha256(held.encode())[:16]}.sha256")
    # A table made before those files holds the list itself: read as it is, nothing looks replaced.
    t.transaction().set_properties({catalog.SHA_PROPERTY + "manifest/00000000_00049999.json": held}).commit_transaction()
    assert catalog.sync(str(root), 31337, url, ("logs",))[0].replaced == []

"""The cold archive as Apache Iceberg tables that follow the manifest (docs/reading.md, "Iceberg").

The manifest stays the source of truth; each dataset's table `{namespace}.{dataset}` is brought in
step with it by `sync`: entries missing from the table are registered where they are (never copied
or rewritten: Cryo's Parquet has no field ids, so the table carries a name mapping), entries
replaced by `--overwrite-conflicts` are swapped, and all of a dataset's changes go into one commit,
so a reader sees the table before or after a sync, never half of it. A crash before the commit
leaves the table as it was; the next sync finds the same differences again.

Unsigned integers: Iceberg has none. Cryo writes uint32 and uint64 into INT32/INT64 Parquet
columns; both map to `long`. A `decimal(20,0)` for uint64 would need the files rewritten (Iceberg
reads such decimals from FIXED_LEN_BYTE_ARRAY, not INT64), so instead every registered file is
proved in range: each unsigned column's maximum is read and must be below 2**(bits-1) (so that a
reader that takes the physical INT32/INT64 as signed reads the same value); a file outside that
range is refused with an error, never registered with changed values.

Cryo's files carry no min/max statistics (Polars writes only null counts), so the table's bounds
on `block_number` come from the manifest entry (the chunk's range) and, where a dataset has a
`timestamp`, from that column read once at registration: a query by block range or time skips files.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.conversions import from_bytes, to_bytes
from pyiceberg.exceptions import CommitFailedException, NamespaceAlreadyExistsError, NoSuchTableError, TableAlreadyExistsError
from pyiceberg.io.pyarrow import parquet_file_to_data_file
from pyiceberg.manifest import DataFile, ManifestFile
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.table.update.snapshot import ExpireSnapshots
from pyiceberg.transforms import TruncateTransform
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DoubleType,
    FloatType,
    IcebergType,
    IntegerType,
    LongType,
    NestedField,
    StringType,
)

from ..errors import IngestError, redact
from ..faults import crash_point
from . import manifest
from .storage import open_store, sha256
from .urls import catalog_url

PARTITION_CHUNKS = manifest.SHARD_CHUNKS  # truncate width in chunks: one partition per manifest shard
SHA_PROPERTY = "cryo-ingest.sha256."  # + shard name: a file of "start:sha256[:16],..." of the entries the table holds
SHA_SUFFIX = ".sha256"
SHA_PREFIX = 16
CATALOG_NAME = "cryo_ingest"
S3_ENV = {"s3.endpoint": "AWS_ENDPOINT_URL", "s3.region": "AWS_REGION"}
COMMIT_ATTEMPTS = 5  # another sync committed first: read the table again and redo the difference
# pyiceberg would otherwise re-apply a failed commit's appends on the newer table: a file added twice.
NO_REBASE = "commit.retry.num-retries"
# A year of commits (one per partition): what every table is made with, and given on its next sync if made
# before. Iceberg's own names, so that any engine's maintenance reads the same policy. Snapshots older
# than a week are expired at each commit, but never the last 100 (time travel within them); the previous
# metadata files beyond 10 are deleted as pyiceberg commits; merge_append folds small manifests together
# (from 100 manifests, into manifests of 256 KB).
MAX_SNAPSHOT_AGE = "history.expire.max-snapshot-age-ms"
MIN_SNAPSHOTS = "history.expire.min-snapshots-to-keep"
POLICY = {
    NO_REBASE: "0",
    MAX_SNAPSHOT_AGE: str(7 * 24 * 3600 * 1000),
    MIN_SNAPSHOTS: "100",
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "10",
    "commit.manifest-merge.enabled": "true",  # pyiceberg's merge_append merges nothing without it
    # Merged manifests of a few hundred files (Iceberg's default, 8 MB, is ~50,000 here): a block range's
    # planning reads the few that cover it, not one that lists a year.
    "commit.manifest.target-size-bytes": str(256 * 1024),
}
# Where the tests kill a sync (faults.CRASH_ENV): the files described, nothing committed; one dataset committed.
CRASH_POINTS = ("catalog-before-commit", "catalog-between-datasets")
# The Arrow types of Cryo's columns, as the manifest names them, and what the table holds them as (see the module).
ICEBERG_TYPES: dict[str, IcebergType] = {
    "bool": BooleanType(),
    "int8": IntegerType(),
    "int16": IntegerType(),
    "int32": IntegerType(),
    "int64": LongType(),
    "uint8": IntegerType(),
    "uint16": IntegerType(),
    "uint32": LongType(),
    "uint64": LongType(),
    "float": FloatType(),
    "double": DoubleType(),
    "string": StringType(),
    "large_string": StringType(),
    "binary": BinaryType(),
    "large_binary": BinaryType(),
}


@dataclass
class Synced:
    """What one sync changed in one dataset's table (file names relative to the dataset's folder)."""

    dataset: str
    table: str
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    snapshot_id: int | None = None  # the commit's snapshot; None when nothing changed

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "table": self.table,
            "added": self.added,
            "replaced": self.replaced,
            "snapshot_id": self.snapshot_id,
        }


def archive_location(root: str) -> str:
    """The root as Iceberg paths name it: an absolute local path, or the bucket URL as given."""
    if "://" in root and not root.lower().startswith("file://"):
        return root.rstrip("/")
    return str(Path(urlsplit(root).path if root.lower().startswith("file://") else root).expanduser().resolve())


def open_catalog(url: str, root: str) -> Catalog:
    """`sqlite:///…`/`postgresql://…`: pyiceberg's SQL catalog; `rest+https://…`: REST; `glue`: AWS Glue."""
    try:
        url = catalog_url(url)
    except ValueError as err:
        raise IngestError(f"invalid arguments: --catalog: {err}") from None
    scheme = urlsplit(url).scheme.lower() if "://" in url else url.lower()
    warehouse = f"{archive_location(root)}/iceberg"
    # pyiceberg's S3 reader takes its endpoint and region as properties; the archive's store reads them from
    # the environment (storage.open_store), so the table's files come from the same place. Keys stay with the SDK.
    io = {prop: os.environ[env] for prop, env in S3_ENV.items() if os.environ.get(env)}
    try:
        if scheme.startswith(("sqlite", "postgresql", "postgres")):
            uri = "postgresql+psycopg2" + url[len(scheme) :] if scheme in ("postgres", "postgresql") else url
            try:
                return SqlCatalog(CATALOG_NAME, uri=uri, warehouse=warehouse, **io)
            except Exception as err:  # two first syncs at once both create the catalog's own tables: one wins
                if "already exists" not in str(err):
                    raise
                return SqlCatalog(CATALOG_NAME, uri=uri, warehouse=warehouse, **io)
        if scheme in ("rest+https", "rest+http"):
            return load_catalog(CATALOG_NAME, type="rest", uri=url[len("rest+") :], **io)
        return load_catalog(CATALOG_NAME, type="glue", **io)  # the one other catalog_url admits
    except Exception as err:
        raise IngestError(f"catalog {url}: cannot open it: {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return redact(text[0] if text else type(err).__name__)


def iceberg_schema(archived: list[dict[str, str]]) -> Schema:
    """The table's columns: the manifest's, every one optional, unsigned integers as long (see the module)."""
    fields = []
    for n, column in enumerate(archived, 1):
        if column["type"] not in ICEBERG_TYPES:
            raise IngestError(f"column {column['name']}: no Iceberg type for Arrow {column['type']} here; nothing changed")
        fields.append(NestedField(n, column["name"], ICEBERG_TYPES[column["type"]], required=False))
    return Schema(*fields)


def partition_spec(schema: Schema, chunk_size: int) -> PartitionSpec:
    """Truncate on block number, a multiple of chunk_size wide: every chunk file in one partition."""
    source = schema.find_field("block_number").field_id
    return PartitionSpec(PartitionField(source, 1000, TruncateTransform(chunk_size * PARTITION_CHUNKS), "block_number_trunc"))


def _disagreement(table: Table, schema: Schema, spec: PartitionSpec) -> str | None:
    have = {f.name: str(f.field_type) for f in table.schema().fields}
    want = {f.name: str(f.field_type) for f in schema.fields}
    if list(have.items()) != list(want.items()):
        diff = [f"{n}: table {have.get(n, 'absent')}, archive {t}" for n, t in want.items() if have.get(n) != t]
        diff += [f"{n}: table {t}, archive absent" for n, t in have.items() if n not in want]
        return f"its schema disagrees with the archive ({'; '.join(diff) or 'column order'})"
    theirs = [(table.schema().find_column_name(f.source_id), str(f.transform)) for f in table.spec().fields]
    if theirs != [("block_number", str(spec.fields[0].transform))]:
        return f"its partition spec {theirs} is not truncate on block_number by {spec.fields[0].transform}"
    return None


def _refuse_disagreement(table: Table, identifier: str, m: manifest.Manifest) -> None:
    schema = iceberg_schema(m.schema)
    if problem := _disagreement(table, schema, partition_spec(schema, m.chunk_size)):
        raise IngestError(f"table {identifier}: {problem}; nothing changed")


def check(url: str, root: str, namespace: str, archived: dict[str, manifest.Manifest | None]) -> None:
    """What a sync would refuse, found before a job publishes anything: a catalog that does not open (unreachable,
    wrong credentials), a table whose columns are not the archive's. A table not made yet is made by the first sync."""
    catalog = open_catalog(url, root)
    for dataset, m in archived.items():
        if m is None:
            continue
        identifier = f"{namespace}.{dataset}"
        try:
            table = catalog.load_table(identifier)
        except NoSuchTableError:
            continue
        except Exception as err:
            raise IngestError(f"catalog {url}: {dataset}: {_first_line(err)}") from None
        _refuse_disagreement(table, identifier, m)


def _table(catalog: Catalog, identifier: str, m: manifest.Manifest, location: str) -> Table:
    """The dataset's table, created on first sync in one commit; an existing one must have the archive's columns."""
    try:
        table = catalog.load_table(identifier)
    except NoSuchTableError:
        pass
    else:
        _refuse_disagreement(table, identifier, m)
        # the policy where the table has none of its own; never pyiceberg's retry
        wanted = {k: v for k, v in POLICY.items() if k not in table.properties or k == NO_REBASE}
        if any(table.properties.get(k) != v for k, v in wanted.items()):
            table = table.transaction().set_properties(wanted).commit_transaction()
        return table
    namespace = identifier.rsplit(".", 1)[0]
    try:
        catalog.create_namespace(namespace)
    except NamespaceAlreadyExistsError:
        pass
    except Exception:
        # two first syncs at once: pyiceberg's SQL catalog checks, then inserts, and the later insert fails
        # on the namespace's key (psycopg2's UniqueViolation, one of three concurrent syncs in a CI run),
        # not as NamespaceAlreadyExistsError
        if not catalog.namespace_exists(namespace):
            raise
    schema = iceberg_schema(m.schema)
    spec = partition_spec(schema, m.chunk_size)
    # Cryo's files have no field ids: readers find columns by name.
    properties = {"schema.name-mapping.default": schema.name_mapping.model_dump_json(), **POLICY}
    try:
        return catalog.create_table(identifier, schema=schema, location=location, partition_spec=spec, properties=properties)
    except TableAlreadyExistsError:  # another sync created it first
        return _table(catalog, identifier, m, location)


def live_files(table: Table, partitions: set[int] | None = None) -> dict[str, DataFile]:
    """The current snapshot's data files by path, empty chunks too (a scan's planning leaves those out); with
    `partitions`, those of these partitions only, reading only the manifests whose bounds may hold them: a
    partition's sync reads what its shards' files are listed in, not a year of entries."""
    snapshot = table.current_snapshot()
    if snapshot is None:
        return {}
    return {
        entry.data_file.file_path: entry.data_file
        for m in snapshot.manifests(table.io)
        if partitions is None or _may_hold(m, partitions)
        for entry in m.fetch_manifest_entry(table.io, discard_deleted=True)
        if partitions is None or entry.data_file.partition[0] in partitions
    }


def _may_hold(m: ManifestFile, partitions: set[int]) -> bool:
    summary = m.partitions[0] if m.partitions else None
    if summary is None or summary.lower_bound is None or summary.upper_bound is None:
        return True
    low, high = (int(from_bytes(LongType(), bound)) for bound in (summary.lower_bound, summary.upper_bound))
    return any(low <= p <= high for p in partitions)


def _read_shas(table: Table, shards: set[str]) -> dict[int, str]:
    """start_block -> sha256 prefix of every entry of `shards` the table holds, from the files its properties name
    (or the list itself, in a table made before those files)."""
    held: dict[int, str] = {}
    for shard in shards:
        value = table.properties.get(SHA_PROPERTY + shard)
        if value and value.endswith(SHA_SUFFIX):
            with table.io.new_input(value).open() as stream:
                value = stream.read().decode()
        for item in value.split(",") if value else []:
            start, sha = item.split(":")
            held[int(start)] = sha
    return held


def _sha_properties(table: Table, m: manifest.Manifest, starts: list[int]) -> dict[str, str]:
    """The sha256 properties of the shards holding `starts`, as the manifest has them now: each the path of
    a file written here, named by its content, so that the table's metadata (written again by every
    commit) stays small however long the archive; the property changes in the commit, so a crash
    before it leaves an unused file, never a table that names the wrong shas."""
    shards = {manifest.shard_path(s, m.chunk_size) for s in starts}
    by_shard: dict[str, list[str]] = {s: [] for s in shards}
    for start in sorted(m.files):
        shard = manifest.shard_path(start, m.chunk_size)
        if shard in by_shard:
            by_shard[shard].append(f"{start}:{m.files[start].sha256[:SHA_PREFIX]}")
    properties = {}
    for shard, items in by_shard.items():
        data = ",".join(items).encode()
        path = f"{table.location()}/metadata/cryo-ingest-{manifest.shard_start(shard):08}-{sha256(data)[:16]}{SHA_SUFFIX}"
        with table.io.new_output(path).create(overwrite=True) as stream:
            stream.write(data)
        properties[SHA_PROPERTY + shard] = path
    return properties


def _data_file(table: Table, path: str, entry: manifest.Entry, width: int) -> DataFile:
    """The file as pyiceberg's `add_files` describes it, with the unsigned columns proved in range, the
    partition and block bounds from the entry (an empty chunk has no statistics), the time bounds read."""
    with table.io.new_input(path).open() as stream:
        parquet = pq.ParquetFile(stream)
        archived = parquet.schema_arrow
        unsigned = [f for f in archived if pa.types.is_unsigned_integer(f.type)]
        wanted = [f.name for f in unsigned] + (["timestamp"] if "timestamp" in archived.names else [])
        columns = parquet.read(columns=wanted) if wanted and entry.rows else None
    if columns is not None:
        for f in unsigned:
            top = pc.max(columns[f.name]).as_py()
            if top is not None and top >= 2 ** (f.type.bit_width - 1):
                raise IngestError(
                    f"{path}: column {f.name} ({f.type}) holds {top}, beyond what an Iceberg long read from "
                    f"{f.type.bit_width}-bit Parquet keeps exactly; not registered"
                )
    data_file = parquet_file_to_data_file(table.io, table.metadata, path)  # what `add_files` does, once in range
    schema = table.schema()
    if columns is not None and "timestamp" in columns.column_names:
        bounds = pc.min_max(columns["timestamp"]).as_py()
        if bounds["min"] is not None:
            ts = schema.find_field("timestamp").field_id
            data_file.lower_bounds[ts] = to_bytes(LongType(), bounds["min"])
            data_file.upper_bounds[ts] = to_bytes(LongType(), bounds["max"])
    bn = schema.find_field("block_number").field_id
    data_file.lower_bounds[bn] = to_bytes(LongType(), entry.start_block)
    data_file.upper_bounds[bn] = to_bytes(LongType(), entry.end_block)
    data_file.partition[0] = entry.start_block // width * width  # the spec's one field
    return data_file


def sync_table(
    catalog: Catalog,
    root: str,
    chain_id: int,
    dataset: str,
    namespace: str,
    blocks: tuple[int, int] | None = None,
    storage_options: dict[str, str] | None = None,
) -> Synced | None:
    """Bring one dataset's table in step with its manifest, in one commit; None when there is no manifest.

    With `blocks` (first, last), only the manifest shards holding those blocks are compared (what a
    partition just published), so the cost follows the change, not the archive's length.
    """
    m = manifest.load(open_store(root, storage_options), chain_id, dataset, blocks)
    if m is None:
        return None
    location = archive_location(root)
    identifier = f"{namespace}.{dataset}"
    table_location, folder = f"{location}/iceberg/{namespace}/{dataset}", f"{location}/cold/{chain_id}/{dataset}"
    for _ in range(COMMIT_ATTEMPTS - 1):
        with contextlib.suppress(CommitFailedException):
            return _commit(_table(catalog, identifier, m, table_location), m, folder, identifier)
    return _commit(_table(catalog, identifier, m, table_location), m, folder, identifier)


def _commit(table: Table, m: manifest.Manifest, folder: str, identifier: str) -> Synced:
    """One snapshot: the entries the table lacks appended, the replaced ones deleted and appended again.

    A replaced chunk's entry names a new file (publish.py), or, in an archive replaced in place by an
    older version, the same file with another sha256: either way the chunk's registered file (found by
    its first block, the lower bound every registered file carries) is swapped."""
    width = m.chunk_size * PARTITION_CHUNKS
    live = live_files(table, {start // width * width for start in m.files})
    bn = table.schema().find_field("block_number").field_id
    registered = {int(from_bytes(LongType(), f.lower_bounds[bn])): f for f in live.values() if bn in f.lower_bounds}
    held = _read_shas(table, {manifest.shard_path(start, m.chunk_size) for start in m.files})
    add: list[manifest.Entry] = []
    swap: list[manifest.Entry] = []
    for start in sorted(m.files):
        entry = m.files[start]
        if start not in registered:
            add.append(entry)
        elif registered[start].file_path != f"{folder}/{entry.path}" or held.get(start) != entry.sha256[:SHA_PREFIX]:
            swap.append(entry)
    result = Synced(m.dataset, identifier)
    if not add and not swap:
        return result
    files = {e.start_block: _data_file(table, f"{folder}/{e.path}", e, width) for e in add + swap}
    # a snapshot per partition, all in this one commit: each writes its own manifest, which planning reads
    # only for a range in that partition (one manifest for a first sync of 79,000 files is read whole)
    by_partition: dict[int, tuple[list[manifest.Entry], list[manifest.Entry]]] = {}
    for kind, entries in enumerate((add, swap)):
        for e in entries:
            by_partition.setdefault(e.start_block // width * width, ([], []))[kind].append(e)
    shas = _sha_properties(table, m, [e.start_block for e in add + swap])
    crash_point("catalog-before-commit")
    with table.transaction() as tx:
        if expired := _expired(table, len(by_partition)):
            ExpireSnapshots(tx).by_ids(expired).commit()
        tx.set_properties(shas)
        for adding, swapping in by_partition.values():
            summary = {"cryo-ingest.added": str(len(adding)), "cryo-ingest.replaced": str(len(swapping))}
            snapshot = tx.update_snapshot(snapshot_properties=summary)
            # merge_append folds small manifests together as commits accumulate (one per partition, all year)
            with snapshot.overwrite() if swapping else snapshot.merge_append() as producer:
                for e in swapping:
                    producer.delete_data_file(registered[e.start_block])
                for e in adding + swapping:
                    producer.append_data_file(files[e.start_block])
    current = table.current_snapshot()
    result.added = [e.path for e in add]
    result.replaced = [e.path for e in swap]
    result.snapshot_id = current.snapshot_id if current else None
    return result


def _expired(table: Table, adding: int) -> list[int]:
    """The snapshots the table's policy (POLICY's, or an operator's own values) lets go as a commit adds
    `adding`: older than the age, and not among the newest to keep, the new ones counted (the current kept)."""
    props = table.properties
    keep = max(1, int(props.get(MIN_SNAPSHOTS, POLICY[MIN_SNAPSHOTS])) - adding)
    before = time.time() * 1000 - int(props.get(MAX_SNAPSHOT_AGE, POLICY[MAX_SNAPSHOT_AGE]))
    newest_first = sorted(table.snapshots(), key=lambda s: s.timestamp_ms, reverse=True)
    current = table.current_snapshot()
    return [
        s.snapshot_id
        for s in newest_first[keep:]
        if s.timestamp_ms < before and (current is None or s.snapshot_id != current.snapshot_id)
    ]


def sync(
    root: str,
    chain_id: int,
    catalog_url: str,
    datasets: tuple[str, ...],
    namespace: str | None = None,
    blocks: tuple[int, int] | None = None,
    storage_options: dict[str, str] | None = None,
) -> list[Synced]:
    """Every dataset's table in step with the archive (or its shards holding `blocks`); the archive is only read."""
    catalog = open_catalog(catalog_url, root)
    results = []
    for dataset in datasets:
        try:
            synced = sync_table(catalog, root, chain_id, dataset, namespace or f"cold_{chain_id}", blocks, storage_options)
        except IngestError:
            raise
        except Exception as err:
            raise IngestError(f"catalog {catalog_url}: {dataset}: {_first_line(err)}") from None
        if synced is not None:
            results.append(synced)
        crash_point("catalog-between-datasets")
    return results

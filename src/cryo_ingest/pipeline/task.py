"""What a worker gets for one partition and what it gives back.

Kept apart from partition.py (which imports Cryo and pyarrow) so that the processes that only
dispatch partitions, backfill's main process and the operator's runners, stay light.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..archive.events import Event, Sinks
from .plan import Partition

# What a worker asks the gateway besides JSON-RPC (under the gateway URL's secret path); here, not
# in gateway/, so that a worker need not import the gateway to know them.
UNKNOWN_PATH = "/_cryo_ingest/unknown"
TRACE_SOURCE_PATH = "/_cryo_ingest/trace-source"
REFUSALS_PATH = "/_cryo_ingest/refusals"
RECEIPTS_PATH = "/_cryo_ingest/receipts"  # receipts counted by block (gateway/history.py), taken once
BLAME_PATH = "/_cryo_ingest/blame"  # a block failed a check: who answered it (gateway/trust.py)
SETTLE_PATH = "/_cryo_ingest/settle"  # a partition is done: the gateway forgets who answered its blocks
CANONICAL_PATH = "/_cryo_ingest/canonical"  # a chunk's last block hash, asked of a second endpoint (gateway/trust.py)
SERVED_PATH = "/_cryo_ingest/served"  # which endpoints answered a chunk's data, by dataset (its manifest provenance)


@dataclass(frozen=True)
class Task:
    """Everything a worker needs for one partition: no RPC URL among it."""

    partition: Partition
    gateway_url: str
    root: str
    storage_options: dict[str, str]
    chain_id: int
    chunk_size: int
    overwrite_conflicts: bool
    sinks: Sinks
    attempts: int = 3
    staging_dir: str | None = None  # where the worker makes its staging folder; the system's temp dir if None
    # A job without blocks, where the archive lacks a chunk's headers: fetch them for the checks (Job.header_checks)
    fetch_headers: bool = True
    catalog: str | None = field(default=None, repr=False)  # the Iceberg tables' catalog URL (may hold a password)
    catalog_namespace: str | None = None  # cold_{chain_id} if None


@dataclass
class PartitionResult:
    partition: Partition
    published: list[Event] = field(default_factory=list)  # entries this partition added or replaced
    emitted: int = 0  # events new to the sinks (including those of entries an earlier, killed run recorded)
    error: str | None = None
    conflict: bool = False
    cas_retries: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # by stage: extract, validate, publish
    checked: dict[str, int] = field(default_factory=dict)  # blocks checked against their headers, by check (validate.py)
    unchecked: dict[str, int] = field(default_factory=dict)  # "check: why it cannot apply" -> the first such block
    catalog_error: str | None = None  # published, but its tables could not follow (archive/tables.py): they lag

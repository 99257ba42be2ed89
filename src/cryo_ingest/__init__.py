"""cryo-ingest: archive EVM chain data to Parquet in object storage, with Cryo."""

from .backfill import Result, backfill
from .config import Endpoint, Job, make_job
from .errors import ConfigError, ConflictError, IngestError

__all__ = ["ConfigError", "ConflictError", "Endpoint", "IngestError", "Job", "Result", "backfill", "make_job"]

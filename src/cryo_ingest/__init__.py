"""cryo-ingest: archive EVM chain data to Parquet in object storage, with Cryo.

The API loads on first use (PEP 562): every worker process imports this package, and needs none of
it (config's pydantic models alone take 0.2 s to build).
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, ConflictError, IngestError

if TYPE_CHECKING:
    from .config import Endpoint as Endpoint
    from .config import Job as Job
    from .config import make_job as make_job
    from .pipeline.backfill import Result as Result
    from .pipeline.backfill import backfill as backfill

_LAZY = {
    "Endpoint": ".config",
    "Job": ".config",
    "make_job": ".config",
    "Result": ".pipeline.backfill",
    "backfill": ".pipeline.backfill",
}
__all__ = ["ConfigError", "ConflictError", "Endpoint", "IngestError", "Job", "Result", "backfill", "make_job"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'cryo_ingest' has no attribute {name!r}")
    return getattr(import_module(_LAZY[name], __name__), name)

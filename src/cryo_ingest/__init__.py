"""cryo-ingest: archive EVM chain data to Parquet in object storage, with Cryo.

The names below load on first use (PEP 562): every worker process imports this package, and
most need none of them (config's pydantic models alone take 0.2 s to build).
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backfill import Result as Result
    from .backfill import backfill as backfill
    from .config import Endpoint as Endpoint
    from .config import Job as Job
    from .config import make_job as make_job
    from .errors import ConfigError as ConfigError
    from .errors import ConflictError as ConflictError
    from .errors import IngestError as IngestError

_WHERE = {
    "Result": "backfill",
    "backfill": "backfill",
    "Endpoint": "config",
    "Job": "config",
    "make_job": "config",
    "ConfigError": "errors",
    "ConflictError": "errors",
    "IngestError": "errors",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'cryo_ingest' has no attribute {name!r}")
    return getattr(import_module(f".{_WHERE[name]}", __name__), name)

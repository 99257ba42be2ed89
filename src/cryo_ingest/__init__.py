"""cryo-ingest: archive EVM chain data to Parquet in object storage, with Cryo.

`Job`, `Endpoint` and `make_job` load on first use (PEP 562): every worker process imports this
package, and needs none of them (config's pydantic models alone take 0.2 s to build). `backfill`
cannot wait so: it is also a submodule's name, which an import of the submodule would bind here.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .backfill import Result, backfill
from .errors import ConfigError, ConflictError, IngestError

if TYPE_CHECKING:
    from .config import Endpoint as Endpoint
    from .config import Job as Job
    from .config import make_job as make_job

_LAZY = {"Endpoint", "Job", "make_job"}
__all__ = ["ConfigError", "ConflictError", "Endpoint", "IngestError", "Job", "Result", "backfill", "make_job"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'cryo_ingest' has no attribute {name!r}")
    return getattr(import_module(".config", __name__), name)

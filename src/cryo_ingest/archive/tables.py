"""The Iceberg tables as a job keeps them in step with the archive (archive/catalog.py does the syncing).

This module stays light (no pyiceberg): backfill, the workers and the operator call it, and a job
without a catalog never imports the iceberg extra.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..errors import IngestError, redact
from .urls import catalog_url

if TYPE_CHECKING:
    from . import manifest

log = logging.getLogger("cryo_ingest")

NEEDS_EXTRA = "catalog: needs the iceberg extra: pip install 'cryo-ingest[iceberg]'"
LAGS = "the archive is published; its table follows on the next run or `cryo-ingest catalog sync`"


def check(url: str, root: str, chain_id: int, namespace: str | None, archived: dict[str, manifest.Manifest | None]) -> None:
    """Before a job touches the archive: the catalog opens, and the tables that exist have the archive's columns."""
    try:
        from . import catalog
    except ImportError:
        raise IngestError(NEEDS_EXTRA) from None
    catalog.check(url, root, namespace or f"cold_{chain_id}", archived)


def follow(
    root: str,
    chain_id: int,
    url: str,
    datasets: tuple[str, ...],
    namespace: str | None,
    blocks: tuple[int, int] | None,
    storage_options: dict[str, str] | None = None,
) -> str | None:
    """The tables brought in step with the manifest after the archive changed; the error line if they could not be.

    A failure here never undoes what was published: the manifest stays the source of truth and the
    next sync (a later partition, the end of the run, `catalog sync`) finds the same difference."""
    catalog_url(url)  # registered in this process too (a worker's, a runner's)
    try:
        from . import catalog

        catalog.sync(root, chain_id, url, datasets, namespace, blocks, storage_options)
    except ImportError:
        problem = NEEDS_EXTRA
    except IngestError as err:
        problem = str(err)
    else:
        return None
    line = redact(f"{problem}; {LAGS}")
    log.error("%s", line)
    return line

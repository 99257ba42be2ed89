"""Test hook: kill this process at a named step, to prove that a crash there loses nothing.

A module of its own, below every stage, so that any of them (publish, manifest) can mark a step
without importing another. `cryo_ingest.pipeline.publish` re-exports these names.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "CRYO_INGEST_CRASH_AT"
# In the order a partition reaches them: staged and validated; one object stored; every object
# stored; a new shard written but not yet listed in the index; the first dataset recorded.
CRASH_POINTS = ("after-staging", "mid-upload", "after-upload", "mid-index", "mid-manifest")


# "job": the worker's parent (backfill's main process, the operator's runner) dies too, as when a
# container is killed; by default only the worker dies and its parent carries on.
CRASH_SCOPE_ENV = "CRYO_INGEST_CRASH_SCOPE"


def crash_point(step: str) -> None:
    if os.environ.get(CRASH_ENV) == step:
        if os.environ.get(CRASH_SCOPE_ENV) == "job":
            os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

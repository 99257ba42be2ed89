"""Test hook: kill this process at a named step, to prove that a crash there loses nothing.

A module of its own, below every stage, so that any of them (publish, manifest) can mark a step
without importing another. `cryo_ingest.publish` re-exports these names.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "CRYO_INGEST_CRASH_AT"
# In the order a partition reaches them: staged and validated; one object stored; every object
# stored; a new shard written but not yet listed in the index; the first dataset recorded.
CRASH_POINTS = ("after-staging", "mid-upload", "after-upload", "mid-index", "mid-manifest")


def crash_point(step: str) -> None:
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)

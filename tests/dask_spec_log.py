"""Preloaded into the test's `dask scheduler`: writes every task's spec (function and arguments, as the
scheduler holds them) to its log, so that the canary check covers task specs, not only what Dask logs."""

from __future__ import annotations

import logging
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

log = logging.getLogger("distributed.scheduler")


class SpecLog(SchedulerPlugin):
    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish == "processing":
            spec = self.scheduler.tasks[key].run_spec
            log.warning(
                "task spec %s: %r args %r kwargs %r", key, spec, getattr(spec, "args", None), getattr(spec, "kwargs", None)
            )


def dask_setup(scheduler: Any) -> None:
    scheduler.add_plugin(SpecLog(scheduler))

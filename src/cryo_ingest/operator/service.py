"""`cryo-ingest run`: every node of a DAG file in one process, or one node as a platform runs it.

Nodes run in threads of this process (their partitions where their executor runs them: in
processes of their own, or on a Dask cluster). With a
source in the same process, a node does not idle out: the source's next request activates it,
as the platform would. SIGTERM stops sources and runners alike (runners get their grace period).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ..archive.storage import open_store
from ..errors import IngestError
from . import metrics, sources
from .dag import Dag, Pools, SourceNode
from .executor import Executors, local
from .node import Runner

log = logging.getLogger("cryo_ingest.service")


def install_sigterm(stop: threading.Event) -> None:
    def handler(signum: int, frame: Any) -> None:
        log.info("SIGTERM: stopping (no new partitions; running ones get their grace period)")
        stop.set()

    signal.signal(signal.SIGTERM, handler)


def run_dag(
    dag: Dag,
    pools: Pools,
    only: str | None,
    stop: threading.Event,
    metrics_port: int | None = None,
    executors: Executors = local,
) -> int:
    """Run one node (`only`) or all; returns the exit code (0, 1 if a request failed or a node crashed)."""
    names = [only] if only else [*dag.sources, *dag.nodes]
    for name in names:
        if name not in dag.sources and name not in dag.nodes:
            raise IngestError(f"invalid config: --node: no node named {name!r} in {dag.path}")
    feeds = {s.output_dataset for n, s in dag.sources.items() if n in names}
    targets: list[Callable[[], int]] = []
    runners: list[Runner] = []
    for name in names:
        if name in dag.sources:
            targets.append(_source_target(dag, dag.sources[name], pools, stop, executors))
        else:
            node = dag.nodes[name]
            fed = any(d in feeds for d in node.input_datasets)
            job = dag.job(node, pools)
            runner = Runner(node, job, executors(name, job), stop, None if fed else float(node.idle_timeout or 0))
            runners.append(runner)
            targets.append(runner.run)
    if metrics_port is not None:
        metrics.serve(metrics_port, runners)
    if len(targets) == 1:
        return targets[0]()
    codes: list[int] = []

    def wrap(target: Callable[[], int]) -> None:
        try:
            codes.append(target())
        except IngestError as err:
            log.error("%s", err)
            codes.append(err.exit_code)
            stop.set()

    threads = [threading.Thread(target=wrap, args=(t,), daemon=True) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.5)
    return max(codes, default=0)


def _source_target(dag: Dag, source: SourceNode, pools: Pools, stop: threading.Event, executors: Executors) -> Callable[[], int]:
    """A source asks its executor for the final head only: on a cluster, a worker asks the chain."""
    job = dag.source_job(source, pools)
    store = open_store(job.root, job.storage_options)
    executor = executors(source.name, job)

    def run() -> int:
        store.check_access()
        with executor:
            if source.operator == "cron_source":
                sources.run_cron(source, job, store, stop, executor.final_head, lambda: datetime.now(UTC))
            else:
                sources.run_threshold(source, job, store, stop, executor.final_head)
        return 0

    return run

"""`run --metrics-port P`: Prometheus text on /metrics and a health check on /healthz.

Values are read from the runners when scraped (a collector, not counters updated in the hot
path). Endpoints are labelled by their pool name, never by URL: a URL may carry a key.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .node import Runner


class RunnerCollector(Collector):
    def __init__(self, runners: list[Runner]) -> None:
        self.runners = runners

    def collect(self) -> Iterator[Metric]:
        parts = CounterMetricFamily("cryo_ingest_partitions", "Partitions ended, by outcome", labels=["node", "state"])
        running = GaugeMetricFamily("cryo_ingest_partitions_running", "Partitions running now", labels=["node"])
        blocks = CounterMetricFamily("cryo_ingest_blocks_archived", "Blocks archived by this runner", labels=["node"])
        lag = GaugeMetricFamily(
            "cryo_ingest_lag_blocks", "Final head minus the archive's high-water mark", labels=["node", "dataset"]
        )
        reqs = GaugeMetricFamily("cryo_ingest_requests", "Backfill requests by state", labels=["node", "state"])
        rpc = CounterMetricFamily("cryo_ingest_rpc_requests", "Upstream JSON-RPC requests", labels=["node", "endpoint"])
        errors = CounterMetricFamily("cryo_ingest_rpc_errors", "Upstream errors by kind", labels=["node", "endpoint", "kind"])
        limited = CounterMetricFamily("cryo_ingest_rpc_429", "Upstream HTTP 429 answers", labels=["node", "endpoint"])
        lies = CounterMetricFamily(
            "cryo_ingest_rpc_lies", "Failed checks of data this endpoint alone answered", labels=["node", "endpoint"]
        )
        store = CounterMetricFamily(
            "cryo_ingest_store_errors",
            "Storage errors logged and retried (after obstore's own)",
            labels=["node"],
        )
        for r in self.runners:
            name = r.node.name
            store.add_metric([name], r.stats.store_errors)
            for state, n in r.stats.partitions.items():
                parts.add_metric([name, state], n)
            running.add_metric([name], len(r.executor.running))
            blocks.add_metric([name], r.stats.blocks)
            for dataset, n in r.stats.lag.items():
                lag.add_metric([name, dataset], n)
            for state, n in r.stats.requests.items():
                reqs.add_metric([name, state], n)
            for endpoint, m in r.gateway_metrics().items():
                rpc.add_metric([name, endpoint], m["requests"])
                limited.add_metric([name, endpoint], m["http_429"])
                lies.add_metric([name, endpoint], m.get("lies", 0))
                for kind, n in m["errors"].items():
                    errors.add_metric([name, endpoint, kind], n)
        yield from (parts, running, blocks, lag, reqs, rpc, errors, limited, lies, store)


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not news."""


def serve(port: int, runners: list[Runner], host: str = "0.0.0.0") -> WSGIServer:
    """Serve in a daemon thread until the process ends; /healthz is 200 while every runner's loop turns."""
    registry = CollectorRegistry()
    registry.register(RunnerCollector(runners))
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            stale = [r.node.name for r in runners if time.monotonic() - r.stats.heartbeat > r.stall_seconds]
            status = "503 Service Unavailable" if stale else "200 OK"
            start_response(status, [("Content-Type", "text/plain")])
            return [(f"stalled: {', '.join(stale)}\n" if stale else "ok\n").encode()]
        return metrics(environ, start_response)  # type: ignore[no-any-return]

    server = make_server(host, port, app, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="cryo-ingest-metrics", daemon=True).start()
    return server

"""A DAG file: the spec's cryo_ingest nodes as written, plus optional source nodes.

Each node resolves here to what it runs with: its root, its RPC pool (resolved on the machine
that runs it, never written anywhere), and for a source, the consuming node whose chain, pool
and root it takes unless it names its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, ValidationError

from ..config import DagNode, Job, _one_line, make_job, resolve_pool
from ..errors import ConfigError


class SourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schedule: str | None = None  # cron_source: croniter syntax (6 fields: seconds last)
    blocks: PositiveInt | None = None  # threshold_source: emit when this many final blocks are not archived
    poll_seconds: float = Field(default=10.0, gt=0)  # threshold_source: how often it looks at the head
    start_block: NonNegativeInt | None = None  # where the archive begins (default: the consumer's, else 0)
    chain_id: PositiveInt | None = None
    rpc_pool: str | None = None
    rpc: list[str] | None = None
    root: str | None = None


class SourceNode(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    operator: Literal["cron_source", "threshold_source"]
    config: SourceConfig
    output_dataset: str


@dataclass
class Pools:
    """Where RPC pools are looked up (CLI flags), besides the environment."""

    pool_file: Path | None = None
    secret: str | None = None
    rpc: list[str] | None = None  # --rpc: overrides every node's pool
    budget_store: str | None = None  # --budget-store: the endpoints' budgets shared by every gateway
    on_workers: bool = False  # --scheduler: Dask workers resolve the pools; this process holds none

    def resolve(self, name: str) -> Any:
        """The pool's endpoints; none with --scheduler, where its name is all that leaves this process."""
        return () if self.on_workers else resolve_pool(name, self.pool_file, self.secret)


@dataclass
class Dag:
    path: Path
    nodes: dict[str, DagNode]
    sources: dict[str, SourceNode]
    root_override: str | None = None

    def node(self, name: str | None) -> DagNode:
        if name is None:
            if len(self.nodes) != 1:
                raise ConfigError(f"invalid config: --node: {self.path} has {len(self.nodes)} cryo_ingest nodes, choose one")
            return next(iter(self.nodes.values()))
        if name not in self.nodes:
            known = ", ".join(self.nodes) or "none"
            raise ConfigError(f"invalid config: --node: no cryo_ingest node named {name!r} in {self.path} (nodes: {known})")
        return self.nodes[name]

    def root(self, node: DagNode) -> str:
        return self.root_override or node.config.root or "./archive"

    def consumer(self, source: SourceNode) -> DagNode:
        for node in self.nodes.values():
            if source.output_dataset in node.input_datasets:
                return node
        raise ConfigError(
            f"invalid config: {source.name}: no cryo_ingest node has {source.output_dataset!r} among its input_datasets"
        )

    def job(self, node: DagNode, pools: Pools, **fields: Any) -> Job:
        """The node's settings as a Job (the range comes per request)."""
        cfg = node.config
        rpc: Any = pools.rpc or cfg.rpc
        if rpc is None:
            if cfg.rpc_pool is None:
                raise ConfigError(f"invalid config: {node.name}: config needs rpc_pool or rpc")
            rpc = pools.resolve(cfg.rpc_pool)
        settings = {
            k: getattr(cfg, k)
            for k in ("chunk_size", "reorg_buffer", "chunks_per_partition", "header_checks")
            if getattr(cfg, k) is not None
        }
        fields = {
            "chain_id": cfg.chain_id,
            "start_block": cfg.start_block or 0,
            "end_block": cfg.start_block or 0,
            "datasets": cfg.datasets,
            "rpc": rpc,
            "rpc_pool": None if pools.rpc else cfg.rpc_pool,
            "budget_store": pools.budget_store,
            "root": self.root(node),
            "max_concurrency": 1 if node.scaling.mode == "steady" else node.scaling.max_concurrency,
            "output_dataset": node.output_dataset or f"cold_{'_'.join(cfg.datasets)}",
            "catalog": cfg.catalog.url if cfg.catalog else None,
            "catalog_namespace": cfg.catalog.namespace if cfg.catalog else None,
            **settings,
            **fields,
        }
        return make_job(**fields)

    def source_job(self, source: SourceNode, pools: Pools) -> Job:
        """The consumer's job, with whatever the source names itself."""
        cfg = source.config
        own: dict[str, Any] = {k: v for k, v in (("chain_id", cfg.chain_id), ("root", self.root_override or cfg.root)) if v}
        if cfg.rpc or cfg.rpc_pool:
            own["rpc"] = pools.rpc or cfg.rpc or pools.resolve(str(cfg.rpc_pool))
            own["rpc_pool"] = None if pools.rpc or cfg.rpc else cfg.rpc_pool
        return self.job(self.consumer(source), pools, **own)


def load_dag(path: Path, root_override: str | None = None) -> Dag:
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"invalid config: --config: cannot read {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise ConfigError(f"invalid config: {path}: malformed YAML{f' at line {mark.line + 1}' if mark else ''}") from None
    items = doc if isinstance(doc, list) else [doc]
    if not items or not all(isinstance(n, dict) for n in items):
        raise ConfigError(f"invalid config: {path}: expected a DAG node or a list of nodes")
    dag = Dag(path, {}, {}, root_override)
    for item in items:
        name = str(item.get("name", "?"))
        if name in dag.nodes or name in dag.sources:
            raise ConfigError(f"invalid config: {path}: two nodes are named {name!r}")
        try:
            if item.get("operator", "cryo_ingest") == "cryo_ingest":
                dag.nodes[name] = DagNode(**item)
            elif item.get("operator") in ("cron_source", "threshold_source"):
                source = SourceNode(**item)
                _check_source(source)
                dag.sources[name] = source
            else:
                raise ConfigError(
                    f"invalid config: {name}: unknown operator {item.get('operator')!r} "
                    "(cryo_ingest, cron_source, threshold_source)"
                )
        except ValidationError as err:
            raise ConfigError(f"{_one_line(err)} (node {name})") from None
    for source in dag.sources.values():
        dag.consumer(source)
    return dag


def _check_source(source: SourceNode) -> None:
    from croniter import croniter

    if source.operator == "cron_source":
        if not source.config.schedule or not croniter.is_valid(source.config.schedule):
            raise ConfigError(f"invalid config: {source.name}: config.schedule must be a cron expression")
    elif source.config.blocks is None:
        raise ConfigError(f"invalid config: {source.name}: config.blocks is required for threshold_source")

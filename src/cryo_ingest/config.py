"""The job, the RPC pool and the spec's DAG node, validated with pydantic.

Every invalid input becomes one `ConfigError` line naming the field and the reason, before
anything touches the network or the archive.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .archive.urls import catalog_url
from .costs import KNOWN_METHODS, PROFILES
from .errors import ConfigError, register_secret_url

DATASETS = ("blocks", "transactions", "logs", "traces")
ALIASES = {"txs": "transactions", "events": "logs"}
ROOT_SCHEMES = ("s3", "gs", "az", "file")

# Safe for a paid provider; a node on loopback (your own) is not throttled by default.
DEFAULT_RPS = 25.0
DEFAULT_CONCURRENCY = 10
DEFAULT_GRACE = "24h"  # gc's --older-than: longer than any partition's timeout (the spec's node: 3600 s)
LOOPBACK_CONCURRENCY = 64
BUDGET_ENV = "CRYO_INGEST_BUDGET_STORE"  # the shared RPC budget's redis URL (gateway/shared_budget.py)

Dataset = Literal["blocks", "transactions", "logs", "traces"]


def _datasets(value: Any) -> Any:
    """Comma string or list; aliases mapped; duplicates dropped; Cryo's canonical order."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        return value
    names = [ALIASES.get(str(v).strip().lower(), str(v).strip().lower()) for v in items]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise ValueError(f"unknown dataset {unknown[0]!r} (choose from {', '.join(DATASETS)}; aliases txs, events)")
    if not names:
        raise ValueError("at least one dataset is required")
    return tuple(d for d in DATASETS if d in names)


Datasets = Annotated[tuple[Dataset, ...], BeforeValidator(_datasets)]
HeaderChecks = Literal["fetch", "archived"]
HEADER_CHECKS: tuple[str, ...] = get_args(HeaderChecks)


def _checked_catalog(url: SecretStr) -> SecretStr:
    """A catalog URL pyiceberg can open (archive/urls.py), kept secret: it may hold a password."""
    return SecretStr(catalog_url(url.get_secret_value()))


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


class Endpoint(BaseModel):
    """One RPC provider URL (a secret) and its limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: SecretStr
    name: str = ""
    requests_per_second: float | None = Field(default=None, gt=0)
    # A provider that meters compute units or credits: the limit in those, and what each method costs
    # (a provider's name, costs.PROFILES, or a table {method: cost, "default": cost}).
    compute_units_per_second: float | None = Field(default=None, gt=0)
    costs: str | dict[str, float] | None = None
    max_concurrency: PositiveInt | None = None
    weight: float = Field(default=1.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http(cls, v: SecretStr) -> SecretStr:
        raw = v.get_secret_value()
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # The message must not echo the URL: it may carry a key.
            raise ValueError("RPC URL must be an http(s) URL with a host")
        register_secret_url(raw)
        try:
            parts.port  # noqa: B018 (parsed on access: out of range or not a number raises)
        except ValueError:
            raise ValueError("RPC URL has an invalid port") from None
        return v

    @field_validator("costs")
    @classmethod
    def _costs(cls, v: str | dict[str, float] | None) -> str | dict[str, float] | None:
        if isinstance(v, str) and v not in PROFILES:
            raise ValueError(f"unknown cost profile {v!r} (choose from {', '.join(PROFILES)}, or give a table)")
        if isinstance(v, dict):
            unknown = sorted(set(v) - KNOWN_METHODS - {"default"})
            if unknown:
                raise ValueError(f'unknown method {unknown[0]!r} in costs (a JSON-RPC method name, or "default")')
            negative = sorted(m for m, c in v.items() if c < 0)
            if negative:
                raise ValueError(f"the cost of {negative[0]!r} is negative")
            if "default" not in v:
                raise ValueError('a costs table needs a "default": what the methods it does not name cost')
        return v

    def cost(self, method: str) -> float:
        """What one call of `method` takes from `compute_units_per_second`."""
        if self.costs is None:
            return 1.0
        table = PROFILES[self.costs] if isinstance(self.costs, str) else self.costs
        return float(table.get(method, table["default"]))

    @model_validator(mode="after")
    def _defaults(self) -> Endpoint:
        if (self.compute_units_per_second is None) != (self.costs is None):
            raise ValueError("compute_units_per_second and costs go together: a limit in compute units needs their costs")
        local = _is_loopback(urlsplit(self.url.get_secret_value()).hostname)
        limited = {"requests_per_second", "compute_units_per_second"} & self.model_fields_set
        if not limited and not local:
            object.__setattr__(self, "requests_per_second", DEFAULT_RPS)
        if self.max_concurrency is None:
            object.__setattr__(self, "max_concurrency", LOOPBACK_CONCURRENCY if local else DEFAULT_CONCURRENCY)
        return self


def _endpoints(value: Any) -> Any:
    """A URL, a list of URLs or endpoint objects, or the pool document `{"endpoints": [...]}`."""
    if isinstance(value, dict) and "endpoints" in value:
        value = value["endpoints"]
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list | tuple):
        return [{"url": v} if isinstance(v, str) else v for v in value]
    return value


class Job(BaseModel):
    """One backfill: what to fetch, from where, into where."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chain_id: PositiveInt
    start_block: NonNegativeInt
    end_block: NonNegativeInt
    datasets: Datasets
    # Empty only for a job whose partitions run on a cluster: its workers resolve `rpc_pool` (cluster.py).
    rpc: Annotated[tuple[Endpoint, ...], BeforeValidator(_endpoints)] = ()
    root: str = "./archive"
    chunk_size: PositiveInt = 1000
    force: bool = False
    overwrite_conflicts: bool = False
    max_concurrency: PositiveInt = 2
    chunks_per_partition: PositiveInt = 4
    reorg_buffer: NonNegativeInt = 64
    output_dataset: str | None = None
    storage_options: dict[str, str] = Field(default_factory=dict)
    rpc_pool: str | None = None  # the pool's name: keys its endpoints' shared budget (`--rpc` pools share "rpc")
    budget_store: SecretStr | None = None  # redis://…: one budget per endpoint across every gateway (docs/cluster.md)
    # The pool document's `canonical_check` (docs/rpc-pool.md): each chunk's last block hash asked of a second
    # endpoint; None: on where the pool has two or more endpoints.
    canonical_check: bool | None = None
    # A job of transactions or logs without blocks checks them against headers: the archive's blocks, else "fetch"
    # them (about one request a block, never published); "archived": the archive's alone (docs/verify.md)
    header_checks: HeaderChecks = "fetch"

    catalog: SecretStr | None = None  # the Iceberg catalog the archive's tables follow (docs/reading.md); may hold a password
    catalog_namespace: str | None = None  # cold_{chain_id} if None

    @model_validator(mode="before")
    @classmethod
    def _pool_settings(cls, data: Any) -> Any:
        """A pool document's settings, beside its endpoints, are the job's."""
        if isinstance(data, dict) and isinstance(doc := data.get("rpc"), dict) and "canonical_check" in doc:
            data = {**data, "canonical_check": doc["canonical_check"], "rpc": doc.get("endpoints", doc)}
        return data

    @field_validator("catalog")
    @classmethod
    def _catalog(cls, v: SecretStr | None) -> SecretStr | None:
        return None if v is None else _checked_catalog(v)

    @field_validator("budget_store")
    @classmethod
    def _redis(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return v
        raw = v.get_secret_value()
        if urlsplit(raw).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("budget store must be a redis://, rediss:// or unix:// URL")  # not echoed: it may hold a password
        register_secret_url(raw)
        return v

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("root must be a path or a URL")
        m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", v)
        if m:
            scheme, rest = m.group(1).lower(), m.group(2)
            if scheme not in ROOT_SCHEMES:
                raise ValueError(f"unsupported root scheme {scheme!r} (use s3://, gs://, az://, file:// or a path)")
            if scheme == "file" and not rest.startswith("/"):
                raise ValueError("file:// root must be an absolute path (file:///path)")
            if scheme != "file" and not rest.split("/")[0]:
                raise ValueError(f"{scheme}:// root needs a bucket or container name")
        return v

    @model_validator(mode="after")
    def _range(self) -> Job:
        if self.end_block < self.start_block:
            raise ValueError(f"end_block ({self.end_block}) is before start_block ({self.start_block})")
        names = [e.name for e in self.rpc]
        if any(names) and len(set(names)) != len(names):
            raise ValueError("endpoint names must be unique")
        if not all(names):
            object.__setattr__(
                self, "rpc", tuple(e if e.name else e.model_copy(update={"name": f"rpc-{i}"}) for i, e in enumerate(self.rpc))
            )
        return self


def _one_line(err: ValidationError) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "job"
    msg = first["msg"].removeprefix("Value error, ")
    return f"invalid config: {field}: {msg}"


def make_job(**fields: Any) -> Job:
    try:
        return Job(**fields)
    except ValidationError as err:
        raise ConfigError(_one_line(err)) from None


# ---- the spec's DAG node -----------------------------------------------------------------


def _catalog_config(value: Any) -> Any:
    return {"url": value} if isinstance(value, str) else value


class CatalogConfig(BaseModel):
    """`catalog:` of a node: a URL (`catalog: sqlite:///…`), or the URL and the tables' namespace."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: SecretStr
    namespace: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: SecretStr) -> SecretStr:
        return _checked_catalog(v)


class NodeConfig(BaseModel):
    """`config:` of the spec's node, plus optional keys of ours."""

    model_config = ConfigDict(extra="forbid")

    chain_id: PositiveInt
    datasets: Datasets
    rpc_pool: str | None = None
    rpc: list[str] | None = None
    start_block: NonNegativeInt | None = None
    end_block: NonNegativeInt | None = None
    root: str | None = None
    chunk_size: PositiveInt | None = None
    reorg_buffer: NonNegativeInt | None = None
    chunks_per_partition: PositiveInt | None = None
    header_checks: HeaderChecks | None = None
    catalog: Annotated[CatalogConfig | None, BeforeValidator(_catalog_config)] = None  # Iceberg tables (docs/reading.md)
    # the operator's (docs/operator.md)
    attempts: PositiveInt = 3  # per partition, each in its own process, killed at timeout_seconds
    lease_seconds: float = Field(default=30.0, ge=1.0)  # a dead runner's partitions are taken over after this
    poll_seconds: float = Field(default=2.0, gt=0)  # how often an idle runner looks for requests
    grace_seconds: float = Field(default=20.0, ge=0)  # after SIGTERM: time for running partitions (ECS kills at 30)


class Scaling(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["backfill", "steady"] = "backfill"
    max_concurrency: PositiveInt = 20


class DagNode(BaseModel):
    """A node of the spec's "Example DAG Config", keys as written there."""

    model_config = ConfigDict(extra="forbid")

    name: str
    activation: str | None = None
    runtime: str | None = None
    operator: str = "cryo_ingest"
    execution_strategy: str | None = None
    idle_timeout: NonNegativeInt | None = None
    input_datasets: list[str] = Field(default_factory=list)
    config: NodeConfig
    scaling: Scaling = Field(default_factory=Scaling)
    output_dataset: str | None = None
    # A partition still running after this is killed and its attempt counts; left out, an hour
    # (the spec's example), so that a hung partition never holds its lease and its request forever.
    timeout_seconds: PositiveInt = 3600

    @field_validator("operator")
    @classmethod
    def _ours(cls, v: str) -> str:
        if v != "cryo_ingest":
            raise ValueError(f"operator is {v!r}, not cryo_ingest")
        return v


def load_node(path: Path, name: str | None) -> DagNode:
    """Read a node from the spec's YAML: a list of nodes, or a single node."""
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"invalid config: --config: cannot read {path}: {err.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"invalid config: {path}: malformed YAML{where}") from None
    nodes = doc if isinstance(doc, list) else [doc]
    if not nodes or not all(isinstance(n, dict) for n in nodes):
        raise ConfigError(f"invalid config: {path}: expected a DAG node or a list of nodes")
    if name is not None:
        nodes = [n for n in nodes if n.get("name") == name]
        if not nodes:
            raise ConfigError(f"invalid config: --node: no node named {name!r} in {path}")
    elif len(nodes) > 1:
        ours = [n for n in nodes if n.get("operator") == "cryo_ingest"]
        if len(ours) != 1:
            names = ", ".join(str(n.get("name")) for n in ours or nodes)
            raise ConfigError(f"invalid config: --node: {path} has several nodes, choose one with --node ({names})")
        nodes = ours
    try:
        return DagNode(**nodes[0])
    except ValidationError as err:
        raise ConfigError(_one_line(err)) from None


# ---- the RPC pool ------------------------------------------------------------------------


def _expand_env(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in os.environ:
            raise ConfigError(f"invalid config: rpc pool file: environment variable {m.group(1)} is not set")
        return os.environ[m.group(1)]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", sub, text)


def resolve_pool(name: str, pool_file: Path | None = None, secret: str | None = None) -> Any:
    """The endpoints of pool `name`: environment variable, then pool file, then AWS Secrets Manager."""
    var = "CRYO_INGEST_RPC_POOL_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()
    if var in os.environ:
        return _parse_pool_doc(os.environ[var], f"environment variable {var}")
    if pool_file is not None:
        try:
            doc = yaml.safe_load(_expand_env(pool_file.read_text()))
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"invalid config: --rpc-pool-file: cannot read {pool_file}: {type(err).__name__}") from None
        pools = doc.get("pools", doc) if isinstance(doc, dict) else None
        if not isinstance(pools, dict) or name not in pools:
            raise ConfigError(f"invalid config: rpc_pool: pool {name!r} not found in {pool_file}")
        return pools[name]
    if secret is not None:
        import boto3  # only a worker that reads Secrets Manager needs it
        import botocore.exceptions

        try:
            with _quiet("botocore"):
                value = boto3.client("secretsmanager").get_secret_value(SecretId=secret)["SecretString"]
        except botocore.exceptions.BotoCoreError as err:
            raise ConfigError(f"invalid config: --rpc-pool-secret: {type(err).__name__}") from None
        except botocore.exceptions.ClientError as err:
            code = err.response.get("Error", {}).get("Code", "error")
            raise ConfigError(f"invalid config: --rpc-pool-secret: cannot read secret {secret!r}: {code}") from None
        return _parse_pool_doc(value, f"secret {secret!r}")
    raise ConfigError(
        f"invalid config: rpc_pool: pool {name!r} not found (set {var}, or give --rpc-pool-file or --rpc-pool-secret)"
    )


@contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """botocore logs response bodies at DEBUG (with -v): the secret's, holding URLs not registered yet."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(max(logging.INFO, log.getEffectiveLevel()))
    try:
        yield
    finally:
        log.setLevel(level)


def _parse_pool_doc(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ConfigError(f"invalid config: rpc_pool: {where} is not valid JSON") from None

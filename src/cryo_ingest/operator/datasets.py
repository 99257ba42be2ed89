"""Event datasets on the archive's store: `backfill_requests` in, `cold_blocks` (etc.) out.

Layout (docs/operator.md): `{root}/datasets/{name}/events/{id}.json`, one immutable object per
event, written with If-None-Match so that emitting the same event twice stores it once. Anyone
with read access to the root can list and read a dataset; nothing here needs a database.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, ValidationError, model_validator

from ..archive.events import dataset_prefix
from ..archive.storage import Store
from ..config import Datasets
from ..errors import ConfigError

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Request(BaseModel):
    """A backfill request: one event of an input dataset (schema in docs/operator.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=ID_PATTERN)
    kind: Literal["manual", "cron", "threshold"]
    source: str
    chain_id: PositiveInt
    start_block: NonNegativeInt
    end_block: NonNegativeInt
    datasets: Datasets | None = None  # None: every dataset of the consuming node
    created_at: str

    @model_validator(mode="after")
    def _range(self) -> Request:
        if self.end_block < self.start_block:
            raise ValueError(f"end_block ({self.end_block}) is before start_block ({self.start_block})")
        return self


def content_id(kind: str, fields: dict[str, Any]) -> str:
    """An id from what a request asks for, so that the same manual request made twice is one request."""
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=list).encode()).hexdigest()[:16]
    return f"{kind}-{digest}"


def make_request(**fields: Any) -> Request:
    try:
        return Request(**fields)
    except ValidationError as err:
        first = err.errors()[0]
        where = "".join(f"{p}: " for p in first["loc"][:1])
        raise ConfigError(f"invalid request: {where}{first['msg'].removeprefix('Value error, ')}") from None


def key(dataset: str, request_id: str) -> str:
    return f"{dataset_prefix(dataset)}{request_id}.json"


def arrivals_prefix(dataset: str) -> str:
    """Where each put of a request leaves a key named by the time it came: `{day}/{time}-{id}`.

    A consumer follows this log from where it last looked (one listing of today's folder), so
    finding new requests costs what came in, not every request the dataset ever held.
    """
    return f"datasets/{dataset}/arrivals/"


def arrival_key(dataset: str, request_id: str, at: datetime) -> str:
    return f"{arrivals_prefix(dataset)}{at:%Y-%m-%d}/{at:%H%M%S.%f}-{request_id}"


def arrival_id(key: str) -> str:
    return key.rsplit("/", 1)[-1].split("-", 1)[1]


def put(store: Store, dataset: str, request: Request) -> bool:
    """Store the request unless one with its id exists, then its arrival; True if it is new.

    The arrival is written even when the request existed: putting it again is how a request
    whose writer died between the two is announced (a consumer ignores arrivals of requests it
    has seen).
    """
    if not re.match(ID_PATTERN, request.id):
        raise ConfigError(f"invalid request: id: {request.id!r} must match {ID_PATTERN}")
    body = json.dumps(request.model_dump(mode="json"), sort_keys=True).encode() + b"\n"
    new = store.put_new(key(dataset, request.id), body)
    store.put_new(arrival_key(dataset, request.id, datetime.now(UTC)), b"")
    return new


def parse(event_id: str, data: bytes | None) -> Request | str:
    """The request an event object holds, or why it is not one (someone else wrote it)."""
    try:
        doc = json.loads(data or b"")
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        request = Request(**doc)
        if request.id != event_id:
            raise ValueError(f"id {request.id!r} differs from the object's name")
        return request
    except ValidationError as err:
        first = err.errors()[0]
        return f"{'.'.join(str(p) for p in first['loc']) or 'event'}: {first['msg']}"
    except ValueError as err:
        return f"malformed event: {str(err)[:200]}"


def find(store: Store, names: list[str], event_id: str) -> Request | str | None:
    """The event `event_id` of the first of the datasets `names` that holds it (a state names its
    dataset; one written before it did may be in any of the node's inputs)."""
    for name in names:
        if (data := store.get(key(name, event_id))) is not None:
            return parse(event_id, data)
    return None


def ids(store: Store, dataset: str) -> list[str]:
    """Every event id of the dataset: a listing, no reads (a runner's start-up scan)."""
    prefix = dataset_prefix(dataset)
    names = (p.removeprefix(prefix) for p in store.list(prefix))
    return [n.removesuffix(".json") for n in names if n.endswith(".json") and "/" not in n]

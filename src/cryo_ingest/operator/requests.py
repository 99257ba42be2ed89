"""Request states and partition leases, kept on the store with compare-and-swap (as the manifest is).

A request's state moves pending -> running/waiting -> done | failed (or invalid); done, failed
and invalid never change again. What a poll reads must follow the open work, not the node's
history, so states live by kind (docs/operator.md, "Where everything lives"):

- `requests/{id}.json`: the state of each *open* request; a poll lists this folder, and reads
  only the states whose ETag changed since it last looked;
- `closed/{id}.json`: the state of each ended one, moved there when it ends and never listed by
  a poll; `summary.json` counts them by state and keeps the last few for `status`.

A runner claims a cell (a run of `chunks_per_partition` chunks) by writing its lease (owner,
expiry) under If-Match, whatever request wants the cell: one lease per cell, attempts and
backoff per cell, so two overlapping requests neither run a cell twice at once nor reset each
other's attempts. A lease whose owner died expires and any runner may take it; a cell's lease is
removed once its partition is done, so the folder holds the cells in work. Clocks: leases
compare wall-clock time across runners, so hosts need NTP; the default 30 s tolerates seconds.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

from ..archive.storage import Store
from .datasets import now_iso

TERMINAL = ("done", "failed", "invalid")
RECENT = 20
T = TypeVar("T")  # ended requests that summary.json keeps for `status`


def _encode(doc: Any) -> bytes:
    """Every object this module writes: sorted keys, so that an unchanged document is unchanged bytes."""
    return (json.dumps(doc, sort_keys=True) + "\n").encode()


def _known(cls: type[T], doc: dict[str, Any]) -> T:
    """A dataclass from a stored document, ignoring keys a later version may add."""
    return cls(**{f.name: doc[f.name] for f in fields(cls) if f.name in doc})  # type: ignore[arg-type]


def _summary(data: bytes | None) -> dict[str, Any]:
    return dict(json.loads(data)) if data else {"counts": {}, "recent": [], "ids": []}


def _prefix(node: str) -> str:
    return f"operator/{node}/"


def open_prefix(node: str) -> str:
    return f"{_prefix(node)}requests/"


def state_key(node: str, request_id: str) -> str:
    return f"{open_prefix(node)}{request_id}.json"


def closed_key(node: str, request_id: str) -> str:
    return f"{_prefix(node)}closed/{request_id}.json"


def summary_key(node: str) -> str:
    return f"{_prefix(node)}summary.json"


def lease_prefix(node: str) -> str:
    return f"{_prefix(node)}leases/"


def lease_key(node: str, cell: int) -> str:
    return f"{lease_prefix(node)}{cell:012}.json"


@dataclass
class State:
    id: str
    state: str = "pending"  # pending, running, waiting, done, failed, invalid
    reason: str = ""
    updated_at: str = ""
    runner: str = ""
    dataset: str = ""  # the input dataset that holds the request (empty in states written before it was kept)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def dump(self) -> bytes:
        return _encode(asdict(self))

    @classmethod
    def parse(cls, data: bytes) -> State:
        return _known(cls, json.loads(data))


def load_state(store: Store, node: str, request_id: str) -> State:
    for where in (state_key(node, request_id), closed_key(node, request_id)):
        if (data := store.get(where)) is not None:
            return State.parse(data)
    return State(request_id)


def take_in(store: Store, node: str, request_id: str, dataset: str) -> bool:
    """Open a request that arrived: a pending state, unless it is open or ended already. True if new."""
    if store.head(closed_key(node, request_id)) is not None:
        return False
    return store.put_new(state_key(node, request_id), State(request_id, updated_at=now_iso(), dataset=dataset).dump())


class OpenStates:
    """The open requests' states as a poll sees them: one listing, and a GET only for what changed."""

    def __init__(self, store: Store, node: str) -> None:
        self.store, self.node = store, node
        self._seen: dict[str, tuple[str | None, State]] = {}  # key -> (ETag, state)

    def read(self, settle: bool = True) -> dict[str, State]:
        """Open states by id; with `settle`, ended ones found here are moved to `closed/` (else returned too)."""
        metas = self.store.list_meta(open_prefix(self.node))
        keys = {str(m["path"]): m.get("e_tag") for m in metas}
        stale = [k for k, tag in keys.items() if k not in self._seen or self._seen[k][0] != tag or tag is None]
        with ThreadPoolExecutor(max_workers=16) as pool:
            for k, data in zip(stale, pool.map(self.store.get, stale), strict=True):
                if data is not None:
                    self._seen[k] = (keys[k], State.parse(data))
        self._seen = {k: v for k, v in self._seen.items() if k in keys}
        states = {s.id: s for _, s in self._seen.values()}
        if not settle:
            return states
        ended = [s for s in states.values() if s.terminal]  # a move cut short, or a root from before closed/
        if ended:
            close(self.store, self.node, ended)
        return {i: s for i, s in states.items() if not s.terminal}


def set_state(store: Store, node: str, request_id: str, state: str, reason: str, runner: str) -> State:
    """Move a request to `state` unless it has ended already; returns the state now stored."""
    stored: list[State] = []

    def change(current: bytes | None) -> bytes | None:
        if current is None and (ended := store.get(closed_key(node, request_id))) is not None:
            stored[:] = [State.parse(ended)]
            return None
        old = State.parse(current) if current else State(request_id)
        stored[:] = [old]
        if old.terminal or (old.state, old.reason) == (state, reason):
            return None
        new = State(request_id, state, reason, now_iso(), runner, old.dataset)
        stored[:] = [new]
        return new.dump()

    store.update(state_key(node, request_id), change)
    if stored[0].terminal:
        close(store, node, [stored[0]])
    return stored[0]


def close(store: Store, node: str, ended: list[State]) -> None:
    """Move ended requests out of the open folder: their closed state, the summary, then the delete.

    Each step can be repeated: a runner that dies half-way leaves the state in `requests/`, where
    the next poll finds it ended and moves it again; the summary counts a request once.
    """
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda s: store.put(closed_key(node, s.id), s.dump()), ended))

    def count(current: bytes | None) -> bytes | None:
        doc = _summary(current)
        new = [s for s in ended if s.id not in doc["ids"]]
        if not new:
            return None
        for s in new:
            doc["counts"][s.state] = doc["counts"].get(s.state, 0) + 1
        doc["recent"] = ([asdict(s) for s in reversed(new)] + doc["recent"])[:RECENT]
        # the ids counted lately: enough to tell a repeated move from a new one
        doc["ids"] = ([s.id for s in reversed(new)] + doc["ids"])[: max(RECENT, len(new))]
        return _encode(doc)

    store.update(summary_key(node), count)
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda s: store.delete(state_key(node, s.id)), ended))


def summary(store: Store, node: str) -> dict[str, Any]:
    return _summary(store.get(summary_key(node)))


def note_arrivals(store: Store, node: str, through: dict[str, str]) -> None:
    """Record, per input dataset, the time before which every arrival has been taken in (ISO, UTC):
    where the next runner's start-up resumes instead of scanning every request."""

    def change(current: bytes | None) -> bytes | None:
        doc = _summary(current)
        marks = doc.setdefault("arrivals", {})
        later = {d: t for d, t in through.items() if t > marks.get(d, "")}
        if not later:
            return None
        marks.update(later)
        return _encode(doc)

    store.update(summary_key(node), change)


def runners_prefix(node: str) -> str:
    return f"{_prefix(node)}runners/"


def report_claims(store: Store, node: str, runner: str, claims: list[dict[str, Any]]) -> None:
    """A runner's partitions in flight, in one object of its own (no compare-and-swap: it alone writes
    it): what `status` shows, without reading every lease the node ever wrote."""
    doc = {"runner": runner, "updated": time.time(), "claims": claims}
    store.put(f"{runners_prefix(node)}{runner}.json", _encode(doc))


def forget_runner(store: Store, node: str, runner: str) -> None:
    store.delete(f"{runners_prefix(node)}{runner}.json")


def read_runners(store: Store, node: str) -> list[dict[str, Any]]:
    keys = store.list(runners_prefix(node))
    with ThreadPoolExecutor(max_workers=16) as pool:
        datas = list(pool.map(store.get, keys))
    return [json.loads(d) for d in datas if d]


def sweep_runners(store: Store, node: str, older_than: float) -> None:
    """Remove the reports of runners that died without removing their own (a SIGKILL)."""
    for doc in read_runners(store, node):
        if doc["updated"] < time.time() - older_than:
            forget_runner(store, node, doc["runner"])


def closed_ids(store: Store, node: str) -> set[str]:
    prefix = f"{_prefix(node)}closed/"
    return {k.removeprefix(prefix).removesuffix(".json") for k in store.list(prefix)}


@dataclass
class Lease:
    cell: int
    owner: str | None = None
    expires: float = 0.0
    request: str = ""  # the request whose partition holds or last held the cell
    attempts: int = 0  # attempts on this cell, whatever request made them, including one that is running
    not_before: float = 0.0  # backoff after a failed attempt
    last_error: str = ""
    exhausted_at: str = ""  # when it used up its attempts: requests made later try it afresh

    def held(self, now: float) -> bool:
        return self.owner is not None and self.expires > now


def _load_lease(cell: int, data: bytes | None) -> Lease:
    return _known(Lease, json.loads(data)) if data else Lease(cell)


def _dump(lease: Lease) -> bytes:
    return _encode(asdict(lease))


def read_lease(store: Store, node: str, cell: int) -> Lease:
    return _load_lease(cell, store.get(lease_key(node, cell)))


def claim(
    store: Store, node: str, cell: int, request_id: str, requested_at: str, runner: str, ttl: float, max_attempts: int
) -> tuple[Lease | None, Lease]:
    """Take the cell's lease for one more attempt: (the lease taken or None, the lease as found).

    None when any runner holds it (this one included: a runner never starts a cell it runs), it
    is backing off, or it used up its attempts before the request was made.
    """
    got: list[Lease] = []
    found: list[Lease] = [Lease(cell)]

    def change(current: bytes | None) -> bytes | None:
        got.clear()
        lease, now = _load_lease(cell, current), time.time()
        found[0] = lease
        if lease.held(now):
            return None
        attempts = lease.attempts
        if attempts >= max_attempts:
            if not lease.exhausted_at or requested_at <= lease.exhausted_at:
                return None
            attempts = 0
        elif now < lease.not_before:
            return None
        new = Lease(cell, runner, now + ttl, request_id, attempts + 1, 0.0, lease.last_error if attempts else "")
        got.append(new)
        return _dump(new)

    store.update(lease_key(node, cell), change)
    return (got[0] if got else None), found[0]


def renew(store: Store, node: str, cell: int, runner: str, ttl: float) -> float | None:
    """Extend our lease: its new expiry, or None if it is no longer ours (it expired and another runner took it)."""
    ours: list[float | None] = [None]

    def change(current: bytes | None) -> bytes | None:
        lease = _load_lease(cell, current)
        ours[0] = None
        if lease.owner != runner:
            return None
        lease.expires = time.time() + ttl
        ours[0] = lease.expires
        return _dump(lease)

    store.update(lease_key(node, cell), change)
    return ours[0]


def release(
    store: Store,
    node: str,
    cell: int,
    runner: str,
    outcome: str,
    error: str = "",
    max_attempts: int = 0,
    margin: float = 5.0,
) -> Lease | None:
    """outcome: "done" (the lease is removed), "failed" (counts, backs off 1 s, 2 s, 4 s … 60 s),
    "stopped" (SIGTERM: does not count). The lease as released, or None where it was not ours.

    A done cell's lease is deleted only while it is ours with `margin` seconds to run, so that no
    other runner can have taken it between the read and the delete; otherwise it is released in
    place (attempts cleared), and stays.
    """
    if outcome == "done":
        lease = read_lease(store, node, cell)
        if lease.owner == runner and lease.expires - time.time() > margin:
            store.delete(lease_key(node, cell))
            return lease
    released: list[Lease | None] = [None]

    def change(current: bytes | None) -> bytes | None:
        lease = _load_lease(cell, current)
        released[0] = None
        if lease.owner != runner:
            return None
        lease.owner, lease.expires = None, 0.0
        if outcome == "done":
            lease.attempts, lease.last_error, lease.exhausted_at = 0, "", ""
        elif outcome == "failed":
            lease.last_error, lease.not_before = error, time.time() + min(60.0, 2.0 ** max(0, lease.attempts - 1))
            if lease.attempts >= max_attempts:
                lease.exhausted_at = now_iso()
        else:
            lease.attempts = max(0, lease.attempts - 1)
        released[0] = lease
        return _dump(lease)

    store.update(lease_key(node, cell), change)
    return released[0]

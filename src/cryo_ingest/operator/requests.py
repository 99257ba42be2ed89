"""Request states and partition leases, kept on the store with compare-and-swap (as the manifest is).

A runner claims a partition by writing a lease (owner, expiry) under If-Match; it renews its
leases by heartbeat; a lease whose owner died expires and any runner may take it. A request's
state moves pending -> running/waiting -> done | failed (or invalid); done, failed and invalid
never change again. Clocks: leases compare wall-clock time across runners, so hosts need NTP;
the default lease of 30 s tolerates seconds of skew.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from ..storage import Store
from .datasets import now_iso

TERMINAL = ("done", "failed", "invalid")


def _prefix(node: str) -> str:
    return f"operator/{node}/"


def state_key(node: str, request_id: str) -> str:
    return f"{_prefix(node)}requests/{request_id}.json"


def lease_key(node: str, cell: int) -> str:
    return f"{_prefix(node)}leases/{cell:012}.json"


@dataclass
class State:
    id: str
    state: str = "pending"  # pending, running, waiting, done, failed, invalid
    reason: str = ""
    updated_at: str = ""
    runner: str = ""

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


def load_state(store: Store, node: str, request_id: str) -> State:
    data = store.get(state_key(node, request_id))
    return State(**json.loads(data)) if data else State(request_id)


def load_states(store: Store, node: str) -> dict[str, State]:
    prefix = f"{_prefix(node)}requests/"
    out = {}
    for path in store.list(prefix):
        data = store.get(path)
        if data:
            s = State(**json.loads(data))
            out[s.id] = s
    return out


def set_state(store: Store, node: str, request_id: str, state: str, reason: str, runner: str) -> State:
    """Move a request to `state` unless it is already terminal; returns the state now stored."""
    stored: list[State] = []

    def change(current: bytes | None) -> bytes | None:
        old = State(**json.loads(current)) if current else State(request_id)
        stored[:] = [old]
        if old.terminal or (old.state, old.reason) == (state, reason):
            return None
        new = State(request_id, state, reason, now_iso(), runner)
        stored[:] = [new]
        return (json.dumps(asdict(new), sort_keys=True) + "\n").encode()

    store.update(state_key(node, request_id), change)
    return stored[0]


@dataclass
class Lease:
    cell: int
    owner: str | None = None
    expires: float = 0.0
    request: str = ""
    attempts: int = 0  # attempts of `request` on this cell, including one that is running
    not_before: float = 0.0  # backoff after a failed attempt
    last_error: str = ""

    def held_by_other(self, runner: str, now: float) -> bool:
        return self.owner is not None and self.owner != runner and self.expires > now


def _load_lease(cell: int, data: bytes | None) -> Lease:
    return Lease(**json.loads(data)) if data else Lease(cell)


def _dump(lease: Lease) -> bytes:
    return (json.dumps(asdict(lease), sort_keys=True) + "\n").encode()


def read_lease(store: Store, node: str, cell: int) -> Lease:
    return _load_lease(cell, store.get(lease_key(node, cell)))


def read_leases(store: Store, node: str) -> list[Lease]:
    return [Lease(**json.loads(d)) for p in store.list(f"{_prefix(node)}leases/") if (d := store.get(p))]


def claim(store: Store, node: str, cell: int, request_id: str, runner: str, ttl: float, max_attempts: int) -> Lease | None:
    """Take the cell's lease for one more attempt of `request_id`; None if another runner holds it,
    it is backing off, or the request used up its attempts on it."""
    got: list[Lease] = []

    def change(current: bytes | None) -> bytes | None:
        got.clear()
        lease, now = _load_lease(cell, current), time.time()
        if lease.held_by_other(runner, now) or (now < lease.not_before and lease.request == request_id):
            return None
        attempts = lease.attempts if lease.request == request_id else 0
        if attempts >= max_attempts:
            return None
        new = Lease(cell, runner, now + ttl, request_id, attempts + 1, 0.0, lease.last_error if attempts else "")
        got.append(new)
        return _dump(new)

    store.update(lease_key(node, cell), change)
    return got[0] if got else None


def renew(store: Store, node: str, cell: int, runner: str, ttl: float) -> bool:
    """Extend our lease; False if it is no longer ours (it expired and another runner took it)."""
    ours: list[bool] = [False]

    def change(current: bytes | None) -> bytes | None:
        lease = _load_lease(cell, current)
        ours[0] = lease.owner == runner
        if not ours[0]:
            return None
        lease.expires = time.time() + ttl
        return _dump(lease)

    store.update(lease_key(node, cell), change)
    return ours[0]


def release(store: Store, node: str, cell: int, runner: str, outcome: str, error: str = "", backoff: float = 0.0) -> None:
    """outcome: "done" (attempts reset), "failed" (counts, backs off), "stopped" (SIGTERM: does not count)."""

    def change(current: bytes | None) -> bytes | None:
        lease = _load_lease(cell, current)
        if lease.owner != runner:
            return None
        lease.owner, lease.expires = None, 0.0
        if outcome == "done":
            lease.attempts, lease.last_error = 0, ""
        elif outcome == "failed":
            lease.last_error, lease.not_before = error, time.time() + backoff
        else:
            lease.attempts = max(0, lease.attempts - 1)
        return _dump(lease)

    store.update(lease_key(node, cell), change)


def lease_summary(lease: Lease) -> dict[str, Any]:
    return asdict(lease)

"""How fast the gateway may send to one endpoint: its own token bucket, or the cluster's shared one."""

from __future__ import annotations

from aiolimiter import AsyncLimiter

from ..budget import SharedBudget
from ..config import Endpoint


class Bucket:
    """An endpoint's `requests_per_second`: taken from the budget store when the cluster shares one
    (budget.py), else from a bucket in this process; no limit at all when none is configured."""

    def __init__(self, spec: Endpoint, shared: SharedBudget | None) -> None:
        self.name, self.rps, self.shared = spec.name, spec.requests_per_second, shared
        self.local = _limiter(self.rps) if self.rps and shared is None else None

    async def acquire(self) -> None:
        if self.shared is not None and self.rps:
            await self.shared.acquire(self.name, self.rps)
        elif self.local is not None:
            await self.local.acquire()


def _limiter(rps: float) -> AsyncLimiter:
    """A bucket holding a tenth of a second's requests: a one-second burst would let a provider
    that counts per second see twice the rate."""
    capacity = max(1.0, rps / 10)
    return AsyncLimiter(capacity, capacity / rps)

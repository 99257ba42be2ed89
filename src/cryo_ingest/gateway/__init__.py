"""The gateway: a JSON-RPC proxy on 127.0.0.1, the only thing that talks to RPC providers.

Cryo gets this proxy's URL, never a provider's (it leaks its RPC URL into reports and banners,
and does not survive 429s or 5xx). One concern a module: `server` (the proxy and what it answers
itself), `pool` (picking endpoints, retries), `endpoint` (an endpoint's live state), `breaker` (its
circuit breaker), `budgets` (how fast each endpoint may be sent to), `shared_budget` (those limits
shared by every gateway of a cluster), `cheapest` (the calls a provider charges least for), `trust`
(answers checked against a second endpoint), `history` (old chains made readable), `traces` (traces
from debug_traceBlockByNumber, translated by `call_frames`), `logs` (ranged eth_getLogs, split where
refused), `inflight` (identical requests in flight sent once), `replies` (passing replies on
unparsed and redacted), and HTTP: `listener` (the server Cryo talks to) and `upstream` (the client
to the endpoints). docs/rpc-pool.md says what it does.
"""

from ..pipeline.task import REFUSALS_PATH, TRACE_SOURCE_PATH, UNKNOWN_PATH
from .server import Gateway

__all__ = ["REFUSALS_PATH", "TRACE_SOURCE_PATH", "UNKNOWN_PATH", "Gateway"]

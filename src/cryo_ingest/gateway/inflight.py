"""Multiplexing: identical JSON-RPC requests (same method and params) in flight at once go upstream
once, and every caller gets the one reply under its own id, a success or an error alike."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from .pool import SUCCESS_OPENING
from .replies import Reply

Handler = Callable[[], Awaitable[dict[str, Any]]]


class InFlight:
    """The requests now upstream, by what they ask; lives on the gateway's event loop."""

    def __init__(self) -> None:
        self._calls: dict[bytes, tuple[asyncio.Task[dict[str, Any]], list[int]]] = {}
        self.shared = 0  # requests answered by another's call (how many went upstream once instead of twice)

    async def run(self, req: dict[str, Any], passthrough: bool, handler: Handler) -> dict[str, Any]:
        """`handler`'s reply for `req`, shared with every identical request that comes while it runs.
        A caller that goes away (its client hung up) leaves the call running for the others."""
        try:  # orjson: a key for every request Cryo sends, at a fifth of the stdlib's cost
            key = orjson.dumps([req["method"], req.get("params"), passthrough], option=orjson.OPT_SORT_KEYS)
        except TypeError:  # not encodable (e.g. an integer beyond 64 bits): not shared
            return await handler()
        entry = self._calls.get(key)
        if entry is None:
            entry = self._calls[key] = (asyncio.ensure_future(handler()), [0])
            entry[0].add_done_callback(lambda _: self._forget(key, entry))
        else:
            self.shared += 1
        task, waiting = entry
        waiting[0] += 1
        try:
            reply = await asyncio.shield(task)
        finally:
            waiting[0] -= 1
            if not waiting[0] and not task.done():  # no one is left waiting for it
                self._forget(key, entry)  # a request that comes now starts afresh, never joins a cancelled call
                task.cancel()
        return with_id(reply, req.get("id"))

    def _forget(self, key: bytes, entry: tuple[asyncio.Task[dict[str, Any]], list[int]]) -> None:
        if self._calls.get(key) is entry:
            del self._calls[key]


def with_id(reply: dict[str, Any], req_id: Any) -> dict[str, Any]:
    """The reply under `req_id`. An unparsed success (only its bytes) keeps its bytes, the id rewritten."""
    if reply.get("id") == req_id:
        return reply
    raw = reply.raw if isinstance(reply, Reply) else None
    if raw is not None and "result" not in reply and "error" not in reply:
        opening = SUCCESS_OPENING.match(raw)
        assert opening is not None, "an unparsed reply is a success that opens so"
        renamed = Reply(jsonrpc="2.0", id=req_id)
        renamed.raw = b'{"jsonrpc":"2.0","id":' + json.dumps(req_id).encode() + b',"result":' + raw[opening.end() :]
        return renamed
    return {**reply, "id": req_id}

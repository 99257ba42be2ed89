"""Traces where `trace_block` is not served: `debug_traceBlockByNumber` with callTracer, translated
to trace_block's shape (call_frames.py), so that Cryo writes one traces dataset either way."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..errors import RpcError
from . import call_frames
from .history import Unknown
from .pool import Pool
from .replies import error

log = logging.getLogger("cryo_ingest.gateway")


async def probe(pool: Pool, block: int) -> str:
    """The traces source the pool serves, tried on `block`."""
    req: dict[str, Any] = {"jsonrpc": "2.0", "id": 0, "method": "trace_block", "params": [hex(block)]}
    if "error" not in await pool.send(req):
        return "trace_block"
    req.update(method="debug_traceBlockByNumber", params=[hex(block), {"tracer": "callTracer"}])
    if "error" not in await pool.send(req):
        log.info("trace_block is not served: traces come from debug_traceBlockByNumber/callTracer")
        return call_frames.DEBUG_SOURCE
    raise RpcError(
        "rpc: the traces dataset needs trace_block or debug_traceBlockByNumber with callTracer; "
        "no endpoint of the pool serves either"
    )


async def trace_block_from_debug(pool: Pool, req: dict[str, Any], unknown: Unknown) -> dict[str, Any]:
    number = req["params"][0]
    debug, block = await asyncio.gather(
        pool.send({**req, "method": "debug_traceBlockByNumber", "params": [number, {"tracer": "callTracer"}]}),
        pool.send({**req, "method": "eth_getBlockByNumber", "params": [number, False]}),
    )
    for reply in (debug, block):
        if "error" in reply or reply.get("result") is None:
            return reply if "error" in reply else {**reply, **error(req.get("id"), "block not found")}
    try:
        flat, cells = call_frames.from_call_frames(debug["result"], block["result"])
    except (ValueError, KeyError, TypeError) as err:
        return error(req.get("id"), f"debug_traceBlockByNumber {int(number, 16)}: untranslatable: {err}")
    unknown.record(int(block["result"]["number"], 16), cells)
    return {"jsonrpc": "2.0", "id": req.get("id"), "result": flat}

"""geth `debug_traceBlockByNumber` (callTracer) frames, rewritten as Parity `trace_block` traces.

Cryo's traces dataset only knows `trace_block`; chains such as Monad serve only the debug API.
The gateway answers `trace_block` with this translation, so one traces schema covers every chain.
What the two APIs cannot agree on is listed in docs/traces.md and in `DIFFERENCES`; values that
callTracer does not determine are reported as unknown (null), never guessed.
"""

from __future__ import annotations

from typing import Any

DEBUG_SOURCE = "debug_traceBlockByNumber/callTracer"
CALL_TYPES = {"CALL", "STATICCALL", "DELEGATECALL", "CALLCODE"}

# Columns of Cryo's traces table whose values differ by source (see docs/traces.md).
DIFFERENCES = {
    "action_gas": "top-level frame: callTracer gives the transaction gas limit, Parity the gas left after intrinsic gas",
    "result_gas_used": "top-level frame: callTracer includes intrinsic gas, Parity does not",
    "reward traces": "callTracer has no block or uncle reward traces",
}


def from_call_frames(frames: list[Any], block: dict[str, Any]) -> list[dict[str, Any]]:
    """Flatten each transaction's frame tree depth-first into Parity traces."""
    out: list[dict[str, Any]] = []
    hashes = [t if isinstance(t, str) else t["hash"] for t in block.get("transactions", [])]
    if len(frames) != len(hashes):
        raise ValueError(f"debug trace has {len(frames)} transactions, the block {len(hashes)}")
    for position, (item, tx_hash) in enumerate(zip(frames, hashes, strict=True)):
        frame = item.get("result", item) if isinstance(item, dict) and "type" not in item else item
        context = {
            "transactionHash": tx_hash,
            "transactionPosition": position,
            "blockHash": block["hash"],
            "blockNumber": int(block["number"], 16),
        }
        _flatten(frame, [], None, context, out)
    return out


def _flatten(
    frame: dict[str, Any], address: list[int], parent: dict[str, Any] | None, context: dict[str, Any], out: list[dict[str, Any]]
) -> None:
    kind = str(frame.get("type", "")).upper()
    calls = frame.get("calls") or []
    trace: dict[str, Any] = {}
    if kind in CALL_TYPES:
        trace["type"] = "call"
        trace["action"] = {
            "from": frame.get("from"),
            "to": frame.get("to"),
            "value": frame.get("value", "0x0"),
            "gas": frame.get("gas", "0x0"),
            "input": frame.get("input", "0x"),
            "callType": kind.lower(),
        }
        result = {"gasUsed": frame.get("gasUsed", "0x0"), "output": frame.get("output", "0x")}
    elif kind in ("CREATE", "CREATE2"):
        trace["type"] = "create"
        trace["action"] = {
            "from": frame.get("from"),
            "value": frame.get("value", "0x0"),
            "gas": frame.get("gas", "0x0"),
            "init": frame.get("input", "0x"),
        }
        result = {"gasUsed": frame.get("gasUsed", "0x0"), "code": frame.get("output", "0x"), "address": frame.get("to")}
    elif kind == "SELFDESTRUCT":
        trace["type"] = "suicide"
        # Old geth gives a bare {"type": "SELFDESTRUCT"}: the contract that dies is the frame
        # executing it (the parent's `to`); its beneficiary and balance are not in the trace.
        trace["action"] = {
            "address": frame.get("from") or (parent or {}).get("to"),
            "refundAddress": frame.get("to"),
            "balance": frame.get("value"),
        }
        result = None
    else:
        raise ValueError(f"unknown call frame type {frame.get('type')!r}")
    if frame.get("error"):
        trace["error"] = frame["error"]
        trace["result"] = None
    else:
        trace["result"] = result
    trace.update(subtraces=len(calls), traceAddress=address, **context)
    out.append(trace)
    for i, child in enumerate(calls):
        _flatten(child, [*address, i], frame, context, out)

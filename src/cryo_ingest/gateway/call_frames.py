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

# Where the two sources disagree, keyed by what differs (docs/traces.md explains each).
# `observed` means seen on real mainnet blocks (tests/test_traces.py checks that no other difference appears).
DIFFERENCES = {
    "reward traces": "observed: callTracer has no block or uncle reward traces",
    "error": "observed: error text is the client's own ('out of gas' from geth, 'Out of gas' from Parity)",
    "callcode action.to": "observed: geth gives the code address, Parity the executing (calling) contract",
    "callcode result.output": "observed: geth gives the returned bytes, Parity '0x'",
    "selfdestruct beneficiary and balance": "observed: old geth frames omit them; archived as null",
    "failed frame result": "observed on anvil: its trace_block keeps gasUsed and output of reverted frames; "
    "OpenEthereum and this translation give none",
    "top-level gas": "not observed on the fixtures: clients differ on intrinsic gas in the top frame's gas and gasUsed",
}


def from_call_frames(frames: list[Any], block: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Flatten each transaction's frame tree depth-first into Parity traces.

    Also returns the cells the frames leave undetermined (`{"dataset", "transaction_index",
    "trace_address", "columns"}`): Cryo needs a value to parse, so they carry placeholders here
    and extract writes them as null.
    """
    out: list[dict[str, Any]] = []
    unknown: list[dict[str, Any]] = []
    hashes = [t if isinstance(t, str) else t["hash"] for t in block.get("transactions", [])]
    if len(frames) != len(hashes):
        raise ValueError(f"debug trace has {len(frames)} transactions, the block {len(hashes)}")
    for position, (item, tx_hash) in enumerate(zip(frames, hashes, strict=True)):
        if "type" not in item and "result" not in item:
            raise ValueError(f"transaction {position} has no trace: {item.get('error', item)}")
        frame = item if "type" in item else item["result"]
        context = {
            "transactionHash": tx_hash,
            "transactionPosition": position,
            "blockHash": block["hash"],
            "blockNumber": int(block["number"], 16),
        }
        _flatten(frame, [], None, context, out, unknown)
    return out, unknown


def _flatten(
    frame: dict[str, Any],
    address: list[int],
    parent: dict[str, Any] | None,
    context: dict[str, Any],
    out: list[dict[str, Any]],
    unknown: list[dict[str, Any]],
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
        # Old geth gives a bare {"type": "SELFDESTRUCT"}. The contract that dies is the one whose
        # code runs in the parent frame (its `to`, or its `from` for DELEGATECALL/CALLCODE); the
        # beneficiary and the balance are not in the trace: unknown, so null in the archive.
        parent = parent or {}
        runs_in_caller = str(parent.get("type", "")).upper() in ("DELEGATECALL", "CALLCODE")
        trace["action"] = {
            "address": frame.get("from") or parent.get("from" if runs_in_caller else "to"),
            "refundAddress": frame.get("to") or "0x" + "00" * 20,
            "balance": frame.get("value") or "0x0",
        }
        missing = [col for key, col in (("to", "action_to"), ("value", "action_value")) if not frame.get(key)]
        if missing:
            unknown.append(
                {
                    "dataset": "traces",
                    "transaction_index": context["transactionPosition"],
                    "trace_address": "_".join(map(str, address)),
                    "columns": missing,
                }
            )
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
        _flatten(child, [*address, i], frame, context, out, unknown)

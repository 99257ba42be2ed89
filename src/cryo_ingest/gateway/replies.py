"""JSON-RPC replies as the gateway passes them on: unparsed where possible, redacted always."""

from __future__ import annotations

import json
from typing import Any

import orjson

from ..errors import redact

# What the gateway answers Cryo when a request's retries are spent (logged where it happens).
GAVE_UP = "cryo-ingest gateway: retry budget spent"


class Reply(dict[str, Any]):
    """A JSON-RPC reply that remembers the upstream bytes, so an unchanged reply is passed on
    without re-encoding (most of the gateway's cost on large blocks otherwise)."""

    raw: bytes | None = None


def error(req_id: Any, message: str, code: int = -32000) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": req_id, "error": {"code": code, "message": message}}


def encode(obj: Any) -> bytes:
    """A request or a reply as sent: a reply received unchanged as it came."""
    raw = obj.raw if isinstance(obj, Reply) else None
    if raw is not None:
        return raw
    try:
        return orjson.dumps(obj)
    except TypeError:  # what orjson refuses and the stdlib writes: an integer beyond 64 bits
        return json.dumps(obj, separators=(",", ":")).encode()


def shorten(text: str, limit: int = 300) -> str:
    """One line of at most `limit` characters. Cut only redacted text: a cut through a key hides it from redaction."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def body_text(status: int, raw: bytes) -> str:
    body = shorten(redact(raw.decode("utf-8", "replace")), 200)
    return f"HTTP {status}" + (f": {body}" if body else "")


def describe_error(err: Any) -> str:
    """A JSON-RPC error object as one redacted line (providers' messages may quote the request URL)."""
    if isinstance(err, dict):
        text = f"error {err.get('code')}: {err.get('message', '')}"
        if err.get("data") is not None:
            text += f" ({err['data']})"
    else:
        text = f"error: {err}"
    return shorten(redact(text))


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    return value


MAX_ANSWERS, MAX_BLOCKS = 256, 10_000  # distinct refusals kept, and blocks named per refusal


class Refusals:
    """The errors Cryo was answered, by block. Cryo reports a failed chunk as no more than
    "errored": extract names the node's answer, the method and the block from these."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], dict[int, str]] = {}  # (method, answer) -> {first block: how to name it}

    def record(self, req: dict[str, Any], err: Any) -> None:
        """Bounded: an operator's gateway lives as long as its runner, refusing nodes and all."""
        block, label = _blocks(req.get("params"))
        if block is None:
            return
        key = (str(req["method"]), describe_error(err))
        if key not in self.seen and len(self.seen) >= MAX_ANSWERS:
            del self.seen[next(iter(self.seen))]  # the oldest answer
        blocks = self.seen.setdefault(key, {})
        if len(blocks) < MAX_BLOCKS or block in blocks:
            blocks[block] = label

    def between(self, lo: int, hi: int) -> list[str]:
        """One line per method and answer: the same refusal for 50 blocks is one line, not 50."""
        lines = []
        for (method, answer), labels in self.seen.items():
            mine = sorted(b for b in labels if lo <= b <= hi)
            if len(mine) == 1:
                lines.append(f"{method} {labels[mine[0]]}: {answer}")
            elif mine:
                lines.append(f"{method}, {len(mine)} requests from block {mine[0]} to {mine[-1]}: {answer}")
        return lines


def _blocks(params: Any) -> tuple[int | None, str]:
    """The block a request is about (the first of a range), and how to name it."""
    first = params[0] if isinstance(params, list) and params else None
    try:
        if isinstance(first, dict):  # eth_getLogs' filter
            lo, hi = int(first["fromBlock"], 16), int(first["toBlock"], 16)
            return lo, f"blocks {lo}-{hi}"
        block = int(str(first), 16)
        return block, f"block {block}"
    except (KeyError, TypeError, ValueError):
        return None, ""


def scrubbed(reply: Reply) -> Reply:
    """A provider's error as Cryo will see it: any secret in it redacted. Unchanged: passed on byte for byte."""
    err = reply.get("error")
    clean = _redacted(err)
    if clean == err:
        return reply
    return Reply({**reply, "error": clean})  # no raw: encoded anew

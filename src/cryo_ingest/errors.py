"""Exceptions, each carrying the exit code the CLI returns for it.

Secrets are redacted here, on the way in: every message passes `redact` when the exception is
made, so no later path (logs, tracebacks, results) can carry an RPC URL.
"""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import unquote, urlsplit

from filelock import Timeout as LockTimeout

_secrets: set[str] = set()
_lock = threading.Lock()
_pattern: re.Pattern[str] | None = None


def register_secret_url(url: str) -> None:
    """Remember an RPC URL and the parts of it that can carry a key (path, query, user info)."""
    parts = urlsplit(url)
    pieces = {url, url.rstrip("/"), parts.netloc + parts.path}
    # a path or query short enough to be a common word ("/a", "x=1") is redacted within its URL only
    if len(parts.path.strip("/")) >= 8:
        pieces.add(parts.path.rstrip("/"))
        pieces.update(seg for seg in parts.path.split("/") if len(seg) >= 8)
    if len(parts.query) >= 8:
        pieces.add(parts.query)
        pieces.update(v for kv in parts.query.split("&") for v in kv.split("=")[1:] if len(v) >= 8)
    if parts.password is not None:  # the user info as it stands in a URL, at any length ...
        pieces.add(parts.netloc.rpartition("@")[0] + "@")
    if parts.password and len(parts.password) >= 8:  # ... and alone where it could not be a common word
        pieces.add(parts.password)
    if parts.username and len(parts.username) >= 8:
        pieces.add(parts.username)
    first_label = (parts.hostname or "").split(".")[0]
    if len(first_label) >= 16:  # keys in subdomains (e.g. https://KEY.provider.example)
        pieces.add(first_label)
    pieces |= {unquote(p) for p in pieces}
    global _pattern
    with _lock:
        _secrets.update(p for p in pieces if p)
        ordered = sorted(_secrets, key=len, reverse=True)
        # Case-insensitive: a key in a host name comes back lower-cased (URL parsers, HTTP clients).
        _pattern = re.compile("|".join(re.escape(s) for s in ordered), re.IGNORECASE)


def redact(text: str) -> str:
    pattern = _pattern
    return pattern.sub("<redacted>", text) if pattern else text


class RedactingFilter(logging.Filter):
    """Installed on every handler the CLI sets up: the single place logs are scrubbed."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class IngestError(Exception):
    """An operational failure: exit code 1."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


class ConfigError(IngestError):
    """Invalid input: exit code 2, raised before anything is written."""

    exit_code = 2


class RpcError(IngestError):
    """The RPC pool cannot serve the job (unreachable, wrong chain, missing methods)."""


class ChunkError(IngestError):
    """A chunk failed extraction or validation; nothing of it was published."""


class CheckFailed(ChunkError):
    """A block of a staged chunk does not match its header (validate.py): the data of a lying or lagging provider."""

    def __init__(self, message: str, block: int, check: str) -> None:
        super().__init__(message)
        self.block, self.check = block, check


class ConflictError(IngestError):
    """Stored content differs from new content for the same chunk (a reorg, another node)."""


class StorageError(IngestError):
    """The object store refused or failed an operation."""


# What a long-lived loop (a runner's poll, a source's tick, the lease watch) logs and retries rather
# than dying of: the store's errors (after obstore's own retries), a lock on a local root held too
# long, a gateway that cannot answer. Invalid config (ConfigError) is caught before it and ends the process.
TRANSIENT = (IngestError, LockTimeout, OSError)

"""Storage requests of a process on a local root, counted at `cryo_ingest.archive.storage.Store`'s methods.

On a local root there is no HTTP to count: each call of `get`, `get_if_changed` (a 304 counted
apart), `put`/`put_new`, `head`, `delete` and `list_meta` (`list` goes through it) counts as one
request of its kind, as it would be on S3 (a listing of more than 1,000 keys is one LIST here,
a page each on S3). `update` on a local root is its `get` and `put`, counted as those.

In-process: `install()`, then `snapshot()`/`since()`. In a child process (a CLI command, the
partitions it spawns): `bench/scale.py` puts a `sitecustomize.py` on PYTHONPATH that calls
`install_from_env()`, and each process appends each request to `{pid}.txt` in $SCALE_COUNTS_DIR
(as it happens: a partition's process may end by `os._exit`, past any exit handler).
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Any

counts: Counter[str] = Counter()  # by kind
keys: Counter[str] = Counter()  # by "KIND key pattern" (digits as #): which objects a run reads
_lock = threading.Lock()
_installed = False
_out: Any = None  # in a child process: the file its requests are appended to


def pattern(key: str) -> str:
    return re.sub(r"\d+", "#", re.sub(r"[0-9a-f]{16,}", "<hex>", key))


def record(kind: str, key: str) -> None:
    line = f"{kind} {pattern(key)}"
    with _lock:
        counts[kind] += 1
        keys[line] += 1
        if _out is not None:  # written as it happens: a partition's process may end by os._exit
            _out.write(line + "\n")
            _out.flush()


def install() -> None:
    """Wrap Store's methods (once per process)."""
    global _installed
    if _installed:
        return
    _installed = True
    from cryo_ingest.archive import storage

    store_cls: Any = storage.Store
    orig = {n: getattr(store_cls, n) for n in ("get", "get_if_changed", "put", "put_new", "head", "delete", "list_meta")}

    def get(self: Any, key: str) -> Any:
        record("GET", key)
        return orig["get"](self, key)

    def get_if_changed(self: Any, key: str, e_tag: str | None) -> Any:
        got = orig["get_if_changed"](self, key, e_tag)
        record("GET_304" if got is None else "GET", key)
        return got

    def put(self: Any, key: str, data: bytes) -> Any:
        record("PUT", key)
        return orig["put"](self, key, data)

    def put_new(self: Any, key: str, data: bytes) -> Any:
        record("PUT", key)
        return orig["put_new"](self, key, data)

    def head(self: Any, key: str) -> Any:
        record("HEAD", key)
        return orig["head"](self, key)

    def delete(self: Any, key: str) -> Any:
        record("DELETE", key)
        return orig["delete"](self, key)

    def list_meta(self: Any, prefix: str, offset: str | None = None) -> Any:
        record("LIST", prefix)
        return orig["list_meta"](self, prefix, offset)

    for name, fn in (
        ("get", get),
        ("get_if_changed", get_if_changed),
        ("put", put),
        ("put_new", put_new),
        ("head", head),
        ("delete", delete),
        ("list_meta", list_meta),
    ):
        setattr(store_cls, name, fn)


def snapshot() -> tuple[Counter[str], Counter[str]]:
    with _lock:
        return Counter(counts), Counter(keys)


def since(before: tuple[Counter[str], Counter[str]]) -> tuple[Counter[str], Counter[str]]:
    now = snapshot()
    return now[0] - before[0], now[1] - before[1]


def install_from_env() -> None:
    global _out
    folder = os.environ.get("SCALE_COUNTS_DIR")
    if not folder:
        return
    install()
    _out = (Path(folder) / f"{os.getpid()}.txt").open("a")


def collect(folder: Path) -> tuple[Counter[str], Counter[str]]:
    """The requests every process appended to `folder`, summed."""
    total: Counter[str] = Counter()
    by_key: Counter[str] = Counter()
    for p in folder.glob("*.txt"):
        for line in p.read_text().splitlines():
            if line:
                total[line.split(" ", 1)[0]] += 1
                by_key[line] += 1
    return total, by_key

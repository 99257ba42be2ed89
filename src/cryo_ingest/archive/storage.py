"""One interface over S3, GCS, Azure and the local filesystem, built on obstore.

Two operations matter for correctness: `put_new` (a file lands whole under its final key, and
an existing key is reported rather than overwritten) and `update` (read-modify-write with
compare-and-swap: `If-Match` on object stores; on the local filesystem, where obstore has no
conditional update, a file lock around obstore's own write-temp-and-rename).
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import obstore
from filelock import FileLock, Timeout
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    NotFoundError,
    NotModifiedError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import AzureStore, GCSStore, LocalStore, S3Store

from ..errors import ConfigError, StorageError

# The most one request may write: S3 PutObject 5 GiB, Azure Put Blob 5,000 MiB, a GCS single upload
# 5 TiB; a local file has no limit. Every object goes up in one request, the only kind that carries
# a condition (obstore cannot put one on a multipart upload: apache/arrow-rs-object-store #289; GCS
# takes no preconditions on multipart uploads): above the limit a write is refused, never split.
SINGLE_PUT_LIMITS: dict[type, int] = {S3Store: 5 * 1024**3, AzureStore: 5000 * 1024**2, GCSStore: 5 * 1024**4}


def single_put_limit(store: Store) -> int | None:
    """The largest object `store` writes in one request; None for the local filesystem."""
    return SINGLE_PUT_LIMITS.get(type(store.remote))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Store:
    """A root (bucket + prefix, or a folder) and the obstore handle that serves it."""

    url: str
    remote: Any  # the obstore store of a bucket; None for the local filesystem
    local_dir: Path | None  # set for the local filesystem
    cas_retries: int = 0  # precondition failures retried by `update`, for the run's metrics
    lock_waits: int = 0  # local filesystem: times `update` found another writer holding the key's lock
    _local: Any = None

    @property
    def store(self) -> Any:
        """The local folder is created on first use, so a job that fails early leaves nothing behind."""
        if self.remote is not None:
            return self.remote
        if self._local is None:
            assert self.local_dir is not None
            self._local = LocalStore(self.local_dir, mkdir=True)
        return self._local

    def _absent_locally(self) -> bool:
        return self.local_dir is not None and not self.local_dir.exists()

    def put_new(self, key: str, data: bytes) -> bool:
        """Store `data` under `key` unless the key exists, in one conditional request (If-None-Match: *,
        ifGenerationMatch=0): of two writers one wins. True if written, False if it existed."""
        _refuse_above_limit(self, key, len(data))
        try:
            obstore.put(self.store, key, data, mode="create")
            return True
        except AlreadyExistsError:
            return False
        except BaseError as err:
            raise _storage_error("write", key, err) from None

    def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key` whatever is there, in one request: the object changes whole or not at all."""
        _refuse_above_limit(self, key, len(data))
        try:
            obstore.put(self.store, key, data, use_multipart=False)
        except BaseError as err:
            raise _storage_error("write", key, err) from None

    def get(self, key: str) -> bytes | None:
        if self._absent_locally():
            return None
        try:
            return bytes(obstore.get(self.store, key).bytes())
        except (NotFoundError, FileNotFoundError):
            return None
        except BaseError as err:
            raise _storage_error("read", key, err) from None

    def get_if_changed(self, key: str, e_tag: str | None) -> tuple[bytes | None, str | None] | None:
        """The object and its ETag, or None when its ETag is still `e_tag` (a 304: no body sent).

        What lets a long-lived reader (a runner's manifest cache) pay a request, not a download and
        a parse, for each object that did not change. (None, None): there is no such object.
        """
        if self._absent_locally():
            return None, None
        try:
            result = obstore.get(self.store, key, options={"if_none_match": e_tag} if e_tag else None)
            return bytes(result.bytes()), result.meta.get("e_tag")
        except NotModifiedError:
            return None
        except (NotFoundError, FileNotFoundError):
            return None, None
        except BaseError as err:
            raise _storage_error("read", key, err) from None

    def delete(self, key: str) -> None:
        try:
            obstore.delete(self.store, key)
        except (NotFoundError, FileNotFoundError):
            return
        except BaseError as err:
            raise _storage_error("delete", key, err) from None

    def head(self, key: str) -> int | None:
        if self._absent_locally():
            return None
        try:
            return int(obstore.head(self.store, key)["size"])
        except (NotFoundError, FileNotFoundError):
            return None
        except BaseError as err:
            raise _storage_error("read", key, err) from None

    def check_access(self) -> None:
        """Fail fast (bad bucket, bad credentials) before any RPC work."""
        if self.local_dir is not None:
            return
        try:
            next(iter(obstore.list(self.store, "cold/", chunk_size=1)), None)
        except (NotFoundError, FileNotFoundError):
            return
        except BaseError as err:
            raise _storage_error("list", "cold/", err) from None

    def update(self, key: str, change: Callable[[bytes | None], bytes | None], attempts: int = 50) -> bytes | None:
        """Apply `change` to the object at `key` atomically; `change` returns None for no write.

        `change` may run several times (after a concurrent writer won): it must be a pure function
        of the current content.
        """
        if self.local_dir is not None:
            with self._lock(key):
                new = change(self.get(key))
                if new is not None:
                    self.put(key, new)
                return new
        for attempt in range(attempts):
            try:
                result = obstore.get(self.store, key)
                current: bytes | None = bytes(result.bytes())
                mode: Any = {k: v for k, v in (("e_tag", result.meta["e_tag"]), ("version", result.meta.get("version"))) if v}
            except (NotFoundError, FileNotFoundError):
                current, mode = None, "create"
            except BaseError as err:
                raise _storage_error("read", key, err) from None
            new = change(current)
            if new is None:
                return None
            try:
                obstore.put(self.store, key, new, mode=mode)
                return new
            except (PreconditionError, AlreadyExistsError):
                self.cas_retries += 1
                time.sleep(min(1.0, 0.01 * 2**attempt) * random.uniform(0.5, 1.5))
            except BaseError as err:
                raise _storage_error("write", key, err) from None
        raise StorageError(f"storage: {key}: gave up after {attempts} concurrent-update conflicts")

    @contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        assert self.local_dir is not None
        path = self.local_dir / ".locks" / (key + ".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path, timeout=120, poll_interval=0.01)
        try:
            lock.acquire(blocking=False)
        except Timeout:
            self.lock_waits += 1
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def list(self, prefix: str, offset: str | None = None) -> list[str]:
        """Keys under `prefix`, sorted; after `offset` where given (S3 and GCS then list only those)."""
        return [m["path"] for m in self.list_meta(prefix, offset)]

    def list_meta(self, prefix: str, offset: str | None = None) -> Sequence[dict[str, Any]]:
        """Keys with their ETags: a poll can tell which objects changed without reading them."""
        if self._absent_locally():
            return []
        try:
            metas: list[Any] = [m for batch in obstore.list(self.store, prefix, offset=offset, chunk_size=1000) for m in batch]
            return sorted(metas, key=lambda m: str(m["path"]))
        except (NotFoundError, FileNotFoundError):
            return []
        except BaseError as err:
            raise _storage_error("list", prefix, err) from None


def _refuse_above_limit(store: Store, key: str, size: int) -> None:
    limit = single_put_limit(store)
    if limit is not None and size > limit:
        raise StorageError(
            f"storage: cannot write {key}: {size} bytes, above the {limit} bytes that {type(store.remote).__name__} "
            "writes in one request (a smaller chunk_size makes smaller files); nothing written"
        )


def _storage_error(op: str, key: str, err: BaseError) -> StorageError:
    kinds: dict[type[BaseError], str] = {PermissionDeniedError: "permission denied", UnauthenticatedError: "not authenticated"}
    kind = kinds.get(type(err), type(err).__name__)
    detail = str(err).splitlines()[0][:300] if str(err) else ""
    return StorageError(f"storage: cannot {op} {key}: {kind}: {detail}")


def open_store(root: str, options: dict[str, str] | None = None) -> Store:
    """Credentials and endpoints come from the environment as each SDK reads them (AWS_*, GOOGLE_*, AZURE_*)."""
    options = dict(options or {})
    parts = urlsplit(root)
    scheme = parts.scheme.lower() if "://" in root else ""
    prefix = parts.path.strip("/") or None
    try:
        if scheme == "s3":
            return Store(root, S3Store(parts.netloc, prefix=prefix, config=options or None), None)  # type: ignore[arg-type]
        if scheme == "gs":
            return Store(root, GCSStore(parts.netloc, prefix=prefix, config=options or None), None)  # type: ignore[arg-type]
        if scheme == "az":
            return Store(root, AzureStore(parts.netloc, prefix=prefix, config=options or None), None)  # type: ignore[arg-type]
        path = Path(parts.path if scheme == "file" else root).expanduser().resolve()
        if path.exists() and not path.is_dir():
            raise ConfigError(f"invalid config: root: {root} is not a folder")
        return Store(root, None, path)
    except BaseError as err:
        raise ConfigError(f"invalid config: root: cannot open {root}: {str(err).splitlines()[0]}") from None
    except OSError as err:
        raise ConfigError(f"invalid config: root: cannot open {root}: {err.strerror}") from None

"""Object storage (S3 and S3-compatible servers, GCS, Azure Blob) through obstore, for every command.

Owns: telling object-storage URLs apart and parsing them (``s3://bucket/key``, ``gs://bucket/key``,
``az://container/key``), one store per bucket configured from the standard environment
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_REGION``, ``GOOGLE_APPLICATION_CREDENTIALS``,
``AZURE_STORAGE_ACCOUNT_NAME``...) and the job's ``[storage]`` table, the calls the pipeline makes
(get, get a stream, head, list, put, conditional put, delete, presign), the same settings as polars
``storage_options``, and failures as one-line messages that carry no credential and no signature.

obstore binds the Rust ``object_store`` crate that polars reads ``s3://`` tables with, so the two
agree on configuration; its client costs about a sixth of the CPU per object of boto3 and is a
single 16 MB wheel with no dependencies (the ``storage`` extra). obstore retries 5xx answers,
dropped connections and timeouts itself, with jittered backoff (:data:`RETRY`).

Only obstore's *synchronous* calls are used, each run in a bounded pool of worker threads
(:meth:`ObjectStorage.call`, ``[storage] fetch_concurrency`` of them, which also bounds how many
fetches are in flight). Its async calls run Python callbacks on a tokio runtime that is never shut
down, and a process that used them aborts at exit (SIGABRT, exit 134) in about one run in ten
(PyO3/pyo3-async-runtimes#40); the synchronous calls release the GIL while they wait and never do.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar
from urllib.parse import urlsplit

from pipeline.extras import require

if TYPE_CHECKING:
    from obstore.store import ObjectStore

    from pipeline.job.spec import StorageSpec

T = TypeVar("T")

# scheme -> the kind of store; abfs/abfss are Azure Data Lake spellings polars and obstore also read
SCHEMES: Final = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "az": "azure",
    "abfs": "azure",
    "abfss": "azure",
}
_URL: Final = re.compile(r"^(s3a?|gs|gcs|az|abfss?)://", re.IGNORECASE)
# obstore's own retries: 5xx, connection errors, dropped connections, timeouts of safe requests
RETRY: Final = {"max_retries": 6, "retry_timeout": timedelta(seconds=90)}
TIMEOUT: Final = {"connect_timeout": "10s", "timeout": "120s"}
# environment variables whose values must never appear in a message (they are secrets)
SECRET_ENV: Final = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_CLIENT_SECRET",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
)
_QUERY: Final = re.compile(r"\?[^\s'\"]*")
MESSAGE_CHARS: Final = 240
Mode = Literal["overwrite", "create"]


class ObjectStoreError(Exception):
    """A failed object-storage call; the message is one line, safe to show."""


class ObjectNotFound(ObjectStoreError):
    """The object (or the bucket) does not exist."""


class ObjectExists(ObjectStoreError):
    """A create-only put found the object already there (or a conflicting write: read it again)."""


class ObjectChanged(ObjectStoreError):
    """A conditional put found another version than the one it was conditional on."""


def is_object_url(text: str) -> bool:
    """True for ``s3://``, ``gs://`` and ``az://`` URLs (and their ``s3a``/``gcs``/``abfs`` spellings)."""
    return _URL.match(text.strip()) is not None


@dataclass(frozen=True, slots=True)
class ObjectUrl:
    """An object-storage URL split into its store and its key."""

    scheme: str  # as written, lower case
    bucket: str
    key: str  # no leading slash

    @classmethod
    def parse(cls, url: str) -> ObjectUrl:
        """Split ``s3://bucket/some/key``; ValueError when it is not an object-storage URL."""
        text = url.strip()
        if not is_object_url(text):
            raise ValueError(f"not an object-storage URL: {text!r}")
        parts = urlsplit(text)
        if not parts.netloc:
            raise ValueError(f"{text!r} names no bucket")
        return cls(parts.scheme.lower(), parts.netloc, parts.path.lstrip("/"))

    @property
    def kind(self) -> str:
        """``s3``, ``gcs`` or ``azure``."""
        return SCHEMES[self.scheme]

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}"

    def child(self, name: str) -> ObjectUrl:
        """The URL of ``name`` under this one taken as a folder."""
        prefix = self.key.rstrip("/")
        return ObjectUrl(self.scheme, self.bucket, f"{prefix}/{name}" if prefix else name)


def join_url(base: str, relative: str) -> str:
    """``relative`` (a path inside the folder ``base``, an object-storage URL) as a full URL."""
    parsed = ObjectUrl.parse(base)
    parts: list[str] = [part for part in parsed.key.split("/") if part]
    for part in relative.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return str(ObjectUrl(parsed.scheme, parsed.bucket, "/".join(parts)))


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed object."""

    url: str
    size: int
    e_tag: str | None


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """The job's ``[storage]`` table, as far as the client goes (defaults: the environment alone)."""

    endpoint: str | None = None
    region: str | None = None
    anonymous: bool = False
    fetch_concurrency: int = 32

    @classmethod
    def from_spec(cls, spec: StorageSpec | None) -> StorageSettings:
        """Settings from a job's ``[storage]`` (None: a job without one)."""
        if spec is None:
            return cls()
        return cls(spec.endpoint, spec.region, spec.anonymous, spec.fetch_concurrency)

    def s3_endpoint(self) -> str | None:
        """The S3 endpoint in effect: ``[storage] endpoint``, else ``AWS_ENDPOINT_URL``/``AWS_ENDPOINT``."""
        return self.endpoint or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT") or None

    def store_options(self, kind: str) -> dict[str, Any]:
        """Keyword arguments for obstore's store of ``kind`` beyond what it reads from the environment."""
        options: dict[str, Any] = {}
        client: dict[str, Any] = dict(TIMEOUT)
        if kind == "s3":
            endpoint = self.s3_endpoint()
            if self.endpoint:
                options["endpoint"] = self.endpoint
            if self.region:
                options["region"] = self.region
            if endpoint and endpoint.startswith("http://"):
                client["allow_http"] = True  # a plain-http endpoint is a local server the user named
        elif kind == "azure" and os.environ.get("AZURE_STORAGE_ENDPOINT", "").startswith("http://"):
            client["allow_http"] = True
        if self.anonymous:
            options["skip_signature"] = True
        options["client_options"] = client
        options["retry_config"] = dict(RETRY)
        return options

    def polars_options(self, url: str) -> dict[str, str] | None:
        """The same settings as polars ``storage_options`` (all values text, as polars wants them)."""
        kind = ObjectUrl.parse(url).kind
        options: dict[str, str] = {}
        if kind == "s3":
            endpoint = self.s3_endpoint()
            if self.endpoint:
                options["aws_endpoint_url"] = self.endpoint
            if self.region:
                options["aws_region"] = self.region
            if endpoint and endpoint.startswith("http://"):
                options["aws_allow_http"] = "true"
            if self.anonymous:
                options["aws_skip_signature"] = "true"
        elif self.anonymous:
            options["google_skip_signature" if kind == "gcs" else "azure_skip_signature"] = "true"
        return options or None


class ObjectStorage:
    """Object-storage calls for one command: a store per bucket, a bounded pool of threads for them.

    Every method but :meth:`call` blocks; run them with ``await storage.call(storage.get, url)`` from
    async code. Errors are :class:`ObjectStoreError` subclasses with safe one-line messages. Making
    one costs nothing; the ``storage`` extra is needed (and checked) only once a bucket is used.
    """

    def __init__(self, settings: StorageSettings | None = None) -> None:
        self.settings = settings or StorageSettings()
        self._stores: dict[tuple[str, str], ObjectStore] = {}
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ plumbing

    def store(self, url: ObjectUrl) -> ObjectStore:
        """The store of ``url``'s bucket (made once per bucket)."""
        found = self._stores.get((url.kind, url.bucket))
        if found is not None:
            return found
        require("storage", "object storage (s3://, gs://, az://)")
        from obstore.store import AzureStore, GCSStore, S3Store

        options = self.settings.store_options(url.kind)
        kinds: dict[str, Callable[..., ObjectStore]] = {"s3": S3Store, "gcs": GCSStore, "azure": AzureStore}
        made = _guarded(f"{url.scheme}://{url.bucket}", kinds[url.kind], url.bucket, **options)
        self._stores[(url.kind, url.bucket)] = made
        return made

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking method in this storage's threads; at most ``fetch_concurrency`` at once."""
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.settings.fetch_concurrency, thread_name_prefix="pipeline-storage"
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Let the worker threads go (calls already started finish)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    # ------------------------------------------------------------------ calls

    def get(self, url: str, *, max_bytes: int | None = None) -> bytes:
        """The object's bytes; :class:`ObjectStoreError` when it is over ``max_bytes`` (checked first)."""
        import obstore

        where = ObjectUrl.parse(url)
        result = _guarded(str(where), obstore.get, self.store(where), where.key)
        size = int(result.meta["size"])
        if max_bytes is not None and size > max_bytes:
            raise ObjectStoreError(f"{where}: object is {size:,} bytes, over the limit of {max_bytes:,}")
        return bytes(_guarded(str(where), result.bytes))

    def get_with_etag(self, url: str) -> tuple[bytes, str | None]:
        """The object's bytes and the ETag of exactly that version (for a conditional write after)."""
        import obstore

        where = ObjectUrl.parse(url)
        result = _guarded(str(where), obstore.get, self.store(where), where.key)
        etag = result.meta.get("e_tag")
        return bytes(_guarded(str(where), result.bytes)), str(etag) if etag is not None else None

    def stream(self, url: str, *, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """The object's bytes in chunks, as they arrive (one GET, never held whole)."""
        import obstore

        where = ObjectUrl.parse(url)
        result = _guarded(str(where), obstore.get, self.store(where), where.key)
        chunks = iter(result.stream(min_chunk_size=chunk_bytes))
        while True:
            chunk = _guarded(str(where), next, chunks, None)
            if chunk is None:
                return
            yield bytes(chunk)

    def head(self, url: str) -> ObjectInfo:
        """The object's size and ETag; :class:`ObjectNotFound` when it is not there."""
        import obstore

        where = ObjectUrl.parse(url)
        meta = _guarded(str(where), obstore.head, self.store(where), where.key)
        return ObjectInfo(str(where), int(meta["size"]), meta.get("e_tag"))

    def exists(self, url: str) -> bool:
        """Whether the object is there."""
        try:
            self.head(url)
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix_url: str) -> list[ObjectInfo]:
        """Every object whose key starts with the URL's key, sorted by URL."""
        import obstore

        where = ObjectUrl.parse(prefix_url)

        def listing() -> list[ObjectInfo]:
            found = []
            for chunk in obstore.list(self.store(where), where.key or None, chunk_size=1000):
                for meta in chunk:
                    url = ObjectUrl(where.scheme, where.bucket, str(meta["path"]))
                    found.append(ObjectInfo(str(url), int(meta["size"]), meta.get("e_tag")))
            return found

        return sorted(_guarded(str(where), listing), key=lambda info: info.url)

    def put(
        self,
        url: str,
        data: bytes | Path,
        *,
        mode: Mode = "overwrite",
        if_match: str | None = None,
    ) -> str | None:
        """Write the object whole (bytes, or a local file streamed in parts); returns its new ETag.

        :param mode: ``create`` fails with :class:`ObjectExists` when the object is there (If-None-Match).
        :param if_match: write only over this ETag, else :class:`ObjectChanged` (If-Match).
        """
        import obstore

        where = ObjectUrl.parse(url)
        put_mode: Any = {"e_tag": if_match} if if_match is not None else mode
        result = _guarded(str(where), obstore.put, self.store(where), where.key, data, mode=put_mode)
        etag = result.get("e_tag")
        return str(etag) if etag is not None else None

    def delete(self, url: str) -> None:
        """Remove the object; one already gone is fine."""
        import obstore

        where = ObjectUrl.parse(url)
        try:
            _guarded(str(where), obstore.delete, self.store(where), where.key)
        except ObjectNotFound:
            return  # Azure and local stores say so; S3 does not

    def download(self, url: str, target: Path) -> None:
        """Copy the object into a local file, streamed (the file appears whole: written, then renamed)."""
        tmp = target.with_name(f".{target.name}.download-{os.getpid()}")
        try:
            with tmp.open("wb") as handle:
                for chunk in self.stream(url):
                    handle.write(chunk)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()

    def sign(self, url: str, expires: timedelta) -> str:
        """A presigned https URL that GETs the object until ``expires`` from now (no credentials needed)."""
        import obstore

        where = ObjectUrl.parse(url)
        store: Any = self.store(where)  # S3, GCS and Azure stores can all sign
        return str(_guarded(str(where), obstore.sign, store, "GET", where.key, expires))


def _guarded(where: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args)``, an obstore failure turned into one of ours (see :func:`translate`)."""
    from obstore.exceptions import BaseError

    try:
        return fn(*args, **kwargs)
    except (OSError, ValueError, RuntimeError, TypeError, BaseError) as exc:
        raise translate(exc, where) from None


def translate(exc: BaseException, where: str) -> ObjectStoreError:
    """An obstore failure as one of ours, with a message safe to show (no secret, no signature)."""
    from obstore.exceptions import (
        AlreadyExistsError,
        PermissionDeniedError,
        PreconditionError,
        UnauthenticatedError,
    )

    if isinstance(exc, FileNotFoundError):
        return ObjectNotFound(f"{where}: not found")
    if isinstance(exc, AlreadyExistsError):
        return ObjectExists(f"{where}: already exists")
    if isinstance(exc, PreconditionError):
        return ObjectChanged(f"{where}: changed since it was read")
    if isinstance(exc, (PermissionDeniedError, UnauthenticatedError)):
        return ObjectStoreError(f"{where}: access denied ({safe(exc)}); check the storage credentials")
    return ObjectStoreError(f"{where}: {safe(exc)}")


def safe(exc: BaseException) -> str:
    """The first meaningful line of an error, with secrets from the environment and query strings cut."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    # object_store prefixes a generic line ("Generic S3 error:"); the next one says what happened
    if text.endswith(":") and len(lines) > 1:
        text = f"{text} {lines[1]}"
    for name in SECRET_ENV:
        secret = os.environ.get(name)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    text = _QUERY.sub("", text)  # a presigned URL's signature, a SAS token
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"

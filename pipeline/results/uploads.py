"""``image_transport = "files"``: each distinct image or document uploaded once, its id kept in the output.

:class:`FileMap` is ``OUTPUT/files.jsonl``, an append-only log of what was uploaded: one line per
upload (``sha256`` of the bytes sent, ``file_id``, media type, size, where it went and the key's
*variable name*), and one ``deleted`` line per file ``pipeline files prune`` removed. Replayed, it
maps a content hash to a live file id for the same base URL, so a rerun, another batch or another
row with the same image reuses the upload instead of sending the bytes again. A line is written
the moment the API answers; a ``kill -9`` between the upload and the line costs one upload made
again, never a wrong id. Uploads to the built-in sandbox are not reused (it forgets them when it stops).

:class:`FilesTransport` is the transport (:mod:`pipeline.payloads.transport`) that does it: an
image prepared as it would be sent inline is hashed, uploaded unless the map knows it (concurrent
rows with the same image wait for one upload), and sent as ``{"type": "file", "file_id": ...}``.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pipeline.api.config import FILES_API_BETA
from pipeline.api.files import FilesApi
from pipeline.errors import OutputError
from pipeline.payloads.documents import PreparedDocument
from pipeline.payloads.images import PreparedImage
from pipeline.payloads.transport import Kind, Transport

FILES_LOG = "files.jsonl"
_EXTENSIONS = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/gif": "gif",
    "image/webp": "webp",
    "application/pdf": "pdf",
    "text/plain": "txt",
}
M = TypeVar("M", PreparedImage, PreparedDocument)


@dataclass(frozen=True, slots=True)
class Upload:
    """One uploaded file, as ``files.jsonl`` records it."""

    sha256: str
    file_id: str
    media_type: str
    bytes: int
    base_url: str
    api_key_env: str
    sandbox: bool = False


class FileMap:
    """``OUTPUT/files.jsonl``: content hash -> file id, for one base URL (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        *,
        base_url: str,
        sandbox: bool = False,
        on_change: Callable[[Path], None] | None = None,
    ) -> None:
        """:param on_change: told when the log grew (an object-storage output uploads it in time)."""
        self.path = directory / FILES_LOG
        self.base_url = base_url.rstrip("/")
        self.sandbox = sandbox
        self.on_change = on_change
        self.known: dict[str, str] = {}
        self.added = 0
        if not sandbox:
            for upload in live_uploads(self.path):
                if upload.base_url == self.base_url and not upload.sandbox:
                    self.known[upload.sha256] = upload.file_id

    def add(self, upload: Upload) -> None:
        """Record an upload the moment it is made (one line, written through to the OS)."""
        self.known[upload.sha256] = upload.file_id
        _append(self.path, {"event": "uploaded", **dataclasses.asdict(upload), "at": _now()})
        self.added += 1
        if self.on_change is not None:
            self.on_change(self.path)


def records(path: Path) -> Iterator[dict[str, Any]]:
    """Every readable line of a ``files.jsonl`` (a torn last line is skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OutputError(f"cannot read {path}: {exc.strerror or exc}") from None
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            yield record


def live_uploads(path: Path) -> list[Upload]:
    """The uploads a ``files.jsonl`` records that were not deleted since, oldest first."""
    live: dict[str, Upload] = {}
    for record in records(path):
        file_id = str(record.get("file_id", ""))
        if record.get("event") == "deleted":
            live.pop(file_id, None)
            continue
        try:
            live[file_id] = Upload(
                sha256=str(record["sha256"]),
                file_id=file_id,
                media_type=str(record.get("media_type", "")),
                bytes=int(record.get("bytes", 0)),
                base_url=str(record.get("base_url", "")),
                api_key_env=str(record.get("api_key_env", "ANTHROPIC_API_KEY")),
                sandbox=bool(record.get("sandbox", False)),
            )
        except (KeyError, TypeError, ValueError):
            continue
    return list(live.values())


def record_deleted(path: Path, file_id: str) -> None:
    """Log that ``pipeline files prune`` deleted a file: the map forgets it."""
    _append(path, {"event": "deleted", "file_id": file_id, "at": _now()})


def _append(path: Path, record: dict[str, Any]) -> None:
    line = json.dumps(record, separators=(",", ":")) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())  # one write: a crash leaves whole lines, or a torn last one
        finally:
            os.close(fd)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class FilesTransport(Transport):
    """Each distinct image or document uploaded once through the Files API and sent by its id."""

    name = "files"

    def __init__(self, api: FilesApi, files: FileMap, *, api_key_env: str) -> None:
        self.api = api
        self.files = files
        self.api_key_env = api_key_env
        self._in_flight: dict[str, asyncio.Future[str]] = {}
        self.reused = 0  # media sent by an id known before (this run, a rerun, another batch)

    @property
    def betas(self) -> tuple[str, ...]:
        return (FILES_API_BETA,)

    async def reference(self, cell: str, kind: Kind) -> str | None:
        del cell, kind
        return None  # everything is loaded and prepared, then uploaded

    async def place(self, media: M) -> M:
        raw, media_type = await asyncio.to_thread(_raw, media)
        digest = await asyncio.to_thread(lambda: hashlib.sha256(raw).hexdigest())
        file_id = await self._file_id(digest, raw, media_type)
        source = {"type": "file", "file_id": file_id}
        if isinstance(media, PreparedImage):
            return dataclasses.replace(media, data_b64="", source=source)
        if media.media_type == "application/pdf":
            return dataclasses.replace(media, data="", source=source)
        return dataclasses.replace(media, source=source)  # text kept: its length estimates its tokens

    async def _file_id(self, digest: str, raw: bytes, media_type: str) -> str:
        known = self.files.known.get(digest)
        if known is not None:
            self.reused += 1
            return known
        pending = self._in_flight.get(digest)
        if pending is not None:
            self.reused += 1
            return await asyncio.shield(pending)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._in_flight[digest] = future
        try:
            name = f"pipeline-{digest[:16]}.{_EXTENSIONS.get(media_type, 'bin')}"
            info = await self.api.upload(raw, filename=name, media_type=media_type)
            self.files.add(
                Upload(
                    digest,
                    info.id,
                    media_type,
                    len(raw),
                    self.files.base_url,
                    self.api_key_env,
                    sandbox=self.files.sandbox,
                )
            )
            future.set_result(info.id)
            return info.id
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: the rows waiting on it see it; nobody else must
            raise
        finally:
            del self._in_flight[digest]


def _raw(media: PreparedImage | PreparedDocument) -> tuple[bytes, str]:
    """The bytes a prepared image or document sends, and their media type."""
    if isinstance(media, PreparedImage):
        return base64.b64decode(media.data_b64), media.media_type
    return media.raw, media.media_type


@dataclass(frozen=True, slots=True)
class Pruned:
    """What ``pipeline files prune`` did."""

    deleted: int
    gone: int  # files the API no longer had
    forgotten: int  # sandbox uploads, which died with their sandbox
    bytes: int


async def prune_uploads(
    directory: Path,
    *,
    key_for: Callable[[str], str],
    base_url: str | None = None,
    transport: Any = None,
    dry_run: bool = False,
) -> Pruned:
    """Delete every live upload ``directory/files.jsonl`` records, and log each one deleted.

    :param key_for: the API key for a key variable's name (the log records names, never keys).
    :param base_url: send the deletes here instead of where each file was uploaded.
    """
    from pipeline.api.config import ClientConfig

    path = directory / FILES_LOG
    uploads = live_uploads(path)
    deleted = gone = forgotten = size = 0
    by_target: dict[tuple[str, str], list[Upload]] = {}
    for upload in uploads:
        if upload.sandbox:
            forgotten += 1
            if not dry_run:
                record_deleted(path, upload.file_id)
            continue
        by_target.setdefault((base_url or upload.base_url, upload.api_key_env), []).append(upload)
    for (url, key_env), group in by_target.items():
        if dry_run:
            deleted += len(group)
            size += sum(upload.bytes for upload in group)
            continue
        config = ClientConfig(base_url=url, api_key=key_for(key_env))
        async with FilesApi(config, transport=transport) as api:
            for upload in group:
                if await api.delete(upload.file_id):
                    deleted += 1
                    size += upload.bytes
                else:
                    gone += 1
                record_deleted(path, upload.file_id)
    return Pruned(deleted, gone, forgotten, size)

"""The sandbox's Files API: upload, list, retrieve and delete, with the tallies the tests read.

Shapes follow https://platform.claude.com/docs/en/build-with-claude/files and its API reference:
``POST /v1/files`` (multipart, one ``file`` part; 500 MB at most), ``GET /v1/files`` (``limit``
1-1000, ``after_id``/``before_id``; ``data``, ``first_id``, ``last_id``, ``has_more``), ``GET`` and
``DELETE /v1/files/{file_id}``. Every call needs the beta header ``anthropic-beta:
files-api-2025-04-14``, as on the hosted API; without it the answer is a 400. Files live in memory
for the sandbox's lifetime. ``GET /_sandbox/stats`` reports uploads by content hash, so a test can
prove that each distinct image was uploaded once.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from pipeline.sandbox.answers import new_id
from pipeline.sandbox.apierrors import RequestError, cursor_window, error_reply, json_reply
from pipeline.sandbox.config import SandboxConfig

FILES_BETA = "files-api-2025-04-14"
MAX_FILE_BYTES = 500 * 1024 * 1024
Authenticate = Callable[[web.Request, SandboxConfig], None]


@dataclass(frozen=True, slots=True)
class StoredFile:
    """One uploaded file."""

    id: str
    filename: str
    mime_type: str
    data: bytes
    created_at: str

    def to_json(self) -> dict[str, Any]:
        """The API's file object (``BetaFileMetadata``)."""
        return {
            "id": self.id,
            "type": "file",
            "filename": self.filename,
            "mime_type": self.mime_type,
            "size_bytes": len(self.data),
            "created_at": self.created_at,
            "downloadable": False,
        }


@dataclass(slots=True)
class FileStore:
    """Every file one sandbox holds, and what was uploaded and deleted; thread-safe snapshots."""

    files: dict[str, StoredFile] = field(default_factory=dict)
    uploads: int = 0
    bytes_uploaded: int = 0
    deletes: int = 0
    by_digest: Counter[str] = field(default_factory=Counter)  # sha256 of content -> uploads of it
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, file_id: str) -> StoredFile | None:
        """The file, or None when there is none by that id."""
        with self._lock:
            return self.files.get(file_id)

    def snapshot(self) -> dict[str, Any]:
        """Statistics for ``GET /_sandbox/stats``."""
        with self._lock:
            return {
                "uploads": self.uploads,
                "bytes_uploaded": self.bytes_uploaded,
                "deletes": self.deletes,
                "live": len(self.files),
                "distinct_uploaded": len(self.by_digest),
                "max_uploads_of_one_content": max(self.by_digest.values(), default=0),
            }


def has_files_beta(request: web.Request) -> bool:
    """Whether the request carries ``anthropic-beta: files-api-2025-04-14`` (comma lists and repeats too)."""
    values = request.headers.getall("anthropic-beta", [])
    return any(beta.strip() == FILES_BETA for value in values for beta in value.split(","))


def require_files_beta(request: web.Request, what: str) -> None:
    """The hosted API's refusal of Files features without the beta header."""
    if not has_files_beta(request):
        raise RequestError(f"{what} requires the beta header 'anthropic-beta: {FILES_BETA}'")


def add_file_routes(
    app: web.Application, store: FileStore, config: SandboxConfig, authenticate: Authenticate
) -> None:
    """Register the Files endpoints on ``app`` (before any catch-all route)."""

    def guarded(
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def wrapper(request: web.Request) -> web.StreamResponse:
            request_id = new_id("req")
            try:
                authenticate(request, config)
                require_files_beta(request, "The Files API")
                return await handler(request)
            except RequestError as err:
                return error_reply(err, request_id)

        return wrapper

    async def upload(request: web.Request) -> web.StreamResponse:
        if not request.content_type.startswith("multipart/"):
            raise RequestError("file: Field required (send multipart/form-data with a 'file' part)")
        reader = await request.multipart()
        stored: StoredFile | None = None
        async for part in reader:
            if getattr(part, "name", None) != "file":
                continue
            data = bytearray()
            while chunk := await part.read_chunk(1 << 20):  # type: ignore[union-attr]
                data.extend(chunk)
                if len(data) > MAX_FILE_BYTES:
                    raise RequestError(
                        "File exceeds the maximum size of 500 MB", status=413, error_type="request_too_large"
                    )
            if not data:
                raise RequestError("file: the file is empty")
            mime = part.headers.get("Content-Type", "application/octet-stream").split(";")[0].strip()  # type: ignore[union-attr]
            filename = (getattr(part, "filename", None) or "unnamed").rsplit("/", 1)[-1]
            stored = StoredFile(new_id("file"), filename, mime, bytes(data), _now())
        if stored is None:
            raise RequestError("file: Field required")
        with store._lock:
            store.files[stored.id] = stored
            store.uploads += 1
            store.bytes_uploaded += len(stored.data)
            store.by_digest[hashlib.sha256(stored.data).hexdigest()] += 1
        return _reply(stored.to_json())

    async def listing(request: web.Request) -> web.StreamResponse:
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            raise RequestError("limit: Input should be a valid integer") from None
        if not 1 <= limit <= 1000:
            raise RequestError("limit: Input should be between 1 and 1000")
        with store._lock:
            newest_first = list(reversed(store.files.values()))
        ids = [item.id for item in newest_first]
        start, stop = cursor_window(ids, request.query, limit)
        page = newest_first[start:stop][:limit]
        return _reply(
            {
                "data": [item.to_json() for item in page],
                "has_more": start + len(page) < stop,
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
            }
        )

    async def retrieve(request: web.Request) -> web.StreamResponse:
        return _reply(_find(store, request.match_info["file_id"]).to_json())

    async def delete(request: web.Request) -> web.StreamResponse:
        found = _find(store, request.match_info["file_id"])
        with store._lock:
            store.files.pop(found.id, None)
            store.deletes += 1
        return _reply({"id": found.id, "type": "file_deleted"})

    async def content(request: web.Request) -> web.StreamResponse:
        found = _find(store, request.match_info["file_id"])
        raise RequestError(f"File {found.id} is not downloadable (only files made by tools are)")

    app.router.add_post("/v1/files", guarded(upload))
    app.router.add_get("/v1/files", guarded(listing))
    app.router.add_get("/v1/files/{file_id}", guarded(retrieve))
    app.router.add_delete("/v1/files/{file_id}", guarded(delete))
    app.router.add_get("/v1/files/{file_id}/content", guarded(content))


def _find(store: FileStore, file_id: str) -> StoredFile:
    found = store.get(file_id)
    if found is None:
        raise RequestError(f"File not found: {file_id}", status=404, error_type="not_found_error")
    return found


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _reply(body: dict[str, Any]) -> web.Response:
    return json_reply(body, new_id("req"))

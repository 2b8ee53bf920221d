"""Image and document sources the sandbox resolves before it validates a request: URLs and file ids.

The hosted API fetches ``{"type": "url"}`` sources itself and looks up ``{"type": "file"}``
sources in the Files API (https://platform.claude.com/docs/en/build-with-claude/vision,
https://platform.claude.com/docs/en/build-with-claude/files). The sandbox does both, then checks
what it got exactly as it checks inline base64 (media type against the bytes, size, sides, PDF
magic bytes and pages), by rewriting such a block into its inline form for the validator:

- a URL is fetched **from loopback only** (``127.0.0.1``, ``::1``, ``localhost``); any other host is
  refused with a 400, so nothing a test or a trial sends makes the sandbox reach the network; a
  URL that does not answer 200 with an image (or a PDF, for a document) is a 400;
- a file id must name an uploaded file, and the request must carry the Files API's beta header.

Inline PDFs are checked here too: the bytes must start like a PDF and hold at most 100 pages
(https://platform.claude.com/docs/en/build-with-claude/pdf-support).
"""

from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from pipeline.sandbox.apierrors import RequestError
from pipeline.sandbox.files import FileStore
from pipeline.sandbox.vision import sniff_media_type

MAX_FETCH_BYTES = 32 * 1024 * 1024
FETCH_TIMEOUT_S = 10.0
MAX_PDF_PAGES = 100
_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


@dataclass(slots=True)
class FetchTally:
    """URL sources fetched, by URL (``GET /_sandbox/stats``)."""

    by_url: Counter[str] = field(default_factory=Counter)
    refused: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> dict[str, Any]:
        """Statistics for ``GET /_sandbox/stats``."""
        with self._lock:
            return {
                "fetches": sum(self.by_url.values()),
                "distinct": len(self.by_url),
                "refused": self.refused,
            }


def is_loopback(url: str) -> bool:
    """Whether a URL's host is this machine (the only place the sandbox fetches from)."""
    host = (urlsplit(url).hostname or "").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def references(body: Any) -> tuple[bool, bool]:
    """Whether a Messages body holds (URL sources, file sources) anywhere in its user content."""
    urls = files = False
    for block in _media_blocks(body):
        kind = block[2].get("type")
        urls |= kind == "url"
        files |= kind == "file"
    return urls, files


async def resolve_sources(
    body: Any, *, store: FileStore, tally: FetchTally, beta: bool, session: aiohttp.ClientSession | None
) -> Any:
    """``body`` with every URL and file source replaced by the inline source it stands for.

    :param beta: whether the request carried the Files API's beta header (file sources need it).
    :raises RequestError: the API's 400 for a source that cannot be used, naming its JSON path.
    """
    blocks = list(_media_blocks(body))
    if not blocks:
        return body
    resolved = copy.deepcopy(body) if any(b[2].get("type") in ("url", "file") for b in blocks) else body
    for path, kind, _ in blocks:
        block = _at(resolved, path)
        source = block["source"]
        where = f"{path}.{kind}.source"
        if source.get("type") == "url":
            data = await _fetch(source.get("url"), f"{where}.url", tally, session)
            block["source"] = _inline(kind, data, source.get("url", ""), f"{where}.url")
        elif source.get("type") == "file":
            if not beta:
                raise RequestError(
                    f"{where}.file: file sources require the beta header"
                    " 'anthropic-beta: files-api-2025-04-14'"
                )
            file_id = source.get("file_id")
            found = store.get(file_id) if isinstance(file_id, str) else None
            if found is None:
                raise RequestError(f"{where}.file.file_id: File not found: {file_id}")
            block["source"] = _inline(kind, found.data, found.mime_type, f"{where}.file")
        if kind == "document" and block["source"].get("type") == "base64":
            _check_pdf(block["source"].get("data"), f"{where}.base64.data")
    return resolved


def _media_blocks(body: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """``(json path, block type, source)`` of every image and document block of the user messages."""
    found: list[tuple[str, str, dict[str, Any]]] = []
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return found
    for m, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for b, block in enumerate(content):
            if isinstance(block, dict) and block.get("type") in ("image", "document"):
                source = block.get("source")
                if isinstance(source, dict):
                    found.append((f"messages.{m}.content.{b}", str(block["type"]), source))
    return found


def _at(body: Any, path: str) -> dict[str, Any]:
    _, m, _, b = path.split(".")
    block: dict[str, Any] = body["messages"][int(m)]["content"][int(b)]
    return block


async def _fetch(url: Any, where: str, tally: FetchTally, session: aiohttp.ClientSession | None) -> bytes:
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise RequestError(f"{where}: Input should be a valid URL (http or https)")
    if not is_loopback(url):
        with tally._lock:
            tally.refused += 1
        raise RequestError(
            f"{where}: the sandbox fetches URLs from loopback only (127.0.0.1, ::1, localhost)"
        )
    if session is None:
        raise RequestError(f"{where}: the sandbox cannot fetch URLs here")
    with tally._lock:
        tally.by_url[url] += 1
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)) as response:
            if response.status != 200:
                raise RequestError(f"{where}: Unable to download the file: HTTP {response.status}")
            data = await response.content.read(MAX_FETCH_BYTES + 1)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise RequestError(f"{where}: Unable to download the file ({type(exc).__name__})") from None
    if len(data) > MAX_FETCH_BYTES:
        raise RequestError(f"{where}: the file is over {MAX_FETCH_BYTES} bytes")
    return data


def _inline(kind: str, data: bytes, hint: str, where: str) -> dict[str, Any]:
    """The inline source ``data`` stands for in a block of ``kind``, or the API's 400."""
    if kind == "image":
        media_type = sniff_media_type(data)
        if media_type is None:
            raise RequestError(
                f"{where}: the file is not an image in a supported format (jpeg, png, gif, webp)"
            )
        return {"type": "base64", "media_type": media_type, "data": base64.b64encode(data).decode("ascii")}
    if b"%PDF-" in data[:1024]:
        return {
            "type": "base64",
            "media_type": "application/pdf",
            "data": base64.b64encode(data).decode("ascii"),
        }
    if hint.split(";", maxsplit=1)[0].strip() == "text/plain":
        try:
            return {"type": "text", "media_type": "text/plain", "data": data.decode("utf-8")}
        except UnicodeDecodeError:
            raise RequestError(f"{where}: the text file is not valid UTF-8") from None
    raise RequestError(f"{where}: the file is not a PDF or plain text document")


def _check_pdf(data: Any, where: str) -> None:
    if not isinstance(data, str):
        return  # the validator names a missing field
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{where}: the base64 data is malformed") from None
    if b"%PDF-" not in raw[:1024]:
        raise RequestError(f"{where}: The PDF specified was not valid.")
    pages = len(_PAGE.findall(raw))
    if pages > MAX_PDF_PAGES:
        raise RequestError(f"{where}: A maximum of {MAX_PDF_PAGES} PDF pages may be provided, got {pages}.")

"""Text media cells to bytes: local paths, ``data:`` URIs, http(s) URLs and object-storage URLs.

Owns: telling the kinds of text cell apart, reading files (in a thread, never on the event loop),
decoding data URIs, downloading URLs under a byte cap and a total deadline, and fetching
``s3://``/``gs://``/``az://`` objects (and paths relative to a table that lives in object storage)
through :mod:`pipeline.rows.storage`, concurrently and bounded, retried on 5xx and timeouts by
obstore, a missing object being that row's error. Every failure becomes a
one-line ImageError that names the cell safely: a URL loses its query string and credentials (they
may hold tokens), a data URI is shown by its length only. What the bytes are is ``images``' business.

Path policy: a relative path resolves against the input file's folder; absolute paths, ``..`` and
symlinks are followed (the table and the machine are the user's own). With ``root`` (the job's
``request.image_root``), a local path must still be inside ``root`` once every symlink is resolved,
or the row is an ImageError. This confines what a table can make the pipeline read and upload; it is
a check on the path at read time, not a guard against files being swapped while the job runs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote_to_bytes, urlsplit, urlunsplit

import httpx

from pipeline.errors import ConfigError, ImageError
from pipeline.rows.storage import ObjectStorage, ObjectStoreError, is_object_url, join_url

if TYPE_CHECKING:
    from pipeline.rows.reader import SourcedRow

DEFAULT_MAX_BYTES: Final = 50_000_000
_LABEL_CHARS: Final = 160
_URL: Final = re.compile(r"^https?://", re.IGNORECASE)
_OTHER_SCHEME: Final = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.IGNORECASE)
_WHITESPACE: Final = re.compile(rb"\s+")
# content types that are never image bytes: an error page, a login page, a JSON error
_NOT_IMAGE_TYPES: Final = frozenset({"application/json", "application/xml", "application/xhtml+xml"})
# The shared client carries the API key; an image host must never see it.
_PRIVATE_HEADERS: Final = ("x-api-key", "authorization", "proxy-authorization", "cookie")


def is_remote(cell: str) -> bool:
    """True for an ``http://`` or ``https://`` URL (fetched by ``load_image``, skipped by validate)."""
    return bool(_URL.match(cell.strip()))


def is_data_uri(cell: str) -> bool:
    """True for a ``data:`` URI."""
    return cell.strip()[:5].lower() == "data:"


def describe_cell(cell: str) -> str:
    """A short label for error messages that leaks nothing.

    A path as given; a URL without userinfo, query string or fragment; ``data: URI (N chars)``.
    """
    text = cell.strip()
    if is_data_uri(text):
        return f"data: URI ({len(text)} chars)"
    if _OTHER_SCHEME.match(text):
        try:
            parts = urlsplit(text)
        except ValueError:
            return _shorten(text.split("?", 1)[0].split("#", 1)[0])
        host = parts.netloc.rpartition("@")[2]
        return _shorten(urlunsplit((parts.scheme, host, parts.path, "", "")))
    return _shorten(text)


def _shorten(text: str) -> str:
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    if len(text) <= _LABEL_CHARS:
        return text
    keep = _LABEL_CHARS // 2 - 1
    return f"{text[:keep]}…{text[-keep:]}"


async def load_image(
    cell: str,
    *,
    base_dir: Path,
    http: httpx.AsyncClient,
    root: str | Path | None = None,
    timeout_s: float = 30.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> bytes:
    """The bytes behind an image cell: a local path, a ``data:`` URI or an http(s) URL.

    :param base_dir: where relative paths resolve (the input file's directory).
    :param http: the run's client; its API headers are stripped before any image request.
    :param root: when set, local paths must resolve (symlinks included) to a file inside it.
    :param timeout_s: deadline for a whole download (connect, headers and body).
    :param max_bytes: refuse anything larger; files are checked before reading, downloads stop here.
    :raises ImageError: one line naming the cell (see ``describe_cell``) and the reason.
    """
    if is_remote(cell):
        return await _download(cell.strip(), http=http, timeout_s=timeout_s, max_bytes=max_bytes)
    return await load_local_image(cell, base_dir=base_dir, root=root, max_bytes=max_bytes)


async def load_local_image(
    cell: str, *, base_dir: Path, root: str | Path | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> bytes:
    """The bytes of a local path or ``data:`` URI cell; no network (``validate`` uses this).

    :param root: when set, the path must resolve (symlinks included) to a file inside it; data:
        URIs are unaffected.
    :raises ImageError: for a missing, unreadable, empty or oversized file, a path outside ``root``,
        a bad data URI, or a URL (http(s) cells belong to ``load_image``; other schemes are not
        supported).
    """
    label = describe_cell(cell)
    text = cell.strip()
    if is_data_uri(text):
        # a data URI can be megabytes of base64: decode it off the event loop
        return await asyncio.to_thread(decode_data_uri, text, label=label, max_bytes=max_bytes)
    scheme = _OTHER_SCHEME.match(text)
    if scheme is not None:
        if is_remote(text) or is_object_url(text):
            what = "is a URL, not a local file"
        else:
            what = (
                f"unsupported URL scheme {scheme[1]!r} (use a path, http(s)://, data:, s3://, gs:// or az://)"
            )
        raise ImageError(f"{label}: {what}")
    if not text:
        raise ImageError("empty image cell")
    # ~ is not expanded on purpose: a table should not depend on whose home directory runs it
    path = Path(text)
    if not path.is_absolute():
        path = base_dir / path
    confine = None if root is None else Path(root)
    return await asyncio.to_thread(_read_file, path, label=label, max_bytes=max_bytes, root=confine)


# what the prepare walk calls for each text media cell: its bytes, or None to leave it out
Loader = Callable[[str, "SourcedRow"], Awaitable[bytes | None]]
USER_AGENT = "pipeline/0.1 (+httpx)"


def download_client() -> httpx.AsyncClient:
    """An HTTP client for image downloads outside a run's own client: redirects followed, no credentials."""
    return httpx.AsyncClient(follow_redirects=True, headers={"user-agent": USER_AGENT})


def stored_url(cell: str, sourced: SourcedRow) -> str | None:
    """The object-storage URL a cell names: itself, or a relative path under its table's folder there."""
    text = cell.strip()
    if is_object_url(text):
        return text
    if sourced.base_url is None or _OTHER_SCHEME.match(text) or is_data_uri(text) or text.startswith("/"):
        return None
    return join_url(sourced.base_url, text) if text else None


async def load_stored(url: str, storage: ObjectStorage, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """An object's bytes, fetched in the storage's threads; a failure is that row's ImageError."""
    label = describe_cell(url)
    try:
        data = await storage.call(storage.get, url, max_bytes=max_bytes)
    except ObjectStoreError as exc:
        reason = str(exc).removeprefix(f"{url.strip()}: ")
        raise ImageError(f"{label}: {reason}") from None
    except ConfigError as exc:  # the storage extra is not installed
        raise ImageError(f"{label}: {exc}") from None
    if not data:
        raise ImageError(f"{label}: empty object")
    return data


def online_loader(
    http: httpx.AsyncClient, *, root: str | None, timeout_s: float, storage: ObjectStorage | None = None
) -> Loader:
    """A loader for commands that fetch: paths and ``data:`` URIs read, URLs downloaded, objects fetched."""
    stores = storage

    async def load(cell: str, sourced: SourcedRow) -> bytes | None:
        nonlocal stores
        url = stored_url(cell, sourced)
        if url is not None:
            stores = stores or ObjectStorage()
            return await load_stored(url, stores)
        return await load_image(cell, base_dir=sourced.base_dir, http=http, root=root, timeout_s=timeout_s)

    return load


def offline_loader(
    root: str | None, on_remote: Callable[[], None], on_stored: Callable[[], None] | None = None
) -> Loader:
    """A loader for commands that use no network (``validate``, ``estimate``).

    Paths and ``data:`` URIs load as in a run; a URL is reported to ``on_remote``, an object-storage
    cell to ``on_stored`` (``on_remote`` when not given), and either is left out (None).
    """

    async def load(cell: str, sourced: SourcedRow) -> bytes | None:
        if is_remote(cell):
            on_remote()
            return None
        if stored_url(cell, sourced) is not None:
            (on_stored or on_remote)()
            return None
        return await load_local_image(cell, base_dir=sourced.base_dir, root=root)

    return load


def _confined(path: Path, root: Path, *, label: str) -> Path:
    """``path`` with every symlink and ``..`` resolved, provided that lands inside ``root``."""
    try:
        resolved = path.resolve()
        inside = resolved.is_relative_to(root.resolve())
    except (OSError, RuntimeError, ValueError):
        # RuntimeError: a symlink loop (Python 3.11); ValueError: a NUL byte in the path
        raise ImageError(f"{label}: cannot resolve the path (a symlink loop?)") from None
    if not inside:
        shown = f" (it resolves to {resolved})" if str(resolved) != label else ""
        raise ImageError(f"{label}: is outside image_root {root}{shown}")
    return resolved


def _read_file(path: Path, *, label: str, max_bytes: int, root: Path | None = None) -> bytes:
    """Read a regular file of at most ``max_bytes`` (inside ``root``, if given); blocking: run in a thread."""
    if root is not None:
        # read the resolved path, not the given one: what was checked is what gets opened
        path = _confined(path, root, label=label)
    where = f" ({path})" if str(path) != label else ""
    try:
        # stat before open: opening a FIFO would block, and the size check must precede the read
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise ImageError(f"{label}: file not found{where}") from None
    except PermissionError:
        raise ImageError(f"{label}: permission denied{where}") from None
    except ValueError:
        raise ImageError(f"{label}: not a valid file path") from None
    except OSError as exc:
        raise ImageError(f"{label}: cannot read the file ({exc.strerror or type(exc).__name__})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(f"{label}: is a directory, not an image file{where}")
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(f"{label}: not a regular file{where}")
    if info.st_size == 0:
        raise ImageError(f"{label}: empty file")
    if info.st_size > max_bytes:
        raise ImageError(f"{label}: file is {info.st_size:,} bytes, over the limit of {max_bytes:,}")
    try:
        with path.open("rb") as handle:
            # +1 so a file that grew since the stat is caught rather than silently cut
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise ImageError(f"{label}: file not found{where}") from None
    except PermissionError:
        raise ImageError(f"{label}: permission denied{where}") from None
    except OSError as exc:
        raise ImageError(f"{label}: cannot read the file ({exc.strerror or type(exc).__name__})") from None
    if not data:
        raise ImageError(f"{label}: empty file")
    if len(data) > max_bytes:
        raise ImageError(f"{label}: file is over the limit of {max_bytes:,} bytes")
    return data


def decode_data_uri(cell: str, *, label: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of a ``data:[<type>][;base64],<data>`` URI (base64 or percent-encoded).

    :raises ImageError: when it is malformed, empty or decodes to more than ``max_bytes``.
    """
    label = label or describe_cell(cell)
    text = cell.strip()
    if not is_data_uri(text):
        raise ImageError(f"{label}: invalid data URI (it must start with 'data:')")
    header, comma, payload = text[5:].partition(",")
    if not comma:
        raise ImageError(f"{label}: invalid data URI (no ',' before the data)")
    if header.split(";")[-1].strip().lower() == "base64":
        # percent-escapes and line breaks are common in base64 pasted from elsewhere; drop both
        compact = _WHITESPACE.sub(b"", unquote_to_bytes(payload) if "%" in payload else payload.encode())
        if len(compact) // 4 * 3 > max_bytes:
            raise ImageError(f"{label}: data URI holds over {max_bytes:,} bytes, over the limit")
        altchars = b"-_" if b"-" in compact or b"_" in compact else None
        try:
            data = base64.b64decode(compact + b"=" * (-len(compact) % 4), altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            raise ImageError(f"{label}: invalid data URI (the base64 data is malformed)") from None
    else:
        data = unquote_to_bytes(payload)
    if not data:
        raise ImageError(f"{label}: empty data URI")
    if len(data) > max_bytes:
        raise ImageError(f"{label}: data URI holds {len(data):,} bytes, over the limit of {max_bytes:,}")
    return data


async def _download(url: str, *, http: httpx.AsyncClient, timeout_s: float, max_bytes: int) -> bytes:
    label = describe_cell(url)
    try:
        # httpx's timeout is per operation (a trickling server never trips it); asyncio's is total
        async with asyncio.timeout(timeout_s):
            request = http.build_request(
                "GET", url, headers={"accept": "image/*"}, timeout=httpx.Timeout(timeout_s)
            )
            for name in _PRIVATE_HEADERS:
                request.headers.pop(name, None)
            for name in [key for key in request.headers if key.lower().startswith("anthropic-")]:
                del request.headers[name]
            # auth=None: no client-level auth flow either; credentials in the URL itself still apply
            response = await http.send(request, stream=True, follow_redirects=True, auth=None)
            try:
                return await _read_body(response, label=label, max_bytes=max_bytes)
            finally:
                await response.aclose()
    except (TimeoutError, httpx.TimeoutException):
        raise ImageError(f"{label}: timed out after {timeout_s:g}s") from None
    except httpx.ConnectError as exc:
        raise ImageError(f"{label}: could not connect ({_connect_reason(exc, url, label)})") from None
    except httpx.TooManyRedirects:
        raise ImageError(f"{label}: too many redirects") from None
    except (httpx.InvalidURL, httpx.UnsupportedProtocol):
        raise ImageError(f"{label}: invalid URL") from None
    except httpx.HTTPError as exc:
        raise ImageError(f"{label}: download failed ({_reason(exc, url, label)})") from None


async def _read_body(response: httpx.Response, *, label: str, max_bytes: int) -> bytes:
    if not response.is_success:
        raise ImageError(f"HTTP {response.status_code} from {label}")
    content_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type.startswith("text/") or content_type in _NOT_IMAGE_TYPES:
        raise ImageError(f"{label}: the server sent {content_type}, not an image")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ImageError(f"{label}: response is {int(declared):,} bytes, over the limit of {max_bytes:,}")
    chunks: list[bytes] = []
    received = 0
    # the cap applies to decoded bytes, so a gzip bomb stops here too
    async for chunk in response.aiter_bytes():
        received += len(chunk)
        if received > max_bytes:
            raise ImageError(f"{label}: response is over the limit of {max_bytes:,} bytes")
        chunks.append(chunk)
    if not received:
        raise ImageError(f"{label}: empty response")
    return b"".join(chunks)


def _connect_reason(exc: httpx.ConnectError, url: str, label: str) -> str:
    """The OS's reason behind a failed connect; httpx's own message is "All connection attempts failed"."""
    cause: BaseException | None = exc
    for _ in range(8):  # bounded: a chain can, in principle, loop through __context__
        if cause is None:
            break
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        cause = cause.__cause__ or cause.__context__
    return _reason(exc, url, label)


def _reason(exc: Exception, url: str, label: str) -> str:
    """The exception's own words, one line, with the full URL (query string and all) replaced."""
    text = (str(exc) or type(exc).__name__).replace(url, label).splitlines()[0]
    return _shorten(text)

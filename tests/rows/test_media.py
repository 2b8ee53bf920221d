"""Image cells to bytes: local paths, data URIs and URLs from a loopback server, and their errors."""

from __future__ import annotations

import base64
import http.server
import io
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote_from_bytes

import httpx
import pytest
from PIL import Image

from pipeline.errors import ImageError
from pipeline.rows.media import decode_data_uri, describe_cell, is_remote, load_image, load_local_image


def png_bytes(size: tuple[int, int] = (16, 12)) -> bytes:
    """A small real PNG, made in memory."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


PNG = png_bytes()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes for every way an image URL can go wrong."""

    release: threading.Event
    seen_headers: list[dict[str, str]]

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""

    def _send(self, status: int, body: bytes, content_type: str, *, length: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        """Answer by path; the query string is ignored (it only carries fake tokens)."""
        self.seen_headers.append(dict(self.headers.items()))
        path = self.path.split("?", 1)[0]
        if path == "/img.png":
            self._send(200, PNG, "image/png")
        elif path == "/untyped":
            self._send(200, PNG, "application/octet-stream")
        elif path == "/page.html":
            self._send(200, b"<html><body>log in first</body></html>", "text/html; charset=utf-8")
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/img.png?sig=abc")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/slow":
            self.release.wait(10)
        elif path == "/trickle":
            # each byte arrives well inside a per-read timeout; only a total deadline stops this
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            for _ in range(200):
                if self.release.wait(0.02):
                    return
                self.wfile.write(b"x")
                self.wfile.flush()
        elif path == "/big":
            self._send(200, b"\x89PNG" + b"\0" * 10_000, "image/png")
        elif path == "/big-unsized":
            # HTTP/1.0 with no Content-Length: the body runs until the connection closes
            self._send(200, b"\x89PNG" + b"\0" * 10_000, "image/png", length=False)
        elif path == "/empty":
            self._send(200, b"", "image/png")
        else:
            self._send(404, b"not found", "text/plain")


@pytest.fixture
def server() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A loopback HTTP server in a thread: (base URL, headers of every request it saw)."""
    release = threading.Event()
    seen: list[dict[str, str]] = []
    handler = type("Handler", (_Handler,), {"release": release, "seen_headers": seen})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    release.set()  # let slow handlers finish before the socket closes under them
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def fetch(url: str, tmp_path: Path, **kwargs: float) -> bytes:
    """load_image for a URL with a fresh client, as the runner would call it."""
    async with httpx.AsyncClient() as http:
        return await load_image(url, base_dir=tmp_path, http=http, **kwargs)  # type: ignore[arg-type]


# local files


async def test_relative_path_resolves_against_base_dir(tmp_path: Path) -> None:
    """A relative path is read from the input file's directory, not the working directory."""
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(PNG)
    async with httpx.AsyncClient() as http:
        assert await load_image("pics/a.png", base_dir=tmp_path, http=http) == PNG


async def test_absolute_path_is_used_as_is(tmp_path: Path) -> None:
    """An absolute path ignores base_dir."""
    (tmp_path / "a.png").write_bytes(PNG)
    assert await load_local_image(str(tmp_path / "a.png"), base_dir=Path("/nonexistent")) == PNG


async def test_dotdot_and_symlinks_are_followed_without_a_root(tmp_path: Path) -> None:
    """By default ``..`` and symlinks lead wherever they point: the table is the user's own."""
    (tmp_path / "pics").mkdir()
    (tmp_path / "a.png").write_bytes(PNG)
    (tmp_path / "pics" / "link.png").symlink_to(tmp_path / "a.png")
    assert await load_local_image("../a.png", base_dir=tmp_path / "pics") == PNG
    assert await load_local_image("link.png", base_dir=tmp_path / "pics") == PNG


async def test_root_confines_paths_after_resolving_symlinks(tmp_path: Path) -> None:
    """With a root, only files that resolve inside it load; ``..``, absolute paths and symlinks out fail."""
    root = tmp_path / "pics"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "in.png").write_bytes(PNG)
    (tmp_path / "out.png").write_bytes(PNG)
    (root / "escape.png").symlink_to(tmp_path / "out.png")
    (tmp_path / "entry.png").symlink_to(root / "sub" / "in.png")
    assert await load_local_image("sub/../sub/in.png", base_dir=root, root=root) == PNG
    # a link from outside that lands inside is fine: what counts is where the bytes live
    assert await load_local_image("entry.png", base_dir=tmp_path, root=root) == PNG
    for cell in ["../out.png", str(tmp_path / "out.png"), "escape.png"]:
        with pytest.raises(ImageError, match=r"is outside image_root .*pics") as info:
            await load_local_image(cell, base_dir=root, root=root)
        assert str(info.value).startswith(f"{cell}: ")
    assert "resolves to" in str(info.value)


async def test_root_leaves_data_uris_alone_and_names_symlink_loops(tmp_path: Path) -> None:
    """A data: URI ignores the root; a symlink loop inside it is an ImageError, not a crash."""
    encoded = base64.b64encode(PNG).decode()
    assert await load_local_image(f"data:image/png;base64,{encoded}", base_dir=tmp_path, root=tmp_path) == PNG
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    with pytest.raises(ImageError, match=r"loop\.png"):
        await load_local_image("loop.png", base_dir=tmp_path, root=tmp_path)


async def test_tilde_is_not_expanded(tmp_path: Path) -> None:
    """``~/a.png`` is a relative path to a folder named ``~``, never the home directory."""
    (tmp_path / "~").mkdir()
    (tmp_path / "~" / "a.png").write_bytes(PNG)
    assert await load_local_image("~/a.png", base_dir=tmp_path) == PNG


async def test_surrounding_whitespace_is_ignored(tmp_path: Path) -> None:
    """A cell with stray spaces or a trailing newline still finds its file."""
    (tmp_path / "a.png").write_bytes(PNG)
    assert await load_local_image("  a.png\n", base_dir=tmp_path) == PNG


async def test_missing_file(tmp_path: Path) -> None:
    """A missing file names the cell as given and where it looked."""
    with pytest.raises(ImageError, match=r"^pics/nope\.png: file not found \(.*pics/nope\.png\)$"):
        await load_local_image("pics/nope.png", base_dir=tmp_path)


async def test_directory_is_not_an_image(tmp_path: Path) -> None:
    """A directory is refused by name."""
    (tmp_path / "pics").mkdir()
    with pytest.raises(ImageError, match=r"^pics: is a directory"):
        await load_local_image("pics", base_dir=tmp_path)


async def test_empty_file(tmp_path: Path) -> None:
    """A zero-byte file is refused as empty."""
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"^e\.png: empty file$"):
        await load_local_image("e.png", base_dir=tmp_path)


async def test_file_over_max_bytes_is_refused_before_reading(tmp_path: Path) -> None:
    """A file larger than max_bytes is refused from its size."""
    (tmp_path / "big.png").write_bytes(b"\0" * 2000)
    with pytest.raises(ImageError, match=r"^big\.png: file is 2,000 bytes, over the limit of 1,000$"):
        await load_local_image("big.png", base_dir=tmp_path, max_bytes=1000)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads everything")
async def test_unreadable_file(tmp_path: Path) -> None:
    """A file without read permission says permission denied."""
    path = tmp_path / "locked.png"
    path.write_bytes(PNG)
    path.chmod(0)
    try:
        with pytest.raises(ImageError, match=r"^locked\.png: permission denied"):
            await load_local_image("locked.png", base_dir=tmp_path)
    finally:
        path.chmod(0o600)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
async def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """A named pipe is not a regular file, and opening it (which would block) is never tried."""
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(ImageError, match=r"^pipe\.png: not a regular file"):
        await load_local_image("pipe.png", base_dir=tmp_path)


async def test_other_url_schemes_are_refused(tmp_path: Path) -> None:
    """Unknown schemes are refused, and s3:// is a URL, never silently treated as a relative path."""
    with pytest.raises(ImageError, match=r"^ftp://host/a\.png: unsupported URL scheme 'ftp'"):
        await load_local_image("ftp://host/a.png?token=secret", base_dir=tmp_path)
    # the local loader never fetches: object storage is the online loader's (see test_storage.py)
    with pytest.raises(ImageError, match=r"^s3://bucket/a\.png: is a URL, not a local file$"):
        await load_local_image("s3://bucket/a.png?X-Amz-Signature=secret", base_dir=tmp_path)


async def test_local_loader_refuses_urls(tmp_path: Path) -> None:
    """load_local_image (used by the offline validate) never fetches."""
    with pytest.raises(ImageError, match="is a URL, not a local file"):
        await load_local_image("https://example.com/a.png", base_dir=tmp_path)


# data URIs


async def test_base64_data_uri(tmp_path: Path) -> None:
    """A base64 data URI decodes to its bytes, even with line breaks or missing padding."""
    encoded = base64.b64encode(PNG).decode()
    assert await load_local_image(f"data:image/png;base64,{encoded}", base_dir=tmp_path) == PNG
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76)).rstrip("=")
    assert await load_local_image(f"DATA:image/png;BASE64,{wrapped}", base_dir=tmp_path) == PNG


def test_percent_encoded_data_uri() -> None:
    """A data URI without ;base64 is percent-decoded."""
    assert decode_data_uri("data:image/png," + quote_from_bytes(PNG)) == PNG


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("data:image/png;base64,!!!not base64!!!", r"invalid data URI \(the base64 data is malformed\)"),
        ("data:image/png;base64,A", r"invalid data URI"),
        ("data:image/png;base64", r"invalid data URI \(no ','"),
        ("data:image/png;base64,", r"empty data URI"),
    ],
)
async def test_bad_data_uri(tmp_path: Path, cell: str, message: str) -> None:
    """A malformed or empty data URI is an ImageError labelled by its length, not its content."""
    with pytest.raises(ImageError, match=rf"^data: URI \({len(cell)} chars\): {message}"):
        await load_local_image(cell, base_dir=tmp_path)


def test_data_uri_over_max_bytes() -> None:
    """A data URI holding more than max_bytes is refused before decoding."""
    cell = "data:image/png;base64," + base64.b64encode(b"\0" * 3000).decode()
    with pytest.raises(ImageError, match="over the limit"):
        decode_data_uri(cell, max_bytes=1000)


# URLs


async def test_url_serving_a_png(tmp_path: Path, server: tuple[str, list[dict[str, str]]]) -> None:
    """A URL answering 200 with image bytes yields those bytes; the content type is not required."""
    base, _ = server
    assert await fetch(f"{base}/img.png", tmp_path) == PNG
    assert await fetch(f"{base}/untyped", tmp_path) == PNG


async def test_redirects_are_followed(tmp_path: Path, server: tuple[str, list[dict[str, str]]]) -> None:
    """A 302 to the image is followed."""
    base, _ = server
    assert await fetch(f"{base}/redirect", tmp_path) == PNG


async def test_api_headers_never_reach_an_image_host(
    tmp_path: Path, server: tuple[str, list[dict[str, str]]]
) -> None:
    """The run's client carries the API key; image requests are sent without it."""
    base, seen = server
    headers = {"x-api-key": "sk-secret", "anthropic-version": "2023-06-01", "authorization": "Bearer t"}
    async with httpx.AsyncClient(headers=headers) as http:
        assert await load_image(f"{base}/img.png", base_dir=tmp_path, http=http) == PNG
    sent = {name.lower() for name in seen[-1]}
    assert not sent & {"x-api-key", "anthropic-version", "authorization"}


async def test_url_404(tmp_path: Path, server: tuple[str, list[dict[str, str]]]) -> None:
    """An HTTP error status names the status and the URL, without its query string."""
    base, _ = server
    with pytest.raises(ImageError, match=rf"^HTTP 404 from {base}/gone\.png$"):
        await fetch(f"{base}/gone.png?token=secret", tmp_path)


async def test_url_serving_html(tmp_path: Path, server: tuple[str, list[dict[str, str]]]) -> None:
    """A 200 text/html page (a login or error page) is not an image."""
    base, _ = server
    with pytest.raises(ImageError, match=r"page\.html: the server sent text/html, not an image$"):
        await fetch(f"{base}/page.html", tmp_path)


async def test_url_timeout(tmp_path: Path, server: tuple[str, list[dict[str, str]]]) -> None:
    """A server that never answers times out after timeout_s."""
    base, _ = server
    started = time.monotonic()
    with pytest.raises(ImageError, match=r"slow: timed out after 0\.2s$"):
        await fetch(f"{base}/slow", tmp_path, timeout_s=0.2)
    assert time.monotonic() - started < 2


async def test_trickling_body_hits_the_total_deadline(
    tmp_path: Path, server: tuple[str, list[dict[str, str]]]
) -> None:
    """A body that keeps arriving a byte at a time still stops at timeout_s overall."""
    base, _ = server
    started = time.monotonic()
    with pytest.raises(ImageError, match=r"trickle: timed out after 0\.3s$"):
        await fetch(f"{base}/trickle", tmp_path, timeout_s=0.3)
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("path", ["/big", "/big-unsized"])
async def test_url_body_over_max_bytes(
    tmp_path: Path, server: tuple[str, list[dict[str, str]]], path: str
) -> None:
    """An oversized response is refused from its Content-Length, or by counting while streaming."""
    base, _ = server
    with pytest.raises(ImageError, match=r"over the limit of 1,000"):
        await fetch(f"{base}{path}", tmp_path, max_bytes=1000)


async def test_url_empty_body(tmp_path: Path, server: tuple[str, list[dict[str, str]]]) -> None:
    """A 200 with no body is an error, not empty image bytes."""
    base, _ = server
    with pytest.raises(ImageError, match=r"empty response$"):
        await fetch(f"{base}/empty", tmp_path)


async def test_connection_refused(tmp_path: Path, closed_port: int) -> None:
    """A closed port says connection refused, and the label keeps no query string."""
    url = f"http://127.0.0.1:{closed_port}/a.png?key=secret"
    with pytest.raises(ImageError, match=r"could not connect \(connection refused\)$") as caught:
        await fetch(url, tmp_path, timeout_s=5)
    assert "secret" not in str(caught.value)
    assert str(caught.value).startswith(f"http://127.0.0.1:{closed_port}/a.png: ")


# labels


@pytest.mark.parametrize(
    ("cell", "label"),
    [
        ("pics/a.png", "pics/a.png"),
        (" /abs/a.png ", "/abs/a.png"),
        ("https://cdn.example.com/a/b.jpg?X-Amz-Signature=abc#frag", "https://cdn.example.com/a/b.jpg"),
        ("https://user:pw@example.com:8443/x.png?t=1", "https://example.com:8443/x.png"),
        ("data:image/png;base64,AAAA", "data: URI (26 chars)"),
    ],
)
def test_describe_cell_is_short_and_safe(cell: str, label: str) -> None:
    """Labels keep the path as given and drop query strings, credentials and data payloads."""
    assert describe_cell(cell) == label


def test_describe_cell_shortens_long_paths() -> None:
    """A very long cell is cut in the middle so error lines stay readable."""
    label = describe_cell("d/" * 200 + "end.png")
    assert len(label) <= 160
    assert label.endswith("end.png")
    assert "…" in label


def test_is_remote() -> None:
    """Only http and https cells are fetched over the network."""
    assert is_remote("https://x/a.png")
    assert is_remote("  HTTP://x/a.png")
    assert not is_remote("data:image/png;base64,AAAA")
    assert not is_remote("pics/http.png")
    assert not is_remote("ftp://x/a.png")

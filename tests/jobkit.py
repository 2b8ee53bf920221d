"""Helpers for end-to-end tests: write job files, make images, run the CLI as a user would."""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from PIL import Image

from pipeline.cli import cli

ROOT = Path(__file__).resolve().parent.parent
FAKE_KEY = "sk-ant-test-FAKE-0123456789-do-not-print"


def toml_value(value: Any) -> str:
    """A TOML literal for plain Python data (JSON strings are valid TOML basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, Sequence):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(type(value))


def write_job(directory: Path, *, name: str = "job", **sections: Any) -> Path:
    """Write a job file: top-level keys plus [request]/[api]/[limits] tables."""
    lines = [f"name = {toml_value(name)}"]
    tables = {key: value for key, value in sections.items() if key in {"request", "api", "limits"}}
    for key, value in sections.items():
        if key not in tables:
            lines.append(f"{key} = {toml_value(value)}")
    for table, values in tables.items():
        lines.append(f"\n[{table}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
    path = directory / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def text_job(directory: Path, rows: int = 10, **request: Any) -> Path:
    """A small text-only job over a generated CSV, writing to directory/out."""
    csv = directory / "input.csv"
    csv.write_text("id,topic\n" + "".join(f"{i},topic number {i}\n" for i in range(rows)), encoding="utf-8")
    return write_job(
        directory,
        name="text",
        input="input.csv",
        output="out",
        id_column="id",
        request={
            "model": "claude-haiku-4-5",
            "max_tokens": 64,
            "prompt": "Say something about {topic}.",
            **request,
        },
        limits={"concurrency": 4, "max_attempts": 6, "timeout_s": 5},
    )


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (64, 48), mode: str = "RGB", **save: Any) -> bytes:
    """A real image of the given format, made in memory."""
    img = Image.new(
        mode, size, color=120 if mode in {"L", "I;16", "P", "1"} else (200, 40, 40)[: len(mode)] or 0
    )
    buffer = io.BytesIO()
    img.save(buffer, fmt, **save)
    return buffer.getvalue()


def invoke(
    args: Sequence[str], *, key: str | None = FAKE_KEY, env: Mapping[str, str] | None = None
) -> Result:
    """Run the real click CLI in-process, with the API key in the environment like a user's shell."""
    environment = {"ANTHROPIC_BASE_URL": ""}
    if key is not None:
        environment["ANTHROPIC_API_KEY"] = key
    environment.update(env or {})
    return CliRunner().invoke(cli, list(args), env=environment, catch_exceptions=False)


def run_subprocess(
    args: Sequence[str], *, key: str | None = FAKE_KEY, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pipeline`` in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    if key is not None:
        env["ANTHROPIC_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def photo(seed: int, size: tuple[int, int] = (64, 48), fmt: str = "JPEG") -> bytes:
    """A distinct small photo-like image per seed (a gradient and a few noisy pixels)."""
    img = Image.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256))
    for i in range(8):
        img.putpixel(((seed + i * 7) % size[0], (seed * 3 + i) % size[1]), (255 - i * 9, i * 17, seed % 256))
    buffer = io.BytesIO()
    img.save(buffer, fmt)
    return buffer.getvalue()


def write_shard(path: Path, samples: Sequence[tuple[str, Mapping[str, bytes]]]) -> Path:
    """A WebDataset tar shard: for each (key, {extension: bytes}), members key.extension in order."""
    import tarfile

    with tarfile.open(path, "w") as archive:
        for key, members in samples:
            for extension, data in members.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


def pdf_bytes(pages: int = 1, text: str = "Hello") -> bytes:
    """A small valid PDF with ``pages`` pages (hand-built: objects, xref table and trailer)."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(pages))
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>")
    for i in range(pages):
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Contents {4 + 2 * i} 0 R >>")
        stream = f"BT /F1 12 Tf 20 100 Td ({text} {i + 1}) Tj ET"
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


@contextlib.contextmanager
def static_server(files: Mapping[str, bytes]) -> Iterator[tuple[str, collections.Counter[str]]]:
    """Serve ``files`` (path -> bytes) over HTTP on 127.0.0.1; yields the base URL and hits per path."""
    import http.server
    import threading

    hits: collections.Counter[str] = collections.Counter()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits[self.path] += 1
            data = files.get(self.path)
            if data is None:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header(
                "content-type", "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "application/pdf"
            )
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)

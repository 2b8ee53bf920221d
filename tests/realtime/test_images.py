"""Image rows end to end: every edge case becomes a request the strict sandbox accepts, or a row error."""

from __future__ import annotations

import asyncio
import base64
import http.server
import io
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import polars as pl
import pytest
from PIL import Image

from jobkit import image_bytes, invoke, write_job
from pipeline.job.spec import load_job
from pipeline.payloads import prepare as prepare_module
from pipeline.payloads.images import ImagePolicy, PreparedImage, prepare_image
from pipeline.realtime.run import RunOptions, run_job
from pipeline.sandbox import running_sandbox
from scripted import reply


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[str]:
    """A loopback HTTP server over tmp_path/www, for image URLs."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def _exif_rotated_jpeg() -> bytes:
    img = Image.new("RGB", (80, 40), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


def test_image_edge_cases_through_the_cli(tmp_path: Path, file_server: str) -> None:
    """Odd formats are converted and accepted; bad files are row errors with no request sent."""
    pics = tmp_path / "pics"
    pics.mkdir()
    good = {
        "plain.png": image_bytes("PNG"),
        "named_wrong.jpg": image_bytes("PNG"),
        "photo.webp": image_bytes("WEBP"),
        "anim.gif": image_bytes("GIF", mode="P"),
        "scan.tiff": image_bytes("TIFF"),
        "old.bmp": image_bytes("BMP"),
        "print.jpg": image_bytes("JPEG", mode="CMYK"),
        "deep.png": image_bytes("PNG", mode="I;16"),
        "alpha_palette.png": image_bytes("PNG", mode="P", transparency=0),
        "rotated.jpg": _exif_rotated_jpeg(),
        "huge.jpg": image_bytes("JPEG", size=(3000, 2000)),
    }
    bad = {
        "empty.png": b"",
        "notes.png": b"just some text, not an image",
        "cut.jpg": image_bytes("JPEG")[:60],
    }
    for name, data in {**good, **bad}.items():
        (pics / name).write_bytes(data)
    (tmp_path / "www" / "remote.png").write_bytes(image_bytes("PNG"))
    (tmp_path / "www" / "page.html").write_text("<html><body>not an image</body></html>")
    data_uri = "data:image/png;base64," + base64.b64encode(image_bytes("PNG")).decode()
    cells = [f"pics/{name}" for name in good] + [f"{file_server}/remote.png", data_uri]
    bad_cells = [f"pics/{name}" for name in bad] + [
        "pics/missing.png",
        f"{file_server}/page.html",
        f"{file_server}/gone.png",
    ]
    rows = [(str(i), cell) for i, cell in enumerate(cells + bad_cells)]
    pl.DataFrame({"id": [r[0] for r in rows], "img": [r[1] for r in rows]}).write_csv(tmp_path / "in.csv")
    job = write_job(
        tmp_path, input="in.csv", output="out", id_column="id",
        request={"model": "claude-haiku-4-5", "max_tokens": 20, "prompt": "Describe.", "images": ["img"]},
        limits={"concurrency": 4, "max_attempts": 2, "timeout_s": 10},
    )  # fmt: skip
    with running_sandbox() as sandbox:
        result = invoke(["run", str(job), "--base-url", sandbox.base_url])
        stats = sandbox.stats()
    assert result.exit_code == 1, result.output
    frame = pl.read_parquet(tmp_path / "out" / "results.parquet")
    by_cell = dict(zip(frame["img"], frame.iter_rows(named=True), strict=True))
    for cell in cells:
        assert by_cell[cell]["status"] == "ok", (cell, by_cell[cell]["error_message"])
    for cell in bad_cells:
        row = by_cell[cell]
        assert row["status"] == "error", cell
        assert row["error_type"] == "image_error"
        assert row["attempts"] == 0
        assert row["error_message"]
    assert "not found" in by_cell["pics/missing.png"]["error_message"]
    assert "empty" in by_cell["pics/empty.png"]["error_message"]
    assert "html" in by_cell[f"{file_server}/page.html"]["error_message"].lower()
    assert "404" in by_cell[f"{file_server}/gone.png"]["error_message"]
    # no request went out for a bad row, and the sandbox rejected none of the converted images
    assert stats["requests_total"] == len(cells)
    assert stats["by_status"] == {"200": len(cells)}
    # the 3000x2000 photo was shrunk to a 1568 px long edge before sending (w*h/750 tokens)
    assert by_cell["pics/huge.jpg"]["input_tokens"] < 1568 * 1046 / 750 + 100


def test_more_than_20_images_in_a_row_are_capped_at_2000px(tmp_path: Path) -> None:
    """A row with 21 images of 2100 px is sent with every image within 2000 px, and accepted."""
    columns = [f"i{k}" for k in range(21)]
    for k in range(21):
        (tmp_path / f"{k}.png").write_bytes(image_bytes("PNG", size=(2100, 50)))
    pl.DataFrame({c: [f"{k}.png"] for k, c in enumerate(columns)}).write_csv(tmp_path / "in.csv")
    request = {"model": "claude-haiku-4-5", "max_tokens": 20, "prompt": "Compare.", "images": columns}
    request["image_max_edge"] = 2400
    job = write_job(tmp_path, input="in.csv", output="out", request=request)
    with running_sandbox() as sandbox:
        result = invoke(["run", str(job), "--base-url", sandbox.base_url])
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(tmp_path / "out" / "results.parquet")["status"].to_list() == ["ok"]


def test_validate_checks_every_row_offline(tmp_path: Path) -> None:
    """validate lists the rows that would fail, sends nothing, and exits 1."""
    (tmp_path / "ok.png").write_bytes(image_bytes("PNG"))
    (tmp_path / "empty.png").write_bytes(b"")
    pl.DataFrame({"id": ["a", "b", "c"], "img": ["ok.png", "empty.png", "nope.png"]}).write_csv(
        tmp_path / "in.csv"
    )
    job = write_job(
        tmp_path, input="in.csv", output="out", id_column="id",
        request={"model": "m", "max_tokens": 20, "prompt": "Describe.", "images": ["img"]},
    )  # fmt: skip
    result = invoke(["validate", str(job)], key=None)
    assert result.exit_code == 1
    assert "row 2 (id b)" in result.output
    assert "row 3 (id c)" in result.output
    assert "3 rows, 1 images checked, 2 rows with problems" in result.output
    assert not (tmp_path / "out").exists()


async def test_image_downloads_run_ahead_of_sending_while_decoding_stays_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With 16 requests allowed in flight, 16 image downloads overlap (preparing does not gate sending
    at a handful of rows), while no more than CPU_SLOTS images are decoded at once."""
    picture = image_bytes("JPEG", size=(2400, 1800))
    downloading = decoding = 0
    most_downloading = most_decoding = 0
    lock = threading.Lock()

    async def api(request: httpx.Request) -> httpx.Response:
        nonlocal downloading, most_downloading
        if request.method == "GET":  # an image URL: slow, so that downloads pile up if allowed to
            downloading += 1
            most_downloading = max(most_downloading, downloading)
            await asyncio.sleep(0.2)
            downloading -= 1
            return httpx.Response(200, content=picture, headers={"content-type": "image/jpeg"})
        return await reply()(request)

    def counted(data: bytes, policy: ImagePolicy, *, label: str) -> PreparedImage:
        nonlocal decoding, most_decoding
        with lock:
            decoding += 1
            most_decoding = max(most_decoding, decoding)
        try:
            return prepare_image(data, policy, label=label)
        finally:
            with lock:
                decoding -= 1

    monkeypatch.setattr(prepare_module, "prepare_image", counted)
    rows = 40
    pl.DataFrame({"id": range(rows), "img": [f"http://images.test/{i}.jpg" for i in range(rows)]}).write_csv(
        tmp_path / "in.csv"
    )
    spec = load_job(
        write_job(
            tmp_path,
            input="in.csv",
            output="out",
            id_column="id",
            request={"model": "claude-haiku-4-5", "max_tokens": 16, "prompt": "Describe.", "images": ["img"]},
            limits={"concurrency": 16},
        )
    )
    options = RunOptions(
        base_url="http://api.test", api_key="sk-test", input=spec.input, output=tmp_path / "out"
    )
    outcome = await run_job(spec, options, transport=httpx.MockTransport(api))
    assert outcome.summary.rows_ok == rows
    assert most_downloading == 16 > prepare_module.DEFAULT_SLOTS
    assert 1 <= most_decoding <= prepare_module.CPU_SLOTS

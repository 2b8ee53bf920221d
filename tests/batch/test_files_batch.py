"""Batch mode with Files transport: a batch holds thousands of photo rows, not the few that fit as base64."""

from __future__ import annotations

import io
import random
from pathlib import Path

import polars as pl
from PIL import Image

from jobkit import invoke, write_job
from pipeline.sandbox import SandboxConfig, running_sandbox

ROWS = 2100
DISTINCT = 300
MAX_BYTES = 8_000_000  # [batch] max_bytes: the API's 256 MB cap, scaled down with the photos


def _noisy_jpeg(seed: int) -> bytes:
    rng = random.Random(seed)
    image = Image.frombytes("RGB", (160, 120), bytes(rng.getrandbits(8) for _ in range(160 * 120 * 3)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def _job(tmp_path: Path, output: str, transport: str) -> Path:
    return write_job(
        tmp_path,
        name=output,
        input="rows.csv",
        output=output,
        id_column="id",
        request={
            "model": "claude-haiku-4-5",
            "max_tokens": 16,
            "prompt": "Caption photo {id}.",
            "images": ["image"],
            "image_transport": transport,
            "dedupe": False,
        },
        batch={"max_bytes": MAX_BYTES, "poll_interval_s": 0.2},
    )


def test_files_transport_puts_2100_photo_rows_in_one_batch_and_uploads_each_photo_once(
    tmp_path: Path,
) -> None:
    """2,100 rows over 300 distinct photos: with files transport one batch holds every row and each
    photo is uploaded once (the sandbox's tally); base64, under the same byte cap, needs several."""
    (tmp_path / "photos").mkdir()
    sizes = 0
    for n in range(DISTINCT):
        data = _noisy_jpeg(n)
        sizes += len(data)
        (tmp_path / "photos" / f"{n}.jpg").write_bytes(data)
    pl.DataFrame(
        {"id": [str(i) for i in range(ROWS)], "image": [f"photos/{i % DISTINCT}.jpg" for i in range(ROWS)]}
    ).write_csv(tmp_path / "rows.csv")
    assert sizes / DISTINCT * ROWS * 4 / 3 > 2 * MAX_BYTES  # as base64 these rows need 3+ batches
    with running_sandbox(SandboxConfig(batch_processing_s=0.2)) as sandbox:
        files = invoke(
            [
                "run",
                str(_job(tmp_path, "files", "files")),
                "--mode",
                "batch",
                "--wait",
                "--base-url",
                sandbox.base_url,
            ]
        )
        assert files.exit_code == 0, files.output
        stats = sandbox.stats()
        assert stats["batches"]["created"] == 1
        assert stats["batches"]["requests"] == ROWS
        assert stats["files"]["uploads"] == DISTINCT
        assert stats["files"]["max_uploads_of_one_content"] == 1
        inline = invoke(
            [
                "run",
                str(_job(tmp_path, "inline", "base64")),
                "--mode",
                "batch",
                "--wait",
                "--base-url",
                sandbox.base_url,
            ]
        )
        assert inline.exit_code == 0, inline.output
        after = sandbox.stats()
    assert after["batches"]["created"] - 1 >= 3
    results = pl.read_parquet(tmp_path / "files" / "results.parquet")
    assert results.height == ROWS
    assert set(results["status"]) == {"ok"}
    assert results["request_id"].n_unique() == 1  # every row from the one batch
    body = after["batches"]["body_sizes"][0]
    assert body < MAX_BYTES / 4  # file ids, not photos

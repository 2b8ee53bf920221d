"""How images and documents travel: by URL (never downloaded here), by Files API id (each distinct one
uploaded once, reused by reruns), inline; and document blocks. Through the CLI against the sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from jobkit import invoke, pdf_bytes, photo, static_server, write_job
from pipeline.errors import SpecError
from pipeline.job.spec import parse_job
from pipeline.results.uploads import FILES_LOG, live_uploads
from pipeline.sandbox import running_sandbox

MODEL = "claude-haiku-4-5"


def _job(tmp_path: Path, rows: list[dict[str, object]], **request: object) -> Path:
    pl.DataFrame(rows).write_parquet(tmp_path / "in.parquet")
    return write_job(
        tmp_path,
        input="in.parquet",
        output="out",
        id_column="id",
        request={"model": MODEL, "max_tokens": 32, "prompt": "Describe {subject}.", **request},
        limits={"concurrency": 4, "max_attempts": 2, "timeout_s": 20},
    )


def _results(tmp_path: Path) -> pl.DataFrame:
    return pl.read_parquet(tmp_path / "out" / "results.parquet")


def test_url_transport_sends_urls_the_api_fetches_itself(tmp_path: Path) -> None:
    """image_transport = "url": http(s) cells go as URL sources; the pipeline downloads nothing (every
    GET the image host saw came from the sandbox), and the request bodies stay small."""
    files = {f"/p{i}.jpg": photo(i, size=(400, 300)) for i in range(5)}
    with static_server(files) as (host, hits), running_sandbox() as sandbox:
        rows = [{"id": str(i), "subject": f"s{i}", "image": f"{host}/p{i}.jpg"} for i in range(5)]
        job = _job(tmp_path, rows, images=["image"], image_transport="url")
        done = invoke(["run", str(job), "--base-url", sandbox.base_url])
        stats = sandbox.stats()
    assert done.exit_code == 0, done.output
    assert set(_results(tmp_path)["status"]) == {"ok"}
    assert stats["url_fetches"] == {"fetches": 5, "distinct": 5, "refused": 0}
    assert sum(hits.values()) == 5  # the sandbox's fetches, and nothing else
    assert stats["message_body_bytes"] < sum(len(data) for data in files.values()) / 2


def test_url_transport_keeps_local_cells_inline(tmp_path: Path) -> None:
    """Paths and bytes cannot be fetched by the API: with url transport they still travel inline."""
    (tmp_path / "a.jpg").write_bytes(photo(1))
    with running_sandbox() as sandbox:
        job = _job(
            tmp_path, [{"id": "1", "subject": "a", "image": "a.jpg"}], images=["image"], image_transport="url"
        )
        done = invoke(["run", str(job), "--base-url", sandbox.base_url])
        stats = sandbox.stats()
    assert done.exit_code == 0, done.output
    assert stats["url_fetches"]["fetches"] == 0
    assert "(1 image)" in _results(tmp_path)["response_text"][0]


def test_files_transport_uploads_each_distinct_image_once_and_reruns_reuse_it(tmp_path: Path) -> None:
    """image_transport = "files": 12 rows over 3 distinct images make 3 uploads (the sandbox's tally),
    the ids are kept in files.jsonl, a fresh rerun reuses them, and prune deletes them."""
    photos = [photo(i, size=(200, 150)) for i in range(3)]
    rows = [{"id": str(i), "subject": f"s{i}", "image": photos[i % 3]} for i in range(12)]
    job = _job(tmp_path, rows, images=["image"], image_transport="files")
    with running_sandbox() as sandbox:
        done = invoke(["run", str(job), "--base-url", sandbox.base_url])
        assert done.exit_code == 0, done.output
        first = sandbox.stats()["files"]
        assert first["uploads"] == 3
        assert first["max_uploads_of_one_content"] == 1
        uploads = live_uploads(tmp_path / "out" / FILES_LOG)
        assert len(uploads) == 3
        assert all(upload.base_url == sandbox.base_url for upload in uploads)
        assert set(_results(tmp_path)["status"]) == {"ok"}
        again = invoke(["run", str(job), "--base-url", sandbox.base_url, "--fresh"])
        assert again.exit_code == 0, again.output
        assert sandbox.stats()["files"]["uploads"] == 3  # nothing uploaded twice
        pruned = invoke(["files", "prune", str(tmp_path / "out")], env={"ANTHROPIC_BASE_URL": ""})
        assert pruned.exit_code == 0, pruned.output
        assert "deleted 3 files" in pruned.output
        assert sandbox.stats()["files"]["live"] == 0
        assert live_uploads(tmp_path / "out" / FILES_LOG) == []
        third = invoke(["run", str(job), "--base-url", sandbox.base_url, "--fresh"])
        assert third.exit_code == 0, third.output
        assert sandbox.stats()["files"]["uploads"] == 6  # after prune, uploaded again, once each


def test_file_sources_need_the_beta_header(tmp_path: Path) -> None:
    """The sandbox refuses a file source without anthropic-beta: files-api-2025-04-14, as the API does."""
    import httpx

    with running_sandbox() as sandbox:
        headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
        body = {
            "model": MODEL,
            "max_tokens": 5,
            "messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "file", "file_id": "file_x"}},
                {"type": "text", "text": "hi"},
            ]}],
        }  # fmt: skip
        refused = httpx.post(f"{sandbox.base_url}/v1/messages", json=body, headers=headers)
        assert refused.status_code == 400
        assert "require the beta header" in refused.json()["error"]["message"]
        unknown = httpx.post(
            f"{sandbox.base_url}/v1/messages",
            json=body,
            headers={**headers, "anthropic-beta": "files-api-2025-04-14"},
        )
        assert unknown.status_code == 400
        assert "File not found: file_x" in unknown.json()["error"]["message"]


def test_documents_become_document_blocks_checked_like_images(tmp_path: Path) -> None:
    """PDF and text documents (bytes or paths) are sent as document blocks; a non-PDF binary and a
    PDF over 100 pages are that row's errors, with no request."""
    (tmp_path / "notes.txt").write_text("Plain text notes.\n", encoding="utf-8")
    rows = [
        {"id": "pdf", "subject": "a", "doc": pdf_bytes(2)},
        {"id": "text", "subject": "b", "doc": b"Some plain text."},
        {"id": "bad", "subject": "c", "doc": b"\x00\x01\x02 binary"},
        {"id": "long", "subject": "d", "doc": pdf_bytes(101)},
    ]
    with running_sandbox() as sandbox:
        job = _job(tmp_path, rows, documents=["doc"], citations=True)
        done = invoke(["run", str(job), "--base-url", sandbox.base_url])
    assert done.exit_code == 1, done.output
    results = {row["row_id"]: row for row in _results(tmp_path).iter_rows(named=True)}
    assert results["pdf"]["status"] == "ok"
    assert results["text"]["status"] == "ok"
    assert results["bad"]["error_type"] == "document_error"
    assert "not a PDF or UTF-8 text" in results["bad"]["error_message"]
    assert results["long"]["error_type"] == "request_too_large"
    assert "101 pages, over the API's 100" in results["long"]["error_message"]
    assert results["bad"]["attempts"] == results["long"]["attempts"] == 0
    assert results["pdf"]["doc"].startswith("sha256:")


def test_transports_and_documents_a_provider_lacks_are_refused_up_front(tmp_path: Path) -> None:
    """url/files transport and document columns on a provider without them are one SpecError."""
    base = {"name": "t", "input": "in.csv", "output": "out", "api": {"provider": "ollama"}}
    for extra, expected in [
        ({"image_transport": "files"}, "provider 'ollama' has no Files API"),
        ({"image_transport": "url"}, "provider 'ollama' does not fetch images by URL"),
        ({"documents": ["doc"]}, "provider 'ollama' does not take document blocks"),
    ]:
        raw = {**base, "request": {"model": "m", "max_tokens": 5, "prompt": "p", **extra}}
        with pytest.raises(SpecError, match=expected):
            parse_job(json.loads(json.dumps(raw)), tmp_path / "job.toml")
    with pytest.raises(SpecError, match='presign applies to image_transport = "url"'):
        parse_job(
            {**base, "api": {}, "request": {"model": "m", "max_tokens": 5, "prompt": "p", "presign": True}},
            tmp_path / "j.toml",
        )


def test_presigned_object_storage_cells_go_by_url(tmp_path: Path, s3: object) -> None:
    """presign = true: s3:// cells become presigned URLs the API fetches (here the sandbox, from moto)."""
    from storagekit import Bucket

    assert isinstance(s3, Bucket)
    s3.put("imgs/a.jpg", photo(7))
    with running_sandbox() as sandbox:
        rows = [{"id": "1", "subject": "a", "image": s3.url("imgs/a.jpg")}]
        job = _job(tmp_path, rows, images=["image"], image_transport="url", presign=True)
        done = invoke(["run", str(job), "--base-url", sandbox.base_url])
        stats = sandbox.stats()
    assert done.exit_code == 0, done.output
    assert stats["url_fetches"]["fetches"] == 1
    assert "(1 image)" in _results(tmp_path)["response_text"][0]

"""Object storage as input and image source, against a real S3-compatible server on loopback."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from aiohttp import web

from jobkit import invoke, photo, write_job, write_shard
from pipeline.rows.storage import ObjectStorage, ObjectUrl, StorageSettings, join_url, safe
from storagekit import Bucket

SECRET = "testing-secret-do-not-print"


def _job(tmp_path: Path, input_: str, **extra: object) -> Path:
    request = {
        "model": "claude-haiku-4-5",
        "max_tokens": 32,
        "prompt": "Describe {subject}.",
        **extra.pop("request", {}),
    }  # type: ignore[dict-item]
    return write_job(
        tmp_path,
        input=input_,
        output=str(extra.pop("output", "out")),
        request=request,
        limits={"concurrency": 4, "max_attempts": 2, "timeout_s": 10},
        **extra,
    )


def _results(tmp_path: Path) -> pl.DataFrame:
    return pl.read_parquet(tmp_path / "out" / "results.parquet")


def _secret_free(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text


def test_s3_table_with_s3_and_relative_image_cells(s3: Bucket, tmp_path: Path) -> None:
    """An s3:// Parquet, its image cells s3:// URLs or paths relative to the table's folder there."""
    for i in range(4):
        s3.put(f"data/imgs/{i}.jpg", photo(i))
    table = pl.DataFrame(
        {
            "id": ["a", "b", "c", "d"],
            "subject": ["w", "x", "y", "z"],
            "image": [s3.url("data/imgs/0.jpg"), "imgs/1.jpg", s3.url("data/imgs/2.jpg"), "imgs/missing.jpg"],
        }
    )
    buffer = io.BytesIO()
    table.write_parquet(buffer)
    s3.put("data/rows.parquet", buffer.getvalue())
    job = _job(tmp_path, s3.url("data/rows.parquet"), id_column="id", request={"images": ["image"]})
    done = invoke(["run", str(job), "--sandbox"])
    assert done.exit_code == 1, done.output
    results = _results(tmp_path)
    assert results["status"].to_list() == ["ok", "ok", "ok", "error"]
    assert results["error_type"][3] == "image_error"
    assert results["error_message"][3] == f"{s3.url('data/imgs/missing.jpg')}: not found"
    assert all("(1 image)" in text for text in results["response_text"].to_list()[:3])
    _secret_free(done.output, (tmp_path / "out" / "job.json").read_text())


def test_s3_glob_of_csv_tables(s3: Bucket, tmp_path: Path) -> None:
    """An s3:// glob names several tables, read in key order; one that matches nothing is refused."""
    s3.put("in/part-1.csv", b"id,subject\n1,a\n2,b\n")
    s3.put("in/part-2.csv", b"id,subject\n3,c\n")
    s3.put("in/other.json", b"{}")
    done = invoke(["run", str(_job(tmp_path, s3.url("in/part-*.csv"), id_column="id")), "--sandbox"])
    assert done.exit_code == 0, done.output
    assert _results(tmp_path)["row_id"].to_list() == ["1", "2", "3"]
    empty = invoke(["run", str(_job(tmp_path, s3.url("in/none-*.csv"))), "--sandbox"])
    assert empty.exit_code == 2
    assert f"pipeline: error: no input files match {s3.url('in/none-*.csv')}" in empty.output


def test_s3_image_folder_and_webdataset_shards(s3: Bucket, tmp_path: Path) -> None:
    """s3://bucket/photos/**/*.jpg is one row per object; s3 shards with a brace range stream in order."""
    s3.put("photos/a.jpg", photo(1))
    s3.put("photos/deep/b.jpg", photo(2))
    folder = write_job(
        tmp_path,
        name="folder",
        input=s3.url("photos/**/*.jpg"),
        output="out",
        request={
            "model": "claude-haiku-4-5",
            "max_tokens": 32,
            "prompt": "Describe {file_name}.",
            "images": ["image_path"],
        },
    )
    done = invoke(["run", str(folder), "--sandbox"])
    assert done.exit_code == 0, done.output
    results = _results(tmp_path)
    assert results["image_path"].to_list() == ["a.jpg", "deep/b.jpg"]
    assert results["file_size"].to_list() == [len(photo(1)), len(photo(2))]
    for shard in range(2):
        local = write_shard(
            tmp_path / f"s{shard}.tar",
            [(f"k{shard}{n}", {"jpg": photo(shard * 10 + n), "txt": b"t"}) for n in range(3)],
        )
        s3.put(f"wds/train-{shard:04d}.tar", local.read_bytes())
    shards = write_job(
        tmp_path,
        name="shards",
        input=s3.url("wds/train-{0000..0001}.tar"),
        output="out2",
        request={
            "model": "claude-haiku-4-5",
            "max_tokens": 32,
            "prompt": "Caption {txt}.",
            "images": ["jpg"],
        },
    )
    done = invoke(["run", str(shards), "--sandbox"])
    assert done.exit_code == 0, done.output
    keys = pl.read_parquet(tmp_path / "out2" / "results.parquet")["row_id"].to_list()
    assert keys == ["k00", "k01", "k02", "k10", "k11", "k12"]


def test_validate_counts_object_storage_cells_and_fetch_checks_them(s3: Bucket, tmp_path: Path) -> None:
    """validate is offline (object-storage cells counted, not fetched) unless --fetch is given."""
    s3.put("v/0.jpg", photo(0))
    (tmp_path / "in.csv").write_text(
        f"id,subject,image\n1,a,{s3.url('v/0.jpg')}\n2,b,{s3.url('v/gone.jpg')}\n"
    )
    job = _job(tmp_path, "in.csv", id_column="id", request={"images": ["image"]})
    offline = invoke(["validate", str(job)])
    assert offline.exit_code == 0, offline.output
    assert (
        "2 rows, 0 images checked (2 not fetched: 2 in object storage; --fetch checks them)" in offline.output
    )
    fetched = invoke(["validate", str(job), "--fetch"])
    assert fetched.exit_code == 1, fetched.output
    assert f"row 2 (id 2): {s3.url('v/gone.jpg')}: not found" in fetched.output
    assert "2 rows, 1 images checked" in fetched.output


class _Flaky:
    """An S3-compatible GET endpoint on loopback that fails the first request of each object with 503."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.gets: list[str] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        key = request.path.split("/", 2)[2]
        self.gets.append(key)
        if self.gets.count(key) == 1:
            return web.Response(status=503, text="<Error><Code>SlowDown</Code></Error>")
        if key not in self.objects:
            return web.Response(status=404, text="<Error><Code>NoSuchKey</Code></Error>")
        data = self.objects[key]
        headers = {"ETag": '"abc"', "Last-Modified": "Wed, 01 Jan 2025 00:00:00 GMT"}
        return web.Response(body=data, headers=headers, content_type="application/octet-stream")


@pytest.fixture
def flaky() -> Iterator[_Flaky]:
    server = _Flaky({"img/a.jpg": photo(5)})
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    runner: web.AppRunner | None = None

    async def start() -> None:
        nonlocal runner
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", server.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        server.url = f"http://127.0.0.1:{port}"
        ready.set()

    thread = threading.Thread(
        target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True
    )
    thread.start()
    ready.wait(10)
    yield server
    assert runner is not None
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_a_5xx_from_object_storage_is_retried(
    flaky: _Flaky, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 503 on an image fetch is retried (obstore's backoff), and the row succeeds."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    (tmp_path / "in.csv").write_text("id,subject,image\n1,a,s3://bkt/img/a.jpg\n2,b,s3://bkt/img/none.jpg\n")
    job = _job(
        tmp_path, "in.csv", id_column="id", request={"images": ["image"]}, storage={"endpoint": flaky.url}
    )
    done = invoke(["run", str(job), "--sandbox"])
    assert done.exit_code == 1, done.output
    results = _results(tmp_path)
    assert results["status"].to_list() == ["ok", "error"]
    assert results["error_message"][1] == "s3://bkt/img/none.jpg: not found"
    assert flaky.gets.count("img/a.jpg") == 2  # 503, then the object
    _secret_free(done.output)


def test_storage_settings_reach_obstore_and_polars_as_the_environment_would() -> None:
    """[storage] endpoint, region and anonymous access map onto obstore's and polars' own keys."""
    settings = StorageSettings(endpoint="http://127.0.0.1:9000", region="eu-west-1", anonymous=True)
    options = settings.store_options("s3")
    assert options["endpoint"] == "http://127.0.0.1:9000"
    assert options["region"] == "eu-west-1"
    assert options["skip_signature"] is True
    assert options["client_options"]["allow_http"] is True
    assert settings.polars_options("s3://b/t.parquet") == {
        "aws_endpoint_url": "http://127.0.0.1:9000",
        "aws_region": "eu-west-1",
        "aws_allow_http": "true",
        "aws_skip_signature": "true",
    }
    assert StorageSettings(anonymous=True).polars_options("gs://b/t.parquet") == {
        "google_skip_signature": "true"
    }
    assert "allow_http" not in StorageSettings().store_options("gcs")["client_options"]


def test_urls_split_and_join() -> None:
    """s3/gs/az URLs split into bucket and key; relative paths join like folders, .. included."""
    parsed = ObjectUrl.parse("s3://bkt/a/b.jpg")
    assert (parsed.kind, parsed.bucket, parsed.key) == ("s3", "bkt", "a/b.jpg")
    assert ObjectUrl.parse("gs://bkt/x").kind == "gcs"
    assert ObjectUrl.parse("az://container/x").kind == "azure"
    assert join_url("s3://bkt/data/", "imgs/../pics/c.jpg") == "s3://bkt/data/pics/c.jpg"
    with pytest.raises(ValueError, match="names no bucket"):
        ObjectUrl.parse("s3:///key")


def test_error_text_never_carries_secrets_or_signatures(monkeypatch: pytest.MonkeyPatch) -> None:
    """A storage error quoting a secret from the environment or a presigned query string is cut."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    text = safe(RuntimeError(f"denied for {SECRET} at https://h/k?X-Amz-Signature=abc&X-Amz-Credential=x"))
    assert SECRET not in text
    assert "X-Amz" not in text
    assert json.dumps(text)  # one line, printable


def test_presigned_urls_last_as_long_as_asked(s3: Bucket) -> None:
    """A presigned GET URL carries the requested lifetime and fetches the object (moto checks no expiry)."""
    import datetime

    import httpx

    s3.put("p/x.jpg", photo(3))
    storage = ObjectStorage()
    url = storage.sign(s3.url("p/x.jpg"), datetime.timedelta(hours=30))
    assert "X-Amz-Expires=108000" in url
    assert httpx.get(url).content == photo(3)

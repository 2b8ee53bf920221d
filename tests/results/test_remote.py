"""An output in object storage keeps every promise of a local one, against a real S3 server on loopback:
whole results, journal segments, resume after kill -9, the lease, and the commands that read outputs."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from jobkit import FAKE_KEY, invoke, photo, write_job
from pipeline.results.remote import SEGMENTS_KEY, staging_folder
from pipeline.sandbox import SandboxConfig, running_sandbox
from storagekit import Bucket


def _job(tmp_path: Path, s3: Bucket, rows: int, *, name: str = "job", **storage: object) -> Path:
    (tmp_path / "input.csv").write_text(
        "id,topic\n" + "".join(f"{i},topic number {i}\n" for i in range(rows)), encoding="utf-8"
    )
    return write_job(
        tmp_path,
        name=name,
        input="input.csv",
        output=s3.url("runs/job"),
        id_column="id",
        request={"model": "claude-haiku-4-5", "max_tokens": 32, "prompt": "Say something about {topic}."},
        limits={"concurrency": 2, "max_attempts": 3, "timeout_s": 10},
        storage={"lease_ttl_s": 60, **storage},
    )


def _photo_job(tmp_path: Path, s3: Bucket, rows: int, **storage: object) -> Path:
    """Everything in the bucket: the input table, the photos its rows name (s3:// cells), the output."""
    for i in range(rows):
        s3.put(f"photos/{i}.jpg", photo(i, size=(64, 48)))
    table = "id,topic,image\n" + "".join(f"{i},topic {i},{s3.url(f'photos/{i}.jpg')}\n" for i in range(rows))
    s3.put("in/rows.csv", table.encode())
    return write_job(
        tmp_path,
        input=s3.url("in/rows.csv"),
        output=s3.url("runs/job"),
        id_column="id",
        request={
            "model": "claude-haiku-4-5",
            "max_tokens": 32,
            "prompt": "Caption {topic}.",
            "images": ["image"],
        },
        limits={"concurrency": 2, "max_attempts": 3, "timeout_s": 10},
        storage={"lease_ttl_s": 60, **storage},
    )


def _start(args: list[str]) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env["ANTHROPIC_API_KEY"] = FAKE_KEY
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_until(predicate: Callable[[], bool], deadline_s: float = 60.0) -> None:
    stop = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < stop, "timed out waiting"
        time.sleep(0.05)


def _remote_results(s3: Bucket) -> pl.DataFrame:
    return pl.read_parquet(io.BytesIO(s3.get("runs/job/results.parquet")))


def _segments(s3: Bucket) -> list[str]:
    return [key for key in s3.keys("runs/job/.journal/") if key.endswith(".arrows")]


def test_a_run_writes_whole_results_to_the_bucket_and_the_commands_read_it(
    s3: Bucket, tmp_path: Path
) -> None:
    """results.parquet lands in the bucket (segments folded and removed), and status, export and
    report read the s3:// output; a rerun sends nothing."""
    job = _job(tmp_path, s3, rows=25, segment_rows=4)
    done = invoke(["run", str(job), "--sandbox"])
    assert done.exit_code == 0, done.output
    assert f"results: {s3.url('runs/job/results.parquet')}" in done.output
    frame = _remote_results(s3)
    assert frame.height == 25
    assert set(frame["status"]) == {"ok"}
    assert _segments(s3) == []  # all folded into results.parquet
    assert "runs/job/job.json" in s3.keys("runs/job/")
    status = invoke(["status", s3.url("runs/job"), "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["rows"] == {"total": 25, "ok": 25, "error": 0}
    assert json.loads(status.output)["output"] == s3.url("runs/job")
    exported = invoke(["export", s3.url("runs/job"), "--format", "jsonl", "--to", str(tmp_path / "x.jsonl")])
    assert exported.exit_code == 0, exported.output
    assert len((tmp_path / "x.jsonl").read_text().splitlines()) == 25
    beside = invoke(["export", s3.url("runs/job"), "--format", "csv"])
    assert f"25 rows written to {s3.url('runs/job/export.csv')}" in beside.output
    assert s3.get("runs/job/export.csv").decode().count("\n") == 26
    report = invoke(["report", s3.url("runs/job")])
    assert report.exit_code == 0, report.output
    assert b"<html" in s3.get("runs/job/report.html")[:200].lower()
    again = invoke(["run", str(job), "--sandbox"])
    assert again.exit_code == 0, again.output
    assert "0 rows sent: 0 ok, 0 error (25 already done, skipped)" in again.output


def test_kill_9_mid_run_then_a_rerun_sends_nothing_twice(s3: Bucket, tmp_path: Path) -> None:
    """Input table, image cells and output all in the bucket: after kill -9, the rerun uploads what
    the killed run staged here, and sends exactly the rows with no recorded result: every recorded
    answer is paid once (the sandbox's tally proves it)."""
    rows = 60
    job = _photo_job(tmp_path, s3, rows=rows, segment_rows=5, segment_s=0.5)
    staging = staging_folder(s3.url("runs/job"), None)
    with running_sandbox(SandboxConfig(latency_ms=60)) as sandbox:
        child = _start(["run", str(job), "--base-url", sandbox.base_url])
        _wait_until(lambda: len(_segments(s3)) >= 2)
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)
        answered_before = sandbox.stats()["answers_ok"]
        staged = list((staging / ".journal").glob("*.arrows"))
        uploaded = _segments(s3)
        recorded = _recorded_ids(s3, uploaded, staged)
        assert 0 < len(recorded) < rows
        rerun = _start(["run", str(job), "--base-url", sandbox.base_url])
        _, stderr = rerun.communicate(timeout=120)
        assert rerun.returncode == 0, stderr
        stats = sandbox.stats()
    assert f"{rows - len(recorded)} rows sent" in stderr
    assert f"({len(recorded)} already done, skipped)" in stderr
    frame = _remote_results(s3)
    assert sorted(frame["row_id"].to_list(), key=int) == [str(i) for i in range(rows)]
    assert set(frame["status"]) == {"ok"}  # every row's photo was fetched from the bucket and sent
    assert stats["message_body_bytes"] > rows * len(photo(0, size=(64, 48)))  # the photos went inline
    # paid twice at most: the requests in flight when the process died (concurrency 2)
    assert stats["answers_ok"] - rows == answered_before - len(recorded) <= 2
    assert max(stats["ok_by_request"].values()) <= 2
    assert _segments(s3) == []


def test_losing_the_machine_too_loses_at_most_the_last_segment(s3: Bucket, tmp_path: Path) -> None:
    """With the staging folder gone as well, only results not yet in an uploaded segment are sent again:
    at most [storage] segment_rows of them (plus those in flight)."""
    rows, segment = 60, 4
    job = _job(tmp_path, s3, rows=rows, segment_rows=segment, segment_s=30)
    with running_sandbox(SandboxConfig(latency_ms=40)) as sandbox:
        child = _start(["run", str(job), "--base-url", sandbox.base_url])
        _wait_until(lambda: len(_segments(s3)) >= 3)
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)
        answered_before = sandbox.stats()["answers_ok"]
        in_bucket = _recorded_ids(s3, _segments(s3), [])
        import shutil

        shutil.rmtree(staging_folder(s3.url("runs/job"), None))  # the machine is gone
        rerun = _start(["run", str(job), "--base-url", sandbox.base_url])
        _, stderr = rerun.communicate(timeout=120)
        assert rerun.returncode == 0, stderr
    assert f"({len(in_bucket)} already done, skipped)" in stderr
    lost = answered_before - len(in_bucket)
    assert 0 <= lost <= segment + 2  # one segment's worth, plus the requests in flight
    assert _remote_results(s3).height == rows


def _recorded_ids(s3: Bucket, uploaded: list[str], staged: list[Path]) -> set[str]:
    import pyarrow as pa

    ids: set[str] = set()
    sources = [io.BytesIO(s3.get(key)) for key in uploaded] + [path.open("rb") for path in staged]
    for source in sources:
        try:
            reader = pa.ipc.open_stream(source)
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                except pa.ArrowInvalid:
                    break  # the torn tail of a segment being written at the kill
                ids.update(batch.column("row_id").to_pylist())
        except pa.ArrowInvalid:
            continue
        finally:
            source.close()
    return ids


def test_the_lease_refuses_a_second_run_and_frees_itself_when_its_holder_dies(
    s3: Bucket, tmp_path: Path
) -> None:
    """While a run holds the output a second run exits 2 naming host and pid and when the lease
    expires; once the holder is killed, a run on the same host takes over at once."""
    job = _job(tmp_path, s3, rows=40)
    with running_sandbox(SandboxConfig(latency_ms=300)) as sandbox:
        holder = _start(["run", str(job), "--base-url", sandbox.base_url])
        try:
            _wait_until(lambda: sandbox.stats()["requests_total"] >= 1)
            second = invoke(["run", str(job), "--base-url", sandbox.base_url])
            assert second.exit_code == 2, second.output
            line = second.output.strip().splitlines()[-1]
            assert line.startswith(f"pipeline: error: {s3.url('runs/job')} is in use by another run (host ")
            assert f", pid {holder.pid}, started " in line
            assert "its lease expires at" in line
            status = invoke(["status", s3.url("runs/job")])
            assert "a run is in progress (host " in status.output
        finally:
            holder.kill()
            holder.communicate(timeout=30)
        third = invoke(["run", str(job), "--base-url", sandbox.base_url])
        assert third.exit_code == 0, third.output
    assert _remote_results(s3).height == 40


def test_a_segment_that_outlived_its_fold_is_not_applied_twice(s3: Bucket, tmp_path: Path) -> None:
    """results.parquet names the segments it holds: one left behind by a crash between the PUT and
    the deletes is skipped by readers and by the next run, never re-applied over newer results."""
    job = _job(tmp_path, s3, rows=6, segment_rows=2)
    assert invoke(["run", str(job), "--sandbox"]).exit_code == 0
    folded = json.loads(pq.read_schema(io.BytesIO(s3.get("runs/job/results.parquet"))).metadata[SEGMENTS_KEY])
    assert len(folded) == 3
    # a stale copy of the first segment, as if its delete had never happened, with rows now errors
    staged = staging_folder(s3.url("runs/job"), None)
    import pyarrow as pa

    table = pl.read_parquet(staged / "results.parquet").head(2).with_columns(status=pl.lit("error"))
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.to_arrow().schema) as writer:
        writer.write_table(table.to_arrow())
    s3.put(f"runs/job/.journal/{folded[0]}", sink.getvalue())
    status = invoke(["status", s3.url("runs/job"), "--json"])
    assert json.loads(status.output)["rows"]["ok"] == 6
    again = invoke(["run", str(job), "--sandbox"])
    assert again.exit_code == 0, again.output
    assert set(_remote_results(s3)["status"]) == {"ok"}
    assert _segments(s3) == []


def test_fresh_keeps_the_old_results_beside_in_the_bucket(s3: Bucket, tmp_path: Path) -> None:
    """--fresh on an s3:// output keeps results.previous.parquet there and starts over."""
    job = _job(tmp_path, s3, rows=3)
    assert invoke(["run", str(job), "--sandbox"]).exit_code == 0
    fresh = invoke(["run", str(job), "--sandbox", "--fresh"])
    assert fresh.exit_code == 0, fresh.output
    assert "3 rows sent: 3 ok" in fresh.output
    assert pl.read_parquet(io.BytesIO(s3.get("runs/job/results.previous.parquet"))).height == 3


def test_batch_mode_keeps_its_submissions_in_the_bucket(s3: Bucket, tmp_path: Path) -> None:
    """--mode batch on an s3:// output: the submission log and rows files live beside the results,
    so `pipeline batch status` reads them from the bucket."""
    job = _job(tmp_path, s3, rows=5)
    done = invoke(["run", str(job), "--sandbox", "--mode", "batch"])
    assert done.exit_code == 0, done.output
    assert _remote_results(s3).height == 5
    keys = s3.keys("runs/job/.batches/")
    assert "runs/job/.batches/log.jsonl" in keys
    assert any(key.endswith(".rows.arrow") for key in keys)
    listed = invoke(["batch", "status", s3.url("runs/job"), "--offline", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [entry["state"] for entry in json.loads(listed.output)["batches"]] == ["collected"]


def test_report_makes_thumbnails_of_object_storage_cells(s3: Bucket, tmp_path: Path) -> None:
    """report reads an s3:// output and fetches the s3:// images its rows name for their thumbnails."""

    for i in range(3):
        s3.put(f"imgs/{i}.jpg", photo(i, size=(120, 90)))
    rows = "".join(f"{i},{s3.url(f'imgs/{i}.jpg')}\n" for i in range(3))
    (tmp_path / "in.csv").write_text("id,image\n" + rows)
    job = write_job(
        tmp_path,
        input="in.csv",
        output=s3.url("runs/job"),
        id_column="id",
        request={"model": "claude-haiku-4-5", "max_tokens": 16, "prompt": "Caption.", "images": ["image"]},
    )
    assert invoke(["run", str(job), "--sandbox"]).exit_code == 0
    report = invoke(["report", s3.url("runs/job"), "--out", str(tmp_path / "r.html")])
    assert report.exit_code == 0, report.output
    assert "3 rows, 3 thumbnails;" in report.output


def test_a_journal_uploaded_to_its_last_result_leaves_no_file_behind(s3: Bucket, tmp_path: Path) -> None:
    """After a segment is rotated and uploaded, the staging folder is empty until a result comes: a
    process killed then (a Ray sender at the end of a run) leaves nothing for a later run to upload."""
    from datetime import UTC, datetime

    import pyarrow as pa

    from pipeline.cluster.output import ObjectTarget
    from pipeline.job.spec import StorageSpec
    from pipeline.records import Result, Row
    from pipeline.results.schema import output_schema

    spec = StorageSpec(staging_dir=str(tmp_path / "staging"))
    schema = output_schema(pa.schema([pa.field("id", pa.string())]))
    journal = ObjectTarget(s3.url("runs/seg"), spec).open_journal(schema, writer="w-1")

    def result(i: int) -> Result:
        return Result(
            row=Row(i, str(i), {"id": str(i)}), status="ok", finished_at=datetime.now(UTC), fingerprint="f"
        )

    def staged() -> list[str]:
        return sorted(path.name for path in (tmp_path / "staging").rglob("*.arrows"))

    journal.append([result(0), result(1)])
    journal.flush()
    assert len(staged()) == 1
    journal.rotate()
    journal.upload()
    assert staged() == []  # uploaded, and no empty next segment waiting
    journal.append([result(2)])
    journal.flush()
    assert len(staged()) == 1
    journal.close()
    assert staged() == []
    segments = [key for key in s3.keys("runs/seg/") if "/.journal/" in key]
    assert len(segments) == 2


def test_a_journal_that_never_records_leaves_no_file(s3: Bucket, tmp_path: Path) -> None:
    """A sender given only settled rows opens its journal and records nothing: no segment is made."""
    import pyarrow as pa

    from pipeline.cluster.output import ObjectTarget
    from pipeline.job.spec import StorageSpec
    from pipeline.results.schema import output_schema

    spec = StorageSpec(staging_dir=str(tmp_path / "staging"))
    schema = output_schema(pa.schema([pa.field("id", pa.string())]))
    journal = ObjectTarget(s3.url("runs/none"), spec).open_journal(schema, writer="w-2")
    journal.append([])
    journal.flush()
    journal.rotate()
    assert list((tmp_path / "staging").rglob("*.arrows")) == []
    journal.close()
    assert [key for key in s3.keys("runs/none/") if "/.journal/" in key] == []

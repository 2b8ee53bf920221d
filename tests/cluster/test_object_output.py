"""The Ray engine with its input and output in object storage (moto on loopback), on a two-node cluster.

One cluster for the module, started with the storage environment (endpoint, test credentials, a
staging folder for the workers), as a real cluster's nodes have it; the driver stages elsewhere, as
a driver on another machine would, so what reaches the bucket is what the senders uploaded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import raykit
from jobkit import FAKE_KEY, invoke, text_job
from pipeline.sandbox import SandboxConfig, SandboxHandle, running_sandbox
from storagekit import Bucket, MotoServer, new_bucket, storage_env

# one Ray cluster at a time: both modules' tests run in one test process, one module after the other
pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.xdist_group("ray"),
]

RUN_COLUMNS = ["finished_at", "latency_ms", "message_id", "request_id"]


@pytest.fixture(scope="module")
def cluster(moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    """Two Ray nodes whose processes start with the storage environment; their staging folder."""
    workers_cache = tmp_path_factory.mktemp("workers-cache")
    env = {"ANTHROPIC_API_KEY": FAKE_KEY, **storage_env(moto_server.endpoint, workers_cache)}
    with pytest.MonkeyPatch.context() as patch:
        for key in [key for key in os.environ if key.startswith(("AWS_", "GOOGLE_", "AZURE_"))]:
            patch.delenv(key)  # no cloud settings of this machine's reach the cluster's processes
        with raykit.two_node_cluster(env) as two_nodes:
            yield two_nodes, workers_cache


@pytest.fixture
def bucket(
    cluster: tuple[Any, Path], moto_server: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Bucket:
    """A fresh bucket; the driver stages in a folder of its own (the workers keep theirs)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "driver-cache"))
    return new_bucket(moto_server.endpoint)


def _job(folder: Path, output: str, *, rows: int, input_: str = "input.csv") -> Path:
    job = text_job(folder, rows=rows)
    text = job.read_text().replace('output = "out"', f"output = {json.dumps(output)}")
    text = text.replace('input = "input.csv"', f"input = {json.dumps(input_)}")
    job.write_text(text + "\n[storage]\nsegment_rows = 7\n", encoding="utf-8")
    return job


def _ray(job: Path, sandbox: SandboxHandle, *extra: str) -> Any:
    return invoke(
        [
            "run",
            str(job),
            "--engine",
            "ray",
            "--base-url",
            sandbox.base_url,
            "--json",
            "--workers",
            "2",
            *extra,
        ]
    )


def _summary(output: str) -> dict[str, Any]:
    return json.loads(output.strip().splitlines()[-1])


def _results(bucket: Bucket, prefix: str, tmp_path: Path) -> pl.DataFrame:
    path = tmp_path / f"{prefix.replace('/', '-')}.parquet"
    path.write_bytes(bucket.get(f"{prefix}/results.parquet"))
    return pl.read_parquet(path)


def test_an_s3_output_gets_the_local_engines_results_from_journals_the_senders_upload(
    cluster: tuple[Any, Path], bucket: Bucket, tmp_path: Path
) -> None:
    """Input in two CSVs in the bucket, output in the bucket: a local run of 10 rows, Ray the other 50, a
    rerun sends nothing; results equal a local run's into a directory; every segment was folded in."""
    _, workers_cache = cluster
    halves = [
        "id,topic\n" + "".join(f"{i},topic number {i}\n" for i in part) for part in (range(30), range(30, 60))
    ]
    bucket.put("in/a.csv", halves[0].encode())
    bucket.put("in/b.csv", halves[1].encode())
    (tmp_path / "s3").mkdir()
    (tmp_path / "local").mkdir()
    job = _job(tmp_path / "s3", bucket.url("runs/text"), rows=60, input_=bucket.url("in/*.csv"))
    local = text_job(tmp_path / "local", rows=60)
    with running_sandbox(SandboxConfig(latency_ms=5)) as sandbox:
        first = invoke(["run", str(job), "--base-url", sandbox.base_url, "--limit", "10"])
        assert first.exit_code == 0, first.output
        ran = _ray(job, sandbox)
        assert ran.exit_code == 0, ran.output
        assert sandbox.stats()["requests_total"] == 60  # the 10 done locally were not sent again
        again = _ray(job, sandbox)
        assert again.exit_code == 0, again.output
        assert sandbox.stats()["requests_total"] == 60
        reference = invoke(["run", str(local), "--base-url", sandbox.base_url])
        assert reference.exit_code == 0, reference.output
    assert _summary(ran.stdout)["rows"] == {"total": 60, "ok": 50, "error": 0, "skipped": 10}
    assert _summary(again.stdout)["requests_sent"] == 0
    ours = _results(bucket, "runs/text", tmp_path)
    theirs = pl.read_parquet(tmp_path / "local" / "out" / "results.parquet")
    assert ours.drop(RUN_COLUMNS).equals(theirs.drop(RUN_COLUMNS))
    keys = bucket.keys("runs/text/")
    assert "runs/text/results.parquet" in keys
    assert not [key for key in keys if "/.journal/" in key], keys  # every segment folded, then deleted
    # the senders uploaded all they journalled (7 results a segment): nothing is left on the workers
    assert not list(workers_cache.rglob("*.arrows"))


def test_kill_9_of_a_worker_with_an_s3_output_loses_nothing(
    cluster: tuple[Any, Path], bucket: Bucket, tmp_path: Path
) -> None:
    """kill -9 of a sender mid-run on one machine: its staged segment is uploaded by the driver, every row
    is in the bucket once, only its requests in flight were paid twice, and a rerun sends nothing."""
    two_nodes, workers_cache = cluster
    job = _job(tmp_path, bucket.url("runs/kill"), rows=80)
    marker = f"RAY_TMPDIR={os.environ['RAY_TMPDIR']}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANTHROPIC_")}
    env["ANTHROPIC_API_KEY"] = FAKE_KEY
    env["XDG_CACHE_HOME"] = str(workers_cache)  # the driver on the workers' machine: one staging folder
    with running_sandbox(SandboxConfig(latency_ms=150, jitter_ms=50, seed=3)) as sandbox:
        command = [sys.executable, "-m", "pipeline", "run", str(job), "--engine", "ray"]
        child = subprocess.Popen(
            [*command, "--ray-address", two_nodes.address, "--base-url", sandbox.base_url, "--workers", "2"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 180
            while sandbox.stats()["answers_ok"] < 20:
                assert child.poll() is None, child.communicate()
                assert time.monotonic() < deadline, "the run made no progress"
                time.sleep(0.05)
            victims = [pid for pid in raykit.carriers(marker) if "JobSender" in raykit.command_line(pid)]
            assert victims, "no sender process found"
            os.kill(victims[0], signal.SIGKILL)
            _, err = child.communicate(timeout=240)
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()
        stats = sandbox.stats()
        rerun = _ray(job, sandbox)
        assert rerun.exit_code == 0, rerun.output
        assert sandbox.stats()["requests_total"] == stats["requests_total"]  # the rerun sent nothing
    assert child.returncode == 0, err
    frame = _results(bucket, "runs/kill", tmp_path)
    assert sorted(frame["id"].to_list(), key=int) == [str(i) for i in range(80)]
    assert set(frame["status"]) == {"ok"}
    paid = stats["ok_by_request"]
    assert len(paid) == 80
    assert max(paid.values()) <= 2
    assert sum(1 for count in paid.values() if count > 1) <= 2  # the killed worker's requests in flight


def test_a_held_s3_output_is_refused_before_ray_starts(bucket: Bucket, tmp_path: Path) -> None:
    """Another run holding the output's lease: the Ray engine is refused in one line, sending nothing."""
    from pipeline.results.lease import Lease
    from pipeline.rows.storage import ObjectStorage

    job = _job(tmp_path, bucket.url("runs/held"), rows=5)
    storage = ObjectStorage()
    lease = Lease(storage, bucket.url("runs/held/.lease"), ttl_s=120, label="held")
    lease.acquire()
    try:
        with running_sandbox() as sandbox:
            ran = invoke(
                ["run", str(job), "--engine", "ray", "--ray-address", "auto", "--base-url", sandbox.base_url]
            )
            assert sandbox.stats()["requests_total"] == 0
    finally:
        lease.release()
        storage.close()
    assert ran.exit_code != 0
    assert ran.output.strip().splitlines()[-1].startswith("pipeline: error:"), ran.output
    assert "Traceback" not in ran.output

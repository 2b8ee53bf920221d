"""The Ray engine on a real two-node Ray cluster (one per module) against the sandbox, through the CLI.

Every node and the driver run on 127.0.0.1 with token auth (see ``raykit``); the sandbox serves on
loopback in this process. Results are compared with the local engine's on the same input, and the
sandbox's own tallies (requests, 429s, answers per request) prove what was sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import raykit
from jobkit import FAKE_KEY, image_bytes, invoke, text_job, write_job
from pipeline.results.store import ResultStore
from pipeline.sandbox import SandboxConfig, SandboxHandle, running_sandbox

# one Ray cluster at a time: both modules' tests run in one test process, one module after the other
pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.xdist_group("ray"),
]

# what differs between two runs of the same rows whichever engine sends them
RUN_COLUMNS = ["finished_at", "latency_ms", "message_id", "request_id"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """Two Ray nodes of 2 logical CPUs and a 100 MiB object store each; this process is the driver.

    The key is in the environment the nodes start with, as on a real cluster: the engine never sends it.
    """
    with raykit.two_node_cluster({"ANTHROPIC_API_KEY": FAKE_KEY}) as two_nodes:
        yield two_nodes


def ray_run(job: Path, sandbox: SandboxHandle, *extra: str, workers: int = 2) -> Any:
    """``pipeline run JOB --engine ray`` in this process (the driver the cluster fixture connected)."""
    command = ["run", str(job), "--engine", "ray", "--base-url", sandbox.base_url, "--json", *extra]
    return invoke([*command, "--workers", str(workers)])


def results(directory: Path) -> pl.DataFrame:
    return pl.read_parquet(directory / "results.parquet")


def summary(output: str) -> dict[str, Any]:
    return json.loads(output.strip().splitlines()[-1])


def test_every_ray_process_listens_on_loopback_only(cluster: Any) -> None:
    """Both nodes are up at 127.0.0.1, and no process of the cluster listens beyond loopback."""
    import ray

    alive = [node for node in ray.nodes() if node["Alive"]]
    assert len(alive) == 2
    assert {node["NodeManagerAddress"] for node in alive} == {"127.0.0.1"}
    pids = set(raykit.carriers(f"RAY_TMPDIR={os.environ['RAY_TMPDIR']}")) | {os.getpid()}
    sockets = raykit.listening(pids)
    assert sockets, "found no listening sockets: the check proves nothing"
    assert {host for host, _ in sockets} <= raykit.LOOPBACK, sockets


def test_text_job_matches_the_local_engine_resumes_across_engines_and_reruns_send_nothing(
    cluster: Any, tmp_path: Path
) -> None:
    """A local run of 10 rows, then Ray finishes the other 50: results equal a local run's; reruns send 0."""
    (tmp_path / "ray").mkdir()
    (tmp_path / "local").mkdir()
    job = text_job(tmp_path / "ray", rows=60)
    local = text_job(tmp_path / "local", rows=60)
    with running_sandbox(SandboxConfig(latency_ms=5)) as sandbox:
        first = invoke(["run", str(job), "--base-url", sandbox.base_url, "--limit", "10"])
        assert first.exit_code == 0, first.output
        ran = ray_run(job, sandbox)
        assert ran.exit_code == 0, ran.output
        assert sandbox.stats()["requests_total"] == 60  # the 10 done locally were not sent again
        again = ray_run(job, sandbox)
        assert again.exit_code == 0, again.output
        back_home = invoke(["run", str(job), "--base-url", sandbox.base_url])  # and back to the local engine
        assert back_home.exit_code == 0, back_home.output
        assert sandbox.stats()["requests_total"] == 60
        reference = invoke(["run", str(local), "--base-url", sandbox.base_url])
        assert reference.exit_code == 0, reference.output
    assert summary(ran.stdout)["rows"] == {"total": 60, "ok": 50, "error": 0, "skipped": 10}
    assert summary(ran.stdout)["requests_sent"] == 50
    assert summary(again.stdout)["rows"] == {"total": 60, "ok": 0, "error": 0, "skipped": 60}
    assert summary(again.stdout)["requests_sent"] == 0
    ours, theirs = results(tmp_path / "ray" / "out"), results(tmp_path / "local" / "out")
    assert ours.schema == theirs.schema
    assert ours.drop(RUN_COLUMNS).equals(theirs.drop(RUN_COLUMNS))
    assert ours["row_index"].to_list() == list(range(60))


def test_image_job_is_prepared_on_the_workers_as_the_local_engine_prepares_it(
    cluster: Any, tmp_path: Path
) -> None:
    """Images of several formats and sizes (one too large to send as is, one broken): the local results."""
    outputs = {}
    for engine in ("local", "ray"):
        folder = tmp_path / engine
        pics = folder / "pics"
        pics.mkdir(parents=True)
        files = {
            "big.jpg": image_bytes("JPEG", size=(3000, 2000)),  # shrunk to the model's limit on a worker
            "small.png": image_bytes("PNG"),
            "photo.webp": image_bytes("WEBP", size=(400, 300)),
            "broken.jpg": b"not an image",
        }
        for name, data in files.items():
            (pics / name).write_bytes(data)
        lines = ["id,image,topic", *(f"{i},pics/{name},picture {i}" for i, name in enumerate(files))]
        (folder / "input.csv").write_text("\n".join(lines) + "\n")
        job = write_job(
            folder,
            name="images",
            input="input.csv",
            output="out",
            id_column="id",
            request={
                "model": "claude-haiku-4-5",
                "max_tokens": 32,
                "prompt": "Describe {topic}.",
                "images": ["image"],
            },
            limits={"concurrency": 4, "max_attempts": 3, "timeout_s": 10},
        )
        with running_sandbox() as sandbox:
            if engine == "ray":
                ran = ray_run(job, sandbox)
            else:
                ran = invoke(["run", str(job), "--base-url", sandbox.base_url, "--json"])
        assert ran.exit_code == 1, ran.output  # the broken image is an error row
        outputs[engine] = results(folder / "out")
    ours, theirs = outputs["ray"], outputs["local"]
    assert ours.filter(pl.col("status") == "ok").height == 3
    assert ours.filter(pl.col("row_id") == "3")["error_type"].to_list() == ["image_error"]
    assert ours.drop(RUN_COLUMNS).equals(theirs.drop(RUN_COLUMNS))  # same tokens: the same images were sent


@pytest.mark.parametrize(
    "job_states_limit", [True, False], ids=["job-states-the-limit", "learned-from-headers"]
)
def test_four_workers_share_one_rate_limit_without_a_429_storm(
    cluster: Any, tmp_path: Path, job_states_limit: bool
) -> None:
    """Four workers against a 300 requests/min sandbox: one account's limit between them, next to no 429s."""
    job = text_job(tmp_path, rows=50)
    limits = "concurrency = 16\nrequests_per_minute = 300\n" if job_states_limit else "concurrency = 16\n"
    job.write_text(job.read_text().replace("concurrency = 4\n", limits))
    with running_sandbox(SandboxConfig(requests_per_minute=300, latency_ms=50)) as sandbox:
        ran = ray_run(job, sandbox, workers=4)
        stats = sandbox.stats()
    assert ran.exit_code == 0, ran.output
    assert set(results(tmp_path / "out")["status"]) == {"ok"}
    # four workers pacing themselves at the limit would send four times it: hundreds of 429s
    assert stats["rate_limited"] <= 3, stats["rate_limited"]
    assert stats["answers_ok"] == 50


def test_a_mix_of_faults_is_retried_to_success(cluster: Any, tmp_path: Path) -> None:
    """30 % of requests fault (529, 500, HTML 503, a dropped connection): all rows end ok, retries match."""
    job = text_job(tmp_path, rows=40)
    # which row draws which fault depends on arrival order, so on timing: with 6 attempts a row
    # faulted six times in a row about 3 % of runs (0.3**6 x 40 rows); with 12 it never does
    job.write_text(job.read_text().replace("max_attempts = 6", "max_attempts = 12"))
    config = SandboxConfig(fault_rate=0.3, faults=("529", "500", "html503", "drop"), seed=11)
    with running_sandbox(config) as sandbox:
        ran = ray_run(job, sandbox)
        stats = sandbox.stats()
    assert ran.exit_code == 0, ran.output
    frame = results(tmp_path / "out")
    assert set(frame["status"]) == {"ok"}
    faults = sum(stats["faults"].values())
    assert faults > 0
    assert int((frame["attempts"] - 1).sum()) == faults
    assert summary(ran.stdout)["retries"] == faults


def test_a_spend_cap_stops_every_worker_with_exit_2(cluster: Any, tmp_path: Path) -> None:
    """The spend-cap 429 on one worker stops the whole run (exit 2); the answers before it are kept."""
    job = text_job(tmp_path, rows=40)
    with running_sandbox(SandboxConfig(spend_limit_after=5, latency_ms=20)) as sandbox:
        ran = ray_run(job, sandbox)
    assert ran.exit_code == 2, ran.output
    assert "spend" in ran.output.lower()
    assert results(tmp_path / "out").filter(pl.col("status") == "ok").height == 5


def test_identical_requests_on_different_workers_are_sent_once(cluster: Any, tmp_path: Path) -> None:
    """40 rows asking 8 distinct things, over 4 workers: 8 requests; every row gets its answer."""
    csv = tmp_path / "input.csv"
    csv.write_text("id,topic\n" + "".join(f"{i},topic number {i % 8}\n" for i in range(40)))
    job = write_job(
        tmp_path,
        name="dupes",
        input="input.csv",
        output="out",
        id_column="id",
        request={"model": "claude-haiku-4-5", "max_tokens": 32, "prompt": "About {topic}.", "temperature": 0},
        limits={"concurrency": 8, "max_attempts": 3, "timeout_s": 10},
    )
    with running_sandbox(SandboxConfig(latency_ms=30)) as sandbox:
        ran = ray_run(job, sandbox, workers=4)
        stats = sandbox.stats()
    assert ran.exit_code == 0, ran.output
    frame = results(tmp_path / "out")
    assert set(frame["status"]) == {"ok"}
    assert stats["requests_total"] == 8
    assert frame["shared_request_with"].null_count() == 8
    assert (
        frame.group_by("topic").agg(pl.col("response_text").n_unique())["response_text"].to_list() == [1] * 8
    )
    assert summary(ran.stdout)["rows_shared"] == 32


def _driver(job: Path, sandbox: SandboxHandle, cluster: Any, *extra: str) -> subprocess.Popen[str]:
    """``python -m pipeline run --engine ray`` as its own process, connected to the fixture's cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env["ANTHROPIC_API_KEY"] = FAKE_KEY
    command = [
        sys.executable,
        "-m",
        "pipeline",
        "run",
        str(job),
        "--engine",
        "ray",
        "--ray-address",
        cluster.address,
    ]
    return subprocess.Popen(
        [*command, "--base-url", sandbox.base_url, "--json", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_answers(sandbox: SandboxHandle, count: int, child: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 180
    while sandbox.stats()["answers_ok"] < count:
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.05)


def _senders(marker: str) -> list[int]:
    return [pid for pid in raykit.carriers(marker) if "JobSender" in raykit.command_line(pid)]


def test_kill_9_of_a_worker_loses_only_its_requests_in_flight(cluster: Any, tmp_path: Path) -> None:
    """kill -9 of a sender mid-run: the run ends ok, every row once, only its requests in flight paid 2x."""
    job = text_job(tmp_path, rows=80)  # concurrency 4, over 2 workers: 2 in flight each
    marker = f"RAY_TMPDIR={os.environ['RAY_TMPDIR']}"
    with running_sandbox(SandboxConfig(latency_ms=150, jitter_ms=50, seed=3)) as sandbox:
        child = _driver(job, sandbox, cluster, "--workers", "2")
        try:
            _wait_for_answers(sandbox, 20, child)
            victims = _senders(marker)
            assert victims, "no sender process found"
            os.kill(victims[0], signal.SIGKILL)
            _, err = child.communicate(timeout=240)
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()
        stats = sandbox.stats()
        rerun = ray_run(job, sandbox)
        assert rerun.exit_code == 0, rerun.output
        assert sandbox.stats()["requests_total"] == stats["requests_total"]  # the rerun sent nothing
    assert child.returncode == 0, err
    frame = results(tmp_path / "out")
    assert sorted(frame["id"].to_list(), key=int) == [str(i) for i in range(80)]
    assert set(frame["status"]) == {"ok"}
    paid = stats["ok_by_request"]
    assert len(paid) == 80
    assert max(paid.values()) <= 2
    assert sum(1 for count in paid.values() if count > 1) <= 2  # the killed worker's requests in flight


def test_sigterm_stops_every_worker_gracefully_and_a_rerun_finishes(cluster: Any, tmp_path: Path) -> None:
    """SIGTERM: requests in flight end, nothing new is sent, exit 143; a rerun sends only the rest."""
    job = text_job(tmp_path, rows=80)
    with running_sandbox(SandboxConfig(latency_ms=200, jitter_ms=50, seed=5)) as sandbox:
        child = _driver(job, sandbox, cluster, "--workers", "2")
        try:
            _wait_for_answers(sandbox, 10, child)
            child.send_signal(signal.SIGTERM)
            _, err = child.communicate(timeout=120)
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()
        stopped = sandbox.stats()
        rerun = ray_run(job, sandbox)
        assert rerun.exit_code == 0, rerun.output
        stats = sandbox.stats()
    assert child.returncode == 143, err
    assert "stopped by SIGTERM" in err
    saved = results(tmp_path / "out")
    assert set(saved["status"]) == {"ok"}
    assert sorted(saved["id"].to_list(), key=int) == [str(i) for i in range(80)]
    assert 10 <= stopped["answers_ok"] < 80
    # every request answered before the stop was journalled: the rerun paid only for the rest
    assert stats["answers_ok"] == 80
    assert max(stats["ok_by_request"].values()) == 1


def test_process_dataset_answers_a_ray_dataset_under_one_shared_limiter(cluster: Any, tmp_path: Path) -> None:
    """A ray.data.Dataset in, a dataset of result rows out; two datasets share one limiter."""
    import ray.data

    from pipeline import process_dataset
    from pipeline.cluster.dataset import shared_limiter

    job = text_job(tmp_path, rows=1)
    with running_sandbox(SandboxConfig(latency_ms=5)) as sandbox:
        limiter = shared_limiter(job)
        first = ray.data.from_items([{"id": str(i), "topic": f"topic number {i}"} for i in range(12)])
        second = ray.data.from_items([{"id": str(i), "topic": f"other topic {i}"} for i in range(100, 108)])
        rows = [
            *process_dataset(first, job, base_url=sandbox.base_url, limiter=limiter, workers=1).take_all(),
            *process_dataset(second, job, base_url=sandbox.base_url, limiter=limiter, workers=1).take_all(),
        ]
        stats = ray.get(limiter.stats.remote())
        assert sandbox.stats()["requests_total"] == 20
    assert sorted(int(row["row_id"]) for row in rows) == [*range(12), *range(100, 108)]
    assert {row["status"] for row in rows} == {"ok"}
    assert all(row["response_text"] and row["request_fingerprint"] for row in rows)
    assert stats.admitted == 20  # every request of both datasets was admitted by the one limiter


def test_the_api_key_is_in_no_ray_log(cluster: Any) -> None:
    """After every run above, the key appears nowhere in the cluster's session directory (logs, specs)."""
    root = Path(os.environ["RAY_TMPDIR"])
    files = [path for path in root.rglob("*") if path.is_file() and not path.is_socket()]
    assert any(path.suffix in {".log", ".out", ".err"} for path in files), "no Ray logs found"
    leaks = [str(path) for path in files if FAKE_KEY.encode() in path.read_bytes()]
    assert leaks == []


def test_batch_mode_and_ray_options_without_the_engine_are_refused_in_one_line(tmp_path: Path) -> None:
    """--engine ray with --mode batch, or --workers without --engine ray: one line, exit 2, nothing sent."""
    job = text_job(tmp_path, rows=3)
    refused = invoke(["run", str(job), "--engine", "ray", "--mode", "batch", "--sandbox"])
    assert refused.exit_code == 2
    assert refused.output.strip().splitlines() == [
        "pipeline: error: --engine ray runs realtime jobs; batch mode (--mode batch) runs locally"
    ]
    stray = invoke(["run", str(job), "--workers", "2", "--sandbox"])
    assert stray.exit_code == 2
    assert "--workers apply to --engine ray" in stray.output
    assert not (tmp_path / "out" / "results.parquet").exists()


def test_without_an_address_a_local_instance_is_started_for_the_run_and_stopped(tmp_path: Path) -> None:
    """[run] engine = "ray", no address: a loopback Ray instance runs the job, leaving no process or file."""
    job = text_job(tmp_path, rows=12)
    job.write_text(job.read_text() + '\n[run]\nengine = "ray"\nworkers = 2\n')
    temp = Path(tempfile.mkdtemp(prefix="t16-", dir="/tmp"))  # short, as Ray's socket paths need
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "RAY_"))}
    env.update(ANTHROPIC_API_KEY=FAKE_KEY, TMPDIR=str(temp))
    try:
        with running_sandbox() as sandbox:
            done = subprocess.run(
                [sys.executable, "-m", "pipeline", "run", str(job), "--base-url", sandbox.base_url, "--json"],
                env=env, capture_output=True, text=True, timeout=280, check=False,
            )  # fmt: skip
            assert sandbox.stats()["requests_total"] == 12
        assert done.returncode == 0, done.stderr
        assert summary(done.stdout)["rows"]["ok"] == 12
        assert set(results(tmp_path / "out")["status"]) == {"ok"}
        assert list(temp.iterdir()) == []  # the instance's directory (sockets, logs, token) is gone
        assert raykit.carriers(f"TMPDIR={temp}") == []  # and so is every process it started
        assert ResultStore(tmp_path / "out").journals() == []
    finally:
        raykit.sweep(f"TMPDIR={temp}")
        shutil.rmtree(temp, ignore_errors=True)


def test_losing_a_worker_node_mid_run_loses_only_its_requests_in_flight(cluster: Any, tmp_path: Path) -> None:
    """A third node dies mid-run: the run ends ok on the others; only its requests in flight are paid 2x."""
    node = cluster.add_node(**raykit.NODE)
    cluster.wait_for_nodes()
    raylet = node.all_processes["raylet"][0].process
    job = text_job(tmp_path, rows=90)
    job.write_text(job.read_text().replace("concurrency = 4", "concurrency = 6"))  # 2 in flight a worker
    marker = f"RAY_TMPDIR={os.environ['RAY_TMPDIR']}"
    try:
        with running_sandbox(SandboxConfig(latency_ms=150, jitter_ms=50, seed=9)) as sandbox:
            # three senders, each too big for two on one node: one on every node
            child = _driver(job, sandbox, cluster, "--workers", "3")
            try:
                _wait_for_answers(sandbox, 20, child)
                on_node = [pid for pid in _senders(marker) if raykit.parent(pid) == raylet.pid]
                assert on_node, "no sender on the node to lose: the test would prove nothing"
                raylet.kill()  # the node's workers go with their raylet
                _, err = child.communicate(timeout=240)
            finally:
                if child.poll() is None:
                    child.kill()
                    child.communicate()
            stats = sandbox.stats()
    finally:
        with contextlib.suppress(Exception):
            cluster.remove_node(node, allow_graceful=False)
    assert child.returncode == 0, err
    frame = results(tmp_path / "out")
    assert sorted(frame["id"].to_list(), key=int) == [str(i) for i in range(90)]
    assert set(frame["status"]) == {"ok"}
    paid = stats["ok_by_request"]
    assert len(paid) == 90
    assert max(paid.values()) <= 2
    assert sum(1 for count in paid.values() if count > 1) <= 2  # the lost sender's requests in flight

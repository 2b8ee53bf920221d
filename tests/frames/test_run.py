"""``Job.run`` against the sandbox: tables in, results out in the input's order, resumable, typed errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import httpx
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

import pipeline
from jobkit import ROOT, invoke, write_job
from pipeline.results.schema import HEAD_FIELDS, TAIL_FIELDS

SAMPLE = ROOT / "sample_data"
TEXT = {"model": "claude-haiku-4-5", "max_tokens": 64, "prompt": "Say something about {topic}."}
LIMITS = {"concurrency": 4, "max_attempts": 3, "timeout_s": 10}


def text_job(**keys: Any) -> pipeline.Job:
    return pipeline.Job(**{**TEXT, **keys}, limits=LIMITS)


def topics(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {"id": [f"t{i:02d}" for i in range(n)], "topic": [f"topic number {i}" for i in range(n)]}
    )


def sent(sandbox: pipeline.Sandbox) -> int:
    return int(sandbox.stats()["requests_total"])


def test_a_dataframe_in_gives_one_result_row_per_input_row_in_its_order(
    sandbox: pipeline.Sandbox, cache: Path
) -> None:
    """Every input row comes back once, in the input's order, with the columns of results.parquet."""
    data = topics(6).sample(fraction=1.0, shuffle=True, seed=3)
    out = text_job(id_column="id").run(data)
    assert out["id"].to_list() == data["id"].to_list()
    assert out["topic"].to_list() == data["topic"].to_list()
    assert out["status"].to_list() == ["ok"] * 6
    assert all(text.startswith("[sandbox] reply") for text in out["response_text"])
    (results,) = cache.glob("job-*/results.parquet")
    assert out.columns == pl.read_parquet(results).columns
    assert out.columns[:2] == [field.name for field in HEAD_FIELDS]
    assert out.columns[-len(TAIL_FIELDS) :] == [field.name for field in TAIL_FIELDS]
    assert sent(sandbox) == 6


def test_a_rerun_sends_nothing_and_keeps_the_new_order(sandbox: pipeline.Sandbox) -> None:
    """Run again (a cell re-run): no request reaches the server, same rows; a reordered input, its order."""
    job = text_job(id_column="id")
    data = topics(5)
    first = job.run(data)
    assert sent(sandbox) == 5
    again = job.run(data)
    assert sent(sandbox) == 5
    assert job.last_outcome is not None
    assert job.last_outcome.summary.requests_sent == 0
    assert again.equals(first)
    backwards = job.run(data.reverse())
    assert sent(sandbox) == 5
    assert backwards["id"].to_list() == data["id"].to_list()[::-1]


def test_a_larger_limit_pays_only_for_the_rows_added(sandbox: pipeline.Sandbox) -> None:
    """limit=2, then the whole table: the cache is the job's, so the first two rows are not sent again."""
    job = text_job()
    data = topics(5)
    assert job.run(data, limit=2)["topic"].to_list() == data["topic"].to_list()[:2]
    assert job.run(data)["topic"].to_list() == data["topic"].to_list()
    assert sent(sandbox) == 5


def test_a_changed_prompt_or_server_gets_its_own_cache(
    sandbox: pipeline.Sandbox, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new fingerprint is a new directory (answers of the old prompt are not reused); so is a server."""
    data = topics(2)
    text_job().run(data)
    text_job(prompt="Tell me about {topic}.").run(data)
    assert sent(sandbox) == 4
    text_job().run(data, sandbox=True)  # the open sandbox: the same server, nothing to send
    assert sent(sandbox) == 4
    assert len(list(cache.glob("job-*"))) == 2
    with pipeline.Sandbox() as other:  # another sandbox, another port: still "the sandbox"
        text_job().run(data)
        assert sent(other) == 0
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-any")  # a server named by URL takes the job's key
    text_job().run(data, base_url=sandbox.base_url)  # named by its URL: a server of its own
    assert sent(sandbox) == 6
    assert len(list(cache.glob("job-*"))) == 3


def test_output_is_resumable_exactly_like_the_cli(tmp_path: Path, sandbox: pipeline.Sandbox) -> None:
    """Python runs 3 rows into output=; the CLI on that output sends only the other 3; Python then none."""
    data = topics(6)
    data.write_csv(tmp_path / "topics.csv")
    path = write_job(tmp_path, name="text", input="topics.csv", output="out", id_column="id", request=TEXT)
    job = pipeline.Job.from_toml(path)
    job.run(data, output=tmp_path / "out", limit=3)
    assert sent(sandbox) == 3
    done = invoke(["run", str(path), "--base-url", sandbox.base_url])
    assert done.exit_code == 0, done.output
    assert "3 rows sent: 3 ok, 0 error (3 already done, skipped)" in done.output
    assert sent(sandbox) == 6
    out = job.run()  # the job file's input and output
    assert sent(sandbox) == 6
    assert out["id"].to_list() == data["id"].to_list()


def test_pandas_pyarrow_lists_and_datasets_give_the_same_results(sandbox: pipeline.Sandbox) -> None:
    """The same rows as pandas, pyarrow, a list of dicts, a dict of columns and a Dataset: equal answers."""
    data = topics(3)
    job = text_job(id_column="id")
    expected = job.run(data).select("id", "topic", "status", "response_text")
    kinds: list[object] = [
        data.to_pandas(),
        pd.DataFrame({"id": data["id"].to_list(), "topic": data["topic"].to_list()}),
        data.to_arrow(),
        pa.Table.from_pylist(data.to_dicts()),
        data.to_dicts(),
        data.to_dict(as_series=False),
        datasets.Dataset.from_dict(data.to_dict(as_series=False)),
    ]
    for kind in kinds:
        got = job.run(kind).select("id", "topic", "status", "response_text")
        assert got.equals(expected), type(kind)
    assert sent(sandbox) == 3  # the same rows: every later run found them done


def test_a_hugging_face_dataset_of_text_runs(sandbox: pipeline.Sandbox) -> None:
    """A Dataset (after select and shuffle) is read a batch at a time; results follow its order."""
    dataset = (
        datasets.Dataset.from_dict({"topic": [f"topic {i}" for i in range(8)]})
        .shuffle(seed=1)
        .select(range(5))
    )
    out = text_job().run(dataset)
    assert out["topic"].to_list() == dataset["topic"]
    assert out["status"].to_list() == ["ok"] * 5


def test_a_hugging_face_image_column_is_an_image_cell(sandbox: pipeline.Sandbox) -> None:
    """A Dataset with an Image feature (bytes in the struct): each row's photo is sent as its image."""
    photos = pl.read_csv(SAMPLE / "images.csv").head(3)
    features = datasets.Features({"subject": datasets.Value("string"), "photo": datasets.Image()})
    dataset = datasets.Dataset.from_dict(
        {
            "subject": photos["subject"].to_list(),
            "photo": [{"bytes": (SAMPLE / p).read_bytes(), "path": None} for p in photos["image_path"]],
        },
        features=features,
    )
    job = pipeline.Job(
        model="claude-haiku-4-5",
        max_tokens=64,
        prompt="Alt text for {subject}.",
        images=["photo"],
        limits=LIMITS,
    )
    out = job.run(dataset)
    assert out["status"].to_list() == ["ok"] * 3
    assert sent(sandbox) == 3


def test_relative_image_paths_resolve_against_the_current_directory_or_base_dir(
    sandbox: pipeline.Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The sample photos' relative paths work from sample_data/, or from anywhere with base_dir=."""
    photos = pl.read_csv(SAMPLE / "images.csv").head(3)
    job = pipeline.Job(
        model="claude-haiku-4-5", max_tokens=64, prompt="Alt text for {subject}.", images=["image_path"],
        id_column="id", limits=LIMITS,
    )  # fmt: skip
    monkeypatch.chdir(SAMPLE)
    assert job.run(photos, output=tmp_path / "a")["status"].to_list() == ["ok"] * 3
    monkeypatch.chdir(tmp_path)
    assert job.run(photos, output=tmp_path / "b", base_dir=SAMPLE)["status"].to_list() == ["ok"] * 3
    missing = job.run(photos, output=tmp_path / "c")  # no images here: row errors, not an exception
    assert missing["status"].to_list() == ["error"] * 3
    assert missing["error_type"].to_list() == ["image_error"] * 3
    assert sent(sandbox) == 6


def test_row_errors_stay_rows(tmp_path: Path) -> None:
    """A row the API refuses is a row with status error and the API's error; the others are answered."""
    data = pl.DataFrame({"topic": ["fine", "REJECT this one", "also fine"]})
    with pipeline.Sandbox(reject_marker="REJECT"):
        out = text_job().run(data)
    assert out["status"].to_list() == ["ok", "error", "ok"]
    assert out["error_type"][1] == "invalid_request_error"
    assert "reject_marker" in out["error_message"][1]


def test_job_failures_raise_the_typed_errors_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """No column: InputError; no key: ConfigError; a refused key: FatalApiError; two servers: ConfigError."""
    job = text_job()
    with pytest.raises(
        pipeline.InputError, match=r"^polars DataFrame: no column 'topic' \(used by request.prompt\)"
    ):
        job.run(pl.DataFrame({"topik": ["x"]}), sandbox=True)
    with pytest.raises(
        pipeline.ConfigError, match=r"ANTHROPIC_API_KEY is not set .* try the job with sandbox=True"
    ):
        job.run(topics(1))
    with pytest.raises(pipeline.ConfigError, match="sandbox=True and base_url= both name a server"):
        job.run(topics(1), sandbox=True, base_url="http://127.0.0.1:9")
    with pytest.raises(pipeline.ConfigError, match="no data; pass a DataFrame"):
        job.run()
    with pytest.raises(pipeline.InputError, match="cannot read a set as input"):
        job.run({1, 2}, sandbox=True)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-wrong")
    with pipeline.Sandbox(api_key="sk-right") as served, pytest.raises(pipeline.FatalApiError, match="401"):
        job.run(topics(2), base_url=served.base_url)


def test_the_summary_says_where_the_results_are(sandbox: pipeline.Sandbox, cache: Path, capfd: Any) -> None:
    """Without output= the summary's last line names the cache directory's results.parquet."""
    text_job(name="where am I").run(topics(2))
    err = capfd.readouterr().err
    (results,) = cache.glob("where-am-I-*/results.parquet")
    assert "2 rows sent: 2 ok, 0 error (0 already done, skipped)" in err
    assert f"results: {results}" in err


def test_a_lazyframe_in_gives_a_lazyframe_out(sandbox: pipeline.Sandbox, tmp_path: Path) -> None:
    """A LazyFrame is streamed into the run, and the results come back as a LazyFrame over the output."""
    data = topics(7)
    data.write_parquet(tmp_path / "topics.parquet")
    lazy = pl.scan_parquet(tmp_path / "topics.parquet").filter(pl.col("id") != "t03")
    out = text_job(id_column="id").run(lazy)
    assert isinstance(out, pl.LazyFrame)
    frame = out.collect()
    assert frame["id"].to_list() == ["t00", "t01", "t02", "t04", "t05", "t06"]
    assert frame["status"].to_list() == ["ok"] * 6


async def test_run_works_inside_a_running_event_loop(sandbox: pipeline.Sandbox) -> None:
    """Inside a running loop (Jupyter's), run() runs in a worker thread; run_async awaits in this loop."""
    job = text_job()
    data = topics(3)
    out = job.run(data)
    assert out["status"].to_list() == ["ok"] * 3
    again = await job.run_async(topics(4))
    assert again["topic"].to_list() == topics(4)["topic"].to_list()
    assert sent(sandbox) == 4


def test_batch_mode_waits_and_returns_the_results(tmp_path: Path) -> None:
    """mode="batch" submits through the sandbox's Message Batches API, waits, and returns the rows."""
    with pipeline.Sandbox(batch_processing_s=0.2) as served:
        out = text_job(id_column="id").run(topics(4), mode="batch", output=tmp_path / "out")
        assert served.stats()["batches"]["created"] == 1
    assert out["status"].to_list() == ["ok"] * 4
    assert out["id"].to_list() == topics(4)["id"].to_list()


def test_validate_and_estimate_print_what_the_commands_print(tmp_path: Path) -> None:
    """str(job.validate(df)) and str(job.estimate(df)) are the commands' text for the same rows."""
    data = topics(4)
    data.write_csv(tmp_path / "topics.csv")
    path = write_job(tmp_path, name="text", input="topics.csv", output="out", id_column="id", request=TEXT)
    job = pipeline.Job(**TEXT, name="text", id_column="id")
    estimate = job.estimate(data, output=tmp_path / "out")
    command = invoke(["estimate", str(path)])
    assert command.exit_code == 0
    assert str(estimate) == command.output.rstrip("\n")
    assert estimate.rows_to_do == 4
    report = job.validate(data)
    checked = invoke(["validate", str(path)])
    assert str(report).removeprefix("pipeline.Job") == checked.output.rstrip("\n").removeprefix(str(path))
    assert report.rows == 4
    assert report.problems == []


def test_estimate_leaves_out_the_rows_a_run_has_done(sandbox: pipeline.Sandbox) -> None:
    """estimate() looks where run() would keep the results: after a run nothing is left to do."""
    job = text_job()
    data = topics(3)
    assert job.estimate(data).rows_to_do == 3
    job.run(data)
    assert (job.estimate(data).rows_done, job.estimate(data).rows_to_do) == (3, 0)
    counted = job.estimate(topics(4), exact=True)
    assert counted.exact is not None
    assert counted.exact.sampled == 1  # the one row not done, counted
    assert sandbox.stats()["count_tokens_total"] == 1


def test_the_sandbox_block_serves_and_then_stops() -> None:
    """Inside the block runs go to the sandbox; afterwards it is gone and runs need a key again."""
    with pipeline.Sandbox(latency_ms=1) as served:
        assert served.base_url.startswith("http://127.0.0.1:")
        with pipeline.Sandbox() as inner:
            text_job().run(topics(1))
            assert sent(inner) == 1
        text_job().run(topics(2))
        assert sent(served) == 1  # the first row was done already (the same job, the same cache)
    with pytest.raises(pipeline.ConfigError, match="not serving"):
        _ = served.base_url
    with pytest.raises(pipeline.ConfigError, match="ANTHROPIC_API_KEY is not set"):
        text_job().run(topics(1))
    with pytest.raises(pipeline.ConfigError, match=r"sandbox: port must be 0\.\.65535"):
        pipeline.Sandbox(port=70000)
    with pytest.raises(pipeline.ConfigError, match="unexpected keyword argument 'colour'"):
        pipeline.Sandbox(colour="red")


def test_a_file_path_is_an_input_too(sandbox: pipeline.Sandbox, tmp_path: Path) -> None:
    """data may name a CSV file (or a glob), read as --input reads it; base_dir does not apply."""
    topics(3).write_csv(tmp_path / "in.csv")
    out = text_job(id_column="id").run(str(tmp_path / "in.csv"))
    assert out["id"].to_list() == ["t00", "t01", "t02"]
    with pytest.raises(pipeline.ConfigError, match="base_dir= is for in-memory data"):
        text_job().run(str(tmp_path / "in.csv"), base_dir=tmp_path)


def test_the_readmes_example_runs_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's "From Python" example, run from the repository's root, captions the sample photos."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## From Python", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 12
    monkeypatch.chdir(ROOT)
    scope: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), scope)
    captions = scope["captions"]
    assert captions["id"].to_list() == pl.read_csv(SAMPLE / "images.csv")["id"].to_list()
    assert captions["status"].to_list() == ["ok"] * 10


def test_pipeline_sandbox_is_the_context_manager_and_still_the_package() -> None:
    """`with pipeline.sandbox():` serves a sandbox, and `pipeline.sandbox` still imports as the package."""
    import pipeline.sandbox as package
    from pipeline.sandbox import SandboxConfig

    assert pipeline.sandbox is package
    assert SandboxConfig().host == "127.0.0.1"
    with pipeline.sandbox(latency_ms=1) as served:
        assert isinstance(served, pipeline.Sandbox)
        assert served.config.latency_ms == 1
        assert served.base_url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{served.base_url}/_sandbox/stats", timeout=10).status_code == 200
    assert repr(served) == "Sandbox(not serving)"

"""Model rules through the CLI against the sandbox: refused up front, structured output, thinking, stops."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from jobkit import image_bytes, invoke, write_job
from pipeline.sandbox import SandboxConfig, SandboxHandle, running_sandbox

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["label", "score", "tags"],
    "properties": {
        "label": {"type": "string", "enum": ["good", "bad"]},
        "score": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}
TOOL = {"name": "rec", "input_schema": {"type": "object", "properties": {"a": {"type": "string"}}}}
FAST_POLL = {"poll_interval_s": 0.1, "max_poll_interval_s": 0.2}

# (request settings, the one line each command must stop with); every model is in the shipped table
RULES: list[tuple[str, dict[str, Any], str]] = [
    (
        "sampling",
        {"model": "claude-opus-5", "temperature": 0.0},
        "claude-opus-5 does not accept request.temperature; remove it",
    ),
    (
        "sampling-pair",
        {"model": "claude-haiku-4-5", "temperature": 0.2, "top_p": 0.9},
        "claude-haiku-4-5 takes request.temperature or request.top_p, not both; remove one",
    ),
    (
        "forced-tool",
        {"model": "claude-fable-5-1", "tools": [TOOL], "tool_choice": {"type": "tool", "name": "rec"}},
        "claude-fable-5-1 cannot force a tool (request.tool_choice); use request.output_config.format",
    ),
    (
        "thinking-type",
        {"model": "claude-fable-5-1", "thinking": {"type": "disabled"}},
        'claude-fable-5-1 does not accept request.thinking.type = "disabled"; remove request.thinking',
    ),
    (
        "thinking-manual",
        {
            "model": "claude-fable-5-1",
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "max_tokens": 4000,
        },
        'claude-fable-5-1 does not accept request.thinking.type = "enabled"; remove request.thinking',
    ),
    (
        "thinking-forbids-forcing",
        {"model": "claude-sonnet-5", "tools": [TOOL], "tool_choice": {"type": "any"}},
        "claude-sonnet-5 thinks by default, and thinking cannot be combined with a forced tool",
    ),
    (
        "max-output",
        {"model": "claude-haiku-4-5", "max_tokens": 100_000},
        "request.max_tokens = 100,000 is over the 64,000 output tokens claude-haiku-4-5 allows; lower it",
    ),
    (
        "effort",
        {"model": "claude-haiku-4-5", "output_config": {"effort": "high"}},
        "claude-haiku-4-5 does not accept request.output_config.effort; remove it",
    ),
]


def _job(
    directory: Path,
    rows: int = 3,
    name: str = "job",
    api: dict[str, Any] | None = None,
    concurrency: int = 4,
    **request: Any,
) -> Path:
    """A text job over ``rows`` rows of differing lengths (some answers outgrow a small max_tokens)."""
    texts = [f"item number {i}" + " with a much longer description" * (i % 3) for i in range(rows)]
    pl.DataFrame({"id": [str(i) for i in range(rows)], "topic": texts}).write_csv(directory / "input.csv")
    settings = {"model": "claude-haiku-4-5", "max_tokens": 200, "prompt": "Say something about {topic}."}
    return write_job(
        directory,
        name=name,
        input="input.csv",
        output="out",
        id_column="id",
        request={**settings, **request},
        api=api or {},
        limits={"concurrency": concurrency, "max_attempts": 2, "timeout_s": 10},
        batch=FAST_POLL,
    )


def _mode(mode: str) -> list[str]:
    """The run options of a mode: batch mode waits for its batches (and collects them)."""
    return ["--mode", "batch", "--wait"] if mode == "batch" else ["--mode", "realtime"]


def _results(directory: Path) -> pl.DataFrame:
    return pl.read_parquet(directory / "out" / "results.parquet").sort("row_index")


@pytest.fixture(scope="module")
def sandbox() -> Any:
    with running_sandbox() as handle:
        yield handle


@pytest.mark.parametrize("command", ["validate", "estimate", "realtime", "batch"])
@pytest.mark.parametrize(("rule", "request_settings", "line"), RULES, ids=[rule for rule, _, _ in RULES])
def test_each_rule_is_refused_up_front_with_one_line(
    tmp_path: Path,
    sandbox: SandboxHandle,
    command: str,
    rule: str,
    request_settings: dict[str, Any],
    line: str,
) -> None:
    """validate, estimate and both run modes exit 2 with the one line, before any Messages request."""
    job = _job(tmp_path, **request_settings)
    before = sandbox.stats()
    args = {
        "validate": ["validate", str(job)],
        "estimate": ["estimate", str(job)],
        "realtime": ["run", str(job), "--base-url", sandbox.base_url],
        "batch": ["run", str(job), "--mode", "batch", "--base-url", sandbox.base_url],
    }[command]
    result = invoke(args)
    assert result.exit_code == 2, result.output
    (message,) = result.output.strip().splitlines()
    assert message.startswith(f"pipeline: error: {job}: {line}"), message
    after = sandbox.stats()
    assert after["requests_total"] == before["requests_total"]
    assert after["batches"]["created"] == before["batches"]["created"]
    assert not (tmp_path / "out" / "results.parquet").exists()


def test_an_unknown_model_is_refused_where_v1_models_can_say_so(
    tmp_path: Path, sandbox: SandboxHandle
) -> None:
    """run asks GET /v1/models/{id}: a 404 stops it, naming near ids; offline commands cannot know."""
    job = _job(tmp_path, model="claude-opsu-5")
    before = sandbox.stats()["requests_total"]
    for mode in ("realtime", "batch"):
        result = invoke(["run", str(job), "--mode", mode, "--base-url", sandbox.base_url])
        assert result.exit_code == 2
        assert "request.model: 'claude-opsu-5' is not a model at" in result.output
        assert "did you mean 'claude-opus-5'" in result.output
    assert sandbox.stats()["requests_total"] == before
    validated = invoke(["validate", str(job)])
    assert validated.exit_code == 0, validated.output
    assert "does not know 'claude-opsu-5': no model rule is checked" in validated.output


def test_model_facts_come_from_v1_models_then_its_cache(tmp_path: Path) -> None:
    """The first run reads GET /v1/models and caches it; the next run uses the cache; each says so."""
    job = _job(tmp_path)
    with running_sandbox() as sandbox:
        first = invoke(["run", str(job), "--base-url", sandbox.base_url, "--json"])
        assert first.exit_code == 0, first.output
        assert sandbox.stats()["models_total"] == 1
        summary = json.loads(first.stdout.strip().splitlines()[-1])
        assert summary["model_facts"] == f"GET /v1/models/claude-haiku-4-5 at {sandbox.base_url}"
        again = invoke(["run", str(job), "--base-url", sandbox.base_url, "--fresh"])
        assert again.exit_code == 0, again.output
        assert sandbox.stats()["models_total"] == 1  # within a day: the cached answer
        assert f"model rules: GET /v1/models/claude-haiku-4-5 at {sandbox.base_url}, cached " in again.output
    cache = json.loads((tmp_path / "out" / ".models.json").read_text())
    assert [entry["info"]["id"] for entry in cache.values()] == ["claude-haiku-4-5-20251001"]
    assert "sk-" not in (tmp_path / "out" / ".models.json").read_text()
    validated = invoke(["validate", str(job)])
    assert "model rules: the shipped model table (read " in validated.output


def _structured(directory: Path, model: str, mode: str, sandbox: SandboxHandle) -> pl.DataFrame:
    directory.mkdir()
    job = _job(directory, rows=4, model=model, max_tokens=500, output_schema=SCHEMA)
    result = invoke(["run", str(job), *_mode(mode), "--base-url", sandbox.base_url])
    assert result.exit_code == 0, result.output
    return _results(directory)


@pytest.mark.parametrize("mode", ["realtime", "batch"])
def test_structured_output_gives_the_same_typed_columns_by_format_or_by_tool(
    tmp_path: Path, sandbox: SandboxHandle, mode: str
) -> None:
    """output_schema goes as output_config.format (Sonnet 5.5) or a forced tool (Haiku 3.5): same columns."""
    native = _structured(tmp_path / "native", "claude-sonnet-5-5", mode, sandbox)
    forced = _structured(tmp_path / "forced", "claude-3-5-haiku", mode, sandbox)
    columns = ["out_label", "out_score", "out_tags"]
    assert native.select(columns).schema == forced.select(columns).schema
    assert native.select(columns).schema == {
        "out_label": pl.String,
        "out_score": pl.Int64,
        "out_tags": pl.List(pl.String),
    }
    for frame in (native, forced):
        assert set(frame["status"]) == {"ok"}
        assert frame["out_label"].is_in(["good", "bad"]).all()
        assert frame["out_tags"].null_count() == 0
    # how it travelled: the JSON text on one model, the answer tool's input on the other
    assert all(json.loads(text)["label"] in ("good", "bad") for text in native["response_text"])
    assert native["tool_calls"].list.len().to_list() == [0] * 4
    assert forced["tool_calls"].list.first().struct.field("name").to_list() == ["structured_output"] * 4


def test_explicit_output_config_format_is_refused_when_its_schema_breaks_the_subset(tmp_path: Path) -> None:
    """An output_config.format schema with an open object is one line up front, naming path and fix."""
    fmt = {"type": "json_schema", "schema": SCHEMA}
    job = _job(tmp_path, model="claude-sonnet-5-5", output_config={"format": fmt})
    result = invoke(["validate", str(job)])
    assert result.exit_code == 2
    assert (
        "request.output_config.format.schema at $: an object without additionalProperties = false"
        in result.output
    )


def test_thinking_text_lands_in_its_column(tmp_path: Path, sandbox: SandboxHandle) -> None:
    """Summarized thinking fills the thinking column; omitted display is an empty text; none is null."""
    shown, omitted, off = tmp_path / "shown", tmp_path / "omitted", tmp_path / "off"
    for directory in (shown, omitted, off):
        directory.mkdir()
    thinking = {"type": "adaptive", "display": "summarized"}
    jobs = [
        (_job(shown, model="claude-haiku-5-5", max_tokens=600, thinking=thinking), shown),
        (_job(omitted, model="claude-haiku-5-5", max_tokens=600), omitted),  # its default display: omitted
        (_job(off, model="claude-haiku-4-5"), off),
    ]
    for job, _ in jobs:
        result = invoke(["run", str(job), "--base-url", sandbox.base_url])
        assert result.exit_code == 0, result.output
    assert all(text.startswith("[sandbox] thinking about ") for text in _results(shown)["thinking"])
    assert _results(omitted)["thinking"].to_list() == ["", "", ""]
    assert _results(off)["thinking"].to_list() == [None, None, None]
    # thinking is billed as output: the same answer costs more output tokens with it
    assert (_results(shown)["output_tokens"] > _results(off)["output_tokens"]).all()


@pytest.mark.parametrize("mode", ["realtime", "batch"])
def test_refused_and_truncated_rows_are_errors_of_their_type(tmp_path: Path, mode: str) -> None:
    """Refused and cut-short answers are errors of that type, with their text and tokens kept."""
    job = _job(tmp_path, rows=12)
    config = SandboxConfig(seed=3, refusal_rate=0.3, truncation_rate=0.3)
    with running_sandbox(config) as sandbox:
        result = invoke(["run", str(job), *_mode(mode), "--base-url", sandbox.base_url, "--json"])
    assert result.exit_code == 1, result.output
    frame = _results(tmp_path)
    kinds = dict(zip(frame["row_id"], frame["error_type"], strict=True))
    refused = frame.filter(pl.col("error_type") == "refusal")
    cut = frame.filter(pl.col("error_type") == "max_tokens")
    assert refused.height
    assert cut.height
    assert set(frame["error_type"].drop_nulls()) == {"refusal", "max_tokens"}
    assert (refused["status"] == "error").all()
    assert (cut["status"] == "error").all()
    assert refused["refusal_category"].to_list() == ["cyber"] * refused.height
    assert (
        refused["error_message"]
        .str.contains("the model declined to answer \\(refusal, category cyber\\)")
        .all()
    )
    assert (refused["output_tokens"] > 0).all()
    assert refused["response_text"].str.len_chars().min() > 0
    assert cut["stop_reason"].to_list() == ["max_tokens"] * cut.height
    assert (cut["output_tokens"] == 200).all()  # a cut answer used all of max_tokens, and is billed so
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["errors_by_type"] == {"max_tokens": cut.height, "refusal": refused.height}
    assert len(kinds) == 12


def test_raising_max_tokens_resends_exactly_the_truncated_rows(tmp_path: Path) -> None:
    """Rows cut off at max_tokens are sent again once it is raised; completed rows never are."""
    job = _job(tmp_path, rows=9, max_tokens=20)
    with running_sandbox() as sandbox:
        first = invoke(["run", str(job), "--base-url", sandbox.base_url])
        assert first.exit_code == 1, first.output
        frame = _results(tmp_path)
        truncated = set(frame.filter(pl.col("error_type") == "max_tokens")["row_id"])
        completed = set(frame.filter(pl.col("status") == "ok")["row_id"])
        assert truncated
        assert completed
        assert frame["max_tokens"].to_list() == [20] * 9
        same = invoke(["run", str(job), "--base-url", sandbox.base_url])  # unchanged: nothing could change
        assert same.exit_code == 0, same.output
        assert sandbox.stats()["requests_total"] == 9
        raised = _job(tmp_path, rows=9, max_tokens=400)
        second = invoke(["run", str(raised), "--base-url", sandbox.base_url])
        assert second.exit_code == 0, second.output
        assert sandbox.stats()["requests_total"] == 9 + len(truncated)
        again = invoke(["run", str(raised), "--base-url", sandbox.base_url])
        assert again.exit_code == 0
        assert sandbox.stats()["requests_total"] == 9 + len(truncated)
    after = _results(tmp_path)
    assert set(after["status"]) == {"ok"}
    sent_with = dict(zip(after["row_id"], after["max_tokens"], strict=True))
    assert {row for row, value in sent_with.items() if value == 400} == truncated
    assert {row for row, value in sent_with.items() if value == 20} == completed


def test_refused_rows_are_sent_again_only_when_asked(tmp_path: Path) -> None:
    """A refusal is not retried by default; --retry-errors refusal sends exactly those rows again."""
    job = _job(tmp_path, rows=8)
    with running_sandbox(SandboxConfig(seed=1, refusal_rate=0.5)) as sandbox:
        first = invoke(["run", str(job), "--base-url", sandbox.base_url])
        refused = _results(tmp_path).filter(pl.col("error_type") == "refusal").height
        assert first.exit_code == 1
        assert refused
        plain = invoke(["run", str(job), "--base-url", sandbox.base_url])
        assert plain.exit_code == 0, plain.output
        assert sandbox.stats()["requests_total"] == 8
        asked = invoke(["run", str(job), "--base-url", sandbox.base_url, "--retry-errors", "refusal"])
        assert asked.exit_code in (0, 1), asked.output
        assert sandbox.stats()["requests_total"] == 8 + refused


def _digest(body: dict[str, Any]) -> str:
    """The sandbox's request digest (sha256 of the canonical JSON without stream), computed independently."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def test_few_shot_examples_reach_the_request_in_order_and_are_cached(tmp_path: Path) -> None:
    """Examples go before each row's message, the breakpoint after them, and later rows read the cache."""
    long_answer = "A careful, structured answer. " * 900  # well past Haiku 4.5's 4,096-token cache minimum
    examples = [
        {"role": "user", "text": "Say something about apples."},
        {"role": "assistant", "text": long_answer},
        {"role": "user", "text": "Say something about pears."},
        {"role": "assistant", "text": "Pears are sweet."},
    ]
    # one at a time: a prefix is cached once its first answer has started, so rows sent together all write
    job = _job(tmp_path, rows=3, concurrency=1, examples=examples, cache=True, system="Be brief.")
    with running_sandbox() as sandbox:
        result = invoke(["run", str(job), "--base-url", sandbox.base_url])
        assert result.exit_code == 0, result.output
        seen = set(sandbox.stats()["ok_by_request"])
    topics = pl.read_csv(tmp_path / "input.csv")["topic"].to_list()
    for topic in topics:
        turns = [
            {"role": turn["role"], "content": [{"type": "text", "text": turn["text"]}]} for turn in examples
        ]
        turns[-1]["content"][-1]["cache_control"] = {"type": "ephemeral"}
        turns.append({"role": "user", "content": [{"type": "text", "text": f"Say something about {topic}."}]})
        expected = {"model": "claude-haiku-4-5", "max_tokens": 200, "messages": turns, "system": "Be brief."}
        assert _digest(expected) in seen, topic
    frame = _results(tmp_path)
    assert sorted(frame["cache_creation_input_tokens"].to_list())[-1] > 4096
    assert (frame["cache_read_input_tokens"] > 4096).sum() == 2  # written once, read by the other rows


def test_examples_with_images_are_sent_and_counted_once_by_estimate(tmp_path: Path) -> None:
    """An example's image (next to the job file) is in every request; estimate counts examples per request."""
    (tmp_path / "shots").mkdir()
    (tmp_path / "shots" / "cat.png").write_bytes(image_bytes("PNG", size=(300, 200)))
    examples = [
        {"role": "user", "text": "What is this?", "images": ["shots/cat.png"]},
        {"role": "assistant", "text": "A red square."},
    ]
    job = _job(tmp_path, rows=2, examples=examples)
    with running_sandbox() as sandbox:
        result = invoke(["run", str(job), "--base-url", sandbox.base_url])
    assert result.exit_code == 0, result.output
    assert all("(1 image)" in text for text in _results(tmp_path)["response_text"])
    estimate = json.loads(
        invoke(["estimate", str(job), "--output", str(tmp_path / "other"), "--json"]).stdout
    )
    per_request = estimate["input_tokens"]["examples_per_request"]
    assert per_request >= 300 * 200 // 750
    assert (
        estimate["input_tokens"]["system_and_tools"] >= 2 * per_request
    )  # in each of the 2 requests' prefix
    missing = _job(tmp_path, rows=2, examples=[{**examples[0], "images": ["shots/dog.png"]}, examples[1]])
    refused = invoke(["validate", str(missing)])
    assert refused.exit_code == 2
    assert "request.examples.0.images: " in refused.output
    assert "dog.png' is not a file" in refused.output


def test_the_image_edge_follows_the_model_tier_unless_set(tmp_path: Path) -> None:
    """Images shrink to 2576 px for Claude 4.7 and later, 1568 px before, and to image_max_edge when set."""
    (tmp_path / "big.png").write_bytes(image_bytes("PNG", size=(3000, 1500)))
    pl.DataFrame({"id": ["a"], "img": ["big.png"]}).write_csv(tmp_path / "in.csv")
    edges = {}
    cases = [
        ("old", {"model": "claude-haiku-4-5"}),
        ("new", {"model": "claude-opus-5"}),
        ("set", {"model": "claude-opus-5", "image_max_edge": 1000}),
    ]
    for name, extra in cases:
        request = {"max_tokens": 20, "prompt": "Describe.", "images": ["img"], **extra}
        job = write_job(
            tmp_path, name=name, input="in.csv", output=f"out-{name}", id_column="id", request=request
        )
        estimate = json.loads(invoke(["estimate", str(job), "--json"]).stdout)
        edges[name] = (estimate["images"]["max_edge"], estimate["images"]["largest"])
    assert edges == {"old": (1568, [1568, 784]), "new": (2576, [2576, 1288]), "set": (1000, [1000, 500])}


def test_extra_body_fields_and_beta_headers_reach_the_api(tmp_path: Path) -> None:
    """[request.extra] joins the body, [api] beta is sent as anthropic-beta (fallbacks need it)."""
    extra = {"fallbacks": "default", "metadata": {"user_id": "batch-42"}}
    plain = tmp_path / "plain"
    beta = tmp_path / "beta"
    plain.mkdir()
    beta.mkdir()
    with running_sandbox() as sandbox:
        job = _job(plain, rows=2, model="claude-opus-5", extra=extra)
        without = invoke(["run", str(job), "--base-url", sandbox.base_url])
        assert without.exit_code == 1
        assert set(_results(plain)["error_type"]) == {"invalid_request_error"}
        assert "fallbacks: Extra inputs are not permitted" in _results(plain)["error_message"][0]
        job = _job(
            beta,
            rows=2,
            model="claude-opus-5",
            extra=extra,
            api={"beta": ["server-side-fallback-2026-07-01"]},
        )
        with_beta = invoke(["run", str(job), "--base-url", sandbox.base_url])
        assert with_beta.exit_code == 0, with_beta.output
    twice = _job(tmp_path, extra={"temperature": 0.5})
    refused = invoke(["validate", str(twice)])
    assert refused.exit_code == 2
    assert (
        "request.extra: extra.temperature: the job sets temperature through request.temperature"
        in refused.output
    )


def test_results_of_the_previous_version_stay_valid_through_a_raised_max_tokens(tmp_path: Path) -> None:
    """Output of the previous version (old columns and fingerprint) is not paid again, at any max_tokens."""
    from datetime import UTC, datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.job.spec import load_job
    from pipeline.payloads.prepare import open_job_input
    from pipeline.records import Reply, Result, Usage
    from pipeline.results.schema import output_schema, result_record
    from pipeline.rows.reader import iter_rows

    job = _job(tmp_path, rows=4, max_tokens=50)
    spec = load_job(job)
    legacy = spec.request.legacy_fingerprint()
    assert legacy is not None
    table = open_job_input(spec, spec.input)
    schema = output_schema(table.arrow_schema)
    old = pa.schema([f for f in schema if f.name not in ("thinking", "refusal_category", "max_tokens")])
    records = []
    for sourced in iter_rows(table):
        row = sourced.row  # its cells' hash is the one the previous version wrote
        reply = Reply("claude-haiku-4-5", f"old answer {row.index}", (), "end_turn", Usage(9, 4), "m", "r")
        result = Result(row, "ok", datetime.now(UTC), legacy, reply=reply, attempts=1)
        records.append({k: v for k, v in result_record(result, schema).items() if k in old.names})
    (tmp_path / "out").mkdir()
    pq.write_table(pa.Table.from_pylist(records, schema=old), tmp_path / "out" / "results.parquet")
    with running_sandbox() as sandbox:
        same = invoke(["run", str(job), "--base-url", sandbox.base_url])
        assert same.exit_code == 0, same.output
        raised = invoke(["run", str(_job(tmp_path, rows=4, max_tokens=500)), "--base-url", sandbox.base_url])
        assert raised.exit_code == 0, raised.output
        assert sandbox.stats()["requests_total"] == 0
    frame = _results(tmp_path)
    assert frame["response_text"].to_list() == [f"old answer {i}" for i in range(4)]
    assert (
        frame["max_tokens"].to_list() == [50] * 4
    )  # what they were sent with, learnt from the old fingerprint
    assert frame["request_fingerprint"].n_unique() == 1
    assert frame["request_fingerprint"][0] == spec.request.fingerprint()

"""Job-file parsing: the shipped jobs load, unknown keys are named, paths resolve next to the job."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobkit import toml_value
from pipeline.errors import SpecError
from pipeline.job.request import template_fields
from pipeline.job.spec import JobSpec, load_job, parse_job

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = {
    "name": "t",
    "input": "in.csv",
    "output": "out",
    "request": {"model": "m", "max_tokens": 10, "prompt": "hi"},
}


def _with(**request: object) -> dict[str, object]:
    return {**MINIMAL, "request": {**MINIMAL["request"], **request}}  # type: ignore[dict-item]


@pytest.mark.parametrize("name", ["caption_images", "annotate_products", "classify_reviews"])
def test_shipped_jobs_load(name: str) -> None:
    """Every job in jobs/ parses, and its paths resolve relative to the job file."""
    spec = load_job(ROOT / "jobs" / f"{name}.toml")
    assert Path(spec.input).resolve().exists()
    assert Path(spec.output).resolve().parent == (ROOT / "out")


def test_caption_job_matches_issue_fields() -> None:
    """The captioning job keeps every field the issue wrote, with its values."""
    spec = load_job(ROOT / "jobs" / "caption_images.toml")
    assert spec.id_column == "id"
    assert spec.request.images == ["image_path"]
    assert spec.api.auth == "x-api-key"
    assert spec.limits.requests_per_minute == 50
    assert spec.limits.max_attempts == 8


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (_with(temperatur=0.1), "unknown key 'request.temperatur'"),
        ({**MINIMAL, "extra": 1}, "unknown key 'extra'"),
        ({**MINIMAL, "limits": {"rpm": 5}}, "unknown key 'limits.rpm'"),
        ({k: v for k, v in MINIMAL.items() if k != "output"}, "missing required key 'output'"),
        (_with(temperature=3), "request.temperature"),
        (_with(stop_sequences=["\n"]), "non-whitespace"),
        (_with(prompt="hi {name"), "malformed"),
        (_with(prompt="hi {}"), "without a column name"),
        (_with(prompt="hi {a.b}"), "plain column name"),
        (_with(tool_choice={"type": "tool", "name": "x"}), "no [[request.tools]]"),
        (
            _with(
                tools=[{"name": "t1", "input_schema": {"type": "object"}}],
                tool_choice={"type": "tool", "name": "x"},
            ),
            "not a declared tool",
        ),
        (_with(tools=[{"name": "bad name", "input_schema": {"type": "object"}}]), "must match"),
        (_with(tools=[{"name": "t", "input_schema": {"type": "array"}}]), 'type = "object"'),
        ({**MINIMAL, "api": {"auth": "basic"}}, "api.auth"),
        ({**MINIMAL, "api": {"base_url": "ftp://x"}}, "http://"),
    ],
)
def test_bad_job_is_one_line_naming_the_key(raw: dict[str, object], expected: str) -> None:
    """Each invalid job gives one SpecError line that names the file and what is wrong."""
    with pytest.raises(SpecError) as info:
        parse_job(raw, Path("jobs/x.toml"))
    message = str(info.value)
    assert message.startswith("jobs/x.toml: ")
    assert expected in message
    assert "\n" not in message


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    """Broken TOML and a missing job file are SpecErrors, not tracebacks."""
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(SpecError, match="invalid TOML"):
        load_job(bad)
    with pytest.raises(SpecError, match="not found"):
        load_job(tmp_path / "nope.toml")


def test_streaming_forced_above_non_streaming_cap() -> None:
    """A max_tokens above what a non-streaming request may take turns streaming on."""
    small = parse_job(_with(), Path("j.toml")).request
    # the official SDK refuses a non-streaming request above 21,333 max_tokens (8,192 on Opus 4/4.1)
    big = parse_job(_with(max_tokens=21_334, stream=False), Path("j.toml")).request
    asked = parse_job(_with(stream=True), Path("j.toml")).request
    opus_4 = parse_job(_with(model="claude-opus-4-1-20250805", max_tokens=10_000), Path("j.toml")).request
    assert (small.streaming, big.streaming, asked.streaming, opus_4.streaming) == (False, True, True, True)


def test_fingerprint_tracks_answer_shaping_settings_only() -> None:
    """Prompt or model changes change the fingerprint; limits and streaming do not."""
    base = parse_job(_with(), Path("j.toml"))
    assert (
        parse_job(_with(prompt="other"), Path("j.toml")).request.fingerprint() != base.request.fingerprint()
    )
    assert parse_job(_with(model="m2"), Path("j.toml")).request.fingerprint() != base.request.fingerprint()
    assert parse_job(_with(stream=True), Path("j.toml")).request.fingerprint() == base.request.fingerprint()
    limited = parse_job({**MINIMAL, "limits": {"concurrency": 2}}, Path("j.toml"))
    assert limited.request.fingerprint() == base.request.fingerprint()


def test_template_fields_in_order_without_repeats() -> None:
    """Placeholders come back once each, in order; doubled braces are literal."""
    assert template_fields("{a} and {b:>3} and {a} {{literal}}") == ["a", "b"]


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=8),
        st.recursive(st.integers() | st.text(max_size=5), st.lists, max_leaves=4),
        max_size=4,
    )
)
def test_fuzzed_job_tables_never_crash(raw: dict[str, object]) -> None:
    """Any decoded TOML table either parses or raises SpecError, never anything else."""
    try:
        parse_job(raw, Path("f.toml"))
    except SpecError as exc:
        message = str(exc)
    else:
        return
    assert message.startswith("f.toml: ")


def test_toml_of_shipped_job_round_trips_through_parse() -> None:
    """parse_job on the decoded shipped TOML equals load_job on the file."""
    path = ROOT / "jobs" / "annotate_products.toml"
    assert parse_job(tomllib.loads(path.read_text()), path) == load_job(path)


# real key names (so some fuzzed jobs get deep into validation) mixed with arbitrary ones
KEY_NAMES = "name input output id_column request api limits model max_tokens prompt system images"
KEY_NAMES += " image_root max_input_tokens tools tool_choice stream auth base_url concurrency"
KEYS = st.sampled_from(KEY_NAMES.split()) | st.text(max_size=6)
TOML_VALUES = st.recursive(
    st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=6,
)


def _toml_value(value: object) -> str:
    """A TOML literal; strings keep non-ASCII as is (JSON's \\ud83d surrogate escapes are not TOML)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_value(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return toml_value(value)


def _toml(table: dict[str, object]) -> str:
    """TOML text for a table of plain values: scalars and arrays first, then one [section] per sub-table."""
    lines = [f"{_toml_value(k)} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for key, value in table.items():
        if isinstance(value, dict):
            lines.append(f"[{_toml_value(key)}]")
            lines.extend(f"{_toml_value(k)} = {_toml_value(v)}" for k, v in value.items())
    return "\n".join(lines) + "\n"


def _load_or_spec_error(path: Path) -> None:
    try:
        spec = load_job(path)
    except SpecError as exc:
        message = str(exc)
        assert message.startswith(f"{path}: ")
        assert "\n" not in message, message
    else:
        assert isinstance(spec, JobSpec)


@settings(max_examples=200, deadline=None)
@given(st.text().map(str.encode) | st.binary())
def test_fuzzed_job_bytes_load_or_are_a_spec_error(
    tmp_path_factory: pytest.TempPathFactory, content: bytes
) -> None:
    """Any bytes in a job file (text or not, UTF-8 or not) load or are one SpecError line, nothing else."""
    path = tmp_path_factory.mktemp("fuzz") / "job.toml"
    path.write_bytes(content)
    _load_or_spec_error(path)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(KEYS, TOML_VALUES, max_size=4),
    st.dictionaries(KEYS, TOML_VALUES, max_size=4),
    st.just(b"") | st.binary(max_size=8),
)
def test_fuzzed_toml_job_loads_or_is_a_spec_error(
    tmp_path_factory: pytest.TempPathFactory,
    top: dict[str, object],
    request: dict[str, object],
    raw: bytes,
) -> None:
    """A near-valid job with fuzzed keys and values (and stray bytes) loads or is one SpecError line."""
    table: dict[str, object] = {**MINIMAL, **top}
    table["request"] = {**MINIMAL["request"], **request}  # type: ignore[dict-item]
    path = tmp_path_factory.mktemp("fuzz") / "job.toml"
    path.write_bytes(_toml(table).encode("utf-8", errors="surrogatepass") + raw)
    _load_or_spec_error(path)


def test_new_request_keys_resolve_and_stay_out_of_the_fingerprint(tmp_path: Path) -> None:
    """image_root resolves next to the job and must exist; it and max_input_tokens change no fingerprint."""
    (tmp_path / "pics").mkdir()
    job = tmp_path / "j.toml"
    spec = parse_job(_with(image_root="pics", max_input_tokens=1000), job)
    assert spec.request.image_root == str(tmp_path / "pics")
    assert spec.request.fingerprint() == parse_job(_with(), job).request.fingerprint()
    with pytest.raises(SpecError, match=r"request\.image_root: .* is not a directory"):
        parse_job(_with(image_root="nope"), job)
    with pytest.raises(SpecError, match=r"request\.max_input_tokens"):
        parse_job(_with(max_input_tokens=0), job)


FORCING_TOOL = {
    "tools": [{"name": "t", "input_schema": {"type": "object"}}],
    "tool_choice": {"type": "tool", "name": "t"},
}
FORMAT = {"type": "json_schema", "schema": {}}


@pytest.mark.parametrize(
    ("request_settings", "expected"),
    [
        ({"thinking": {"type": "enabled"}}, 'thinking type "enabled" needs budget_tokens'),
        ({"thinking": {"type": "enabled", "budget_tokens": 500}}, "must be at least 1024"),
        ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, "must be below max_tokens (10)"),
        ({"thinking": {"type": "disabled", "display": "omitted"}}, 'display applies to "adaptive"'),
        ({"thinking": {"type": "auto"}}, "request.thinking.type"),
        ({"output_config": {"effort": "extreme"}}, "request.output_config.effort"),
        ({"output_config": {"format": {"type": "json_schema"}}}, "'request.output_config.format.schema'"),
        ({"output_config": {"format": {**FORMAT, "schema": {"type": 5}}}}, "not a valid JSON Schema"),
        ({"output_schema": {"type": "string"}}, 'output_schema must have type = "object"'),
        ({"output_schema": {"type": "object"}, **FORCING_TOOL}, "remove the forcing tool_choice"),
        (
            {"output_schema": {"type": "object"}, "output_config": {"format": FORMAT}},
            "set output_schema or output_config.format, not both",
        ),
        (
            {"extra": {"max_tokens": 5}},
            "extra.max_tokens: the job sets max_tokens through request.max_tokens",
        ),
        ({"extra": {"messages": []}}, "through request.prompt, request.images and request.examples"),
        ({"examples": [{"role": "assistant", "text": "x"}]}, "examples.0.role must be 'user'"),
        ({"examples": [{"role": "user", "text": "x"}]}, "examples must end with an assistant turn"),
        ({"examples": [{"role": "user", "text": " "}, {"role": "assistant", "text": "y"}]}, "non-whitespace"),
    ],
)
def test_new_request_keys_are_checked_at_load(request_settings: dict[str, object], expected: str) -> None:
    """thinking, output_config, output_schema, extra and examples are refused at load when malformed."""
    with pytest.raises(SpecError) as caught:
        parse_job(_with(**request_settings), Path("j.toml"))
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_beta_names_and_example_images_resolve_at_load(tmp_path: Path) -> None:
    """[api] beta is a list of names; example images resolve next to the job file and must exist."""
    (tmp_path / "shot.png").write_bytes(b"png")
    turns = [{"role": "user", "text": "q", "images": ["shot.png"]}, {"role": "assistant", "text": "a"}]
    spec = parse_job(
        {**_with(examples=turns), "api": {"beta": ["files-api-2025-04-14"]}}, tmp_path / "j.toml"
    )
    assert spec.request.examples[0].images == [str(tmp_path / "shot.png")]
    assert spec.api.beta == ["files-api-2025-04-14"]
    with pytest.raises(SpecError, match=r"api\.beta"):
        parse_job({**_with(), "api": {"beta": ["a, b"]}}, tmp_path / "j.toml")


def test_results_of_earlier_versions_keep_their_fingerprint_and_max_tokens_leaves_it() -> None:
    """The previous release's fingerprint is still recognised; max_tokens is out of the new one."""
    caption = _with(
        model="claude-haiku-4-5",
        max_tokens=300,
        prompt="Describe {subject}.",
        system="Be brief.",
        temperature=0.0,
        images=["image_path"],
    )
    request = parse_job(caption, Path("j.toml")).request
    # what the previous release wrote for this request (its fingerprint hashed max_tokens and 1568 px)
    assert request.legacy_fingerprint() == "d2d6e614a000895a"
    raised = parse_job(
        {**caption, "request": {**caption["request"], "max_tokens": 600}}, Path("j.toml")
    ).request  # type: ignore[dict-item]
    assert raised.fingerprint() == request.fingerprint()
    assert raised.legacy_fingerprint() != request.legacy_fingerprint()
    thinking = parse_job(_with(thinking={"type": "adaptive"}), Path("j.toml")).request
    assert thinking.legacy_fingerprint() is None  # earlier versions could not have answered it
    assert thinking.fingerprint() != parse_job(_with(), Path("j.toml")).request.fingerprint()

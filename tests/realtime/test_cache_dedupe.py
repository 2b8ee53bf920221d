"""Prompt caching and dedupe through the real CLI against the sandbox: what is sent, recorded and priced."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from jobkit import invoke, text_job, write_job
from pipeline.catalog.prices import price_for
from pipeline.catalog.providers import PRESETS
from pipeline.job.request import NOT_FINGERPRINTED, RequestSpec
from pipeline.job.spec import load_job
from pipeline.payloads.dedupe import Dedupe, shared_result
from pipeline.records import Reply, Result, Row, Usage
from pipeline.sandbox import SandboxConfig, running_sandbox

# about 4,800 sandbox tokens: over Haiku 4.5's 4,096-token minimum cacheable prefix (reference §10)
LONG_SYSTEM = "You are careful and brief. " * 800


def _run(job: Path, *args: str) -> dict[str, Any]:
    result = invoke(["run", str(job), *args, "--json"])
    assert result.exit_code in (0, 1), result.output
    summary: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    summary["stderr"] = result.stderr
    return summary


def _dupes_job(tmp_path: Path, **request: Any) -> Path:
    """Six rows, three distinct prompts: rows 3 and 4 repeat row 1, row 5 repeats row 2."""
    rows = ["1,cats", "2,dogs", "3,cats", "4,cats", "5,dogs", "6,fish"]
    (tmp_path / "in.csv").write_text("id,topic\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return write_job(
        tmp_path,
        name="dupes",
        input="in.csv",
        output="out",
        id_column="id",
        request={"model": "claude-haiku-4-5", "max_tokens": 40, "prompt": "About {topic}.", **request},
        limits={"concurrency": 2},
    )


def test_cache_marks_the_prefix_and_records_writes_and_reads(tmp_path: Path) -> None:
    """cache = true: the first request writes the prefix, later ones read it, and cost prices both."""
    job = text_job(tmp_path, rows=5, system=LONG_SYSTEM, cache=True)
    # one request at a time: the cache exists once the first answer has started (reference §10)
    job.write_text(job.read_text(encoding="utf-8").replace("concurrency = 4", "concurrency = 1"))
    summary = _run(job, "--sandbox")
    frame = pl.read_parquet(tmp_path / "out" / "results.parquet").sort("row_index")
    writes, reads = frame["cache_creation_input_tokens"].to_list(), frame["cache_read_input_tokens"].to_list()
    assert writes[0] > 4096
    assert writes[1:] == [0, 0, 0, 0]
    assert reads == [0] + [writes[0]] * 4
    tokens = summary["tokens"]
    assert tokens["cache_creation_input"] == writes[0]
    assert tokens["cache_read_input"] == 4 * writes[0]
    price = price_for("claude-haiku-4-5")
    assert price is not None
    expected = (tokens["input"] * 1.0 + writes[0] * 1.25 + 4 * writes[0] * 0.1 + tokens["output"] * 5.0) / 1e6
    assert summary["cost_usd"] == pytest.approx(expected, rel=1e-6)
    status = invoke(["status", str(tmp_path / "out"), "--json"])
    assert json.loads(status.stdout)["cost_usd"] == pytest.approx(expected, rel=1e-6)
    assert "cost: $" in invoke(["status", str(tmp_path / "out")]).stdout


def test_a_prefix_below_the_minimum_is_not_cached_and_the_run_says_so(tmp_path: Path) -> None:
    """A short prefix marked for caching is never cached (both columns 0) and a warning says why."""
    job = text_job(tmp_path, rows=3, system="Be brief.", cache=True)
    summary = _run(job, "--sandbox")
    assert "shorter than the 4,096 tokens claude-haiku-4-5 caches at least" in summary["stderr"]
    frame = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert frame["cache_creation_input_tokens"].sum() == 0
    assert frame["cache_read_input_tokens"].sum() == 0


def test_cache_with_nothing_to_cache_is_refused_up_front(tmp_path: Path) -> None:
    """cache = true without a system prompt or tools is a one-line job error, exit 2."""
    job = text_job(tmp_path, rows=2, cache=True)
    result = invoke(["run", str(job), "--sandbox"], key=None)
    assert result.exit_code == 2
    assert "request.cache: nothing to cache" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("provider", sorted(name for name, p in PRESETS.items() if not p.prompt_caching))
def test_cache_is_refused_for_providers_without_caching(tmp_path: Path, provider: str) -> None:
    """A provider preset without prompt caching refuses cache = true when the job loads."""
    job = text_job(tmp_path, rows=2, system="Be brief.", cache=True)
    job.write_text(
        job.read_text(encoding="utf-8")
        + f'\n[api]\nprovider = "{provider}"\nbase_url = "http://127.0.0.1:9"\n',
        encoding="utf-8",
    )
    result = invoke(["validate", str(job)], key=None)
    assert result.exit_code == 2
    assert "does not support prompt caching" in result.stderr


def test_identical_requests_are_sent_once_and_every_row_gets_the_answer(tmp_path: Path) -> None:
    """At temperature 0 duplicates share one request; followers name their leader and carry no usage."""
    job = _dupes_job(tmp_path, temperature=0.0)
    with running_sandbox() as sandbox:
        summary = _run(job, "--base-url", sandbox.base_url)
        assert sandbox.stats()["answers_ok"] == 3
    assert summary["rows"]["ok"] == 6
    assert summary["rows_shared"] == 3
    assert summary["requests_sent"] == 3
    frame = pl.read_parquet(tmp_path / "out" / "results.parquet").sort("row_index")
    shared = dict(zip(frame["row_id"], frame["shared_request_with"], strict=True))
    assert shared == {"1": None, "2": None, "3": "1", "4": "1", "5": "2", "6": None}
    texts = dict(zip(frame["row_id"], frame["response_text"], strict=True))
    assert texts["3"] == texts["4"] == texts["1"]
    assert texts["5"] == texts["2"]
    assert len({texts["1"], texts["2"], texts["6"]}) == 3
    followers = frame.filter(pl.col("shared_request_with").is_not_null())
    assert followers["input_tokens"].sum() == 0
    assert followers["attempts"].sum() == 0
    assert frame["input_tokens"].sum() == summary["tokens"]["input"]
    assert "3 rows answered by an identical request" in summary["stderr"]


def test_dedupe_is_off_without_temperature_zero_or_when_turned_off(tmp_path: Path) -> None:
    """Without temperature 0, or with dedupe = false, every row sends its own request."""
    for request in ({}, {"temperature": 0.0, "dedupe": False}):
        job = _dupes_job(tmp_path, **request)
        with running_sandbox() as sandbox:
            summary = _run(job, "--base-url", sandbox.base_url, "--fresh")
            assert sandbox.stats()["answers_ok"] == 6
        assert summary["rows_shared"] == 0


def test_dedupe_can_be_turned_on_at_any_temperature(tmp_path: Path) -> None:
    """dedupe = true shares requests even when sampling is not deterministic."""
    job = _dupes_job(tmp_path, temperature=0.7, dedupe=True)
    with running_sandbox() as sandbox:
        _run(job, "--base-url", sandbox.base_url)
        assert sandbox.stats()["answers_ok"] == 3


def test_a_follower_gets_its_leaders_error(tmp_path: Path) -> None:
    """When the shared request fails, every row that shared it records the same error."""
    job = _dupes_job(tmp_path, temperature=0.0, prompt="About {topic} REJECT.")
    with running_sandbox(SandboxConfig(reject_marker="REJECT")) as sandbox:
        summary = _run(job, "--base-url", sandbox.base_url)
        assert sandbox.stats()["requests_total"] == 3
    assert summary["rows"]["error"] == 6
    frame = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert set(frame["error_type"]) == {"invalid_request_error"}
    assert frame["shared_request_with"].drop_nulls().len() == 3


def test_toggling_cache_and_dedupe_resends_nothing(tmp_path: Path) -> None:
    """cache and dedupe never change an answer, so switching them does not re-send finished rows."""
    job = _dupes_job(tmp_path, temperature=0.0, system="Be brief.")
    _run(job, "--sandbox")
    text = job.read_text(encoding="utf-8").replace("[request]", "[request]\ncache = true\ndedupe = false")
    job.write_text(text, encoding="utf-8")
    assert load_job(job).request.cache
    second = _run(job, "--sandbox")
    assert second["requests_sent"] == 0
    assert second["rows"]["skipped"] == 6


def test_a_follower_lost_before_it_was_saved_is_answered_by_the_next_run(tmp_path: Path) -> None:
    """A row missing from the output (as after a crash) is sent again and gets an answer of its own."""
    job = _dupes_job(tmp_path, temperature=0.0)
    _run(job, "--sandbox")
    results = tmp_path / "out" / "results.parquet"
    frame = pl.read_parquet(results)
    frame.filter(pl.col("row_id") != "4").write_parquet(results)
    with running_sandbox() as sandbox:
        summary = _run(job, "--base-url", sandbox.base_url)
        assert sandbox.stats()["answers_ok"] == 1
    assert summary["rows"] == {"total": 6, "ok": 1, "error": 0, "skipped": 5}
    again = pl.read_parquet(results).filter(pl.col("row_id") == "4")
    assert again["status"].to_list() == ["ok"]
    assert again["input_tokens"].to_list()[0] > 0


def test_dedupe_registry_pairs_leaders_and_followers() -> None:
    """The registry hands followers to their leader's result, copies later ones, and forgets the oldest."""
    dedupe = Dedupe(window=1)
    rows = [Row(index=i, row_id=str(i), values={}) for i in range(4)]
    assert dedupe.claim("a", rows[0]) == ("lead", None)
    assert dedupe.claim("a", rows[1]) == ("wait", None)
    reply = Reply("m", "text", (), "end_turn", Usage(10, 5), "msg_1", "req_1")
    leader = Result(
        row=rows[0], status="ok", finished_at=datetime(2026, 1, 1, tzinfo=UTC), fingerprint="f", reply=reply
    )
    assert dedupe.settle(leader) == [rows[1]]
    verdict, done = dedupe.claim("a", rows[2])
    assert verdict == "copy"
    assert done is leader
    copy = shared_result(leader, rows[2])
    assert copy.shared_with == "0"
    assert copy.reply is not None
    assert copy.reply.usage == Usage()
    assert copy.reply.text == "text"
    assert dedupe.claim("b", rows[3]) == ("lead", None)
    dedupe.settle(Result(row=rows[3], status="ok", finished_at=leader.finished_at, fingerprint="f"))
    assert dedupe.claim("a", rows[2])[0] == "lead"  # beyond the window: sent again, never wrong


def test_fingerprint_ignores_cache_and_dedupe_but_not_image_max_pixels() -> None:
    """cache, cache_ttl and dedupe leave the fingerprint alone; image_max_pixels changes it only when set."""
    base = RequestSpec(model="claude-haiku-4-5", max_tokens=10, prompt="Hi {x}", system="Be brief.")
    toggled = base.model_copy(update={"cache": True, "cache_ttl": "1h", "dedupe": False})
    assert toggled.fingerprint() == base.fingerprint()
    assert base.model_copy(update={"image_max_pixels": 100_000}).fingerprint() != base.fingerprint()
    # unset, the new setting is not hashed at all: outputs from before it existed stay valid. Those
    # outputs carry the fingerprint of that version's formula (max_tokens and the 1568 px edge in it),
    # which the request still recognises as its own
    old_keys = {"model", "max_tokens", "prompt", "system", "temperature", "top_p", "top_k"}
    old_keys |= {"stop_sequences", "images", "image_max_edge", "tools", "tool_choice"}
    settings = {key: value for key, value in base.model_dump(mode="json").items() if key in old_keys}
    settings["image_max_edge"] = 1568
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    assert base.legacy_fingerprint() == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    assert "max_tokens" in NOT_FINGERPRINTED


def test_sandbox_caches_up_to_the_last_breakpoint_and_limits_count_tokens() -> None:
    """The sandbox writes then reads a marked prefix, refuses a 5th breakpoint, limits count_tokens."""
    tools = [
        {"name": f"t{i}", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}
        for i in range(5)
    ]
    body: dict[str, Any] = {
        "model": "claude-opus-5",  # 512-token minimum (reference §10)
        "max_tokens": 20,
        "system": [
            {"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
        ],
        "messages": [{"role": "user", "content": "Hello"}],
    }
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    with (
        running_sandbox(SandboxConfig(count_tokens_per_minute=1.0)) as sandbox,
        httpx.Client(base_url=sandbox.base_url, headers=headers) as client,
    ):
        first = client.post("/v1/messages", json=body).json()["usage"]
        second = client.post("/v1/messages", json=body).json()["usage"]
        too_many = client.post("/v1/messages", json={**body, "tools": tools})
        counted = client.post("/v1/messages/count_tokens", json={k: body[k] for k in ("model", "messages")})
        refused = client.post("/v1/messages/count_tokens", json={k: body[k] for k in ("model", "messages")})
    assert first["cache_creation_input_tokens"] > 512
    assert first["cache_creation"] == {
        "ephemeral_5m_input_tokens": 0,
        "ephemeral_1h_input_tokens": first["cache_creation_input_tokens"],
    }
    assert first["cache_read_input_tokens"] == 0
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
    assert second["cache_creation_input_tokens"] == 0
    assert second["input_tokens"] == first["input_tokens"]
    assert too_many.status_code == 400
    assert "A maximum of 4 blocks with cache_control" in too_many.json()["error"]["message"]
    assert counted.status_code == 200
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1

"""``pipeline estimate`` through the real CLI: tokens against the sandbox's usage, resume, prices, --exact."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from jobkit import FAKE_KEY, ROOT, image_bytes, invoke, text_job, write_job
from pipeline.sandbox import SandboxConfig, running_sandbox

SHIPPED = sorted(path.stem for path in (ROOT / "jobs").glob("*.toml"))


def _estimate(*args: str, key: str | None = None) -> dict[str, Any]:
    result = invoke(["estimate", *args, "--json"], key=key)
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _billed_input(results: Path) -> int:
    frame = pl.read_parquet(results)
    columns = ["input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"]
    return int(sum(frame[name].sum() for name in columns))


@pytest.mark.parametrize("name", SHIPPED)
def test_estimate_is_within_15_percent_of_the_sandbox_usage(tmp_path: Path, name: str) -> None:
    """The local estimate of input tokens is within 15 % of what the sandbox reports for each shipped job."""
    shutil.copytree(ROOT / "sample_data", tmp_path / "sample_data")
    (tmp_path / "jobs").mkdir()
    # the same job without its per-minute pacing, which only makes the run slower
    text = (ROOT / "jobs" / f"{name}.toml").read_text(encoding="utf-8")
    job = tmp_path / "jobs" / f"{name}.toml"
    job.write_text(re.sub(r"(?m)^\w+_per_minute = .*$", "", text), encoding="utf-8")
    out = tmp_path / "out"
    estimate = _estimate(str(job), "--output", str(out))
    run = invoke(["run", str(job), "--sandbox", "--output", str(out), "--json"], key=None)
    assert run.exit_code == 0, run.output
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["requests_sent"] == estimate["requests"]
    billed = _billed_input(out / "results.parquet")
    estimated = estimate["input_tokens"]["total"]
    assert abs(estimated - billed) / billed <= 0.15, (estimated, billed)


def test_estimate_leaves_out_rows_already_done_and_learns_answer_length(tmp_path: Path) -> None:
    """After a partial run the estimate counts only the rows left, at the answer length seen so far."""
    job = text_job(tmp_path, rows=10)
    first = invoke(["run", str(job), "--sandbox", "--limit", "4"], key=None)
    assert first.exit_code == 0, first.output
    estimate = _estimate(str(job), "--sandbox")  # what the next sandbox run would still send
    assert estimate["rows"] == {"total": 10, "done": 4, "to_do": 6, "unsendable": 0, "shared": 0}
    assert estimate["requests"] == 6
    # the sandbox's answers are not the API's: for the real run every row is still to do
    assert _estimate(str(job))["rows"]["to_do"] == 10
    seen = pl.read_parquet(tmp_path / "out" / "results.parquet")["output_tokens"].mean()
    assert estimate["output_tokens"]["typical_per_request"] == pytest.approx(seen, abs=0.01)
    assert "earlier answers" in estimate["output_tokens"]["typical_from"]
    assert estimate["output_tokens"]["at_max_tokens"] == 6 * 64


def test_estimate_text_shows_the_cost_table(tmp_path: Path) -> None:
    """The human form prints realtime and batch dollars, with and without caching, and the prices' source."""
    job = text_job(tmp_path, rows=3, system="Be brief.")
    result = invoke(["estimate", str(job)], key=None)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "3 rows to do of 3" in text
    for words in ("realtime", "batch", "with caching", "output at max_tokens", "read 2026-"):
        assert words in text
    assert "shorter than the 4,096-token minimum for claude-haiku-4-5" in text


def test_image_max_pixels_shows_in_the_estimate_and_the_run(tmp_path: Path) -> None:
    """image_max_pixels shrinks images: fewer estimated image tokens, and fewer billed by the sandbox."""
    (tmp_path / "pics").mkdir()
    for index in range(3):
        (tmp_path / "pics" / f"{index}.png").write_bytes(image_bytes("PNG", size=(1200, 900)))
    (tmp_path / "in.csv").write_text("id,path\n0,pics/0.png\n1,pics/1.png\n2,pics/2.png\n", encoding="utf-8")
    request = {"model": "claude-haiku-4-5", "max_tokens": 20, "prompt": "Describe {id}.", "images": ["path"]}
    full = write_job(tmp_path, name="full", input="in.csv", output="full", request=request)
    small = write_job(
        tmp_path,
        name="small",
        input="in.csv",
        output="small",
        request={**request, "image_max_pixels": 120_000},
    )
    big, little = _estimate(str(full)), _estimate(str(small))
    assert big["images"]["largest"] == [1200, 900]
    width, height = little["images"]["largest"]
    assert width * height <= 120_000
    assert abs(width / height - 4 / 3) < 0.02
    assert little["input_tokens"]["images"] < big["input_tokens"]["images"] / 5
    for job in (full, small):
        assert invoke(["run", str(job), "--sandbox"], key=None).exit_code == 0
    assert (
        _billed_input(tmp_path / "small" / "results.parquet")
        < _billed_input(tmp_path / "full" / "results.parquet") / 5
    )


def test_unknown_model_has_no_price_and_a_job_may_set_one(tmp_path: Path) -> None:
    """An unknown model gives "no price known", never a number; a [prices] table prices it."""
    job = text_job(tmp_path, rows=2, model="claude-unknown-9")
    text = invoke(["estimate", str(job)], key=None).stdout
    assert "no price known for model 'claude-unknown-9'" in text
    assert "$" not in text.split("cost:")[-1]
    assert _estimate(str(job))["cost_usd"] == {"typical": None, "at_max_tokens": None}
    with job.open("a", encoding="utf-8") as handle:
        handle.write("\n[prices]\ninput = 2.0\noutput = 10.0\n")
    estimate = _estimate(str(job))
    assert "the job's [prices] table" in estimate["priced_as"]
    tokens_in, tokens_out = estimate["input_tokens"]["total"], estimate["output_tokens"]["at_max_tokens"]
    expected = (tokens_in * 2.0 + tokens_out * 10.0) / 1e6
    assert estimate["cost_usd"]["at_max_tokens"]["realtime"] == pytest.approx(expected, abs=1e-4)
    assert estimate["cost_usd"]["at_max_tokens"]["batch"] == pytest.approx(expected / 2, abs=1e-4)


def test_exact_counts_a_sample_with_count_tokens_only(tmp_path: Path) -> None:
    """--exact counts the sample on count_tokens, sends no Messages request, and reports the difference."""
    job = text_job(tmp_path, rows=8, system="Answer in one short sentence, please.")
    with running_sandbox() as sandbox:
        estimate = _estimate(
            str(job), "--exact", "--sample", "3", "--base-url", sandbox.base_url, key=FAKE_KEY
        )
        stats = sandbox.stats()
    assert stats["requests_total"] == 0
    assert stats["count_tokens_total"] == 3
    exact = estimate["exact"]
    assert exact["sampled"] == 3
    assert exact["counted_tokens"] > 0
    assert abs(exact["off_pct"]) < 25
    assert estimate["input_tokens"]["corrected"] == round(
        estimate["input_tokens"]["total"] * exact["counted_tokens"] / exact["local_tokens"]
    )


def test_exact_waits_out_the_count_tokens_rate_limit(tmp_path: Path) -> None:
    """A count_tokens 429 is waited out (retry-after), not reported as a failure."""
    job = text_job(tmp_path, rows=4)
    config = SandboxConfig(count_tokens_per_minute=40.0)
    with running_sandbox(config) as sandbox:
        estimate = _estimate(
            str(job), "--exact", "--sample", "3", "--base-url", sandbox.base_url, key=FAKE_KEY
        )
        assert sandbox.stats()["count_tokens_total"] > 3  # some were refused and sent again
    assert estimate["exact"]["sampled"] == 3


def test_exact_without_a_key_is_one_line(tmp_path: Path) -> None:
    """--exact needs the key like run does: a one-line error, exit 2; without --exact no key is needed."""
    job = text_job(tmp_path, rows=2)
    result = invoke(["estimate", str(job), "--exact"], key=None)
    assert result.exit_code == 2
    assert result.stderr.startswith("pipeline: error: ANTHROPIC_API_KEY is not set")
    assert "Traceback" not in result.output
    assert invoke(["estimate", str(job)], key=None).exit_code == 0

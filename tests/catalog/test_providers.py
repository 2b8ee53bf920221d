"""Provider presets: each runs against a sandbox that answers like it; missing features fail up front."""

from __future__ import annotations

from pathlib import Path

import httpx
import polars as pl
import pytest

from jobkit import FAKE_KEY, invoke, run_subprocess, text_job
from pipeline.catalog.providers import PRESETS
from pipeline.errors import SpecError
from pipeline.job.spec import load_job
from pipeline.sandbox import running_sandbox
from pipeline.sandbox.config import preset_config

TOOL = {
    "name": "rate",
    "input_schema": {"type": "object", "required": ["score"], "properties": {"score": {"type": "integer"}}},
}


def _preset_job(tmp_path: Path, provider: str, *, api: str = "", rows: int = 4, **request: object) -> Path:
    job = text_job(tmp_path, rows=rows, **request)
    job.write_text(job.read_text() + f'\n[api]\nprovider = "{provider}"\n{api}')
    return job


@pytest.mark.parametrize("provider", sorted(PRESETS))
def test_each_preset_runs_against_its_sandbox(tmp_path: Path, provider: str) -> None:
    """Every preset sends the auth header and reads the reply shape its provider uses, tool calls included."""
    preset = PRESETS[provider]
    tools = {"tools": [TOOL]}
    if preset.tool_choice:
        tools["tool_choice"] = {"type": "tool", "name": "rate"}  # type: ignore[assignment]
    api = 'base_url = "http://127.0.0.1:9"\n' if not preset.base_url else ""
    job = _preset_job(tmp_path, provider, api=api, **tools)
    env = {preset.api_key_env: FAKE_KEY} if preset.key_required else {}
    # the only key in the environment is the preset's own (or none, for servers that check none)
    config = preset_config(provider, api_key=FAKE_KEY if preset.key_required else None)
    with running_sandbox(config) as sandbox:
        result = invoke(["run", str(job), "--base-url", sandbox.base_url], key=None, env=env)
        stats = sandbox.stats()
    assert result.exit_code == 0, result.output
    assert stats["answers_ok"] == 4
    frame = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert (frame["input_tokens"] > 0).all()
    assert all(calls and calls[0]["name"] == "rate" for calls in frame["tool_calls"].to_list())
    if preset.tool_choice:
        assert frame["out_score"].dtype == pl.Int64
        assert frame["out_score"].null_count() == 0
    assert FAKE_KEY not in result.output


@pytest.mark.parametrize(
    ("provider", "auth", "shape", "headers"),
    [
        ("anthropic", "x-api-key", "anthropic", True),
        ("aimlapi", "bearer", "openai", False),
        ("openai-compatible-messages", "bearer", "openai", False),
        ("vllm", "bearer", "anthropic", False),
        ("llama-server", "bearer", "anthropic", False),
        ("ollama", "x-api-key", "anthropic", False),
    ],
)
def test_sandbox_preset_dialects(provider: str, auth: str, shape: str, headers: bool) -> None:
    """The sandbox's preset mode sets the auth header, reply shape and rate-limit headers of each provider."""
    config = preset_config(provider)
    assert (config.auth, config.shape, config.ratelimit_headers) == (auth, shape, headers)
    assert config.preset == provider


def test_ollama_refuses_tool_choice_before_sending(tmp_path: Path) -> None:
    """tool_choice on Ollama is one error line and exit 2, and not one request is sent."""
    job = _preset_job(tmp_path, "ollama", tools=[TOOL], tool_choice={"type": "tool", "name": "rate"})
    with running_sandbox(preset_config("ollama")) as sandbox:
        result = run_subprocess(["run", str(job), "--base-url", sandbox.base_url], key=None)
        stats = sandbox.stats()
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"pipeline: error: {job}: request.tool_choice: provider 'ollama' does not support tool_choice;"
        " remove it (the model may still call the tools) or use another provider"
    ]
    assert stats["requests_total"] == 0


def test_sandbox_ollama_mode_lacks_what_ollama_lacks() -> None:
    """The Ollama-like sandbox has no count_tokens and answers a request with tool_choice with a 400."""
    body = {
        "model": "m",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [TOOL],
        "tool_choice": {"type": "auto"},
    }
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    with running_sandbox(preset_config("ollama")) as sandbox:
        counted = httpx.post(f"{sandbox.base_url}/v1/messages/count_tokens", json=body, headers=headers)
        sent = httpx.post(f"{sandbox.base_url}/v1/messages", json=body, headers=headers)
    assert counted.status_code == 404
    assert sent.status_code == 400
    assert "tool_choice" in sent.json()["error"]["message"]


def test_bearer_presets_reject_x_api_key() -> None:
    """An AI/ML API-like sandbox takes only Authorization: Bearer, as the provider does."""
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    with running_sandbox(preset_config("aimlapi")) as sandbox:
        wrong = httpx.post(
            f"{sandbox.base_url}/v1/messages",
            json=body,
            headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
        )
        right = httpx.post(
            f"{sandbox.base_url}/v1/messages",
            json=body,
            headers={"authorization": "Bearer k", "anthropic-version": "2023-06-01"},
        )
    assert wrong.status_code == 401
    assert right.status_code == 200
    assert "choices" in right.json()


def test_preset_defaults_fill_the_api_table(tmp_path: Path) -> None:
    """A preset fills base_url, auth and the key variable; the job's own values win."""
    vllm = load_job(_preset_job(tmp_path, "vllm"))
    assert (vllm.api.base_url, vllm.api.auth, vllm.api.api_key_env) == (
        "http://localhost:8000",
        "bearer",
        "VLLM_API_KEY",
    )
    ollama = load_job(_preset_job(tmp_path, "ollama", api='base_url = "http://gpu-box:11434"\n'))
    assert ollama.api.base_url == "http://gpu-box:11434"
    assert ollama.api.auth == "x-api-key"


def test_openai_compatible_preset_needs_a_base_url(tmp_path: Path) -> None:
    """openai-compatible-messages has no default server: leaving base_url out is a clear error."""
    with pytest.raises(SpecError, match="has no default base_url; set base_url"):
        load_job(_preset_job(tmp_path, "openai-compatible-messages"))


def test_missing_preset_key_names_its_variable(tmp_path: Path) -> None:
    """A preset that needs a key names its own variable when it is unset."""
    job = _preset_job(tmp_path, "aimlapi")
    result = run_subprocess(["run", str(job)], key=None)
    assert result.returncode == 2
    assert "AIMLAPI_API_KEY is not set" in result.stderr


def test_sandbox_cli_accepts_a_preset() -> None:
    """`pipeline sandbox --preset` knows every preset and refuses unknown names with usage exit 2."""
    result = invoke(["sandbox", "--preset", "nope"])
    assert result.exit_code == 2
    assert "ollama" in result.output

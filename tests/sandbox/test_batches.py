"""The sandbox's Message Batches endpoints over loopback HTTP: shapes, checks, timing, order, cancel."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pipeline.sandbox import SandboxConfig, SandboxHandle, running_sandbox

HEADERS = {"x-api-key": "sk-test", "anthropic-version": "2023-06-01"}
PATH = "/v1/messages/batches"


def params(text: str = "hello") -> dict[str, Any]:
    """A valid Messages request body."""
    return {"model": "claude-haiku-4-5", "max_tokens": 32, "messages": [{"role": "user", "content": text}]}


def requests(n: int) -> list[dict[str, Any]]:
    """n batch items with custom ids r0..r(n-1)."""
    return [{"custom_id": f"r{i}", "params": params(f"item {i}")} for i in range(n)]


@pytest.fixture
def sandbox() -> Iterator[SandboxHandle]:
    """A sandbox whose batches take 0.2 s."""
    with running_sandbox(SandboxConfig(batch_processing_s=0.2, seed=3)) as handle:
        yield handle


@pytest.fixture
def http(sandbox: SandboxHandle) -> Iterator[httpx.Client]:
    """A client for the sandbox with auth headers."""
    with httpx.Client(base_url=sandbox.base_url, headers=HEADERS, timeout=10) as client:
        yield client


def wait_ended(http: httpx.Client, batch_id: str) -> dict[str, Any]:
    """Poll until the batch has ended; its final object."""
    for _ in range(200):
        batch: dict[str, Any] = http.get(f"{PATH}/{batch_id}").json()
        if batch["processing_status"] == "ended":
            return batch
        time.sleep(0.02)
    raise AssertionError("batch did not end")


def result_lines(http: httpx.Client, batch_id: str) -> list[dict[str, Any]]:
    """The decoded result lines, in the order served."""
    response = http.get(f"{PATH}/{batch_id}/results")
    assert response.status_code == 200
    return [json.loads(line) for line in response.text.splitlines() if line]


def test_create_returns_an_in_progress_batch_that_ends_after_the_processing_time(http: httpx.Client) -> None:
    """A new batch is in_progress with every request processing; after processing_s it has ended."""
    created = http.post(PATH, json={"requests": requests(5)})
    assert created.status_code == 200
    batch = created.json()
    assert batch["type"] == "message_batch"
    assert batch["id"].startswith("msgbatch_")
    assert batch["processing_status"] == "in_progress"
    assert batch["request_counts"] == {
        "processing": 5,
        "succeeded": 0,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    assert batch["results_url"] is None
    early = http.get(f"{PATH}/{batch['id']}/results")
    assert early.status_code == 400
    ended = wait_ended(http, batch["id"])
    assert ended["request_counts"]["succeeded"] == 5
    assert ended["results_url"].endswith(f"/v1/messages/batches/{batch['id']}/results")
    assert ended["ended_at"] is not None


def test_results_are_shuffled_and_join_on_custom_id(http: httpx.Client) -> None:
    """Results come back in a shuffled order, one per request, each answering its own prompt."""
    batch = http.post(PATH, json={"requests": requests(40)}).json()
    wait_ended(http, batch["id"])
    lines = result_lines(http, batch["id"])
    ids = [line["custom_id"] for line in lines]
    assert sorted(ids) == sorted(f"r{i}" for i in range(40))
    assert ids != [f"r{i}" for i in range(40)]
    for line in lines:
        message = line["result"]["message"]
        assert line["result"]["type"] == "succeeded"
        assert f"item {line['custom_id'][1:]}" in message["content"][0]["text"]
        assert message["usage"]["service_tier"] == "batch"


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"requests": []}, 400, "at least 1"),
        ({"requests": [{"custom_id": "has space", "params": params()}]}, 400, "custom_id"),
        ({"requests": [{"custom_id": "x" * 65, "params": params()}]}, 400, "custom_id"),
        (
            {"requests": [{"custom_id": "a", "params": params()}, {"custom_id": "a", "params": params()}]},
            400,
            "duplicate",
        ),
        ({"requests": [{"custom_id": "a"}]}, 400, "custom_id and params"),
        ({"nope": 1}, 400, "requests"),
    ],
)
def test_create_refuses_a_bad_envelope(
    http: httpx.Client, body: dict[str, Any], status: int, fragment: str
) -> None:
    """Envelope errors (empty list, bad or duplicate custom_id, missing params) are a 400 at create."""
    response = http.post(PATH, json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert fragment in error["message"]


def test_invalid_params_and_stream_become_errored_results(http: httpx.Client) -> None:
    """Bad params are validated asynchronously: an errored invalid_request_error result, not a 400."""
    items = [
        {"custom_id": "good", "params": params()},
        {"custom_id": "bad", "params": {"model": "claude-haiku-4-5", "messages": []}},
        {"custom_id": "streamed", "params": {**params(), "stream": True}},
    ]
    batch = http.post(PATH, json={"requests": items}).json()
    ended = wait_ended(http, batch["id"])
    assert ended["request_counts"]["errored"] == 2
    by_id = {line["custom_id"]: line["result"] for line in result_lines(http, batch["id"])}
    assert by_id["good"]["type"] == "succeeded"
    for name in ("bad", "streamed"):
        assert by_id[name]["type"] == "errored"
        assert by_id[name]["error"]["error"]["type"] == "invalid_request_error"


def test_seeded_errored_and_expired_shares() -> None:
    """batch_errored_rate and batch_expired_rate turn about that share of results errored and expired."""
    config = SandboxConfig(batch_processing_s=0.0, batch_errored_rate=0.25, batch_expired_rate=0.25, seed=1)
    with running_sandbox(config) as sandbox, httpx.Client(base_url=sandbox.base_url, headers=HEADERS) as http:
        batch = http.post(PATH, json={"requests": requests(400)}).json()
        counts = wait_ended(http, batch["id"])["request_counts"]
        kinds = [line["result"]["type"] for line in result_lines(http, batch["id"])]
    assert 60 < counts["errored"] < 140
    assert 60 < counts["expired"] < 140
    assert kinds.count("errored") == counts["errored"]
    assert counts["succeeded"] + counts["errored"] + counts["expired"] == 400


def test_body_over_the_batch_cap_is_413() -> None:
    """A create body over batch_max_bytes is refused with request_too_large."""
    with (
        running_sandbox(SandboxConfig(batch_max_bytes=2000)) as sandbox,
        httpx.Client(base_url=sandbox.base_url, headers=HEADERS) as http,
    ):
        response = http.post(PATH, json={"requests": requests(50)})
        assert response.status_code == 413
        assert response.json()["error"]["type"] == "request_too_large"
        assert sandbox.stats()["batches"]["created"] == 0


def test_cancel_moves_through_canceling_to_ended_with_canceled_results() -> None:
    """Cancel answers canceling; the batch then ends with the unprocessed requests canceled."""
    with (
        running_sandbox(SandboxConfig(batch_processing_s=60)) as sandbox,
        httpx.Client(base_url=sandbox.base_url, headers=HEADERS) as http,
    ):
        batch = http.post(PATH, json={"requests": requests(4)}).json()
        canceled = http.post(f"{PATH}/{batch['id']}/cancel").json()
        assert canceled["processing_status"] == "canceling"
        assert canceled["cancel_initiated_at"] is not None
        ended = wait_ended(http, batch["id"])
        assert ended["request_counts"]["canceled"] == 4
        assert {line["result"]["type"] for line in result_lines(http, batch["id"])} == {"canceled"}


def test_list_pages_newest_first_with_after_id(http: httpx.Client) -> None:
    """List returns batches newest first and pages with after_id/has_more/last_id."""
    made = [http.post(PATH, json={"requests": requests(1)}).json()["id"] for _ in range(5)]
    first = http.get(PATH, params={"limit": 2}).json()
    assert [b["id"] for b in first["data"]] == made[::-1][:2]
    assert first["has_more"] is True
    assert first["first_id"] == made[-1]
    rest = http.get(PATH, params={"limit": 10, "after_id": first["last_id"]}).json()
    assert [b["id"] for b in rest["data"]] == made[::-1][2:]
    assert rest["has_more"] is False
    assert http.get(PATH, params={"limit": 0}).status_code == 400


def test_unknown_batch_is_404_and_auth_is_required(sandbox: SandboxHandle, http: httpx.Client) -> None:
    """An unknown id is a not_found_error; a request without a key is a 401."""
    missing = http.get(f"{PATH}/msgbatch_nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    anonymous = httpx.get(sandbox.base_url + PATH, headers={"anthropic-version": "2023-06-01"})
    assert anonymous.status_code == 401

"""The batch HTTP calls with scripted responses: which create failures are retried, refused or unconfirmed."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.api.batches import BatchesApi
from pipeline.api.config import ClientConfig
from pipeline.errors import CreateUnconfirmed, PermanentApiError
from scripted import ScriptedApi

KEY = "sk-ant-secret-key-123"
BATCH = {
    "id": "msgbatch_1",
    "type": "message_batch",
    "processing_status": "in_progress",
    "request_counts": {"processing": 2, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0},
    "created_at": "2026-11-27T08:00:00.000000Z",
}


def scripted(*answers: httpx.Response | Exception) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport that replies with ``answers`` in order and records the requests."""
    api = ScriptedApi(*answers)
    return api.transport, api.requests


def error(status: int, kind: str) -> httpx.Response:
    """The API's error JSON with a status."""
    return httpx.Response(status, json={"type": "error", "error": {"type": kind, "message": f"{kind} {KEY}"}})


async def no_sleep(_: float) -> None:
    """Backoff that does not wait."""


async def create(tmp_path: Path, transport: httpx.MockTransport) -> Any:
    """Run one create of a two-request body through ``transport``."""
    body = tmp_path / "body.json"
    body.write_text(
        json.dumps({"requests": [{"custom_id": "a", "params": {}}, {"custom_id": "b", "params": {}}]})
    )
    config = ClientConfig("http://api.test", KEY, max_attempts=3)
    async with BatchesApi(config, transport=transport, sleep=no_sleep) as api:
        return await api.create(body)


async def test_create_streams_the_body_with_auth_and_reads_the_batch(tmp_path: Path) -> None:
    """A create posts the file's bytes to /v1/messages/batches with the key header and returns the batch."""
    transport, seen = scripted(httpx.Response(200, json=BATCH))
    info = await create(tmp_path, transport)
    assert info.id == "msgbatch_1"
    assert info.total == 2
    [request] = seen
    assert request.url.path == "/v1/messages/batches"
    assert request.headers["x-api-key"] == KEY
    assert request.headers["content-length"] == str((tmp_path / "body.json").stat().st_size)
    assert json.loads(request.content)["requests"][1]["custom_id"] == "b"


@pytest.mark.parametrize(("status", "kind"), [(429, "rate_limit_error"), (529, "overloaded_error")])
async def test_create_refused_with_429_or_529_is_retried(tmp_path: Path, status: int, kind: str) -> None:
    """A 429 or 529 means no batch was made, so the create is sent again."""
    transport, seen = scripted(error(status, kind), httpx.Response(200, json=BATCH))
    assert (await create(tmp_path, transport)).id == "msgbatch_1"
    assert len(seen) == 2


@pytest.mark.parametrize(
    "answer",
    [
        error(500, "api_error"),
        error(503, "api_error"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("dropped"),
        httpx.Response(200, text="<html>proxy</html>"),
    ],
)
async def test_create_with_an_unknown_outcome_is_not_retried(
    tmp_path: Path, answer: httpx.Response | Exception
) -> None:
    """A 5xx, a timeout, a dropped connection or an unreadable 2xx may have made a batch: no retry."""
    transport, seen = scripted(answer)
    with pytest.raises(CreateUnconfirmed) as caught:
        await create(tmp_path, transport)
    assert len(seen) == 1
    assert KEY not in str(caught.value)


async def test_create_refused_with_400_raises_without_retry(tmp_path: Path) -> None:
    """A 400 is a refusal: raised at once, the key blanked out of the echoed message."""
    transport, seen = scripted(error(400, "invalid_request_error"))
    with pytest.raises(PermanentApiError) as caught:
        await create(tmp_path, transport)
    assert len(seen) == 1
    assert KEY not in str(caught.value)


async def test_list_since_pages_until_batches_are_older(tmp_path: Path) -> None:
    """list_since follows after_id while batches are newer than the cut-off, then stops."""

    def page(ids: list[tuple[str, str]], more: bool) -> httpx.Response:
        data = [{**BATCH, "id": i, "created_at": t} for i, t in ids]
        return httpx.Response(200, json={"data": data, "has_more": more, "last_id": ids[-1][0]})

    transport, seen = scripted(
        page([("b3", "2026-11-27T09:00:00Z"), ("b2", "2026-11-27T08:30:00Z")], True),
        page([("b1", "2026-11-27T07:00:00Z"), ("b0", "2026-11-27T06:00:00Z")], True),
    )
    since = datetime.fromisoformat("2026-11-27T08:00:00+00:00")
    async with BatchesApi(ClientConfig("http://api.test", KEY), transport=transport) as api:
        found = await api.list_since(since)
    assert [b.id for b in found] == ["b3", "b2"]
    assert seen[1].url.params["after_id"] == "b2"
    assert len(seen) == 2

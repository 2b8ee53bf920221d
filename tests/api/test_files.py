"""The Files API client: upload, list (both page shapes), retrieve and delete, with the beta header."""

from __future__ import annotations

import httpx
import pytest

from jobkit import photo
from pipeline.api.config import ClientConfig
from pipeline.api.files import FilesApi
from pipeline.errors import PermanentApiError
from pipeline.sandbox import SandboxConfig, running_sandbox
from scripted import ScriptedApi, api_error, reply


async def test_upload_list_retrieve_delete_against_the_sandbox() -> None:
    """Every call works end to end against the sandbox, which checks the beta header on each."""
    with running_sandbox(SandboxConfig()) as sandbox:
        config = ClientConfig(base_url=sandbox.base_url, api_key="sk-test", max_attempts=2)
        async with FilesApi(config) as files:
            made = [
                await files.upload(photo(i), filename=f"p{i}.jpg", media_type="image/jpeg") for i in range(3)
            ]
            assert [info.size_bytes for info in made] == [len(photo(i)) for i in range(3)]
            listed = [info.id async for info in files.list()]
            assert sorted(listed) == sorted(info.id for info in made)
            got = await files.retrieve(made[1].id)
            assert (got.filename, got.mime_type) == ("p1.jpg", "image/jpeg")
            assert await files.delete(made[1].id) is True
            assert await files.delete(made[1].id) is False  # already gone: a 404, not an error
            with pytest.raises(PermanentApiError, match="File not found"):
                await files.retrieve(made[1].id)
        assert sandbox.stats()["files"]["live"] == 2


async def test_every_call_sends_the_files_beta_and_never_follows_redirects() -> None:
    """anthropic-beta: files-api-2025-04-14 is on every Files call, beside the key header only."""
    api = ScriptedApi(
        reply(200, {"id": "file_1", "type": "file", "filename": "a", "mime_type": "x", "size_bytes": 1})
    )
    config = ClientConfig(base_url="https://api.example", api_key="sk-test")
    async with FilesApi(config, transport=api.transport) as files:
        await files.upload(b"x", filename="a", media_type="image/png")
    request = api.requests[0]
    assert request.headers["anthropic-beta"] == "files-api-2025-04-14"
    assert request.url == httpx.URL("https://api.example/v1/files")
    assert b'name="file"; filename="a"' in request.content


async def test_list_follows_next_page_cursors_and_has_more_pages() -> None:
    """The page cursor the SDK's types describe (next_page) and the reference's has_more/last_id both page."""

    def item(n: int) -> dict[str, object]:
        return {"id": f"file_{n}", "type": "file", "filename": "f", "mime_type": "x", "size_bytes": n}

    api = ScriptedApi(
        reply(200, {"data": [item(1), item(2)], "next_page": "page_abc"}),
        reply(200, {"data": [item(3)], "has_more": True, "last_id": "file_3"}),
        reply(200, {"data": [item(4)], "has_more": False}),
    )
    config = ClientConfig(base_url="https://api.example", api_key="sk-test")
    async with FilesApi(config, transport=api.transport) as files:
        ids = [info.id async for info in files.list()]
    assert ids == ["file_1", "file_2", "file_3", "file_4"]
    assert api.requests[1].url.params["page"] == "page_abc"
    assert api.requests[2].url.params["after_id"] == "file_3"


async def test_a_retryable_failure_is_retried_and_a_refusal_is_not() -> None:
    """A 529 is retried under the shared policy; a 400 is raised at once."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    api = ScriptedApi(
        api_error(529, "overloaded_error"),
        reply(200, {"id": "file_9", "type": "file", "filename": "a", "mime_type": "x", "size_bytes": 1}),
    )
    config = ClientConfig(base_url="https://api.example", api_key="sk-test")
    async with FilesApi(config, transport=api.transport, sleep=sleep) as files:
        assert (await files.upload(b"x", filename="a", media_type="image/png")).id == "file_9"
    assert len(slept) == 1
    refusing = ScriptedApi(api_error(400, "invalid_request_error", "bad file"))
    async with FilesApi(config, transport=refusing.transport, sleep=sleep) as files:
        with pytest.raises(PermanentApiError, match="bad file"):
            await files.upload(b"x", filename="a", media_type="image/png")
    assert len(refusing.requests) == 1

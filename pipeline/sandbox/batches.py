"""The sandbox's Message Batches endpoints: create, retrieve, list, cancel, results (and delete).

Shapes follow https://platform.claude.com/docs/en/build-with-claude/batch-processing. A create checks
the envelope at once (``requests`` a non-empty list of at most ``batch_max_requests``, each
``custom_id`` matching ``^[a-zA-Z0-9_-]{1,64}$`` and unique, the body within ``batch_max_bytes``),
answering 400 or 413 like
the API; each item's ``params`` are validated as a Messages request (``stream`` refused), and a bad
one becomes an ``errored`` ``invalid_request_error`` result, as the API validates asynchronously.

Processing takes ``batch_processing_s``; until then the batch is ``in_progress`` with every request
``processing``. Each valid item draws its fate from the seed when the batch is created:
``errored`` (``api_error``, retryable) with ``batch_errored_rate``, ``expired`` with
``batch_expired_rate``, else ``succeeded`` with the answer ``/v1/messages`` would give. A cancel
turns the items not yet processed (by elapsed share) into ``canceled`` and ends the batch shortly
after. Results are streamed as JSON lines in a seeded shuffled order, generated line by line.
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from pipeline.sandbox.answers import anthropic_message, make_answer, new_id, request_digest
from pipeline.sandbox.apierrors import (
    RequestError,
    cursor_window,
    decode_json,
    error_reply,
    json_reply,
    read_body,
)
from pipeline.sandbox.config import SandboxConfig
from pipeline.sandbox.models import known_facts
from pipeline.sandbox.rules import check_known_model, check_rules
from pipeline.sandbox.validate import ParsedRequest, parse_request

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
CANCEL_S = 0.2  # from canceling to ended
RESULTS_CHUNK = 500  # lines written per write() of the results stream
Authenticate = Callable[[web.Request, SandboxConfig], None]
# what resolves an item's URL and file sources (the server's, sandbox/sources.py); identity by default
Resolve = Callable[[web.Request, Any], Awaitable[Any]]


@dataclass(slots=True)
class _Item:
    custom_id: str
    fate: str  # succeeded | errored | expired
    parsed: ParsedRequest | None = None
    digest: str = ""
    error_type: str = ""
    error_message: str = ""
    refuse: bool = False  # answered as a refusal (refusal_rate)
    truncate: bool = False  # cut short at max_tokens (truncation_rate)


@dataclass(slots=True)
class _Batch:
    id: str
    created_at: datetime
    ends_at: datetime
    items: list[_Item]
    order: list[int]
    cancel_at: datetime | None = None
    canceled_from: int | None = None  # items at or past this processing position were canceled
    deleted: bool = False

    def ended_at(self) -> datetime:
        if self.cancel_at is not None:
            return min(self.ends_at, self.cancel_at + timedelta(seconds=CANCEL_S))
        return self.ends_at

    def status(self, now: datetime) -> str:
        if now >= self.ended_at():
            return "ended"
        return "canceling" if self.cancel_at is not None else "in_progress"

    def fate(self, position: int) -> str:
        if self.canceled_from is not None and position >= self.canceled_from:
            return "canceled"
        return self.items[position].fate

    def counts(self, now: datetime) -> dict[str, int]:
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        if self.status(now) != "ended":
            counts["processing"] = len(self.items)
            return counts
        for position in range(len(self.items)):
            counts[self.fate(position)] += 1
        return counts

    def to_json(self, now: datetime, origin: str) -> dict[str, Any]:
        ended = self.status(now) == "ended"
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": self.status(now),
            "request_counts": self.counts(now),
            "ended_at": _time(self.ended_at()) if ended else None,
            "created_at": _time(self.created_at),
            "expires_at": _time(self.created_at + timedelta(hours=24)),
            "cancel_initiated_at": _time(self.cancel_at) if self.cancel_at else None,
            "archived_at": None,
            "results_url": f"{origin}/v1/messages/batches/{self.id}/results" if ended else None,
        }


def _time(when: datetime) -> str:
    return when.isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class BatchStore:
    """Every batch one sandbox holds, its fate dice and its statistics; thread-safe snapshots."""

    config: SandboxConfig
    batches: dict[str, _Batch] = field(default_factory=dict)
    submitted: Counter[str] = field(default_factory=Counter)  # custom_id -> times submitted
    created: int = 0
    requests: int = 0
    cancels: int = 0
    downloads: int = 0
    body_sizes: list[int] = field(default_factory=list)  # bytes of each create body, in order
    _dice: random.Random = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._dice = random.Random(f"{self.config.seed}-batches")

    def finish_all(self) -> int:
        """End every batch still processing now, as if its processing time had passed; returns how many.

        For tests that must see a batch pending across several invocations on a machine of any
        speed: give it a long ``batch_processing_s``, then finish it when the test is ready.
        """
        now = _now()
        finished = 0
        with self._lock:
            for batch in self.batches.values():
                if batch.deleted or batch.status(now) == "ended":
                    continue
                batch.ends_at = min(batch.ends_at, now)
                if batch.cancel_at is not None:
                    batch.cancel_at = min(batch.cancel_at, now - timedelta(seconds=CANCEL_S))
                finished += 1
        return finished

    def snapshot(self) -> dict[str, Any]:
        """Batch statistics for ``GET /_sandbox/stats``."""
        with self._lock:
            return {
                "created": self.created,
                "requests": self.requests,
                "cancels": self.cancels,
                "result_downloads": self.downloads,
                "body_sizes": list(self.body_sizes),
                "ids": list(self.batches),
                "max_submissions_per_custom_id": max(self.submitted.values(), default=0),
                "submitted_by_custom_id": dict(self.submitted),
            }


def add_batch_routes(
    app: web.Application, store: BatchStore, authenticate: Authenticate, resolve: Resolve | None = None
) -> None:
    """Register the batch endpoints on ``app`` (before any catch-all route).

    :param resolve: turns an item's URL and file sources into inline ones before it is validated;
        a source that cannot be used makes that item ``errored``, as the API validates asynchronously.
    """

    def guarded(
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def wrapper(request: web.Request) -> web.StreamResponse:
            request_id = new_id("req")
            try:
                authenticate(request, store.config)
                return await handler(request)
            except RequestError as err:
                return error_reply(err, request_id)

        return wrapper

    async def create(request: web.Request) -> web.StreamResponse:
        raw = await read_body(request, store.config.batch_max_bytes)
        body = decode_json(raw)
        refused: dict[int, RequestError] = {}
        if resolve is not None and isinstance(body, dict) and isinstance(body.get("requests"), list):
            for i, entry in enumerate(body["requests"]):
                if isinstance(entry, dict) and isinstance(entry.get("params"), dict):
                    try:
                        entry["params"] = await resolve(request, entry["params"])
                    except RequestError as err:
                        refused[i] = err
        header = request.headers.get("anthropic-beta", "")
        betas = frozenset(name.strip() for name in header.split(",") if name.strip())
        version = request.headers.get("anthropic-version", "")
        batch = _new_batch(store, body, refused, version=version, betas=betas)
        with store._lock:
            store.body_sizes.append(len(raw))
        return _reply(batch.to_json(_now(), _origin(request)))

    async def retrieve(request: web.Request) -> web.StreamResponse:
        batch = _find(store, request.match_info["batch_id"])
        return _reply(batch.to_json(_now(), _origin(request)))

    async def cancel(request: web.Request) -> web.StreamResponse:
        batch = _find(store, request.match_info["batch_id"])
        now = _now()
        with store._lock:
            if batch.status(now) == "in_progress":
                batch.cancel_at = now
                total = (batch.ends_at - batch.created_at).total_seconds()
                done = 1.0 if total <= 0 else (now - batch.created_at).total_seconds() / total
                batch.canceled_from = min(len(batch.items), int(len(batch.items) * max(0.0, done)))
                store.cancels += 1
        return _reply(batch.to_json(now, _origin(request)))

    async def listing(request: web.Request) -> web.StreamResponse:
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            raise RequestError("limit: Input should be a valid integer") from None
        if not 1 <= limit <= 1000:
            raise RequestError("limit: Input should be between 1 and 1000")
        now, origin = _now(), _origin(request)
        with store._lock:
            newest_first = [b for b in reversed(store.batches.values()) if not b.deleted]
        ids = [b.id for b in newest_first]
        start, stop = cursor_window(ids, request.query, limit)
        page = newest_first[start:stop][:limit]
        return _reply(
            {
                "data": [b.to_json(now, origin) for b in page],
                "has_more": start + len(page) < stop,
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
            }
        )

    async def results(request: web.Request) -> web.StreamResponse:
        batch = _find(store, request.match_info["batch_id"])
        if batch.status(_now()) != "ended":
            raise RequestError(f"Batch {batch.id} has not ended; its results are not available yet")
        with store._lock:
            store.downloads += 1
        response = web.StreamResponse(status=200, headers={"request-id": new_id("req")})
        response.content_type = "application/x-jsonl"
        await response.prepare(request)
        lines: list[str] = []
        for position in batch.order:
            lines.append(json.dumps(_result_line(batch, position), separators=(",", ":")))
            if len(lines) >= RESULTS_CHUNK:
                await response.write(("\n".join(lines) + "\n").encode())
                lines = []
        if lines:
            await response.write(("\n".join(lines) + "\n").encode())
        await response.write_eof()
        return response

    async def delete(request: web.Request) -> web.StreamResponse:
        batch = _find(store, request.match_info["batch_id"])
        if batch.status(_now()) != "ended":
            raise RequestError(
                f"Batch {batch.id} cannot be deleted while it is being processed; cancel it first"
            )
        batch.deleted = True
        return _reply({"id": batch.id, "type": "message_batch_deleted"})

    base = "/v1/messages/batches"
    app.router.add_post(base, guarded(create))
    app.router.add_get(base, guarded(listing))
    app.router.add_get(base + "/{batch_id}", guarded(retrieve))
    app.router.add_delete(base + "/{batch_id}", guarded(delete))
    app.router.add_post(base + "/{batch_id}/cancel", guarded(cancel))
    app.router.add_get(base + "/{batch_id}/results", guarded(results))


def _now() -> datetime:
    return datetime.now(UTC)


def _origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _reply(body: dict[str, Any]) -> web.Response:
    return json_reply(body, new_id("req"))


def _find(store: BatchStore, batch_id: str) -> _Batch:
    batch = store.batches.get(batch_id)
    if batch is None or batch.deleted:
        raise RequestError(f"Batch {batch_id} not found", status=404, error_type="not_found_error")
    return batch


def _new_batch(
    store: BatchStore,
    body: Any,
    refused: dict[int, RequestError] | None = None,
    *,
    version: str = "",
    betas: frozenset[str] = frozenset(),
) -> _Batch:
    config = store.config
    if not isinstance(body, dict) or not isinstance(body.get("requests"), list):
        raise RequestError("requests: Field required (a list of {custom_id, params})")
    extra = sorted(set(body) - {"requests"})
    if extra:
        raise RequestError(f"{extra[0]}: Extra inputs are not permitted")
    raw = body["requests"]
    if not raw:
        raise RequestError("requests: List should have at least 1 item")
    if len(raw) > config.batch_max_requests:
        raise RequestError(
            f"requests: List should have at most {config.batch_max_requests} items, not {len(raw)}"
        )
    seen: set[str] = set()
    checked: list[tuple[str, Any]] = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or set(entry) != {"custom_id", "params"}:
            raise RequestError(f"requests.{i}: each request must have exactly custom_id and params")
        custom_id = entry["custom_id"]
        if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
            raise RequestError(
                f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
            )
        if custom_id in seen:
            raise RequestError(f"requests.{i}.custom_id: duplicate custom_id {custom_id!r} in this batch")
        seen.add(custom_id)
        checked.append((custom_id, entry["params"]))
    now = _now()
    with store._lock:
        items = [
            _item(store, custom_id, params, version, betas, (refused or {}).get(i))
            for i, (custom_id, params) in enumerate(checked)
        ]
        order = list(range(len(items)))
        store._dice.shuffle(order)
        batch = _Batch(
            id=new_id("msgbatch"),
            created_at=now,
            ends_at=now + timedelta(seconds=config.batch_processing_s),
            items=items,
            order=order,
        )
        store.batches[batch.id] = batch
        store.created += 1
        store.requests += len(items)
        store.submitted.update(custom_id for custom_id, _ in checked)
    return batch


def _item(
    store: BatchStore,
    custom_id: str,
    params: Any,
    version: str,
    betas: frozenset[str],
    refused: RequestError | None = None,
) -> _Item:
    """Validate one item's params and draw its fate (under the store's lock: draws follow creation order)."""
    config = store.config
    roll = store._dice.random()
    refuse = config.refusal_rate > 0 and store._dice.random() < config.refusal_rate
    truncate = config.truncation_rate > 0 and store._dice.random() < config.truncation_rate
    try:
        if refused is not None:
            raise refused
        if isinstance(params, dict) and params.get("stream"):
            raise RequestError("stream: streaming is not supported in the Message Batches API")
        parsed = parse_request(params, betas=betas)
        facts = check_known_model(parsed.model) if config.models_api else known_facts(parsed.model)
        check_rules(params, facts, version=version, versioned=config.models_api)
        if config.reject_marker and config.reject_marker in parsed.last_user_text:
            raise RequestError("messages.0.content: the sandbox refuses this content (reject_marker)")
    except RequestError as err:
        return _Item(custom_id, "errored", error_type=err.error_type, error_message=err.message)
    if roll < config.batch_errored_rate:
        return _Item(custom_id, "errored", error_type="api_error", error_message="Internal server error")
    if roll < config.batch_errored_rate + config.batch_expired_rate:
        return _Item(custom_id, "expired")
    assert isinstance(params, dict)
    return _Item(
        custom_id, "succeeded", parsed=parsed, digest=request_digest(params), refuse=refuse, truncate=truncate
    )


def _result_line(batch: _Batch, position: int) -> dict[str, Any]:
    item = batch.items[position]
    fate = batch.fate(position)
    if fate == "succeeded":
        assert item.parsed is not None
        message = anthropic_message(
            make_answer(item.parsed, item.digest, refuse=item.refuse, truncate=item.truncate)
        )
        message["usage"]["service_tier"] = "batch"
        result: dict[str, Any] = {"type": "succeeded", "message": message}
    elif fate == "errored":
        error = {"type": item.error_type, "message": item.error_message}
        result = {"type": "errored", "error": {"type": "error", "error": error}}
    else:
        result = {"type": fate}
    return {"custom_id": item.custom_id, "result": result}

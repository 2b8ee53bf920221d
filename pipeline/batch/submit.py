"""Turning rows into batches: the same payloads as realtime mode, split by count and measured size.

Each row goes through :func:`pipeline.payloads.prepare.prepare_rows` (images, tools, size checks), loses
``stream`` (not allowed in a batch), and becomes one ``{"custom_id", "params"}`` item, encoded once.
Items are appended to a request body on disk (``.batches/<key>.body.json``), so a 256 MB batch is
never held in memory; a batch is closed and sent when the next item would take it over
``[batch] max_requests`` or ``max_bytes``, counted on the exact bytes sent.

Dedupe (``request.dedupes``, as in realtime mode): a row whose request key equals that of a row
already in the batch being filled is not put in the body; it goes into the rows file as a follower
of that row's custom_id, and collecting gives it the leader's result (:mod:`pipeline.batch.collect`).
Followers take no room in the batch and are pending with it, so they are never submitted twice.

Before the create POST, the submission's rows file and its ``intent`` are on disk (fsynced); the
batch id is logged the moment the API answers. See :mod:`pipeline.batch.state` for what happens to
an intent whose answer never came.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import polars as pl
import pyarrow as pa

from pipeline.api.batches import BatchesApi
from pipeline.batch.state import ERROR_PREFIX, BatchLog, RowsWriter, Submission, custom_id_for
from pipeline.errors import CreateUnconfirmed, OutputError, RowError
from pipeline.job.spec import JobSpec
from pipeline.records import Row
from pipeline.results.store import ResultStore
from pipeline.wire import MessagePayload

log = logging.getLogger("pipeline.batch")

BODY_PREFIX = b'{"requests":['
BODY_SUFFIX = b"]}"


@dataclass(frozen=True, slots=True)
class Target:
    """Where submissions go and what they are recorded with."""

    base_url: str
    sandbox: bool
    fingerprint: str
    job: dict[str, Any]


def job_record(spec: JobSpec) -> dict[str, Any]:
    """What an intent stores about the job so ``batch collect`` can work without it (never the key)."""
    return {
        "source": spec.source,
        "provider": spec.api.provider,
        "api_key_env": spec.api.api_key_env,
        "auth": spec.api.auth,
        "anthropic_version": spec.api.anthropic_version,
        "beta": list(spec.api.beta),
        "request": spec.request.model_dump(mode="json", by_alias=True),
        "prices": spec.prices.model_dump(mode="json") if spec.prices is not None else None,
        "batch": spec.batch.model_dump(mode="json"),
    }


def batch_item(custom_id: str, payload: MessagePayload) -> bytes:
    """One request of a batch, encoded as it is sent (``stream`` dropped: batches refuse it)."""
    params: dict[str, Any] = {key: value for key, value in payload.items() if key != "stream"}
    return json.dumps(
        {"custom_id": custom_id, "params": params}, ensure_ascii=False, separators=(",", ":")
    ).encode()


def prior_attempts(store: ResultStore, fingerprints: list[str]) -> dict[str, int]:
    """row_id -> batch attempts already made, for rows whose latest result is a batch error.

    A row that shared its leader's error (``shared_request_with``, attempts 0) counts the leader's
    attempts: it was sent as often as its leader, so ``max_attempts`` stops both together.
    """
    if not store.results_path.exists():
        return {}
    try:
        scan = pl.scan_parquet(store.results_path)
        # outputs written before dedupe existed have no shared_request_with column
        has_shared = "shared_request_with" in scan.collect_schema().names()
        shared = pl.col("shared_request_with") if has_shared else pl.lit(None, dtype=pl.String)
        frame = (
            scan.filter(
                (pl.col("status") == "error")
                & pl.col("request_fingerprint").is_in(fingerprints)
                & pl.col("error_message").fill_null("").str.starts_with(ERROR_PREFIX)
            )
            .select("row_id", pl.col("attempts").fill_null(0), shared.alias("shared"))
            .collect()
        )
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise OutputError(f"cannot read {store.results_path}: {exc}") from None
    attempts = dict(zip(frame["row_id"].to_list(), frame["attempts"].to_list(), strict=True))
    for row_id, leader in zip(frame["row_id"].to_list(), frame["shared"].to_list(), strict=True):
        if leader is not None:
            attempts[row_id] = attempts.get(leader, attempts[row_id])
    return attempts


@dataclass(slots=True)
class _Open:
    """The batch being filled."""

    key: str
    spool: Path
    handle: IO[bytes]
    rows: RowsWriter
    count: int = 0  # requests in the body
    size: int = len(BODY_PREFIX) + len(BODY_SUFFIX)
    used: set[str] = field(default_factory=set)
    leaders: dict[str, str] = field(default_factory=dict)  # request key -> custom_id in the body
    followers: int = 0  # rows that share a leader's request


class Submitter:
    """Fills batches item by item and submits each when full (and the last one on ``finish``)."""

    def __init__(
        self,
        batch_log: BatchLog,
        api: BatchesApi,
        target: Target,
        input_schema: pa.Schema,
        *,
        max_requests: int,
        max_bytes: int,
    ) -> None:
        self.log = batch_log
        self.api = api
        self.target = target
        self.input_schema = input_schema
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.submitted: list[Submission] = []
        self.rows_submitted = 0  # rows in submitted batches, followers included
        self.requests_submitted = 0  # requests in their bodies (what is paid for)
        self._open: _Open | None = None
        self._sequence = 0

    def fits_alone(self, item: bytes) -> bool:
        """Whether one item fits in an empty batch at all."""
        return len(BODY_PREFIX) + len(item) + len(BODY_SUFFIX) <= self.max_bytes

    async def add(self, row: Row, payload: MessagePayload, attempt: int, key: str | None = None) -> None:
        """Add a row's request; sends the current batch first when this one would not fit.

        With a request ``key`` (dedupe on), a row whose key a row of the current batch already sent
        becomes that row's follower: recorded in the rows file, not in the body.
        """
        current = self._open
        if current is None:
            current = self._start()
        custom_id = custom_id_for(row.row_id, row.index, current.used)
        leader = current.leaders.get(key) if key is not None else None
        if leader is not None:
            current.used.add(custom_id)
            current.rows.add(custom_id, row.row_id, row.index, row.content_hash, attempt, row.values, leader)
            current.followers += 1
            return
        item = batch_item(custom_id, payload)
        if not self.fits_alone(item):
            raise RowError(
                f"request is {len(item) / 1e6:.1f} MB, over [batch] max_bytes ({self.max_bytes / 1e6:g} MB)",
                error_type="request_too_large",
            )
        if current.count + 1 > self.max_requests or current.size + 1 + len(item) > self.max_bytes:
            await self._send()
            current = self._start()
            custom_id = custom_id_for(row.row_id, row.index, current.used)
            item = batch_item(custom_id, payload)
        current.used.add(custom_id)
        try:
            if current.count:
                current.handle.write(b",")
                current.size += 1
            current.handle.write(item)
        except OSError as exc:
            raise OutputError(f"cannot write {current.spool}: {exc.strerror or exc}") from None
        current.size += len(item)
        current.count += 1
        current.rows.add(custom_id, row.row_id, row.index, row.content_hash, attempt, row.values)
        if key is not None:
            current.leaders[key] = custom_id

    async def finish(self) -> None:
        """Send the batch being filled, if any."""
        if self._open is not None and self._open.count:
            await self._send()

    def discard(self) -> None:
        """Drop an unsent batch (the run is stopping before sending it; nothing was submitted)."""
        current, self._open = self._open, None
        if current is not None:
            with contextlib.suppress(OSError):
                current.handle.close()
            with contextlib.suppress(OSError):
                current.spool.unlink()
            current.rows.discard()

    def _start(self) -> _Open:
        self._sequence += 1
        key = self.log.new_key(self._sequence)
        spool = self.log.spool_path(key)
        try:
            spool.parent.mkdir(parents=True, exist_ok=True)
            handle = spool.open("wb")
            handle.write(BODY_PREFIX)
        except OSError as exc:
            raise OutputError(f"cannot write {spool}: {exc.strerror or exc}") from None
        self._open = _Open(key, spool, handle, RowsWriter(self.log.rows_path(key), self.input_schema))
        return self._open

    async def _send(self) -> None:
        current, self._open = self._open, None
        assert current is not None
        try:
            current.handle.write(BODY_SUFFIX)
            current.handle.close()
        except OSError as exc:
            raise OutputError(f"cannot write {current.spool}: {exc.strerror or exc}") from None
        current.rows.close()
        target = self.target
        # the intent is on disk before the request leaves: a crash from here on leaves a trace
        intent = self.log.append(
            "intent",
            current.key,
            requests=current.count,
            bytes=current.size,
            fingerprint=target.fingerprint,
            base_url=target.base_url,
            sandbox=target.sandbox,
            job=target.job,
        )
        submission = Submission.from_intent(intent)
        try:
            info = await self.api.create(current.spool)
        except CreateUnconfirmed:
            self.submitted.append(submission)  # maybe submitted: its rows stay pending
            self._count(current)
            raise
        except BaseException as exc:
            # refused by the server (or stopped before an answer could matter): no batch exists
            if not isinstance(exc, Exception):
                raise  # cancelled mid-request: leave the intent for the orphan check
            self.log.append("abandoned", current.key, reason=f"create refused: {exc}")
            raise
        finally:
            with contextlib.suppress(OSError):
                current.spool.unlink()
        self.log.append(
            "submitted",
            current.key,
            batch_id=info.id,
            created_at=info.created_at.isoformat() if info.created_at else None,
        )
        submission.batch_id = info.id
        submission.phase = "submitted"
        self.submitted.append(submission)
        self._count(current)
        shared = f" (+{current.followers} rows sharing them)" if current.followers else ""
        log.info("submitted %s: %d requests%s, %.1f MB", info.id, current.count, shared, current.size / 1e6)

    def _count(self, current: _Open) -> None:
        self.rows_submitted += current.count + current.followers
        self.requests_submitted += current.count

"""Reading a finished batch's results into the output, as a stream, in whatever order they come.

Each line is one row's outcome, joined to its row through the submission's rows file by
``custom_id``; results are journalled a chunk at a time through the same writer as realtime mode, so
the output schema and the rerun rules are the same:

- ``succeeded``: an ``ok`` row with the usage exactly as the line reports it; a message that is not a
  success (:func:`pipeline.results.verdict.judge`, the same rule as realtime mode: cut off at
  ``max_tokens``, refused, out of context, or breaking its schema) makes the row an error of that
  type, keeping the reply;
- ``errored``: an error row with the API's error type; ``invalid_request_error`` stays an error, other
  types are sent again by the next invocation (the rerun rule), up to ``[batch] max_attempts``;
- ``expired``: an error row, ``expired``, sent again like a retryable error;
- ``canceled``: nothing is written; the row is simply not done, and the next invocation submits it.

Followers (dedupe: rows whose identical request a leader of the same submission carried) get their
leader's result as realtime mode gives it (:func:`pipeline.payloads.dedupe.shared_result`: same status, answer
or error, ``shared_request_with`` = the leader's row id, zero tokens, attempts 0), journalled in the
same batch as the leader's row, so a crash keeps all or none. A canceled leader writes nothing for its
followers either: they are submitted again with it.

Only a chunk of lines is held at once. A line whose ``custom_id`` is not sent in the submission (a
follower's custom_id is never sent) means the batch is not ours (see the orphan rule in
:mod:`pipeline.batch.run`): collection stops.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
from pydantic import ValidationError

from pipeline.api.batches import BatchesApi
from pipeline.api.classify import one_line, read_error_json
from pipeline.api.replies import parse_message
from pipeline.batch.state import ERROR_PREFIX, BatchLog, Submission, read_rows, row_leaders
from pipeline.errors import ForeignBatch, RetryableApiError
from pipeline.job.request import RequestSpec
from pipeline.payloads.dedupe import shared_result
from pipeline.records import Reply, Result, Row
from pipeline.results.journal import Journal
from pipeline.results.schema import output_schema
from pipeline.results.store import ResultStore
from pipeline.results.summary import ResultTally
from pipeline.results.verdict import judge

log = logging.getLogger("pipeline.batch")

CHUNK = 1000
RESULT_ATTEMPTS = 3  # whole downloads of one results file before giving up for this invocation


@dataclass(slots=True)
class BatchTally(ResultTally):
    """What collecting (and preparing) recorded in one invocation, and which rows now stand as errors."""

    canceled: int = 0
    error_rows: set[str] = field(default_factory=set)

    def add(self, result: Result) -> None:
        """Count one recorded result."""
        super(BatchTally, self).add(result)  # explicit: zero-argument super() fails with slots=True
        if result.status == "ok":
            self.error_rows.discard(result.row.row_id)  # an earlier error of this row was retried
        else:
            self.error_rows.add(result.row.row_id)


@dataclass(frozen=True, slots=True)
class _Index:
    """A rows file's positions: by custom_id sent, and the followers of each sent custom_id."""

    sent: dict[str, int]
    followers: dict[str, list[int]]


@dataclass(frozen=True, slots=True)
class Outcome:
    """One result line, decoded but not yet joined to its row."""

    custom_id: str
    kind: str  # succeeded | errored | expired | canceled
    reply: Reply | None = None
    error_type: str | None = None
    message: str | None = None


def parse_line(line: str, batch_id: str) -> Outcome:
    """A result line; ValueError when it is not one."""
    data = json.loads(line)
    if not isinstance(data, dict) or not isinstance(data.get("custom_id"), str):
        raise ValueError("result line has no custom_id")
    custom_id = data["custom_id"]
    result = data.get("result")
    if not isinstance(result, dict):
        raise ValueError(f"result line for {custom_id} has no result")
    kind = result.get("type")
    if kind == "succeeded":
        message = result.get("message")
        if not isinstance(message, dict):
            raise ValueError(f"succeeded result for {custom_id} has no message")
        try:
            reply = parse_message(message, batch_id)
        except (ValueError, TypeError) as exc:
            return Outcome(custom_id, "errored", error_type="parse_error", message=one_line(str(exc), 200))
        return Outcome(custom_id, "succeeded", reply=reply)
    if kind == "errored":
        error = result.get("error")
        error_type, text, _, _ = read_error_json(error if isinstance(error, dict) else {})
        return Outcome(custom_id, "errored", error_type=error_type or "api_error", message=text or "errored")
    if kind == "expired":
        return Outcome(
            custom_id, "expired", error_type="expired", message="expired before the batch processed it"
        )
    if kind == "canceled":
        return Outcome(custom_id, "canceled")
    raise ValueError(f"result for {custom_id} has unknown type {kind!r}")


def stored_request(sub: Submission) -> RequestSpec | None:
    """The ``[request]`` a submission was built from (for the schema check), when it still parses."""
    try:
        return RequestSpec.model_validate(sub.job.get("request") or {})
    except ValidationError:
        return None


class Collector:
    """Journals the results of ended batches into one output directory."""

    def __init__(self, store: ResultStore, batch_log: BatchLog, api: BatchesApi, tally: BatchTally) -> None:
        self.store = store
        self.log = batch_log
        self.api = api
        self.tally = tally

    async def collect(self, sub: Submission, counts: dict[str, int]) -> None:
        """Download and journal every result of ``sub``'s ended batch, then log it collected."""
        assert sub.batch_id is not None
        rows = read_rows(self.log.rows_path(sub.key))
        index: dict[str, int] = {}  # custom_id sent -> its row in the rows file
        followers: dict[str, list[int]] = {}  # leader custom_id -> rows that share its result
        custom_ids = rows.column("custom_id").to_pylist()
        for i, (custom_id, leader) in enumerate(zip(custom_ids, row_leaders(rows), strict=True)):
            if leader is None:
                index[custom_id] = i
            else:
                followers.setdefault(leader, []).append(i)
        values_type = rows.schema.field("values").type
        input_schema = pa.schema([values_type.field(i) for i in range(values_type.num_fields)])
        request = stored_request(sub)
        # the same columns as realtime mode, typed tool columns included
        journal = self.store.new_journal(output_schema(input_schema, request))
        seen: set[str] = set()
        try:
            for attempt in range(1, RESULT_ATTEMPTS + 1):
                try:
                    await self._download(sub, rows, _Index(index, followers), seen, journal, request)
                    break
                except RetryableApiError as exc:
                    if attempt == RESULT_ATTEMPTS:
                        raise
                    # what was journalled stays; the next download skips those lines
                    log.warning("results of %s broke off (%s); downloading again", sub.batch_id, exc)
        finally:
            journal.close()
        if journal.rows_written:
            journal.sync()
        self.log.append("collected", sub.key, batch_id=sub.batch_id, counts=counts)
        sub.phase = "collected"
        missing = len(index) - len(seen)
        if missing:
            log.warning(
                "%s: %d requests had no result line; their rows will be submitted again",
                sub.batch_id,
                missing,
            )

    async def _download(
        self,
        sub: Submission,
        rows: pa.Table,
        index: _Index,
        seen: set[str],
        journal: Journal,
        request: RequestSpec | None,
    ) -> None:
        assert sub.batch_id is not None
        chunk: list[Outcome] = []
        async with self.api.results(sub.batch_id) as lines:
            async for line in lines:
                if not line.strip():
                    continue
                try:
                    outcome = parse_line(line, sub.batch_id)
                except ValueError as exc:
                    log.warning("%s: skipping a result line: %s", sub.batch_id, exc)
                    continue
                if outcome.custom_id not in index.sent:
                    raise ForeignBatch(
                        f"batch {sub.batch_id} holds custom_id {outcome.custom_id!r}, which submission "
                        f"{sub.key} never sent; it is not this output's batch"
                    )
                if outcome.custom_id in seen:
                    continue
                seen.add(outcome.custom_id)
                chunk.append(outcome)
                if len(chunk) >= CHUNK:
                    self._write(sub, rows, index, chunk, journal, request)
                    chunk = []
        self._write(sub, rows, index, chunk, journal, request)

    def _write(
        self,
        sub: Submission,
        rows: pa.Table,
        index: _Index,
        chunk: list[Outcome],
        journal: Journal,
        request: RequestSpec | None,
    ) -> None:
        if not chunk:
            return
        positions = [index.sent[o.custom_id] for o in chunk]
        # followers right after their leader's rows: one take reads every row the chunk writes
        shared = [index.followers.get(o.custom_id, []) for o in chunk]
        picked = rows.take(pa.array(positions + [p for group in shared for p in group], type=pa.int64()))
        row_ids = picked.column("row_id").to_pylist()
        row_indexes = picked.column("row_index").to_pylist()
        hashes = picked.column("row_hash").to_pylist()
        attempts = picked.column("attempt").to_pylist()
        values = picked.column("values").to_pylist()

        def row_at(i: int) -> Row:
            return Row(row_indexes[i], row_ids[i], values[i] or {}, hashes[i] or "")

        now = datetime.now(UTC)
        results: list[Result] = []
        follower = len(chunk)  # where the next leader's followers start in ``picked``
        for i, outcome in enumerate(chunk):
            group = range(follower, follower + len(shared[i]))
            follower += len(shared[i])
            if outcome.kind == "canceled":
                # not done, and neither are its followers: all are submitted again
                self.tally.canceled += 1 + len(group)
                continue
            result = self._result(sub, row_at(i), attempts[i], outcome, now, request)
            results.append(result)
            results.extend(shared_result(result, row_at(j)) for j in group)
        # a leader and its followers reach the journal in one batch: a crash keeps all or none
        journal.append(results)
        for result in results:
            self.tally.add(result)

    @staticmethod
    def _result(
        sub: Submission, row: Row, attempt: int, outcome: Outcome, now: datetime, request: RequestSpec | None
    ) -> Result:
        where = f"{ERROR_PREFIX}{sub.batch_id}: "
        sent_with = request.max_tokens if request is not None else None
        if outcome.reply is not None:
            verdict = judge(request, outcome.reply)
            if verdict is None:
                return Result(
                    row,
                    "ok",
                    now,
                    sub.fingerprint,
                    reply=outcome.reply,
                    attempts=attempt,
                    max_tokens=sent_with,
                )
            return Result(
                row,
                "error",
                now,
                sub.fingerprint,
                reply=outcome.reply,  # paid for: its usage and text stay in the output
                attempts=attempt,
                error_type=verdict.error_type,
                error_message=where + verdict.message,
                max_tokens=sent_with,
            )
        return Result(
            row,
            "error",
            now,
            sub.fingerprint,
            attempts=attempt,
            error_type=outcome.error_type,
            error_message=where + one_line(outcome.message or "", 200),
            max_tokens=sent_with,
        )

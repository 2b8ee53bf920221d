"""Turns each outcome of a row into a result and journals it the moment it exists.

Owns: the :class:`Result` a reply, an error or a shared answer becomes (``ok``, or an error row of
the verdict's type that keeps the answer and its tokens; see :mod:`pipeline.results.verdict`), and
the running counts of a run (:class:`RunTally`: results, plus rows to do and rows skipped). Every
driver records through it, the local sender pool and the cluster's senders alike, so a row's result
is the same whichever engine sent it. Writes through any sink with ``append`` (a
:class:`~pipeline.results.journal.Journal`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from pipeline.payloads.dedupe import Dedupe, shared_result
from pipeline.records import Result, Row, Sent
from pipeline.results.summary import ResultTally
from pipeline.results.verdict import Verdict


class ResultSink(Protocol):
    """Where recorded results go: a journal, or a journal plus whatever else a driver needs to know."""

    def append(self, results: Sequence[Result]) -> None:
        """Record ``results`` together (all or none survive a crash)."""


@dataclass(slots=True)
class RunTally(ResultTally):
    """Running counts for the summary and the progress line: the results, plus rows to do and skipped."""

    to_do: int = 0
    skipped: int = 0


class Recorder:
    """Journals each result the moment it exists, so a crash loses only requests in flight.

    :param dedupe: the run's registry of identical requests; a leader's waiting followers are
        journalled in the same batch as the leader.
    :param max_tokens: what every request of this run is sent with (recorded with each result).
    """

    def __init__(
        self,
        journal: ResultSink,
        fingerprint: str,
        dedupe: Dedupe | None = None,
        max_tokens: int | None = None,
    ) -> None:
        self.journal = journal
        self.fingerprint = fingerprint
        self.max_tokens = max_tokens
        self.tally = RunTally()
        self.dedupe = dedupe

    def shared(self, row: Row, leader: Result) -> None:
        """``row`` asked exactly what ``leader.row`` asked: the leader's result is its own."""
        self.record(shared_result(leader, row))

    def answered(self, row: Row, sent: Sent, verdict: Verdict | None = None) -> None:
        """A reply: ``ok``, or an error row of the verdict's type that keeps the answer and its tokens."""
        self.record(answered_result(row, sent, self.fingerprint, verdict, self.max_tokens))

    def error(self, row: Row, error_type: str, message: str, attempts: int) -> None:
        """A row that ends without an answer (no request possible, or every attempt failed)."""
        self.record(error_result(row, error_type, message, attempts, self.fingerprint, self.max_tokens))

    def record(self, result: Result) -> None:
        """Journal ``result`` (with the followers waiting for it, when it is a leader's) and count it."""
        batch = [result]
        if self.dedupe is not None:
            # a leader and the rows waiting for it reach the journal in one batch: a crash keeps all or none
            batch += [shared_result(result, row) for row in self.dedupe.settle(result)]
        self.journal.append(batch)
        for item in batch:
            self.tally.add(item)


def answered_result(
    row: Row, sent: Sent, fingerprint: str, verdict: Verdict | None = None, max_tokens: int | None = None
) -> Result:
    """The result of a reply: ``ok``, or an error of the verdict's type keeping the reply and its tokens."""
    return Result(
        row=row,
        status="ok" if verdict is None else "error",
        finished_at=datetime.now(UTC),
        fingerprint=fingerprint,
        reply=sent.reply,
        attempts=sent.attempts,
        latency_ms=round(sent.latency_ms, 1),
        error_type=None if verdict is None else verdict.error_type,
        error_message=None if verdict is None else verdict.message,
        max_tokens=max_tokens,
    )


def error_result(
    row: Row, error_type: str, message: str, attempts: int, fingerprint: str, max_tokens: int | None = None
) -> Result:
    """The result of a row that got no answer."""
    return Result(
        row=row,
        status="error",
        finished_at=datetime.now(UTC),
        fingerprint=fingerprint,
        attempts=attempts,
        error_type=error_type,
        error_message=message,
        max_tokens=max_tokens,
    )

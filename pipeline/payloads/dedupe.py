"""Identical requests in one run are sent once; every row still gets its own result.

Owns: the registry that pairs a request key (``build.request_key``: model, parameters, rendered text
and image bytes) with the row whose request is sent (the leader) and the rows waiting for it
(followers), and the follower's copy of the leader's result. No I/O, no clock of its own.

Semantics, chosen so that totals stay true and nothing is lost:

- A follower's result is the leader's (answer, tool calls, or error), with ``shared_with`` naming the
  leader, ``attempts = 0`` and usage 0: only the leader's request was paid for, so summing the token
  columns gives what was billed.
- The runner journals a leader and its waiting followers in one batch, so a crash keeps all or none
  of them; rows not journalled are simply sent (and deduplicated) again by the next run.
- A leader that errors passes its error on; the next run retries leader and followers alike.
- Finished leaders are remembered for the last ``window`` distinct requests, which bounds memory on
  long runs; a later duplicate beyond that is sent again (never wrong, just not free).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal

from pipeline.records import Result, Row, Usage

DEDUPE_WINDOW = 50_000


@dataclass(slots=True)
class _Group:
    leader: Row
    followers: list[Row] = field(default_factory=list)


class Dedupe:
    """The run's registry of requests in flight and recently answered, by request key."""

    def __init__(self, window: int = DEDUPE_WINDOW) -> None:
        self.window = window
        self._pending: dict[str, _Group] = {}
        self._leading: dict[str, str] = {}  # leader row_id -> key
        self._finished: OrderedDict[str, Result] = OrderedDict()

    def claim(self, key: str, row: Row) -> tuple[Literal["lead", "wait", "copy"], Result | None]:
        """What ``row`` does with its request: send it (lead), wait for a leader, or copy a result now."""
        done = self._finished.get(key)
        if done is not None:
            self._finished.move_to_end(key)
            return "copy", done
        group = self._pending.get(key)
        if group is not None:
            group.followers.append(row)
            return "wait", None
        self._pending[key] = _Group(row)
        self._leading[row.row_id] = key
        return "lead", None

    def settle(self, result: Result) -> list[Row]:
        """Record a result; when it is a leader's, return the followers waiting for it."""
        key = self._leading.pop(result.row.row_id, None)
        if key is None:
            return []
        group = self._pending.pop(key)
        self._finished[key] = result
        if len(self._finished) > self.window:
            self._finished.popitem(last=False)
        return group.followers


def shared_result(leader: Result, row: Row) -> Result:
    """``row``'s result when the identical request of ``leader.row`` answered it."""
    reply = None if leader.reply is None else replace(leader.reply, usage=Usage())
    return replace(
        leader,
        row=row,
        reply=reply,
        attempts=0,
        latency_ms=None,
        finished_at=datetime.now(UTC),
        shared_with=leader.row.row_id,
    )

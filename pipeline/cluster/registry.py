"""The run's memory across workers: which rows are answered, and which identical requests are in flight.

One async actor per run, beside the driver:

- **Rows answered.** A sender tells it each row whose result it has journalled. Ray Data runs a batch
  again when the worker holding it dies (a ``kill -9``, a lost node), or when the output of a finished
  batch is lost with its node before the driver read it; the batch's new sender asks first
  (:meth:`Registry.begin`) and sends only rows no one has answered, so what a crash costs is the
  requests that were in flight. The driver says when it has read a row's outcome
  (:meth:`Registry.consumed`): Ray never runs that batch again, and the entry is dropped, so the
  memory stays bounded by the rows in flight, not the rows of the run.
- **Identical requests.** When a job dedupes, the first row with a request key sends it (the leader)
  and the others wait for its result (:meth:`Registry.share`), on whichever worker they are, as a
  local run's :class:`~pipeline.payloads.dedupe.Dedupe` does within one process; the same window of
  finished requests is remembered. A leader whose batch is run again leads again.
- **Senders.** Each sender enlists its actor, so that the driver can stop every one before it folds
  the journals. A sender whose journal is uploaded in segments (an object-storage output) enlists as
  one to wait for: when the driver ends the run (:meth:`Registry.end`), each uploads what it still
  stages and says so (:meth:`Registry.uploaded`), and the driver waits for that
  (:meth:`Registry.not_uploaded`) before it stops them.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.payloads.dedupe import DEDUPE_WINDOW
from pipeline.records import Result

LEAD: Literal["lead"] = "lead"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the driver counts of one row's result (its progress and the rows it has read)."""

    row_id: str
    status: str
    error_type: str | None = None
    shared: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @classmethod
    def of(cls, result: Result) -> Outcome:
        usage = result.reply.usage if result.reply is not None else None
        return cls(
            row_id=result.row.row_id,
            status=result.status,
            error_type=result.error_type,
            shared=result.shared_with is not None,
            input_tokens=usage.input_tokens if usage else 0,
            output_tokens=usage.output_tokens if usage else 0,
            cache_creation_input_tokens=usage.cache_creation_input_tokens if usage else 0,
            cache_read_input_tokens=usage.cache_read_input_tokens if usage else 0,
        )


class Registry:
    """The actor (see the module docstring); every method is a coroutine on its one event loop."""

    def __init__(self, window: int = DEDUPE_WINDOW) -> None:
        self.window = window
        self._answered: dict[str, Outcome] = {}
        self._leaders: dict[str, str] = {}  # request key -> row_id of the row sending it
        self._waiting: dict[str, asyncio.Future[Result | None]] = {}
        self._finished: OrderedDict[str, Result] = OrderedDict()
        self._senders: list[Any] = []
        self._uploaded: dict[str, bool] = {}  # uploading sender -> nothing staged since the end began
        self._handles: dict[str, Any] = {}  # uploading sender -> its actor
        self._end = asyncio.Event()

    async def enlist(self, sender: Any, uploads: str | None = None) -> None:
        """Remember a sender's actor handle; ``uploads`` names a sender the driver waits for at the end."""
        self._senders.append(sender)
        if uploads is not None:
            self._uploaded.setdefault(uploads, False)
            self._handles[uploads] = sender

    async def end(self) -> None:
        """The run is over: the uploading senders upload what they stage."""
        self._end.set()

    async def ending(self) -> None:
        """Return once the run is over (a sender waits on this)."""
        await self._end.wait()

    async def uploaded(self, sender: str, done: bool) -> None:
        """A sender has nothing more to upload (``done``: uploaded, or kept for a later run after a failed
        upload), or journalled more since."""
        self._uploaded[sender] = done

    async def not_uploaded(self) -> list[tuple[str, Any]]:
        """The uploading senders with results not yet in the bucket, with their actors."""
        return [(name, self._handles[name]) for name, done in self._uploaded.items() if not done]

    async def gone(self, sender: str) -> None:
        """A sender's process is gone (killed, or its actor restarted as another): wait for it no more."""
        self._uploaded.pop(sender, None)
        self._handles.pop(sender, None)

    async def senders(self) -> list[Any]:
        """Every sender that enlisted."""
        return list(self._senders)

    async def begin(self, row_ids: list[str]) -> dict[str, Outcome]:
        """Of these rows, the ones already answered this run (a batch run again), with their outcomes."""
        answered = self._answered
        return {row_id: answered[row_id] for row_id in row_ids if row_id in answered}

    async def answered(self, outcomes: list[Outcome]) -> None:
        """These rows' results are journalled."""
        for outcome in outcomes:
            self._answered[outcome.row_id] = outcome

    async def consumed(self, row_ids: list[str]) -> None:
        """The driver has read these rows' outcomes: their batch is never run again."""
        for row_id in row_ids:
            self._answered.pop(row_id, None)

    async def share(self, key: str, row_id: str) -> Result | Literal["lead"] | None:
        """What the row with request ``key`` does: ``"lead"`` (send it), or the leader's result.

        Waits while another row's identical request is in flight; None when that leader gave up
        without a result (the run is stopping: a rerun sends the row).
        """
        done = self._finished.get(key)
        if done is not None:
            self._finished.move_to_end(key)
            return done
        leader = self._leaders.get(key)
        if leader is None or leader == row_id:
            self._leaders[key] = row_id
            return LEAD
        future = self._waiting.get(key)
        if future is None:
            future = self._waiting[key] = asyncio.get_running_loop().create_future()
        return await asyncio.shield(future)

    async def settle(self, key: str, result: Result) -> None:
        """The leader of ``key`` has its result (journalled): hand it to the rows waiting for it."""
        self._leaders.pop(key, None)
        self._finished[key] = result
        if len(self._finished) > self.window:
            self._finished.popitem(last=False)
        future = self._waiting.pop(key, None)
        if future is not None and not future.done():
            future.set_result(result)

    async def abandon(self, key: str) -> None:
        """The leader of ``key`` stopped without a result; the rows waiting for it get none."""
        self._leaders.pop(key, None)
        future = self._waiting.pop(key, None)
        if future is not None and not future.done():
            future.set_result(None)


def create_registry() -> Any:
    """Start the run's registry actor (no CPU of its own, beside the driver)."""
    import ray

    from pipeline.cluster.limiter import MAX_WAITING, driver_node

    actor = ray.remote(Registry).options(
        num_cpus=0,
        max_concurrency=MAX_WAITING,
        max_restarts=-1,
        max_task_retries=-1,
        scheduling_strategy=driver_node(),
    )
    return actor.remote()

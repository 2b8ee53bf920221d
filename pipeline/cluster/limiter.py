"""One rate limit for the whole cluster: the limiter actor, and the stand-ins each worker's client uses.

An account's limits are the organisation's, not a process's
(https://platform.claude.com/docs/en/api/rate-limits), so N workers pacing themselves would send N
times the limit. The :class:`Limiter` is one async actor holding the run's one
:class:`~pipeline.api.ratelimit.RateLimits` and :class:`~pipeline.api.ratelimit.PauseGate` (the same
pacing as a local run, not a second algorithm). Every request of every worker waits in
:meth:`Limiter.admit` for the shared pause and the request, input-token and output-token budgets, so
N workers together send one account's worth; limits a response states retune the budgets for
everyone, and a 429 anywhere pauses everyone.

Each worker's :class:`~pipeline.api.client.MessagesClient` is handed :class:`SharedBudgets` and
:class:`SharedGate` (:mod:`pipeline.api.admission`). An admission is one round trip to the actor
(about 1.5 ms; one actor admits about 1,000 requests a second, far above any account's request
limit); what follows it (the answer and its latency, the real usage, a 429, a stated limit, the
request's end) goes back as notes, batched per turn of the worker's event loop into one call.

The limiter is also where a run stops sending: after a signal, or when any worker meets an error no
request can get past (a bad key, a spend cap), every later admission is refused with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.api.ratelimit import LIMIT_HEADERS, PauseGate, RateLimits, Reservation, loop_clock
from pipeline.errors import FatalApiError
from pipeline.records import Usage

if TYPE_CHECKING:
    from pipeline.api.client import MessagesClient
    from pipeline.job.spec import JobSpec

log = logging.getLogger("pipeline.run")

# in-flight admissions the actor serves at once: every worker's waiting requests, with room to spare
MAX_WAITING = 10_000


NODE_LOST = "this worker's node is lost"


class SendingStopped(Exception):
    """The run sends nothing new (a signal, or a fatal error on some worker); the row is left for a rerun."""


@dataclass(frozen=True, slots=True)
class LimiterSettings:
    """The job's limits for the whole cluster.

    :param concurrency: requests in flight across every worker (ends a slow start once it cannot bind).
    :param probe_timeout_s: a slow start's first request holds up every other; if its worker dies
        before it ends, the limiter lets the next one go after this long.
    """

    requests_per_minute: float | None
    input_tokens_per_minute: float | None
    output_tokens_per_minute: float | None
    concurrency: int
    slow_start: bool = True
    probe_timeout_s: float = 120.0

    @classmethod
    def for_job(cls, spec: JobSpec) -> LimiterSettings:
        """The job's ``[limits]``; ``concurrency`` is the job's, shared by every worker."""
        limits = spec.limits
        return cls(
            requests_per_minute=limits.requests_per_minute,
            input_tokens_per_minute=limits.input_tokens_per_minute,
            output_tokens_per_minute=limits.output_tokens_per_minute,
            concurrency=limits.concurrency,
            probe_timeout_s=limits.timeout_s + 10.0,
        )


@dataclass(frozen=True, slots=True)
class FatalReport:
    """A fatal API error, as it travels from a worker to the driver (exceptions do not pickle reliably)."""

    message: str
    status: int | None
    error_type: str
    request_id: str | None

    @classmethod
    def of(cls, error: FatalApiError) -> FatalReport:
        return cls(error.message, error.status, error.error_type, error.request_id)

    def error(self) -> FatalApiError:
        """The error again, on the driver."""
        return FatalApiError(
            self.message, status=self.status, error_type=self.error_type, request_id=self.request_id
        )


@dataclass(frozen=True, slots=True)
class Note:
    """What a worker tells the limiter after an admission.

    ``kind`` is one of: ``answered`` (``latency_s``), ``throttled`` (a 429), ``release`` (the
    request of ``reservation`` is over), ``settle`` (``reservation`` and the reply's ``usage``),
    ``learn`` (the limit headers of a response), ``pause`` (``seconds``), ``count`` (``requests``
    sent and ``retries`` waited since the last count).
    """

    kind: str
    latency_s: float | None = None
    reservation: Reservation | None = None
    usage: Usage | None = None
    headers: Mapping[str, str] | None = None
    seconds: float = 0.0
    requests: int = 0
    retries: int = 0


@dataclass(frozen=True, slots=True)
class LimiterStats:
    """The limiter's counts, for the driver's progress and summary."""

    admitted: int
    in_flight: int
    requests: int
    retries: int
    throttled: int
    stopping: str | None
    fatal: FatalReport | None
    requests_per_minute: float | None  # the pace of requests now (the job's, a stated or a found limit)


class Limiter:
    """The actor (see the module docstring). Created by :func:`create_limiter`; every method is a coroutine,
    so everything runs on the actor's one event loop, which the budgets are bound to."""

    def __init__(self, settings: LimiterSettings) -> None:
        self.settings = settings
        self._limits: RateLimits | None = None
        self._gate: PauseGate | None = None
        self._admitted = 0
        self._released = 0
        self._requests = 0
        self._retries = 0
        self._throttled = 0
        self._stopping: str | None = None
        self._fatal: FatalReport | None = None
        self._probe_timer: asyncio.TimerHandle | None = None
        self._settling: set[asyncio.Task[None]] = set()

    def _state(self) -> tuple[RateLimits, PauseGate]:
        if self._limits is None or self._gate is None:  # made inside the running loop, as they must be
            settings = self.settings
            self._limits = RateLimits(
                requests_per_minute=settings.requests_per_minute,
                input_tokens_per_minute=settings.input_tokens_per_minute,
                output_tokens_per_minute=settings.output_tokens_per_minute,
                slow_start=settings.slow_start,
                concurrency=settings.concurrency,
            )
            self._gate = PauseGate(clock=loop_clock(), sleep=asyncio.sleep)
        return self._limits, self._gate

    async def admit(self, input_tokens: int, max_tokens: int) -> Reservation | str:
        """Wait for the pause and the budgets; the reservation, or why nothing more may be sent."""
        limits, gate = self._state()
        while True:
            if self._stopping is not None:
                return self._stopping
            await gate.wait()
            reservation = await limits.acquire(input_tokens=input_tokens, max_tokens=max_tokens)
            if self._stopping is None and not gate.paused:
                break
            # stopped, or a 429 arrived while this request waited for budget: take budget afresh after
            # the pause rather than release every waiting request at once (see MessagesClient._attempt)
            limits.release(reservation)
        self._admitted += 1
        if reservation.probe:
            loop = asyncio.get_running_loop()
            self._probe_timer = loop.call_later(
                self.settings.probe_timeout_s, self._expire_probe, reservation
            )
        return reservation

    async def report(self, notes: list[Note]) -> None:
        """Apply a worker's notes, in the order it made them."""
        limits, gate = self._state()
        for note in notes:
            kind = note.kind
            if kind == "answered":
                limits.answered(note.latency_s)
            elif kind == "throttled":
                self._throttled += 1
                limits.throttled()
            elif kind == "release" and note.reservation is not None:
                self._released += 1
                if note.reservation.probe and self._probe_timer is not None:
                    self._probe_timer.cancel()
                    self._probe_timer = None
                limits.release(note.reservation)
            elif kind == "settle" and note.reservation is not None and note.usage is not None:
                # paying a usage debt may wait; the worker does not wait for it, the budget does
                task = asyncio.create_task(limits.settle(note.reservation, note.usage))
                self._settling.add(task)
                task.add_done_callback(self._settling.discard)
            elif kind == "learn" and note.headers is not None:
                limits.learn(note.headers)
            elif kind == "pause":
                gate.pause(note.seconds)
            elif kind == "count":
                self._requests += note.requests
                self._retries += note.retries

    async def stop(self, reason: str, fatal: FatalReport | None = None) -> None:
        """Admit nothing more from now on (the first reason stays); requests in flight may finish."""
        if self._stopping is None:
            self._stopping = reason
        if fatal is not None and self._fatal is None:
            self._fatal = fatal

    async def stopping(self) -> str | None:
        """Why the run sends nothing new, or None while it goes on."""
        return self._stopping

    async def stats(self) -> LimiterStats:
        """The counts so far."""
        limits, _ = self._state()
        return LimiterStats(
            admitted=self._admitted,
            in_flight=max(0, self._admitted - self._released),
            requests=self._requests,
            retries=self._retries,
            throttled=self._throttled,
            stopping=self._stopping,
            fatal=self._fatal,
            requests_per_minute=limits.requests.per_minute if limits.requests is not None else None,
        )

    def _expire_probe(self, reservation: Reservation) -> None:
        self._probe_timer = None
        log.warning("the first request of the run did not end in time (its worker died?): sending on")
        if self._limits is not None:
            self._limits.release(reservation)


def create_limiter(settings: LimiterSettings) -> Any:
    """Start the run's limiter actor (no CPU of its own, on the driver's node when there is one)."""
    import ray

    actor = ray.remote(Limiter).options(
        num_cpus=0,
        max_concurrency=MAX_WAITING,
        # a limiter lost with its node comes back (with fresh budgets) and the calls waiting are retried
        max_restarts=-1,
        max_task_retries=-1,
        scheduling_strategy=driver_node(),
    )
    return actor.remote(settings)


def driver_node() -> Any:
    """Ray's scheduling strategy for an actor that belongs beside the driver (soft: anywhere if need be)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        node = ray.get_runtime_context().get_node_id()
    except (AssertionError, RuntimeError):  # a Ray Client driver is on no node
        return "DEFAULT"
    return NodeAffinitySchedulingStrategy(node, soft=True)


class SharedBudgets:
    """A worker client's budgets, admitted by the cluster's limiter (:class:`pipeline.api.admission.Budgets`).

    Create it inside the worker's event loop. ``watch`` a client to have its request and retry counts
    reported with the notes. ``lost`` says when this worker's node is gone: an admission then sends
    nothing, however long the request waited for it (see :meth:`acquire`).
    """

    def __init__(self, limiter: Any, lost: Callable[[], bool] = lambda: False) -> None:
        self._limiter = limiter
        self._lost = lost
        self._notes: list[Note] = []
        self._flush_handle: asyncio.Handle | None = None
        self._stated: dict[str, str] = {}
        self._client: MessagesClient | None = None
        self._counted = (0, 0)
        self.stopped: str | None = None  # why the limiter refused, once it has

    def watch(self, client: MessagesClient) -> None:
        """Report ``client``'s requests sent and retries (the run's totals are the limiter's)."""
        self._client = client

    async def acquire(self, *, input_tokens: int, max_tokens: int) -> Reservation:
        """One admission by the limiter; raises :class:`SendingStopped` once the run sends nothing new."""
        if self.stopped is not None:
            raise SendingStopped(self.stopped)
        if self._lost():
            raise SendingStopped(NODE_LOST)
        self.flush()  # what happened before this request reaches the limiter before it
        ref = self._limiter.admit.remote(input_tokens, max_tokens)
        try:
            granted: Reservation | str = await ref
        except asyncio.CancelledError:
            import ray

            ray.cancel(ref)  # the limiter frees a slow start's probe if it was about to grant it
            raise
        if isinstance(granted, str):
            self.stopped = granted
            raise SendingStopped(granted)
        if self._lost():
            # Every row of a batch is queued at the client's slots long before its turn: one admitted
            # after its node was lost would be paid here and again where Ray runs the batch anew.
            self.release(granted)
            raise SendingStopped(NODE_LOST)
        return granted

    def learn(self, headers: Mapping[str, str]) -> None:
        stated = {name: value for name in LIMIT_HEADERS.values() if (value := headers.get(name)) is not None}
        if stated and stated != self._stated:  # the hosted API states them on every response
            self._stated = stated
            self.note(Note("learn", headers=stated))

    def answered(self, latency_s: float | None = None) -> None:
        self.note(Note("answered", latency_s=latency_s))

    def throttled(self) -> None:
        self.note(Note("throttled"))

    def release(self, reservation: Reservation) -> None:
        self.note(Note("release", reservation=reservation))

    async def settle(self, reservation: Reservation, usage: Usage) -> None:
        self.note(Note("settle", reservation=reservation, usage=usage))

    def note(self, note: Note) -> None:
        """Queue a note; the queue goes to the limiter in one call when this turn of the loop ends."""
        self._notes.append(note)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Send the queued notes now (and the client's counts since the last time)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        client = self._client
        if client is not None:
            counts = (client.requests_sent, client.retries)
            requests, retries = counts[0] - self._counted[0], counts[1] - self._counted[1]
            if requests or retries:
                self._notes.append(Note("count", requests=requests, retries=retries))
                self._counted = counts
        if self._notes:
            notes, self._notes = self._notes, []
            self._limiter.report.remote(notes)


class SharedGate(PauseGate):
    """A worker's pause: its own 429s hold its senders at once and go to the limiter, which holds everyone.

    Pauses that other workers caused are enforced by the limiter's admission, not here.
    """

    def __init__(self, budgets: SharedBudgets) -> None:
        super().__init__(clock=loop_clock(), sleep=asyncio.sleep)
        self._budgets = budgets

    def pause(self, seconds: float) -> None:
        super().pause(seconds)
        if seconds > 0 and math.isfinite(seconds):
            self._budgets.note(Note("pause", seconds=seconds))

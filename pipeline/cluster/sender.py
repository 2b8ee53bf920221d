"""The senders of a cluster run: async actors (a Ray Data actor pool) that prepare, send and journal rows.

Each sender is one worker process with its own :class:`~pipeline.api.client.MessagesClient`, made
inside the actor's event loop on its first batch, and admitted by the cluster's one limiter
(:mod:`pipeline.cluster.limiter`). A batch's rows are prepared where they are (images decoded and
shrunk on this worker, on as many threads as the worker has CPUs), sent, sent again while a tool
input breaks its schema (:func:`~pipeline.results.conforming.send_conforming`), and each result is
journalled the moment it exists (:class:`~pipeline.results.recorder.Recorder`), exactly as a local
run records it. A result is reported to the run's registry only once it is in the journal. Images and
documents in object storage are fetched by the worker, with the credentials of its own environment.

With an object-storage output the journal goes up in segments as the run goes; when the driver ends
the run (``Registry.end``), each sender waits until no batch of its own is running, uploads what it
still stages, and tells the registry, so that the driver folds every result in.

The API key is read from the worker's own environment (``[api] api_key_env``): it is never an
argument of a task or an actor, nor part of a runtime environment, which Ray logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.api.client import ClientConfig, MessagesClient
from pipeline.catalog.providers import PUBLIC_KEYS
from pipeline.cluster.limiter import FatalReport, SendingStopped, SharedBudgets, SharedGate
from pipeline.cluster.output import JournalWriter, OutputTarget, SegmentJournalWriter, writer_name
from pipeline.cluster.registry import LEAD, Outcome
from pipeline.cluster.source import block_rows
from pipeline.errors import ApiError, ConfigError, FatalApiError, OutputError
from pipeline.job.spec import JobSpec
from pipeline.payloads.prepare import Prepared, prepare_rows
from pipeline.payloads.transport import transport_for
from pipeline.records import Result
from pipeline.results.conforming import send_conforming
from pipeline.results.recorder import Recorder, answered_result, error_result
from pipeline.rows.media import online_loader
from pipeline.rows.reader import SourcedRow
from pipeline.rows.storage import ObjectStorage, StorageSettings

log = logging.getLogger("pipeline.run")

OUTCOME_SCHEMA = pa.schema(
    [
        pa.field("row_id", pa.string()),
        pa.field("status", pa.string()),
        pa.field("error_type", pa.string()),
        pa.field("shared", pa.bool_()),
        pa.field("input_tokens", pa.int64()),
        pa.field("output_tokens", pa.int64()),
        pa.field("cache_creation_input_tokens", pa.int64()),
        pa.field("cache_read_input_tokens", pa.int64()),
        pa.field("skipped", pa.int64()),
    ]
)


@dataclass(frozen=True, slots=True)
class KeySource:
    """Where a worker finds the API key: its own environment, never the driver's arguments.

    :param fallback: a key that is no secret (the sandbox's, or a placeholder for a server that checks
        none), used when the environment has none.
    """

    env: str
    fallback: str | None = None

    def read(self) -> str:
        key = os.environ.get(self.env, "").strip() or self.fallback
        if not key:
            raise ConfigError(
                f"{self.env} is not set on the Ray node {socket.gethostname()}: every node reads the API key "
                "from its own environment (set it where the node's processes start)"
            )
        return key


def key_source(env: str, api_key: str, *, local: bool) -> tuple[KeySource, dict[str, str]]:
    """Where a run's workers find ``api_key``, and what a local instance's processes must start with.

    A key that is no secret (:data:`~pipeline.catalog.providers.PUBLIC_KEYS`) travels; any other
    stays in environments: the workers' own, or, for a local instance started for the run, the one
    its processes inherit (never logged). A key the driver holds only in memory cannot reach a
    running cluster at all.

    :raises ConfigError: the key is not in ``env`` here and the cluster is already running.
    """
    if api_key in PUBLIC_KEYS:  # the sandbox's, or a placeholder
        return KeySource(env, fallback=api_key), {}
    if os.environ.get(env, "").strip() == api_key:
        return KeySource(env), {}
    if local:
        return KeySource(env), {env: api_key}
    raise ConfigError(
        f"the API key must be in {env} (on every node of the cluster, and here): the Ray engine never "
        "sends it to workers"
    )


@dataclass(frozen=True, slots=True)
class SendPlan:
    """What every sender of a run gets (pickled to each worker; it holds no key).

    :param limiter: the run's limiter actor; ``registry`` its registry actor.
    :param concurrency: requests one sender keeps in flight (the job's concurrency, split).
    :param threads: threads that prepare images on one sender (its share of its node's CPUs).
    :param output: where the journals go; None for a dataset's senders, whose results are the dataset.
    :param schema: the journal's schema (``results.schema.output_schema`` of the input).
    :param track: report journalled rows to the registry (so a batch run again resends nothing).
    """

    spec: JobSpec
    base_url: str
    key: KeySource
    limiter: Any
    registry: Any
    concurrency: int
    threads: int
    output: OutputTarget | None = None
    schema: pa.Schema | None = None
    track: bool = True


class Sending:
    """One sender's moving parts: its client, its journal, and the work of one batch at a time."""

    def __init__(self, plan: SendPlan) -> None:
        self.plan = plan
        self.request = plan.spec.request
        self.fingerprint = self.request.fingerprint()
        self._raylet = os.getppid()  # a Ray worker is its raylet's child
        self.budgets = SharedBudgets(plan.limiter, lost=lambda: self.node_lost)
        self.client: MessagesClient | None = None
        self.journal: JournalWriter | None = None
        self.fatal: FatalReport | None = None
        self.storage: ObjectStorage | None = None
        self.transport = transport_for(self.request.image_transport, None, presign=self.request.presign)
        self.name = ""
        self._answered: list[Outcome] = []
        self._report: asyncio.Handle | None = None
        # an object-storage journal: batches running, results not yet uploaded, the end has come
        self._running = 0
        self._idle = asyncio.Event()
        self._staged = False
        self._ending = False
        self._uploader: asyncio.Task[None] | None = None
        self._uploading: asyncio.Lock | None = None

    async def open(self) -> None:
        """Inside the actor's loop: the executor that prepares images, the client, the journal."""
        plan = self.plan
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=plan.threads, thread_name_prefix="prepare"))
        config = ClientConfig.for_job(
            plan.spec, base_url=plan.base_url, api_key=plan.key.read(), concurrency=plan.concurrency
        )
        client = MessagesClient(config, limits=self.budgets, gate=SharedGate(self.budgets))
        await client.__aenter__()
        self.budgets.watch(client)
        self.client = client
        self.storage = ObjectStorage(StorageSettings.from_spec(plan.spec.storage))
        request = self.request
        self.transport = transport_for(request.image_transport, self.storage, presign=request.presign)
        self.name = writer_name()
        self._idle.set()
        if plan.output is not None and plan.schema is not None:
            self.journal = plan.output.open_journal(plan.schema, writer=self.name)
            if isinstance(self.journal, SegmentJournalWriter):
                self._uploading = asyncio.Lock()
                self._uploader = asyncio.create_task(self._upload_at_end())

    @property
    def uploads(self) -> str | None:
        """This sender's name when the driver must wait for its uploads at the end, else None."""
        return self.name if self._uploader is not None else None

    async def _upload_at_end(self) -> None:
        """Once the run is over, upload what is staged as soon as no batch runs (and again after any
        batch that journals more)."""
        await self.plan.registry.ending.remote()
        self._ending = True
        await self._idle.wait()
        await self._upload()

    async def _upload(self) -> None:
        journal = self.journal
        assert isinstance(journal, SegmentJournalWriter)
        assert self._uploading is not None
        async with self._uploading:  # one upload at a time: the end, and a batch that ended after it
            self._staged = False
            journal.rotate()
            try:
                await asyncio.to_thread(journal.upload)
            except OutputError as exc:
                # the staging folder keeps them (a later run on this node uploads them): nothing to wait for
                log.error("%s", exc)
            self.plan.registry.uploaded.remote(self.name, not self._staged)

    def staged(self) -> None:
        """Results went into the journal: after the end, the driver must wait for them again."""
        if self._uploader is None:
            return
        if self._ending and not self._staged:
            self.plan.registry.uploaded.remote(self.name, False)
        self._staged = True

    def close(self) -> None:
        """Finish the journal (when the actor is let go; a killed one leaves it readable anyway)."""
        if self.journal is not None:
            self.journal.close()
            self.journal = None
        if self.storage is not None:
            self.storage.close()
            self.storage = None

    @property
    def stopped(self) -> bool:
        """Send nothing new: the run is stopping, or this worker's node is lost (its raylet, the
        worker's parent, is gone: Ray runs this worker's batch again elsewhere, and a worker that
        went on sending would pay for its rows twice)."""
        return self.budgets.stopped is not None or self.fatal is not None or self.node_lost

    @property
    def node_lost(self) -> bool:
        """This worker's raylet (its parent) is gone: the cluster counts its node as dead."""
        return os.getppid() != self._raylet

    async def _end_with_node(self) -> None:
        """A batch cut short on a lost node must never come back as done: Ray would take it as
        finished and its unsent rows would have no result, in a run that says it succeeded. End the
        process, as the node's end would (Ray runs the batch again elsewhere); first tell the registry
        what is journalled, so the retry resends only what was in flight."""
        outcomes, self._answered = self._answered, []
        if outcomes:
            reply = self.plan.registry.answered.remote(outcomes)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(_delivered(reply), 5)
        log.warning("%s: this worker's node is lost; its batch runs again elsewhere", self.name)
        os._exit(1)

    async def process(self, rows: Sequence[SourcedRow]) -> tuple[list[Result], list[Outcome]]:
        """Send a batch's rows; their results, and the outcomes of rows answered by an earlier try of it."""
        assert self.client is not None
        plan = self.plan
        earlier: dict[str, Outcome] = {}
        if plan.track and rows:
            earlier = await plan.registry.begin.remote([sourced.row.row_id for sourced in rows])
        todo = [sourced for sourced in rows if sourced.row.row_id not in earlier]
        results: list[Result] = []
        recorder = Recorder(_BatchSink(self, results), self.fingerprint, max_tokens=self.request.max_tokens)
        loader = online_loader(
            self.client.http,
            root=self.request.image_root,
            timeout_s=self.client.config.timeout_s,
            storage=self.storage,
        )

        async def take(prepared: Prepared) -> None:
            await self._take(prepared, recorder)

        self._running += 1
        self._idle.clear()
        try:
            if todo:
                await prepare_rows(
                    self.request,
                    iter(todo),
                    loader,
                    take,
                    slots=len(todo),
                    keys=self.request.dedupes,
                    stopping=lambda: self.stopped,
                    transport=self.transport,
                )
        finally:
            self._running -= 1
            if not self._running:
                self._idle.set()
        if self.node_lost and self.budgets.stopped is None and self.fatal is None:
            await self._end_with_node()
        self.budgets.flush()
        self._send_answered()
        if self._ending and self._staged and not self._running:
            await self._upload()
        return results, list(earlier.values())

    async def _take(self, prepared: Prepared, recorder: Recorder) -> None:
        row = prepared.row
        if prepared.error is not None or prepared.payload is None:
            error = prepared.error
            assert error is not None
            recorder.error(row, error.error_type, str(error), attempts=0)
            return
        if self.stopped:
            return  # never sent, so never paid: a rerun sends it
        registry = self.plan.registry
        key = prepared.key
        if key is not None:
            verdict = await registry.share.remote(key, row.row_id)
            if verdict is None:
                return  # its leader stopped without an answer: a rerun sends both
            if verdict != LEAD:
                recorder.shared(row, verdict)
                return
        result = await self._send(prepared)
        if result is not None:
            recorder.record(result)
        if key is not None:
            if result is None:
                registry.abandon.remote(key)
            else:
                registry.settle.remote(key, result)

    async def _send(self, prepared: Prepared) -> Result | None:
        """The row's result, or None when it was not (fully) sent because the run is stopping."""
        assert self.client is not None
        assert prepared.payload is not None
        row = prepared.row
        try:
            sent, verdict = await send_conforming(
                self.client,
                self.request,
                prepared.payload,
                input_tokens=prepared.input_tokens,
                row_id=row.row_id,
                stopping=lambda: self.stopped,
            )
        except SendingStopped:
            return None
        except FatalApiError as exc:
            self.fatal = FatalReport.of(exc)
            self.plan.limiter.stop.remote(f"{exc}", self.fatal)
            return None
        except ApiError as exc:
            return error_result(
                row, exc.error_type, str(exc), exc.attempts, self.fingerprint, self.request.max_tokens
            )
        except Exception as exc:  # the worker boundary: one row's surprise must not end the run
            log.exception("unexpected error on row %s", row.row_id)
            message = str(exc) or type(exc).__name__
            return error_result(
                row, type(exc).__name__, message, 1, self.fingerprint, self.request.max_tokens
            )
        return answered_result(row, sent, self.fingerprint, verdict, self.request.max_tokens)

    def journalled(self, results: Sequence[Result]) -> None:
        """Results are in the journal: tell the registry (once per turn of the loop)."""
        if not self.plan.track:
            return
        self._answered.extend(Outcome.of(result) for result in results)
        if self._report is None:
            self._report = asyncio.get_running_loop().call_soon(self._send_answered)

    def _send_answered(self) -> None:
        if self._report is not None:
            self._report.cancel()
            self._report = None
        if self._answered:
            outcomes, self._answered = self._answered, []
            self.plan.registry.answered.remote(outcomes)


async def _delivered(reply: Any) -> None:
    """Wait for an actor call's reply (a Ray ObjectRef is awaitable)."""
    await reply


class _BatchSink:
    """The recorder's sink in a sender: the journal (written through at once), then the batch's results."""

    def __init__(self, sending: Sending, results: list[Result]) -> None:
        self.sending = sending
        self.results = results

    def append(self, results: Sequence[Result]) -> None:
        journal = self.sending.journal
        if journal is not None:
            journal.append(results)
            journal.flush()  # in the output before anyone is told it is
        self.results.extend(results)
        self.sending.staged()
        self.sending.journalled(results)


class SenderBase:
    """What both kinds of sender share: the plan, and one ``Sending`` opened on the first batch."""

    def __init__(self, plan: SendPlan) -> None:
        self.plan = plan
        self._sending: Sending | None = None
        self._opening: asyncio.Lock | None = None

    async def sending(self) -> Sending:
        if self._sending is not None:
            return self._sending
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:  # two first batches may arrive at once
            if self._sending is None:
                sending = Sending(self.plan)
                await sending.open()
                self._sending = sending
                import ray

                self.plan.registry.enlist.remote(ray.get_runtime_context().current_actor, sending.uploads)
        return self._sending

    def __del__(self) -> None:
        if self._sending is not None:
            self._sending.close()


class JobSender(SenderBase):
    """The map_batches class of ``pipeline run --engine ray``: blocks of rows in, their outcomes out."""

    async def __call__(self, block: pa.Table) -> pa.Table:
        sending = await self.sending()
        rows, skipped = block_rows(block)
        results, earlier = await sending.process(rows)
        outcomes = [Outcome.of(result) for result in results] + earlier
        return outcome_table(outcomes, skipped)


def outcome_table(outcomes: Sequence[Outcome], skipped: int) -> pa.Table:
    """Outcomes as a block (plus a row counting the skipped rows, when there were any)."""
    records: list[dict[str, Any]] = [
        {
            "row_id": o.row_id,
            "status": o.status,
            "error_type": o.error_type,
            "shared": o.shared,
            "input_tokens": o.input_tokens,
            "output_tokens": o.output_tokens,
            "cache_creation_input_tokens": o.cache_creation_input_tokens,
            "cache_read_input_tokens": o.cache_read_input_tokens,
            "skipped": 0,
        }
        for o in outcomes
    ]
    if skipped:
        records.append({"skipped": skipped})
    return pa.Table.from_pylist(records, schema=OUTCOME_SCHEMA)

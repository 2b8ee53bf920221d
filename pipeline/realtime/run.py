"""Runs a job: a producer streams rows into a bounded queue, N workers send them, every result is journalled.

Owns: back-pressure (a bounded queue and a bounded number of rows being prepared), skipping rows
already done, turning a row's failure into an error result, stopping the run on a fatal API error,
and folding the journal into ``results.parquet`` however the run ends. Before anything is sent it
reads the model's facts (``GET /v1/models``, cached, or the shipped table: :mod:`pipeline.api.models`)
and refuses a job that breaks the model's rules (:mod:`pipeline.job.rules`). Builds, parses and
formats nothing; whether a reply is a success is :mod:`pipeline.results.verdict`'s to say.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pipeline.api.client import ClientConfig, MessagesClient
from pipeline.api.config import is_loopback
from pipeline.api.files import FilesApi
from pipeline.api.models import checked_job
from pipeline.catalog.prices import describe_price, price_for
from pipeline.errors import ApiError, FatalApiError, PipelineError
from pipeline.job.request import RequestSpec
from pipeline.job.spec import JobSpec
from pipeline.payloads.dedupe import Dedupe
from pipeline.payloads.prepare import Prepared, open_job_input, prepare_rows
from pipeline.payloads.tokens import cache_shortfall
from pipeline.payloads.transport import Transport, transport_for
from pipeline.records import Row, Summary
from pipeline.results.conforming import send_conforming
from pipeline.results.outputs import cache_folder, open_output
from pipeline.results.progress import Limits as ProgressLimits
from pipeline.results.progress import Progress, View
from pipeline.results.recorder import Recorder, RunTally
from pipeline.results.schema import output_schema
from pipeline.results.store import RerunPolicy, ResultStore
from pipeline.results.uploads import FileMap, FilesTransport
from pipeline.rows.media import online_loader
from pipeline.rows.memory import InputSource
from pipeline.rows.reader import InputTable, SourcedRow, iter_rows
from pipeline.rows.storage import ObjectStorage, StorageSettings
from pipeline.shutdown import Shutdown
from pipeline.wire import MessagePayload

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("pipeline.run")

PROGRESS_EVERY_S = 10.0


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Where a run reads, writes and sends; resolved by the CLI from the job and its flags."""

    base_url: str
    api_key: str
    input: InputSource
    output: Path | str  # a directory, or an object-storage URL (s3://bucket/prefix/job)
    limit: int | None = None
    fresh: bool = False
    retry: RerunPolicy = field(default_factory=RerunPolicy)
    grace_s: float = 30.0
    progress: bool | None = None  # a live display on stderr; None: when stderr is a terminal
    sandbox: bool = False  # sending to the built-in sandbox (its uploaded files die with it)
    view: View | None = None  # shows the progress somewhere else instead (a notebook's output)


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How a run ended. ``fatal`` holds the reason when an API error stopped it."""

    summary: Summary
    output: Path | str
    results_rows: int
    fatal: FatalApiError | None = None
    interrupted: str | None = None  # "SIGINT" or "SIGTERM" when a signal stopped the run
    # rows this run had to send that have no result although it was not stopped: only a cluster run,
    # where a lost worker's batch could come back short, can have any (a safety net, never expected)
    unanswered: int = 0


@dataclass(frozen=True, slots=True)
class _Work:
    row: Row
    payload: MessagePayload
    input_tokens: int
    key: str | None = None  # request_key, when identical requests are sent once


async def run_job(
    spec: JobSpec,
    options: RunOptions,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    shutdown: Shutdown | None = None,
) -> RunOutcome:
    """Run a job to the end (or to a fatal API error) and leave ``results.parquet`` whole.

    :param shutdown: the run's stop handling, for a caller that must ask for a stop itself (a run
        off the main thread gets no signals); by default one for ``options.grace_s``.
    :raises SpecError: before anything is sent, when the job breaks its model's rules.
    """
    started = time.monotonic()
    config = ClientConfig.for_job(spec, base_url=options.base_url, api_key=options.api_key)
    # refused up front, never per row: the model's facts (GET /v1/models, or the shipped table)
    spec, facts = await checked_job(
        spec, config, cache_folder(options.output, spec.storage), transport=transport
    )
    storage = ObjectStorage(StorageSettings.from_spec(spec.storage))
    try:
        store = open_output(options.output, storage, spec.storage)
        store.prepare()
        with store.locked():
            return await _run_locked(
                spec,
                options,
                store,
                storage,
                transport,
                started,
                config,
                facts.source,
                shutdown or Shutdown(options.grace_s),
            )
    finally:
        storage.close()


async def _run_locked(
    spec: JobSpec,
    options: RunOptions,
    store: ResultStore,
    storage: ObjectStorage,
    transport: httpx.AsyncBaseTransport | None,
    started: float,
    config: ClientConfig,
    facts_source: str,
    shutdown: Shutdown,
) -> RunOutcome:
    from pipeline.batch.state import refuse_pending  # the output's mirror is known only now

    refuse_pending(store.directory, store.location)
    request = spec.request
    fingerprint = request.fingerprint()
    if options.fresh:
        store.start_fresh()
    else:
        store.compact()  # folds in what an earlier, interrupted run journalled
        if relabelled := store.adopt_legacy(request):
            log.info(
                "%d rows answered by an earlier version now carry this version's fingerprint", relabelled
            )
    table = open_job_input(spec, options.input, storage)
    settled = store.settled(request, options.retry, sandbox_answers=is_loopback(options.base_url))
    store.note_job(spec, options.input)  # lets `pipeline report` find the images
    journal = store.new_journal(output_schema(table.arrow_schema, request))
    recorder = Recorder(journal, fingerprint, Dedupe() if request.dedupes else None, request.max_tokens)
    if request.cache and (note := cache_shortfall(request)):
        log.warning("%s", note)
    limits = spec.limits
    price = price_for(request.model, spec.prices)
    fatal: FatalApiError | None = None
    stopped_by: PipelineError | None = None
    client = MessagesClient(config, transport=transport)
    files = FilesApi(config, transport=transport)
    try:
        async with client, files:
            try:
                media = _transport(spec, store, storage, files, options)
                run = _Run(table, settled, request, client, recorder, media, storage)
                run.progress = Progress(
                    recorder.tally,
                    limits=ProgressLimits(
                        limits.requests_per_minute,
                        limits.input_tokens_per_minute,
                        limits.output_tokens_per_minute,
                    ),
                    price=price,
                    cache_ttl=request.cache_ttl,
                    requests_sent=lambda: client.requests_sent,
                    reading_done=lambda: run.reading_done,
                    live=options.progress,
                    view=options.view,
                )
                await run.pump(options.limit, shutdown)
            except* FatalApiError as group:
                fatal = _first(group, FatalApiError)
            except* PipelineError as group:
                # an unwritable journal or an input that breaks halfway: what is journalled stays
                stopped_by = _first(group, PipelineError)
    finally:
        journal.close()
        results_rows = store.compact()
        if stopped_by is None:
            store.ensure_results(journal.schema)
    if stopped_by is not None:
        raise stopped_by
    tally = recorder.tally
    usage = tally.usage
    summary = Summary(
        rows_total=tally.to_do + tally.skipped,
        rows_ok=tally.ok,
        rows_error=tally.error,
        rows_skipped=tally.skipped,
        errors_by_type=dict(tally.errors_by_type),
        usage=usage,
        requests_sent=client.requests_sent,
        retries=client.retries,
        wall_s=time.monotonic() - started,
        cost_usd=price.cost_usd(usage, cache_ttl=request.cache_ttl) if price is not None else None,
        priced_as=describe_price(price, request.model),
        rows_shared=tally.shared,
        model_facts=facts_source,
    )
    return RunOutcome(
        summary=summary,
        output=options.output,
        results_rows=results_rows,
        fatal=fatal,
        interrupted=shutdown.signal_name,
    )


def _transport(
    spec: JobSpec, store: ResultStore, storage: ObjectStorage, files: FilesApi, options: RunOptions
) -> Transport:
    """How this run's images travel: inline, by URL, or uploaded once and sent by Files API id."""
    request = spec.request
    if request.image_transport != "files":
        return transport_for(request.image_transport, storage, presign=request.presign)
    mapping = FileMap(
        store.directory, base_url=options.base_url, sandbox=options.sandbox, on_change=store.changed
    )
    return FilesTransport(files, mapping, api_key_env=spec.api.api_key_env)


E = TypeVar("E", bound=BaseException)


def _first(group: BaseExceptionGroup[BaseException], kind: type[E]) -> E:
    """The first exception of ``kind`` in a (possibly nested) group."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc, kind)
        if isinstance(exc, kind):
            return exc
    raise AssertionError(f"no {kind.__name__} in {group!r}")


class _Run:
    """One run's moving parts: the input, the client, the recorder and the queue between them."""

    def __init__(
        self,
        table: InputTable,
        settled: dict[str, str],
        request: RequestSpec,
        client: MessagesClient,
        recorder: Recorder,
        media: Transport,
        storage: ObjectStorage,
    ) -> None:
        self.table = table
        self.media = media
        self.storage = storage
        # row_id -> row hash of rows whose latest result stands (ok, or an error not to retry)
        self.settled = settled
        self.request = request
        self.client = client
        self.recorder = recorder
        self.queue: asyncio.Queue[_Work | None] = asyncio.Queue(maxsize=max(4, 2 * client.config.concurrency))
        self.stopping = False
        self.in_flight = 0
        self.reading_done = False  # the producer has read the whole input (the total is known)
        self.progress: Progress | None = None

    async def pump(self, limit: int | None, shutdown: Shutdown) -> None:
        """Produce and send every row; returns when all are recorded or a signal stopped the run.

        Raises (inside an ExceptionGroup) what stops a run: a fatal API error, an unwritable output,
        an input that turns unreadable halfway.
        """
        async with asyncio.TaskGroup() as group:
            workers = [group.create_task(self._send_loop()) for _ in range(self.client.config.concurrency)]
            shown = self.progress.run() if self.progress else _report_progress(self.recorder.tally)
            reporter = group.create_task(shown)
            producer = group.create_task(self._produce(limit))
            shutdown.in_flight = lambda: self.in_flight
            shutdown.install(
                stop=lambda: self._stop(producer, len(workers)), abort=lambda: _cancel(producer, *workers)
            )
            try:
                await asyncio.wait([producer])
                if not shutdown.requested:
                    for _ in workers:
                        await self.queue.put(None)
                await asyncio.wait(workers)
            finally:
                shutdown.uninstall()
                reporter.cancel()

    def _stop(self, producer: asyncio.Task[None], workers: int) -> None:
        """Graceful stop: read and prepare nothing more, drop queued work, let senders finish."""
        self.stopping = True
        producer.cancel()
        while not self.queue.empty():
            self.queue.get_nowait()  # never sent, so never paid: a rerun picks these rows up
        for _ in range(workers):
            self.queue.put_nowait(None)  # wakes idle senders; the queue holds at least one per sender

    async def _produce(self, limit: int | None) -> None:
        """Stream rows into the queue; rows are prepared concurrently, a bounded number at a time."""
        tally = self.recorder.tally

        def wanted(sourced: SourcedRow) -> bool:
            row = sourced.row
            if self.settled.get(row.row_id) == row.content_hash:
                tally.skipped += 1
                return False
            tally.to_do += 1
            return True

        def read() -> None:
            self.reading_done = True

        await prepare_rows(
            self.request,
            iter_rows(self.table, limit=limit),
            online_loader(
                self.client.http,
                root=self.request.image_root,
                timeout_s=self.client.config.timeout_s,
                storage=self.storage,
            ),
            self._queue,
            wanted=wanted,
            # as many image downloads may be on their way as requests in flight: preparing runs ahead
            # of sending instead of gating it (decoding has a bound of its own, CPU_SLOTS)
            download_slots=self.client.config.concurrency,
            keys=self.recorder.dedupe is not None,
            on_read=read,
            transport=self.media,
        )

    async def _queue(self, prepared: Prepared) -> None:
        # called while the row's slot is held: rows waiting for a sender count against the bound too
        if prepared.error is not None or prepared.payload is None:
            error = prepared.error
            assert error is not None
            self.recorder.error(prepared.row, error.error_type, str(error), attempts=0)
            return
        work = _Work(prepared.row, prepared.payload, prepared.input_tokens, prepared.key)
        if not self._shared(work):
            await self.queue.put(work)

    def _shared(self, work: _Work) -> bool:
        """Whether an identical request of another row answers this one (so it is not sent)."""
        dedupe = self.recorder.dedupe
        if dedupe is None or work.key is None:
            return False
        verdict, leader = dedupe.claim(work.key, work.row)
        if verdict == "copy" and leader is not None:
            self.recorder.shared(work.row, leader)
        return verdict != "lead"

    async def _send_loop(self) -> None:
        while (work := await self.queue.get()) is not None:
            if self.stopping:
                continue
            self.in_flight += 1
            try:
                sent, verdict = await send_conforming(
                    self.client,
                    self.request,
                    work.payload,
                    input_tokens=work.input_tokens,
                    row_id=work.row.row_id,
                    stopping=lambda: self.stopping,
                )
            except FatalApiError:
                raise
            except ApiError as exc:
                self.recorder.error(work.row, exc.error_type, str(exc), attempts=exc.attempts)
            except Exception as exc:  # the worker boundary: one row's surprise must not end the run
                log.exception("unexpected error on row %s", work.row.row_id)
                self.recorder.error(work.row, type(exc).__name__, str(exc) or type(exc).__name__, attempts=1)
            else:
                self.recorder.answered(work.row, sent, verdict)
            finally:
                self.in_flight -= 1


def _cancel(*tasks: asyncio.Task[None]) -> None:
    for task in tasks:
        task.cancel()


async def _report_progress(tally: RunTally) -> None:
    started = time.monotonic()
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        finished = tally.ok + tally.error
        rate = finished / max(time.monotonic() - started, 1e-9)
        log.info(
            "%d/%d rows done (%d ok, %d error), %.1f rows/s",
            finished,
            tally.to_do,
            tally.ok,
            tally.error,
            rate,
        )

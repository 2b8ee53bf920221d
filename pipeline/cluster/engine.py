"""Runs a job on a Ray cluster (``pipeline run --engine ray``): the driver of the cluster engine.

Owns what the driver does, in order: take the output's lock, fold earlier journals in (or start
fresh), open and check the input, connect to Ray (or start a local instance), start the run's
limiter and registry, read the input on the cluster (:mod:`~pipeline.cluster.source`) into a pool of
senders (:mod:`~pipeline.cluster.sender`), count their outcomes for the progress display, handle
SIGINT/SIGTERM and fatal API errors as a local run does, and at the end stop every sender, fold
their journals into ``results.parquet`` and summarise the run from the journals. Builds, parses and
formats nothing.

The output is a directory every node reaches, or a prefix in object storage
(``results.outputs.open_output``: the driver holds its lease, the senders' journals go up in
segments, and the driver folds them in from the bucket; see :mod:`~pipeline.cluster.output`).

What a crash costs: ``kill -9`` of a worker (or the loss of a node) loses the requests it had in
flight; Ray Data restarts the worker and runs its batch again, which sends only the rows no one has
journalled (:mod:`~pipeline.cluster.registry`). ``kill -9`` of the driver stops the run; the
journals keep every answer, and a rerun (with either engine) folds them in and sends the rest.
With an object-storage output, a killed worker's last segment stays in its node's staging folder:
the driver uploads it at the end when the node is its own machine, and a later run on that node
otherwise; a node lost with its disk loses the results of its last segment (at most ``[storage]
segment_rows`` results or ``segment_s`` seconds), which a rerun sends again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.api.config import ClientConfig, is_loopback
from pipeline.api.models import checked_job
from pipeline.catalog.prices import describe_price, price_for
from pipeline.cluster.ending import (
    STOP_WAIT_S,
    UPLOAD_WAIT_S,
    await_uploads,
    journal_tally,
    stop_senders,
    unanswered,
)
from pipeline.cluster.limiter import LimiterSettings, LimiterStats, create_limiter
from pipeline.cluster.output import output_target
from pipeline.cluster.registry import create_registry
from pipeline.cluster.sender import OUTCOME_SCHEMA, JobSender, KeySource, SendPlan, key_source
from pipeline.cluster.session import RaySession, open_session, starts_local
from pipeline.cluster.sizing import READ_CPUS, cluster_nodes, size_senders
from pipeline.cluster.source import MAX_BLOCK_ROWS, ReadRule, job_source, plan_reads
from pipeline.errors import ConfigError, FatalApiError, PipelineError
from pipeline.extras import require
from pipeline.job.spec import JobSpec
from pipeline.payloads.prepare import open_job_input
from pipeline.payloads.tokens import cache_shortfall
from pipeline.realtime.run import RunOptions, RunOutcome
from pipeline.records import Summary, Usage
from pipeline.results.outputs import cache_folder, is_remote_output, open_output
from pipeline.results.progress import Limits as ProgressLimits
from pipeline.results.progress import Progress
from pipeline.results.recorder import RunTally
from pipeline.results.schema import output_schema
from pipeline.results.store import ResultStore
from pipeline.results.summary import ResultTally
from pipeline.rows.storage import ObjectStorage, StorageSettings, is_object_url
from pipeline.shutdown import Shutdown

log = logging.getLogger("pipeline.run")

STATS_EVERY_S = 0.5
CALLS_PER_SENDER = 2  # tasks (blocks) a sender holds at once: one sending while the next is prepared
BATCHES_PER_BLOCK = 4  # Ray Data runs up to 4 batches of one task at once in an async sender
ABORT_WAIT_S = 5.0  # after an abort, how long the driver waits for the dataset to notice


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    """Which cluster, and how many senders on it.

    :param address: ``auto`` or a cluster's address; None: ``RAY_ADDRESS``, else a local Ray instance
        for the run.
    :param workers: senders (Ray actors); None: one per CPU of the cluster, at most 16.
    """

    address: str | None = None
    workers: int | None = None


async def run_on_ray(spec: JobSpec, options: RunOptions, cluster: ClusterOptions | None = None) -> RunOutcome:
    """Run a job on Ray to the end (or to a fatal API error or a signal) and leave ``results.parquet`` whole.

    Same job, same requests and same output as :func:`pipeline.realtime.run.run_job`.
    """
    require("ray", "--engine ray")
    started = time.monotonic()
    spec, options = _absolute(spec, options)
    if spec.request.image_transport == "files":
        raise ConfigError(
            'image_transport = "files" is not supported with --engine ray (the uploads are one run\'s'
            ' record); use "base64" or "url", or the local engine'
        )
    config = ClientConfig.for_job(spec, base_url=options.base_url, api_key=options.api_key)
    # refused up front, never per row: the model's facts (GET /v1/models, or the shipped table)
    spec, _ = await checked_job(spec, config, cache_folder(options.output, spec.storage))
    storage = ObjectStorage(StorageSettings.from_spec(spec.storage))
    try:
        store = open_output(options.output, storage, spec.storage)
        store.prepare()
        with store.locked():
            run = _ClusterRun(spec, options, cluster or ClusterOptions(), store, storage, started)
            return await run.run()
    finally:
        storage.close()


def _absolute(spec: JobSpec, options: RunOptions) -> tuple[JobSpec, RunOptions]:
    """The job's paths made absolute: Ray workers do not share the driver's working directory."""
    if not isinstance(options.input, str):
        raise ConfigError(
            "the Ray engine reads its input from files (a path or a glob), on the cluster; "
            "for a table held in Python, use pipeline.process_dataset with a ray.data.Dataset"
        )
    output = options.output if is_remote_output(options.output) else Path(os.path.abspath(options.output))
    where = options.input if is_object_url(options.input) else os.path.abspath(options.input)
    options = replace(options, output=output, input=where)
    root = spec.request.image_root
    if root is not None:
        request = spec.request.model_copy(update={"image_root": os.path.abspath(root)})
        spec = spec.model_copy(update={"request": request})
    return spec, options


class _ClusterRun:
    """One run's driver state: the plan, the Ray actors, the tally and how the run is ending."""

    def __init__(
        self,
        spec: JobSpec,
        options: RunOptions,
        cluster: ClusterOptions,
        store: ResultStore,
        storage: ObjectStorage,
        started: float,
    ) -> None:
        self.spec = spec
        self.options = options
        self.cluster = cluster
        self.store = store
        self.storage = storage
        self.started = started
        self.tally = RunTally()
        self.expected = 0  # rows this run has to send (its input less the rows already settled)
        self.stats: LimiterStats | None = None
        self.fatal: FatalApiError | None = None
        self.stopped_by: PipelineError | None = None
        self.shutdown = Shutdown(options.grace_s)
        self.aborted = False
        self._consumed = threading.Event()  # the consumer thread has returned
        self._ended = asyncio.Event()  # the run is over: the consumer finished, or a stop was decided
        self._limiter: Any = None
        self._registry: Any = None
        self._consumer: asyncio.Future[None] | None = None

    async def run(self) -> RunOutcome:
        spec, options, store = self.spec, self.options, self.store
        request = spec.request
        if options.fresh:
            store.start_fresh()
        else:
            store.compact()  # folds in what an earlier, interrupted run journalled (either engine's)
            if relabelled := store.adopt_legacy(request):
                log.info(
                    "%d rows answered by an earlier version now carry this version's fingerprint", relabelled
                )
        table = open_job_input(spec, options.input, self.storage)
        store.note_job(spec, options.input)
        schema = output_schema(table.arrow_schema, request)
        if request.cache and (note := cache_shortfall(request)):
            log.warning("%s", note)
        pieces, total = plan_reads(table, options.limit, self.storage)
        settled = store.settled(request, options.retry, sandbox_answers=is_loopback(options.base_url))
        self.tally.to_do = max(0, total - len(settled))  # the progress's total; exact as rows come back
        self.expected = self.tally.to_do
        key, key_env = key_source(
            spec.api.api_key_env, options.api_key, local=starts_local(self.cluster.address)
        )
        session = open_session(self.cluster.address, env=key_env)
        try:
            try:
                await self._send(session, key, pieces, schema)
            finally:
                self._teardown(session)
        finally:
            if is_remote_output(options.output):
                from pipeline.results.remote import ObjectResultStore

                assert isinstance(store, ObjectResultStore)
                store.refresh()  # the senders' segments, from the bucket (and any a killed sender left here)
            journals = store.journals()
            tally = journal_tally(journals)
            results_rows = store.compact()
            if self.stopped_by is None:
                store.ensure_results(schema)
        if self.stopped_by is not None:
            raise self.stopped_by
        return self._outcome(tally, results_rows)

    async def _send(self, session: RaySession, key: KeySource, pieces: list[Any], schema: pa.Schema) -> None:
        import ray
        import ray.data

        _quiet_ray_data()
        spec, options = self.spec, self.options
        sizing = size_senders(
            cluster_nodes(), workers=self.cluster.workers, concurrency=spec.limits.concurrency
        )
        concurrency = sizing.concurrency
        output = output_target(options.output, spec.storage)
        self._limiter = create_limiter(LimiterSettings.for_job(spec))
        reads = ReadRule(
            output,
            spec.request,
            options.retry,
            sandbox_answers=is_loopback(options.base_url),
            block_rows=_block_rows(self.tally.to_do, sizing.workers, concurrency),
            limiter=self._limiter,
        )
        self._registry = create_registry()
        plan = SendPlan(
            spec=spec,
            base_url=options.base_url,
            key=key,
            limiter=self._limiter,
            registry=self._registry,
            concurrency=concurrency,
            threads=sizing.threads,
            output=output,
            schema=schema,
        )
        log.info(
            "sending on %s: %d workers, %d requests in flight and %d threads each",
            session.where,
            sizing.workers,
            concurrency,
            sizing.threads,
        )
        dataset = ray.data.read_datasource(job_source(pieces, reads), num_cpus=READ_CPUS).map_batches(
            JobSender,
            fn_constructor_args=(plan,),
            batch_size=concurrency,
            batch_format="pyarrow",
            num_cpus=sizing.cpus,
            compute=ray.data.ActorPoolStrategy(
                size=sizing.workers, max_concurrent_calls_per_actor=CALLS_PER_SENDER
            ),
        )
        limits = spec.limits
        progress = Progress(
            self.tally,
            limits=ProgressLimits(
                limits.requests_per_minute, limits.input_tokens_per_minute, limits.output_tokens_per_minute
            ),
            price=price_for(spec.request.model, spec.prices),
            cache_ttl=spec.request.cache_ttl,
            requests_sent=lambda: self.stats.requests if self.stats is not None else 0,
            reading_done=lambda: True,  # the total is counted before the run
            live=self.options.progress,
        )
        loop = asyncio.get_running_loop()
        consumer = self._consumer = loop.create_future()
        consumer.add_done_callback(lambda _: self._ended.set())
        # a daemon thread: after an abort it may stay blocked in Ray a while, and must not hold up the exit
        threading.Thread(
            target=self._consume, args=(dataset, loop, consumer), daemon=True, name="outcomes"
        ).start()
        watcher = asyncio.create_task(self._watch())
        shown = asyncio.create_task(progress.run())
        self.shutdown.in_flight = lambda: self.stats.in_flight if self.stats is not None else 0
        self.shutdown.install(stop=self._graceful, abort=self._abort)
        try:
            await self._ended.wait()
        finally:
            self.shutdown.uninstall()
            watcher.cancel()
            shown.cancel()
            await asyncio.gather(watcher, shown, return_exceptions=True)
        if self.fatal is None and not self.aborted and consumer.done() and consumer.exception() is not None:
            self.stopped_by = _pipeline_error(consumer.exception())  # type: ignore[arg-type]

    def _consume(self, dataset: Any, loop: asyncio.AbstractEventLoop, done: asyncio.Future[None]) -> None:
        """In a thread (the calls block): count the senders' outcomes as they come, to the end of the dataset.

        After a stop the read tasks read no further and the senders send nothing new, so the dataset
        ends by itself once the requests in flight have ended.
        """

        def finish(error: BaseException | None) -> None:
            if done.done():
                return
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

        error: BaseException | None = None
        try:
            for block in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                loop.call_soon_threadsafe(self._count, block)
        except Exception as exc:  # noqa: BLE001  (a read task's or a sender's error: the driver's to report)
            error = exc
        finally:
            self._consumed.set()
        with contextlib.suppress(RuntimeError):  # the loop is gone: the run was over anyway
            loop.call_soon_threadsafe(finish, error)

    def _count(self, block: pa.Table) -> None:
        tally = self.tally
        rows = block.select(list(OUTCOME_SCHEMA.names)).to_pylist()
        ids = []
        for row in rows:
            if row["row_id"] is None:
                tally.skipped += row["skipped"]
                continue
            ids.append(row["row_id"])
            usage = Usage(
                row["input_tokens"],
                row["output_tokens"],
                row["cache_creation_input_tokens"],
                row["cache_read_input_tokens"],
            )
            tally.add_outcome(row["status"], row["error_type"], shared=row["shared"], usage=usage)
        tally.to_do = max(tally.to_do, tally.ok + tally.error)
        if ids:
            self._registry.consumed.remote(ids)  # Ray will not run their batch again: forget them

    async def _watch(self) -> None:
        """Keep the limiter's counts fresh for the progress; note a fatal error (it stopped every worker)."""
        while True:
            with contextlib.suppress(Exception):
                self.stats = await self._limiter.stats.remote()
            stats = self.stats
            if stats is not None and stats.fatal is not None and self.fatal is None:
                self.fatal = stats.fatal.error()
                log.debug("stopping: %s", self.fatal)
            await asyncio.sleep(STATS_EVERY_S)

    def _graceful(self) -> None:
        """The first signal: read and send nothing new; requests in flight may end (see Shutdown)."""
        self._limiter.stop.remote(self.shutdown.signal_name or "stopped")

    def _abort(self) -> None:
        """A second signal, or the grace period over: stop now (requests in flight are abandoned)."""
        self.aborted = True
        self._limiter.stop.remote(self.shutdown.signal_name or "stopped")
        self._ended.set()

    def _teardown(self, session: RaySession) -> None:
        """Stop every sender (so nothing writes while the journals are folded), the actors, the session."""
        import ray

        try:
            if self._limiter is not None:
                with contextlib.suppress(Exception):
                    ray.get(self._limiter.stop.remote("the run is over"), timeout=STOP_WAIT_S)
            if self.aborted:
                logging.getLogger("ray.data").setLevel(
                    logging.CRITICAL
                )  # it reports the senders killed below
            if self._registry is not None:
                await_uploads(self._registry, ABORT_WAIT_S if self.aborted else UPLOAD_WAIT_S)
                stop_senders(self._registry)
            self._consumed.wait(ABORT_WAIT_S if self.aborted else STOP_WAIT_S)
            if self._limiter is not None:
                with contextlib.suppress(Exception):
                    self.stats = ray.get(self._limiter.stats.remote(), timeout=STOP_WAIT_S)
            for actor in (self._limiter, self._registry):
                if actor is not None:
                    with contextlib.suppress(Exception):
                        ray.kill(actor, no_restart=True)
        finally:
            session.close()

    def _outcome(self, tally: ResultTally, results_rows: int) -> RunOutcome:
        spec = self.spec
        request = spec.request
        price = price_for(request.model, spec.prices)
        usage = tally.usage
        stats = self.stats
        summary = Summary(
            rows_total=tally.ok + tally.error + self.tally.skipped,
            rows_ok=tally.ok,
            rows_error=tally.error,
            rows_skipped=self.tally.skipped,
            errors_by_type=dict(tally.errors_by_type),
            usage=usage,
            requests_sent=stats.requests if stats is not None else 0,
            retries=stats.retries if stats is not None else 0,
            wall_s=time.monotonic() - self.started,
            cost_usd=price.cost_usd(usage, cache_ttl=request.cache_ttl) if price is not None else None,
            priced_as=describe_price(price, request.model),
            rows_shared=tally.shared,
        )
        return RunOutcome(
            summary=summary,
            output=self.options.output,
            results_rows=results_rows,
            fatal=self.fatal,
            interrupted=self.shutdown.signal_name,
            unanswered=unanswered(
                self.expected,
                tally,
                stopped=self.fatal is not None or self.aborted or self.shutdown.signal_name is not None,
            ),
        )


def _block_rows(to_do: int, workers: int, concurrency: int) -> int:
    """Rows to send per block: a block is one sender's task, so a small input still reaches every sender."""
    rows = min(MAX_BLOCK_ROWS, concurrency * BATCHES_PER_BLOCK)
    return max(1, min(rows, math.ceil(to_do / workers))) if to_do else rows


def _pipeline_error(error: BaseException) -> PipelineError:
    """What stopped the dataset, as the pipeline's own error (a read task's InputError, say)."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, PipelineError):
            return cause
        cause = getattr(cause, "cause", None) or cause.__cause__
    lines = str(error).strip().splitlines()
    return PipelineError(f"the Ray run failed: {lines[-1] if lines else type(error).__name__}")


def _quiet_ray_data() -> None:
    """No progress bars or execution banners from Ray Data: the run's own progress is on stderr."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its warnings are about its own progress bars
    # a small input has fewer blocks than senders: Ray Data says so, the run is none the worse
    warnings.filterwarnings("ignore", message="The minimum number of concurrent actors", category=UserWarning)

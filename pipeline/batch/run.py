"""Batch mode end to end: adopt orphans, collect what ended, submit what is left, optionally wait.

One invocation (``pipeline run JOB --mode batch``, ``pipeline batch collect OUTPUT``) does, under the
output directory's lock:

1. **Orphans.** A submission whose intent is logged but whose batch id is not (the process died
   between the create POST and saving its answer) is matched by listing the API's batches: the
   oldest batch created at or after the intent's time (less ``ORPHAN_SKEW``, for clock skew) that
   holds exactly the intent's number of requests and is not already known to this output is adopted.
   When none is listed, the submission's rows stay pending until ``[batch] orphan_grace_s`` has
   passed since the intent (a create still on its way may show up late); then it is abandoned and
   its rows can be submitted again. A wrong adoption cannot write wrong rows: collecting checks that
   every ``custom_id`` in the results belongs to the submission, and abandons the batch otherwise.
2. **Collect.** Every submitted batch is retrieved; those that ended are collected
   (:mod:`pipeline.batch.collect`) and folded into ``results.parquet``.
3. **Submit** (``run`` only). Rows that are not settled (the realtime rerun rule) and not pending in
   an open submission are built and submitted (:mod:`pipeline.batch.submit`); rows whose batch
   errors already used ``[batch] max_attempts`` stay errors.
4. **Wait** (``--wait``). Poll with backoff (``poll_interval_s`` growing to ``max_poll_interval_s``)
   and repeat until nothing is pending. Without it the command returns, saying what is pending.

A pending batch is never submitted again, and nothing is submitted twice: rows are submitted only
after every open submission is accounted for, and an intent is on disk before its POST.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pipeline.api.batches import BatchesApi, BatchInfo
from pipeline.api.config import is_loopback
from pipeline.api.files import FilesApi
from pipeline.api.models import checked_job
from pipeline.batch.collect import BatchTally, Collector
from pipeline.batch.options import BatchOptions, BatchOutcome
from pipeline.batch.state import BatchLog, Submission, not_found_message, pending_row_ids, utc_now
from pipeline.batch.submit import Submitter, Target, job_record, prior_attempts
from pipeline.catalog.prices import describe_price, price_for
from pipeline.errors import (
    ConfigError,
    CreateUnconfirmed,
    FatalApiError,
    ForeignBatch,
    PermanentApiError,
    RowError,
)
from pipeline.job.spec import BatchSpec, JobSpec, PricesSpec
from pipeline.payloads.prepare import Prepared, open_job_input, prepare_rows
from pipeline.payloads.transport import Transport, transport_for
from pipeline.records import Result, Row, Summary
from pipeline.results.journal import Journal
from pipeline.results.outputs import cache_folder, open_output
from pipeline.results.schema import output_schema
from pipeline.results.store import ResultStore
from pipeline.results.uploads import FileMap, FilesTransport
from pipeline.rows.media import download_client, online_loader
from pipeline.rows.reader import SourcedRow, iter_rows
from pipeline.rows.storage import ObjectStorage, StorageSettings
from pipeline.shutdown import Shutdown

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("pipeline.batch")
progress = logging.getLogger("pipeline.run")  # shown without -v, like realtime progress lines

ORPHAN_SKEW = timedelta(minutes=5)


async def run_batch(
    spec: JobSpec | None,
    options: BatchOptions,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    shutdown: Shutdown | None = None,
) -> BatchOutcome:
    """Adopt orphans, collect ended batches, submit what is left (when ``spec`` is given), maybe wait.

    :param shutdown: as for ``realtime.run.run_job``: a stop the caller can ask for itself.
    :raises SpecError: before anything is sent, when ``spec`` breaks its model's rules.
    """
    started = time.monotonic()
    settings = spec.storage if spec is not None else options.storage
    facts_source = ""
    if spec is not None:
        # refused up front, never per row (or hours later, in a batch's results)
        config = options.client_config()
        spec, facts = await checked_job(
            spec, config, cache_folder(options.output, settings), mode="batch", transport=transport
        )
        facts_source = facts.source
    storage = ObjectStorage(StorageSettings.from_spec(settings))
    try:
        store = open_output(options.output, storage, settings)
        store.prepare()
        with store.locked():
            return await _run_held(
                spec,
                options,
                store,
                storage,
                transport,
                started,
                shutdown or Shutdown(options.grace_s),
                facts_source,
            )
    finally:
        storage.close()


async def _run_held(
    spec: JobSpec | None,
    options: BatchOptions,
    store: ResultStore,
    storage: ObjectStorage,
    transport: httpx.AsyncBaseTransport | None,
    started: float,
    shutdown: Shutdown,
    facts_source: str,
) -> BatchOutcome:
    batch_log = BatchLog(store.directory, on_write=store.sync)
    batch_log.remove_spools()
    if options.fresh:
        still_open = [sub.label() for sub in batch_log.submissions() if sub.open]
        if still_open:
            raise ConfigError(
                f"--fresh: {len(still_open)} batches are still pending ({', '.join(still_open[:3])}); "
                f"cancel them (pipeline batch cancel {options.output}) and collect them first"
            )
        store.start_fresh()
    else:
        store.compact()
        if spec is not None:
            store.adopt_legacy(spec.request)
    async with BatchesApi(options.client_config(), transport=transport) as api:
        engine = _Engine(store, batch_log, api, spec, options, storage, transport)
        engine.facts_source = facts_source
        return await engine.run(started, shutdown)


async def cancel_batches(
    options: BatchOptions, *, transport: httpx.AsyncBaseTransport | None = None
) -> list[str]:
    """Cancel every pending batch of an output directory; one line per batch."""
    storage = ObjectStorage(StorageSettings.from_spec(options.storage))
    store = open_output(options.output, storage, options.storage)
    store.prepare()
    lines: list[str] = []
    with store.locked():
        batch_log = BatchLog(store.directory, on_write=store.sync)
        async with BatchesApi(options.client_config(), transport=transport) as api:
            engine = _Engine(store, batch_log, api, None, options)
            await engine.reconcile()
            lines.extend(engine.notes)
            for sub in batch_log.submissions():
                if sub.phase != "submitted" or sub.batch_id is None:
                    continue
                try:
                    info = await api.retrieve(sub.batch_id)
                except PermanentApiError as exc:
                    if exc.status != 404:
                        raise
                    lines.append(not_found_message(options.output, sub, options.base_url))
                    continue
                if info.ended:
                    lines.append(f"{sub.batch_id}: already ended; collect it with pipeline batch collect")
                    continue
                info = await api.cancel(sub.batch_id)
                batch_log.append("cancel", sub.key, batch_id=sub.batch_id)
                lines.append(f"{sub.batch_id}: {info.processing_status} ({sub.requests} requests)")
    if not lines:
        lines.append("nothing is pending")
    return lines


class _Engine:
    """One invocation's state: the log, the API, the tally and what it has done so far."""

    def __init__(
        self,
        store: ResultStore,
        batch_log: BatchLog,
        api: BatchesApi,
        spec: JobSpec | None,
        options: BatchOptions,
        storage: ObjectStorage | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.store = store
        self.storage = storage
        self.transport = transport
        self.log = batch_log
        self.api = api
        self.spec = spec
        self.options = options
        self.tally = BatchTally()
        self.collector = Collector(store, batch_log, api, self.tally)
        self.settings = spec.batch if spec is not None else _stored_settings(batch_log)
        self.notes: list[str] = []
        self.facts_source = ""  # where the model's rules came from (the summary says)
        self.stop = asyncio.Event()
        self.submitted: list[Submission] = []
        self.submitted_rows = 0  # rows in submitted batches, followers (dedupe) included
        self.submitted_requests = 0  # requests in their bodies
        self.collected = 0
        self.skipped = 0
        self.exhausted = 0
        self._journal: Journal | None = None
        self._passes = 0  # submission passes made
        self.rows_seen = 0  # input rows the first submission pass read
        self._unsendable: set[str] = set()  # rows that became errors without a request, this invocation
        self._progress: dict[str, BatchInfo] = {}
        self._files: FileMap | None = None

    async def run(self, started: float, shutdown: Shutdown) -> BatchOutcome:
        fatal: FatalApiError | None = None
        main = asyncio.current_task()
        assert main is not None
        shutdown.install(stop=self.stop.set, abort=lambda: _cancel(main))
        try:
            await self._drive()
        except FatalApiError as exc:
            fatal = exc
        except CreateUnconfirmed as exc:
            self.notes.append(
                f"{exc}; a batch may have been created: the next invocation looks for it by listing"
                " before submitting anything"
            )
        except asyncio.CancelledError:
            if not shutdown.requested:
                raise
            main.uncancel()
        finally:
            shutdown.uninstall()
            if self._journal is not None:
                self._journal.close()
            # whatever stopped the invocation (an API that stays down, a full disk), what was
            # collected is folded in; the raised error is reported by the CLI
            results_rows = self.store.compact()
        return self._outcome(started, results_rows, fatal, shutdown.signal_name)

    async def _drive(self) -> None:
        settings = self.settings
        if self.options.sandbox:
            # the built-in sandbox finishes a batch in about a second; a 10 s first poll would only idle
            settings = settings.model_copy(update={"poll_interval_s": min(settings.poll_interval_s, 0.5)})
        delay = settings.poll_interval_s
        first = True
        while True:
            await self.reconcile()
            collected = await self.poll()
            if collected:
                self.store.compact()
            submitted = 0
            if self.spec is not None and (first or collected) and not self.stop.is_set():
                before = len(self.submitted)
                await self.submit(self.spec)
                submitted = len(self.submitted) - before
            first = False
            still_open = [sub for sub in self.log.submissions() if sub.open]
            if not self.options.wait or not still_open or self.stop.is_set():
                return
            delay = (
                settings.poll_interval_s
                if collected or submitted
                else min(delay * 1.5, settings.max_poll_interval_s)
            )
            progress.info("%s; next check in %.0f s", self._waiting_line(still_open), delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=delay)
            if self.stop.is_set():
                return

    def _waiting_line(self, still_open: list[Submission]) -> str:
        counts: dict[str, int] = {}
        for sub in still_open:
            info = self._progress.get(sub.key)
            for name, value in (info.request_counts if info else {}).items():
                counts[name] = counts.get(name, 0) + value
        rows = sum(sub.requests for sub in still_open)
        shown = ", ".join(f"{value} {name}" for name, value in counts.items() if value)
        return f"waiting for {len(still_open)} batches ({rows} requests{': ' + shown if shown else ''})"

    # ------------------------------------------------------------------ orphans

    async def reconcile(self) -> None:
        """Adopt or abandon submissions whose batch id was never saved (see the module docstring)."""
        submissions = self.log.submissions()
        unconfirmed = sorted((s for s in submissions if s.phase == "unconfirmed"), key=lambda s: s.intent_at)
        if not unconfirmed:
            return
        known = {sub.batch_id for sub in submissions if sub.batch_id}
        since = unconfirmed[0].intent_at - ORPHAN_SKEW
        listed = [b for b in await self.api.list_since(since) if b.id not in known]
        listed.sort(key=lambda b: b.created_at or since)
        now = utc_now()
        for sub in unconfirmed:
            match = next(
                (
                    b
                    for b in listed
                    if b.total == sub.requests
                    and (b.created_at is None or b.created_at >= sub.intent_at - ORPHAN_SKEW)
                ),
                None,
            )
            if match is not None:
                listed.remove(match)
                created = match.created_at.isoformat() if match.created_at else None
                self.log.append("submitted", sub.key, batch_id=match.id, created_at=created, adopted=True)
                self.notes.append(
                    f"adopted {match.id} for submission {sub.key} ({sub.requests} requests): its id was"
                    " never saved (the run that sent it stopped first)"
                )
            elif sub.sandbox or (now - sub.intent_at).total_seconds() >= self.settings.orphan_grace_s:
                self.log.append(
                    "abandoned", sub.key, reason=f"no batch of {sub.requests} requests was created after it"
                )
                self.notes.append(
                    f"submission {sub.key} made no batch (none of {sub.requests} requests is listed); "
                    "its rows will be submitted again"
                )
            else:
                self.notes.append(
                    f"submission {sub.key} ({sub.requests} requests) is unconfirmed and no batch matches"
                    f" it yet; its rows stay pending until one is listed or [batch] orphan_grace_s passes"
                )

    # ------------------------------------------------------------------ collect

    async def poll(self) -> int:
        """Retrieve every submitted batch, collect the ended ones; returns how many were collected."""
        collected = 0
        for sub in self.log.submissions():
            if sub.phase != "submitted" or sub.batch_id is None:
                continue
            try:
                info = await self.api.retrieve(sub.batch_id)
            except PermanentApiError as exc:
                if exc.status != 404:
                    raise
                if sub.sandbox:
                    self.log.append("lost", sub.key, reason="the built-in sandbox that held it has stopped")
                    self.notes.append(
                        f"{sub.batch_id} was lost with the sandbox that held it; its rows are free again"
                    )
                    continue
                raise ConfigError(
                    not_found_message(self.options.output, sub, self.options.base_url)
                ) from None
            self._progress[sub.key] = info
            if not info.ended:
                continue
            try:
                await self.collector.collect(sub, info.request_counts)
            except ForeignBatch as exc:
                self.log.append("abandoned", sub.key, reason=str(exc))
                self.notes.append(f"{exc}; its rows will be submitted again")
                continue
            except PermanentApiError as exc:
                if exc.status not in (404, 410):
                    raise
                # results are kept 29 days after creation; after that its rows can only be sent again
                self.log.append("lost", sub.key, reason=f"results no longer available: {exc}")
                self.notes.append(f"the results of {sub.batch_id} are gone ({exc}); its rows are free again")
                continue
            collected += 1
            self.collected += 1
            progress.info("collected %s (%s)", sub.batch_id, _counts_text(info.request_counts))
        return collected

    # ------------------------------------------------------------------ submit

    async def submit(self, spec: JobSpec) -> None:
        """Submit every row that is neither settled nor pending, in as many batches as the limits need."""
        options = self.options
        self.exhausted = 0  # counted afresh by each pass
        table = open_job_input(spec, options.input, self.storage)
        fingerprint = spec.request.fingerprint()
        settled = self.store.settled(
            spec.request, options.retry, sandbox_answers=is_loopback(options.base_url)
        )
        pending = pending_row_ids(self.log, self.log.submissions())
        legacy = spec.request.legacy_fingerprint()
        prior = prior_attempts(self.store, [fingerprint, *([legacy] if legacy else [])])
        target = Target(options.base_url, options.sandbox, fingerprint, job_record(spec))
        submitter = Submitter(
            self.log,
            self.api,
            target,
            table.arrow_schema,
            max_requests=self.settings.max_requests,
            max_bytes=self.settings.max_bytes,
        )
        schema = output_schema(table.arrow_schema, spec.request)
        self.store.note_job(spec, options.input)  # lets `pipeline report` find the images
        adding = asyncio.Lock()  # one batch body is filled at a time, in the order rows come ready

        def wanted(sourced: SourcedRow) -> bool:
            row = sourced.row
            self.rows_seen += 0 if self._passes else 1
            if settled.get(row.row_id) == row.content_hash:
                # counted once: later passes of a --wait run see this invocation's own rows
                self.skipped += 0 if self._passes else 1
                return False
            if row.row_id in pending or row.row_id in self._unsendable:
                return False  # pending in a batch, or an earlier pass of this invocation could not build it
            if prior.get(row.row_id, 0) + 1 > self.settings.max_attempts:
                self.exhausted += 1
                return False
            return True

        async def add(prepared: Prepared) -> None:
            failure = prepared.error
            if failure is None and prepared.payload is not None:
                attempt = prior.get(prepared.row.row_id, 0) + 1
                try:
                    async with adding:
                        # identical requests in one batch are sent once (dedupe, as in realtime mode)
                        await submitter.add(prepared.row, prepared.payload, attempt, key=prepared.key)
                except RowError as exc:
                    failure = exc
            if failure is not None:
                self._record_error(schema, prepared.row, fingerprint, failure)

        try:
            async with (
                download_client() as http,
                FilesApi(options.client_config(), transport=self.transport) as files,
            ):
                load = online_loader(
                    http, root=spec.request.image_root, timeout_s=spec.limits.timeout_s, storage=self.storage
                )
                await prepare_rows(
                    spec.request,
                    iter_rows(table, limit=options.limit),
                    load,
                    add,
                    wanted=wanted,
                    keys=spec.request.dedupes,
                    stopping=self.stop.is_set,
                    transport=self._media(spec, files),
                )
                if self.stop.is_set():
                    submitter.discard()  # never sent, so never paid: the next invocation submits these rows
                else:
                    await submitter.finish()
            # a valid (maybe empty) results.parquet from the first submission on, as in realtime mode
            self.store.ensure_results(schema)
        finally:
            self._passes += 1
            self.submitted.extend(submitter.submitted)
            self.submitted_rows += submitter.rows_submitted
            self.submitted_requests += submitter.requests_submitted
            if self._journal is not None:
                # closed before the next compaction, which folds (and deletes) every journal
                self._journal.close()
                self._journal = None

    def _media(self, spec: JobSpec, files: FilesApi) -> Transport:
        """How images travel into the batch bodies: inline, by (presigned) URL, or by Files API id."""
        request = spec.request
        if request.image_transport != "files":
            return transport_for(request.image_transport, self.storage, presign=request.presign, batch=True)
        if self._files is None:  # one map for every submission pass: each distinct image uploaded once
            self._files = FileMap(
                self.store.directory,
                base_url=self.options.base_url,
                sandbox=self.options.sandbox,
                on_change=self.store.changed,
            )
        return FilesTransport(files, self._files, api_key_env=spec.api.api_key_env)

    def _record_error(self, schema: Any, row: Row, fingerprint: str, failure: RowError) -> None:
        """A row that cannot be sent is an error row now, with no request made (as in realtime mode)."""
        result = Result(
            row,
            "error",
            utc_now(),
            fingerprint,
            attempts=0,
            error_type=failure.error_type,
            error_message=str(failure),
            max_tokens=self.spec.request.max_tokens if self.spec is not None else None,
        )
        if self._journal is None:
            self._journal = self.store.new_journal(schema)
        self._journal.append([result])
        self.tally.add(result)
        self._unsendable.add(row.row_id)

    # ------------------------------------------------------------------ outcome

    def _outcome(
        self, started: float, results_rows: int, fatal: FatalApiError | None, signal: str | None
    ) -> BatchOutcome:
        tally = self.tally
        still_open = tuple(sub for sub in self.log.submissions() if sub.open)
        pending_ids = pending_row_ids(self.log, still_open)
        request = self.spec.request if self.spec is not None else None
        model = (
            request.model
            if request is not None
            else str(self._stored_job().get("request", {}).get("model", ""))
        )
        prices_raw = self.spec.prices if self.spec is not None else self._stored_job().get("prices")
        prices = (
            prices_raw
            if isinstance(prices_raw, PricesSpec) or prices_raw is None
            else PricesSpec(**prices_raw)
        )
        price = price_for(model, prices) if model else None
        usage = tally.usage
        ttl = request.cache_ttl if request is not None else "5m"
        priced_as = describe_price(price, model)
        if price is not None:
            priced_as += f", at batch prices (x{price.batch_multiplier:g})"
        summary = Summary(
            # the input's rows (run), or the results collected (batch collect)
            rows_total=self.rows_seen if self.spec is not None else tally.ok + tally.error + tally.canceled,
            rows_ok=tally.ok,
            rows_error=tally.error,
            rows_skipped=self.skipped,
            errors_by_type=dict(tally.errors_by_type),
            usage=usage,
            requests_sent=self.submitted_requests,
            retries=0,
            wall_s=time.monotonic() - started,
            cost_usd=price.cost_usd(usage, batch=True, cache_ttl=ttl) if price is not None else None,
            priced_as=priced_as,
            rows_shared=tally.shared,
            model_facts=self.facts_source,
        )
        return BatchOutcome(
            summary=summary,
            output=self.options.output,
            results_rows=results_rows,
            submitted_batches=len(self.submitted),
            submitted_rows=self.submitted_rows,
            submitted_requests=self.submitted_requests,
            collected_batches=self.collected,
            pending=still_open,
            pending_rows=len(pending_ids),
            final_errors=len(tally.error_rows - pending_ids),
            exhausted=self.exhausted,
            notes=tuple(self.notes),
            fatal=fatal,
            interrupted=signal,
        )

    def _stored_job(self) -> dict[str, Any]:
        submissions = self.log.submissions()
        return submissions[-1].job if submissions else {}


def _stored_settings(batch_log: BatchLog) -> BatchSpec:
    submissions = batch_log.submissions()
    raw = submissions[-1].job.get("batch") if submissions else None
    try:
        return BatchSpec.model_validate(raw or {})
    except ValueError:
        return BatchSpec()


def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{value} {name}" for name, value in counts.items() if value) or "empty"

"""``process_dataset``: a job over a ``ray.data.Dataset`` a team already holds, results as a dataset.

For pipelines that already live in Ray Data (rows read from a warehouse, filtered, joined): every
row becomes the job's request, exactly as a row of the job's own input would (the same template,
images, tools and checks), sent by an actor pool whose every client is admitted by one limiter, so
the whole dataset uses one account's limit. The result is a dataset with the columns of
``results.parquet``, one row per input row, lazily computed like any Ray Data transform: write it
where you like (``.write_parquet(...)``). Results are not journalled; a failed task is simply run
again by Ray Data. Several datasets on one account share a limit by passing one :func:`shared_limiter`.

Rows get their ids as a local run's do (the ``id_column``, or a hash of the row's cells; repeats of a
whole row are not told apart, so set ``id_column`` when rows may repeat) and ``row_index`` -1 (a
dataset has no global order); relative image paths resolve against the job file's folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.catalog.providers import PLACEHOLDER_KEY
from pipeline.cluster.limiter import LimiterSettings, create_limiter
from pipeline.cluster.registry import create_registry
from pipeline.cluster.sender import KeySource, SenderBase, SendPlan
from pipeline.cluster.sizing import cluster_nodes, size_senders
from pipeline.errors import InputError, PipelineError
from pipeline.extras import require
from pipeline.job.spec import JobSpec, load_job
from pipeline.payloads.prepare import needed_columns
from pipeline.records import Row
from pipeline.results.schema import output_schema, result_record
from pipeline.rows.reader import SourcedRow, row_id, value_hash

CALLS_PER_SENDER = 2


def shared_limiter(job: JobSpec | str | Path) -> Any:
    """A limiter actor for the job's account, to pass to several :func:`process_dataset` calls."""
    require("ray", "process_dataset")
    return create_limiter(LimiterSettings.for_job(_spec(job)))


def process_dataset(
    dataset: Any,
    job: JobSpec | str | Path,
    *,
    base_url: str | None = None,
    workers: int | None = None,
    limiter: Any = None,
) -> Any:
    """Send one request per row of ``dataset`` (a ``ray.data.Dataset``); a dataset of result rows.

    :param job: a job file (or a loaded ``JobSpec``): its ``[request]``, ``[api]`` and ``[limits]``
        apply; its ``input`` and ``output`` are not used.
    :param base_url: where to send (default: ``ANTHROPIC_BASE_URL`` for the anthropic provider, else
        the job's ``[api] base_url``).
    :param workers: senders (default: one per CPU of the cluster, at most 16).
    :param limiter: a :func:`shared_limiter`; default: one for this dataset alone.

    The API key is read on every worker from its own environment (``[api] api_key_env``).
    """
    require("ray", "process_dataset")
    import ray

    spec = _spec(job)
    if not ray.is_initialized():
        ray.init()
    sizing = size_senders(cluster_nodes(), workers=workers, concurrency=spec.limits.concurrency)
    from_env = os.environ.get("ANTHROPIC_BASE_URL") if spec.api.provider == "anthropic" else None
    plan = SendPlan(
        spec=spec,
        base_url=(base_url or from_env or spec.api.base_url).rstrip("/"),
        key=KeySource(spec.api.api_key_env, None if spec.api.preset.key_required else PLACEHOLDER_KEY),
        limiter=limiter if limiter is not None else create_limiter(LimiterSettings.for_job(spec)),
        registry=create_registry(),
        concurrency=sizing.concurrency,
        threads=sizing.threads,
        track=False,
    )
    return dataset.map_batches(
        DatasetSender,
        fn_constructor_args=(plan,),
        batch_size=sizing.concurrency,
        batch_format="pyarrow",
        num_cpus=sizing.cpus,
        compute=ray.data.ActorPoolStrategy(
            size=sizing.workers, max_concurrent_calls_per_actor=CALLS_PER_SENDER
        ),
    )


def _spec(job: JobSpec | str | Path) -> JobSpec:
    return job if isinstance(job, JobSpec) else load_job(Path(job))


class DatasetSender(SenderBase):
    """The map_batches class of :func:`process_dataset`: a batch of the dataset's rows in, result rows out."""

    async def __call__(self, batch: pa.Table) -> pa.Table:
        sending = await self.sending()
        spec = self.plan.spec
        results, _ = await sending.process(dataset_rows(batch, spec))
        if sending.fatal is not None:
            raise sending.fatal.error()  # no row can be answered (a bad key, a spent budget)
        if sending.budgets.stopped is not None:
            raise PipelineError(f"sending stopped: {sending.budgets.stopped}")
        schema = output_schema(batch.schema, spec.request)
        return pa.Table.from_pylist([result_record(result, schema) for result in results], schema=schema)


def dataset_rows(batch: pa.Table, spec: JobSpec) -> list[SourcedRow]:
    """A batch of a dataset as the job's rows: ids and hashes as a local run makes them."""
    import polars as pl

    columns = tuple(batch.schema.names)
    needed = dict(needed_columns(spec.request))
    if spec.id_column is not None:
        needed[spec.id_column] = "id_column"
    for column, user in needed.items():
        if column not in columns:
            raise InputError(
                f"the dataset has no column {column!r} (used by {user}); columns are: {', '.join(columns)}"
            )
    hashed = tuple(needed_columns(spec.request))
    base = Path(os.path.abspath(spec.source)).parent if spec.source else Path.cwd()
    frame = pl.from_arrow(batch)
    assert isinstance(frame, pl.DataFrame)
    return [
        SourcedRow(Row(-1, row_id(values, columns, spec.id_column), values, value_hash(values, hashed)), base)
        for values in frame.rows(named=True)
    ]

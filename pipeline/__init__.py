"""Batch vision and text jobs on the Anthropic Messages API: a table in, Parquet out.

The CLI (``pipeline``) is the main surface; ``pipeline.Job`` is the same from Python (a DataFrame
in, a DataFrame out) and the rest is the library behind both. The public names below are resolved
on first use (PEP 562), so ``import pipeline`` and ``pipeline --help`` load none of the heavy
libraries (polars, pyarrow, httpx, Pillow, aiohttp).

How the package is laid out: the folders read as the flow, **job -> rows -> payloads -> api ->
results**, with the drivers side by side above them and the commands on top. A module imports
only from its own layer or a lower one; ``tests/test_layers.py`` walks every import and fails on a
cycle or an upward import. From the top down::

    cli, frames                          the command line; the Python API (Job, Sandbox)
    sandbox                              a fake of the API the CLI can start (see below)
    dryrun, review                       commands that only look: validate, estimate; status, export, report
    realtime, batch, cluster             the drivers, siblings over one preparation path
    results                              (5) journal, compaction, output store and lock, schema, summary
    api                                  (4) every HTTP call to the provider, pacing, retries, errors
    payloads                             (3) row + job -> Messages payload; images; token estimates
    rows                                 (2) the input -> rows; an image cell -> bytes
    job                                  (1) the job file -> a frozen JobSpec
    catalog                              facts about the outside world: models, prices, providers
    errors, records, wire, atomic,       the base every layer may use
    shutdown, extras

``sandbox`` is confined: a fake of the API for tests and trials that may use only ``catalog`` and
the base, so that it never shares code with what it checks. The package facade (this file) may
name anything.
"""

import importlib as _importlib
import typing as _typing

# Lowest first; every name is a subpackage or a module directly under pipeline/.
_LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"errors", "records", "wire", "atomic", "shutdown", "extras"}),
    frozenset({"catalog"}),
    frozenset({"job"}),
    frozenset({"rows"}),
    frozenset({"payloads"}),
    frozenset({"api"}),
    frozenset({"results"}),
    frozenset({"realtime", "batch", "cluster"}),
    frozenset({"dryrun", "review"}),
    frozenset({"sandbox"}),
    frozenset({"cli", "frames", "__main__"}),
)
# rooms that may import only these (besides themselves), whatever their layer
_CONFINED: dict[str, frozenset[str]] = {
    "sandbox": frozenset({"catalog", "errors", "records", "wire", "atomic", "shutdown", "extras"}),
}

_EXPORTS = {
    "ApiError": "pipeline.errors",
    "BatchOptions": "pipeline.batch.options",
    "BatchOutcome": "pipeline.batch.options",
    "ConfigError": "pipeline.errors",
    "FatalApiError": "pipeline.errors",
    "ImageError": "pipeline.errors",
    "InputError": "pipeline.errors",
    "Job": "pipeline.frames.job",
    "JobSpec": "pipeline.job.spec",
    "OutputError": "pipeline.errors",
    "PermanentApiError": "pipeline.errors",
    "PipelineError": "pipeline.errors",
    "RetryableApiError": "pipeline.errors",
    "RowError": "pipeline.errors",
    "RunOptions": "pipeline.realtime.run",
    "RunOutcome": "pipeline.realtime.run",
    "Sandbox": "pipeline.sandbox.block",
    "SpecError": "pipeline.errors",
    "load_job": "pipeline.job.spec",
    "process_dataset": "pipeline.cluster.dataset",
    "run_batch": "pipeline.batch.run",
    "run_job": "pipeline.realtime.run",
}

__all__ = [
    "ApiError",
    "BatchOptions",
    "BatchOutcome",
    "ConfigError",
    "FatalApiError",
    "ImageError",
    "InputError",
    "Job",
    "JobSpec",
    "OutputError",
    "PermanentApiError",
    "PipelineError",
    "RetryableApiError",
    "RowError",
    "RunOptions",
    "RunOutcome",
    "Sandbox",
    "SpecError",
    "load_job",
    "process_dataset",
    "run_batch",
    "run_job",
]


def __getattr__(name: str) -> _typing.Any:
    if name == "sandbox":  # the subpackage, callable: `with pipeline.sandbox(): ...`
        _require_sandbox("pipeline.sandbox()")
        return _importlib.import_module("pipeline.sandbox")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    if module.startswith("pipeline.sandbox"):
        _require_sandbox(f"pipeline.{name}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value  # resolved once; later lookups never come back here
    return value


def _require_sandbox(feature: str) -> None:
    from pipeline.extras import require

    require("sandbox", feature)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if _typing.TYPE_CHECKING:
    from pipeline.batch.options import BatchOptions, BatchOutcome
    from pipeline.batch.run import run_batch
    from pipeline.cluster.dataset import process_dataset
    from pipeline.errors import (
        ApiError,
        ConfigError,
        FatalApiError,
        ImageError,
        InputError,
        OutputError,
        PermanentApiError,
        PipelineError,
        RetryableApiError,
        RowError,
        SpecError,
    )
    from pipeline.frames.job import Job
    from pipeline.job.spec import JobSpec, load_job
    from pipeline.realtime.run import RunOptions, RunOutcome, run_job
    from pipeline.sandbox.block import Sandbox

"""Batch vision and text jobs on the Anthropic Messages API: a table in, Parquet out.

The CLI (``pipeline``) is the main surface; this is the library behind it.
"""

from pipeline.batch.options import BatchOptions, BatchOutcome
from pipeline.batch.run import run_batch
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
from pipeline.job.spec import JobSpec, load_job
from pipeline.realtime.run import RunOptions, RunOutcome, run_job

__all__ = [
    "ApiError",
    "BatchOptions",
    "BatchOutcome",
    "ConfigError",
    "FatalApiError",
    "ImageError",
    "InputError",
    "JobSpec",
    "OutputError",
    "PermanentApiError",
    "PipelineError",
    "RetryableApiError",
    "RowError",
    "RunOptions",
    "RunOutcome",
    "SpecError",
    "load_job",
    "run_batch",
    "run_job",
]

"""Where a run started from Python keeps its results, and reading them back in the input's row order.

The output directory is ``output=`` when given, else the job file's ``output`` (a job from
``Job.from_toml``, as ``pipeline run`` would), else a directory of the per-user cache
(``platformdirs``: ``~/.cache/pipeline/runs`` on Linux, honouring ``XDG_CACHE_HOME``) named by the
job and a key of what decides its answers and rows: the request's fingerprint, the server
(the sandbox's answers are never mistaken for the API's) and the input's identity (a file's path,
or a table's column names and types). Any of them changed: a new directory. The same: the same
directory, so the rerun rule of ``results.store`` applies as to any output, row by row: a rerun
sends only rows that are new or changed, and a larger ``limit`` pays only for the rows added.

Results come back as the rows of ``results.parquet`` whose ``row_id`` is one of the input's, in the
input's order (an output directory may also hold rows of other inputs run into it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import polars as pl

from pipeline.errors import InputError
from pipeline.job.spec import JobSpec
from pipeline.results.store import RESULTS_FILE
from pipeline.rows.memory import FrameInput, InputSource

log = logging.getLogger("pipeline.run")

ORDER = "__pipeline_input_order"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def cache_root() -> Path:
    """The per-user cache folder of the package (``platformdirs.user_cache_dir``)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("pipeline", appauthor=False))


def cache_output(spec: JobSpec, source: InputSource, server: str) -> Path:
    """The cache directory for this job, input and server (see the module docstring)."""
    identity = {
        "request": spec.request.fingerprint(),
        "id_column": spec.id_column,
        "server": server,
        "input": input_identity(source),
    }
    key = hashlib.blake2b(json.dumps(identity, sort_keys=True).encode(), digest_size=8).hexdigest()
    name = _UNSAFE.sub("-", spec.name).strip("-")[:40] or "job"
    return cache_root() / "runs" / f"{name}-{key}"


def input_identity(source: InputSource) -> object:
    """A file's absolute path (a glob as written), or a table's column names and types."""
    if not isinstance(source, FrameInput):
        return os.path.abspath(source)
    try:
        schema = source.frame.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"cannot read {source.label}: {str(exc).strip().splitlines()[0][:200]}") from None
    return [[name, str(dtype)] for name, dtype in schema.items()]


def read_results(output: Path, ids: list[str], *, lazy: bool) -> pl.DataFrame | pl.LazyFrame:
    """The results of the rows ``ids`` names, in that order, with every column of ``results.parquet``.

    :param lazy: return a LazyFrame over the file instead of reading it (for a LazyFrame input).
    """
    path = output / RESULTS_FILE
    results = pl.scan_parquet(path)
    columns = results.collect_schema().names()
    order = pl.LazyFrame({"row_id": ids}, schema={"row_id": pl.String}).with_row_index(ORDER)
    joined = order.join(results, on="row_id", how="inner").sort(ORDER).select(columns)
    if lazy:
        return joined
    frame = joined.collect()
    if frame.height < len(ids):
        log.warning("%d of %d input rows have no result in %s", len(ids) - frame.height, len(ids), path)
    return frame

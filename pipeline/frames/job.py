"""``pipeline.Job``: a job built in Python or read from a job file, run over a table, results as a DataFrame.

Owns: building the ``JobSpec`` from keywords (the keys of the job file: ``[request]``'s as keywords,
the other tables as dicts, validated by the same models, so the same one-line ``SpecError``), turning
``data`` into the input the drivers read (``rows.memory``), choosing the output directory, and the
order of a run: hand it to the CLI's drivers (``frames.drive``), then read the results back in the
input's order (``frames.outputs``). A job-level failure raises the package's typed error; a row
that fails is a row with ``status == "error"``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from pipeline.errors import ConfigError
from pipeline.job.spec import JobSpec, load_job, parse_job
from pipeline.shutdown import Shutdown

if TYPE_CHECKING:
    import polars as pl

    from pipeline.batch.options import BatchOutcome
    from pipeline.dryrun.costs import Estimate
    from pipeline.dryrun.validate import ValidationReport
    from pipeline.frames.drive import Server
    from pipeline.realtime.run import RunOutcome
    from pipeline.rows.memory import InputSource

# how a job built in Python is named in messages, where a job file's path would stand
SOURCE = "pipeline.Job"
# the job file's top-level keys and tables a Job takes by name; every other keyword is a [request] key
TOP_LEVEL = ("name", "id_column", "api", "limits", "batch", "prices")
Mode = Literal["realtime", "batch"]


class Job:
    """A job: what to ask about every row, and how to send it.

    Every keyword but the ones named below is a key of the job file's ``[request]`` table
    (``model``, ``max_tokens``, ``prompt``, ``system``, ``images``, ``tools``, ``tool_choice``,
    ``temperature``, ... all of them, with the same names, defaults and checks)::

        job = pipeline.Job(model="claude-haiku-4-5", max_tokens=300,
                           prompt="Alt text for this photo of {subject}.", images=["image_path"])

    :param name: the job's name (in ``job.json`` and the cache folder's name).
    :param id_column: the column that identifies a row; default: a hash of the row's values.
    :param api: the ``[api]`` table as a dict (``provider``, ``base_url``, ``api_key_env``, ``mode``...).
    :param limits: the ``[limits]`` table (``concurrency``, ``requests_per_minute``, ...).
    :param batch: the ``[batch]`` table; ``prices``: the ``[prices]`` table.
    :raises SpecError: the job file's one-line message, naming the key (``request.max_tokens: ...``).
    """

    def __init__(
        self,
        *,
        name: str = "job",
        id_column: str | None = None,
        api: Mapping[str, Any] | None = None,
        limits: Mapping[str, Any] | None = None,
        batch: Mapping[str, Any] | None = None,
        prices: Mapping[str, Any] | None = None,
        **request: Any,
    ) -> None:
        raw: dict[str, Any] = {"name": name, "input": "", "output": "", "request": request}
        tables = {"id_column": id_column, "api": api, "limits": limits, "batch": batch, "prices": prices}
        raw.update(
            {key: dict(value) if isinstance(value, Mapping) else value for key, value in tables.items()}
        )
        spec = parse_job({key: value for key, value in raw.items() if value is not None}, Path(SOURCE))
        root = spec.request.image_root
        if root is not None:  # checked relative to the current directory; kept absolute from here on
            spec = spec.model_copy(
                update={"request": spec.request.model_copy(update={"image_root": os.path.abspath(root)})}
            )
        self._spec = spec.model_copy(update={"input": "", "output": ""})
        self.last_outcome: RunOutcome | BatchOutcome | None = None

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> Job:
        """The job a job file describes; its ``input`` and ``output`` are the defaults of ``run``."""
        job = cls.__new__(cls)
        job._spec = load_job(Path(path))
        job.last_outcome = None
        return job

    @property
    def spec(self) -> JobSpec:
        """The validated job, as ``load_job`` gives it for a job file."""
        return self._spec

    def __repr__(self) -> str:
        request = self._spec.request
        return f"Job(name={self._spec.name!r}, model={request.model!r}, prompt={request.prompt!r})"

    # ------------------------------------------------------------------ run

    # a LazyFrame is also an object: the first overload that matches wins
    @overload
    def run(  # type: ignore[overload-overlap]
        self,
        data: pl.LazyFrame,
        *,
        output: str | os.PathLike[str] | None = None,
        base_url: str | None = None,
        sandbox: bool = False,
        limit: int | None = None,
        fresh: bool = False,
        retry_errors: str | None = None,
        mode: Mode | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        progress: bool | None = None,
        grace_s: float = 30.0,
    ) -> pl.LazyFrame: ...

    @overload
    def run(
        self,
        data: object = None,
        *,
        output: str | os.PathLike[str] | None = None,
        base_url: str | None = None,
        sandbox: bool = False,
        limit: int | None = None,
        fresh: bool = False,
        retry_errors: str | None = None,
        mode: Mode | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        progress: bool | None = None,
        grace_s: float = 30.0,
    ) -> pl.DataFrame: ...

    def run(
        self,
        data: object = None,
        *,
        output: str | os.PathLike[str] | None = None,
        base_url: str | None = None,
        sandbox: bool = False,
        limit: int | None = None,
        fresh: bool = False,
        retry_errors: str | None = None,
        mode: Mode | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        progress: bool | None = None,
        grace_s: float = 30.0,
    ) -> pl.DataFrame | pl.LazyFrame:
        """Send a request for every row not already done; the results, one row per input row, in order.

        :param data: a polars DataFrame or LazyFrame (streamed, never collected whole), a pandas
            DataFrame, a pyarrow Table, a Hugging Face Dataset, a list of dicts, or a path (str) to
            a CSV, Parquet or JSONL file or a glob; None: the job file's ``input``.
        :param output: the output directory (resumable exactly as ``pipeline run``'s); default: the
            job file's ``output``, or for a job built in Python a per-user cache directory keyed by
            the job, the server and the input (the summary says where).
        :param base_url: as ``--base-url``; ``sandbox``: as ``--sandbox`` (and inside an open
            ``pipeline.Sandbox`` block a run that names no server goes there). The key comes from
            the job's ``[api] api_key_env`` variable, as for the CLI.
        :param limit: only the first N rows; ``fresh``, ``retry_errors``, ``mode``, ``grace_s``: as
            ``--fresh``, ``--retry-errors``, ``--mode`` and ``--grace-s`` (batch mode always waits).
        :param base_dir: where relative image paths of in-memory data resolve; default: the current
            directory (a file's resolve against its folder, as in the CLI).
        :param progress: None: a live output in Jupyter, the CLI's display or lines elsewhere;
            True: live even when stderr is no terminal; False: none.
        :returns: the columns of ``results.parquet``; a LazyFrame over it when ``data`` is one.
        :raises SpecError, ConfigError, InputError, OutputError: the job cannot run (nothing is sent).
        :raises FatalApiError: the API refused the run (bad key, spend limit); results so far are saved.
        :raises KeyboardInterrupt: after a Ctrl-C stopped the run gracefully; every answer is saved.
        """
        from pipeline.frames.calling import run_coroutine

        shutdown = Shutdown(grace_s)
        return run_coroutine(
            lambda: self._run(
                data,
                output,
                base_url,
                sandbox,
                limit,
                fresh,
                retry_errors,
                mode,
                base_dir,
                progress,
                shutdown,
            ),
            interrupt=shutdown.interrupt,
        )

    @overload
    async def run_async(  # type: ignore[overload-overlap]
        self,
        data: pl.LazyFrame,
        *,
        output: str | os.PathLike[str] | None = None,
        base_url: str | None = None,
        sandbox: bool = False,
        limit: int | None = None,
        fresh: bool = False,
        retry_errors: str | None = None,
        mode: Mode | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        progress: bool | None = None,
        grace_s: float = 30.0,
    ) -> pl.LazyFrame: ...

    @overload
    async def run_async(
        self,
        data: object = None,
        *,
        output: str | os.PathLike[str] | None = None,
        base_url: str | None = None,
        sandbox: bool = False,
        limit: int | None = None,
        fresh: bool = False,
        retry_errors: str | None = None,
        mode: Mode | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        progress: bool | None = None,
        grace_s: float = 30.0,
    ) -> pl.DataFrame: ...

    async def run_async(
        self,
        data: object = None,
        *,
        output: str | os.PathLike[str] | None = None,
        base_url: str | None = None,
        sandbox: bool = False,
        limit: int | None = None,
        fresh: bool = False,
        retry_errors: str | None = None,
        mode: Mode | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        progress: bool | None = None,
        grace_s: float = 30.0,
    ) -> pl.DataFrame | pl.LazyFrame:
        """``run`` in the caller's event loop (``await job.run_async(df)``); the same keywords.

        On the main thread the run takes SIGINT and SIGTERM for the graceful stop, as the CLI does.
        """
        shutdown = Shutdown(grace_s)
        return await self._run(
            data, output, base_url, sandbox, limit, fresh, retry_errors, mode, base_dir, progress, shutdown
        )

    async def _run(
        self,
        data: object,
        output: str | os.PathLike[str] | None,
        base_url: str | None,
        sandbox: bool,
        limit: int | None,
        fresh: bool,
        retry_errors: str | None,
        mode: Mode | None,
        base_dir: str | os.PathLike[str] | None,
        progress: bool | None,
        shutdown: Shutdown,
    ) -> pl.DataFrame | pl.LazyFrame:
        import polars as pl

        from pipeline.frames.display import plain_lines
        from pipeline.frames.drive import Request, run_batches, run_realtime, serving
        from pipeline.frames.outputs import read_results
        from pipeline.payloads.prepare import open_job_input
        from pipeline.results.store import RerunPolicy
        from pipeline.rows.memory import row_ids

        spec = self._spec
        if limit is not None and limit < 1:
            raise ConfigError(f"limit must be at least 1, got {limit}")
        chosen = mode or spec.api.mode
        if chosen not in ("realtime", "batch"):
            raise ConfigError(f"mode must be 'realtime' or 'batch', got {chosen!r}")
        source = self._source(data, base_dir)
        retry = RerunPolicy.parse(retry_errors)
        with serving(spec, sandbox=sandbox, base_url=base_url) as server:
            where = self._output(output, source, server)
            run = Request(source, where, server, limit, fresh, retry, progress, shutdown)
            with plain_lines(progress is not False):
                if chosen == "batch":
                    self.last_outcome = await run_batches(spec, run)
                else:
                    self.last_outcome = await run_realtime(spec, run)
        table = await asyncio.to_thread(open_job_input, spec, source)
        ids = await asyncio.to_thread(row_ids, table, limit=limit)
        lazy = isinstance(data, pl.LazyFrame)
        return await asyncio.to_thread(read_results, where, ids, lazy=lazy)

    # ------------------------------------------------------------------ dry runs

    def validate(
        self, data: object = None, *, base_dir: str | os.PathLike[str] | None = None
    ) -> ValidationReport:
        """Check the job and every row offline, as ``pipeline validate``: rows, images, problem rows.

        ``print(report)`` (or Jupyter's display) shows the command's text; ``report.problems`` lists
        one line per problem row.
        """
        from pipeline.dryrun.validate import validate_job
        from pipeline.frames.calling import call_function

        source = self._source(data, base_dir)
        return call_function(lambda: validate_job(self._spec, source))

    def estimate(
        self,
        data: object = None,
        *,
        output: str | os.PathLike[str] | None = None,
        limit: int | None = None,
        exact: bool = False,
        sample: int = 20,
        sandbox: bool = False,
        base_url: str | None = None,
        base_dir: str | os.PathLike[str] | None = None,
    ) -> Estimate:
        """What ``run`` with the same arguments would cost, as ``pipeline estimate``: nothing is spent.

        Rows that output already holds are left out. ``exact`` also counts a ``sample`` of requests
        with the free count_tokens endpoint (at ``base_url``, the sandbox, or the job's server).
        """
        from pipeline.api.config import is_loopback
        from pipeline.dryrun.estimate import estimate_job
        from pipeline.frames.calling import call_function
        from pipeline.frames.drive import serving

        spec = self._spec
        if exact and not spec.api.preset.count_tokens and not sandbox:
            raise ConfigError(f"exact: provider {spec.api.provider!r} has no count_tokens endpoint")
        source = self._source(data, base_dir)
        with serving(spec, sandbox=sandbox, base_url=base_url, start=exact) as server:
            where = self._output(output, source, server)
            return call_function(
                lambda: estimate_job(
                    spec,
                    source,
                    where,
                    limit=limit,
                    exact_base_url=server.url if exact else None,
                    api_key=server.key,
                    sample=sample,
                    sandbox_answers=server.sandbox or is_loopback(server.url),
                )
            )

    # ------------------------------------------------------------------ shared

    def _source(self, data: object, base_dir: str | os.PathLike[str] | None) -> InputSource:
        """``data`` as what the drivers read: a path stays a path, a table becomes a ``FrameInput``."""
        from pipeline.rows.memory import frame_input

        if data is None:
            if not self._spec.input:
                raise ConfigError(f"{SOURCE}.run: no data; pass a DataFrame, a table or a path")
            data = self._spec.input
        if isinstance(data, (str, os.PathLike)):
            if base_dir is not None:
                raise ConfigError(
                    "base_dir= is for in-memory data; a file's image paths resolve against its folder"
                )
            return os.fspath(data)
        folder = Path(base_dir) if base_dir is not None else Path.cwd()
        if not folder.is_dir():
            raise ConfigError(f"base_dir: {folder} is not a directory")
        return frame_input(data, base_dir=folder.resolve())

    def _output(self, output: str | os.PathLike[str] | None, source: InputSource, server: Server) -> Path:
        from pipeline.frames.outputs import cache_output

        if output is not None:
            return Path(output)
        if self._spec.output:
            return Path(self._spec.output)
        return cache_output(self._spec, source, server.identity)

"""Handing a ``Job.run`` to the CLI's drivers: the server and key, the options, the summary, the errors.

Owns: choosing the server and key with the CLI's precedence (``cli.support``), with an open
``pipeline.Sandbox`` first; building ``RunOptions`` / ``BatchOptions`` as ``pipeline run`` builds
them; calling ``realtime.run.run_job`` or ``batch.run.run_batch`` unchanged; printing the CLI's
summary; and raising what the CLI would exit on: the ``FatalApiError`` itself, or
``KeyboardInterrupt`` once a signal's graceful stop has saved every answer.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import ConfigError
from pipeline.job.spec import JobSpec
from pipeline.shutdown import Shutdown

if TYPE_CHECKING:
    from pipeline.batch.options import BatchOutcome
    from pipeline.realtime.run import RunOutcome
    from pipeline.results.store import RerunPolicy
    from pipeline.rows.memory import InputSource


@dataclass(frozen=True, slots=True)
class Server:
    """Where a run sends and with which key; ``sandbox``: the sandbox's answers (kept apart)."""

    url: str
    key: str
    sandbox: bool

    @property
    def identity(self) -> str:
        """What the cache is keyed by: ``sandbox`` for any sandbox, else the URL."""
        return "sandbox" if self.sandbox else self.url


@contextmanager
def serving(spec: JobSpec, *, sandbox: bool, base_url: str | None, start: bool = True) -> Iterator[Server]:
    """The server and key, with the CLI's precedence; an open ``pipeline.Sandbox`` before the rest
    (``sandbox=True`` uses it too, rather than starting another).

    :param start: False: only say which server (a dry run without ``exact`` starts no sandbox and
        needs no key).
    :raises ConfigError: two servers named, or no key (the CLI's message, naming ``sandbox=True``).
    """
    from pipeline.catalog.providers import SANDBOX_KEY
    from pipeline.cli.support import api_key_for, server_url
    from pipeline.sandbox.block import active_sandbox

    if sandbox and base_url:
        raise ConfigError("sandbox=True and base_url= both name a server; use one")
    block = active_sandbox() if base_url is None else None
    if block is not None:
        yield Server(block.base_url, api_key_for(spec, sandbox=True) if start else "", sandbox=True)
    elif sandbox and not start:
        yield Server("", SANDBOX_KEY, sandbox=True)
    elif sandbox:
        key = api_key_for(spec, sandbox=True)
        with server_url(spec, sandbox=True, base_url=None) as url:
            yield Server(url, key, sandbox=True)
    else:
        key = api_key_for(spec, sandbox=False, sandbox_hint="sandbox=True") if start else ""
        with server_url(spec, sandbox=False, base_url=base_url) as url:
            yield Server(url, key, sandbox=False)


@dataclass(frozen=True, slots=True)
class Request:
    """One ``Job.run``'s settings, as ``pipeline run``'s flags would give them."""

    source: InputSource
    output: Path
    server: Server
    limit: int | None
    fresh: bool
    retry: RerunPolicy
    progress: bool | None
    shutdown: Shutdown


async def run_realtime(spec: JobSpec, run: Request) -> RunOutcome:
    """``pipeline run``: refuse an output with pending batches, run, print the summary, raise as it exits."""
    from pipeline.cli.batch import refuse_pending_batches
    from pipeline.frames.display import NotebookView, in_notebook
    from pipeline.realtime.run import RunOptions, run_job
    from pipeline.results.summary import summary_text

    refuse_pending_batches(run.output)
    notebook = run.progress is not False and in_notebook()
    options = RunOptions(
        base_url=run.server.url,
        api_key=run.server.key,
        input=run.source,
        output=run.output,
        limit=run.limit,
        fresh=run.fresh,
        retry=run.retry,
        grace_s=run.shutdown.grace_s,
        progress=False if notebook else run.progress,
        view=NotebookView() if notebook else None,
        sandbox=run.server.sandbox,
    )
    outcome = await run_job(spec, options, shutdown=run.shutdown)
    where = outcome.output
    results = where / "results.parquet" if isinstance(where, Path) else f"{where.rstrip('/')}/results.parquet"
    say(summary_text(outcome.summary, output=str(results)))
    answered = outcome.summary.rows_ok + outcome.summary.rows_error
    raise_for(outcome.fatal, outcome.interrupted, f"{answered} rows answered this run are saved in {results}")
    return outcome


async def run_batches(spec: JobSpec, run: Request) -> BatchOutcome:
    """``pipeline run --mode batch --wait``: submit, wait, collect, print the summary, raise as it exits."""
    from pipeline.api.config import job_betas
    from pipeline.batch.options import BatchOptions
    from pipeline.batch.run import run_batch
    from pipeline.batch.summary import batch_text

    if not spec.api.preset.message_batches:
        raise ConfigError(
            f"mode batch: provider {spec.api.provider!r} has no Anthropic Message Batches endpoint"
            ' (/v1/messages/batches); run it with mode="realtime", or use api={"provider": "anthropic"}'
        )
    options = BatchOptions(
        base_url=run.server.url,
        api_key=run.server.key,
        output=run.output,
        input=run.source,
        limit=run.limit,
        fresh=run.fresh,
        retry=run.retry,
        wait=True,  # a call that returns the results waits for them
        sandbox=run.server.sandbox,
        grace_s=run.shutdown.grace_s,
        auth=spec.api.auth,
        anthropic_version=spec.api.anthropic_version,
        timeout_s=spec.limits.timeout_s,
        max_attempts=spec.limits.max_attempts,
        betas=job_betas(spec),
        storage=spec.storage,
    )
    outcome = await run_batch(spec, options, shutdown=run.shutdown)
    for note in outcome.notes:
        say(f"pipeline: {note}")
    say(batch_text(outcome))
    raise_for(outcome.fatal, outcome.interrupted, f"submitted batches stay pending in {outcome.output}")
    return outcome


def say(text: str) -> None:
    """Print a summary as the CLI does: on stderr (in Jupyter, the cell's output)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def raise_for(fatal: BaseException | None, interrupted: str | None, saved: str) -> None:
    """A refused run raises its FatalApiError; a run stopped by Ctrl-C or SIGTERM, KeyboardInterrupt."""
    if fatal is not None:
        raise fatal
    if interrupted is not None:
        raise KeyboardInterrupt(f"stopped by {interrupted}: {saved}; run again to continue")

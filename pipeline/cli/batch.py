"""``pipeline run --mode batch`` and the ``pipeline batch`` group: status, collect, cancel.

Thin like the rest of the CLI: options in, ``pipeline.batch`` does the work, errors become exit codes.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from pipeline.catalog.providers import SANDBOX_KEY
from pipeline.cli.support import (
    EXIT_OK,
    OUTPUT,
    api_key_for,
    exit_code,
    expected_errors,
    fail,
    job_output,
    server_url,
    setup_logging,
)
from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.job.spec import JobSpec


def run_batch_mode(
    spec: JobSpec,
    *,
    sandbox: bool,
    base_url: str | None,
    input_: str | None,
    output: Path | str | None,
    limit: int | None,
    fresh: bool,
    retry_errors: str | None,
    wait: bool,
    grace_s: float,
    max_error_rate: float,
    as_json: bool,
) -> NoReturn:
    """``run --mode batch``: refuse providers without Anthropic's batches, then submit/collect/wait."""
    from pipeline.api.config import job_betas
    from pipeline.batch.options import BatchOptions
    from pipeline.batch.run import run_batch
    from pipeline.results.store import RerunPolicy

    if not spec.api.preset.message_batches:
        raise ConfigError(
            f"--mode batch: provider {spec.api.provider!r} has no Anthropic Message Batches endpoint"
            ' (/v1/messages/batches); run it with --mode realtime, or use [api] provider = "anthropic"'
        )
    api_key = api_key_for(spec, sandbox=sandbox)
    with server_url(spec, sandbox=sandbox, base_url=base_url) as url:
        options = BatchOptions(
            base_url=url,
            api_key=api_key,
            output=job_output(spec, output),
            input=input_ if input_ is not None else spec.input,
            limit=limit,
            fresh=fresh,
            retry=RerunPolicy.parse(retry_errors),
            # the built-in sandbox stops with this command, and its batches with it: always wait
            wait=wait or sandbox,
            sandbox=sandbox,
            grace_s=grace_s,
            auth=spec.api.auth,
            anthropic_version=spec.api.anthropic_version,
            timeout_s=spec.limits.timeout_s,
            max_attempts=spec.limits.max_attempts,
            betas=job_betas(spec),
            storage=spec.storage,
        )
        outcome = asyncio.run(run_batch(spec, options))
    _finish_batch(outcome, base_url=options.base_url, max_error_rate=max_error_rate, as_json=as_json)


def _finish_batch(outcome: Any, *, base_url: str, max_error_rate: float, as_json: bool) -> NoReturn:
    """Print a batch invocation's summary and what is pending, and exit with the README's codes."""
    from pipeline.batch.summary import batch_text
    from pipeline.results.summary import summary_dict

    summary = outcome.summary
    decided = summary.rows_ok + outcome.final_errors
    code = exit_code(
        fatal=outcome.fatal,
        interrupted=outcome.interrupted,
        errors=outcome.final_errors,
        decided=decided,
        max_error_rate=max_error_rate,
    )
    for note in outcome.notes:
        click.echo(f"pipeline: {note}", err=True)
    click.echo(batch_text(outcome), err=True)
    if as_json:
        data = summary_dict(summary, output=str(outcome.output), exit_code=code)
        click.echo(json.dumps({**data, "mode": "batch", "batch": outcome.batch_dict()}))
    if outcome.fatal is not None:
        fail(f"the API refused the batch at {base_url}: {outcome.fatal}; what was submitted is recorded")
    if outcome.interrupted is not None:
        click.echo(
            f"pipeline: stopped by {outcome.interrupted}; submitted batches stay pending and are recorded"
            f" in {outcome.output}; rerun to continue",
            err=True,
        )
    sys.exit(code)


def refuse_pending_batches(output: Path) -> None:
    """A realtime run would pay again for rows that a pending batch holds: refuse it before anything."""
    from pipeline.batch.state import refuse_pending

    refuse_pending(output)


def _stored_options(output: Path | str, base_url: str | None, **extra: Any) -> Any:
    """Options for the batch commands, from what OUTPUT recorded (never the key: that comes from the env)."""
    from pipeline.batch.manage import connection
    from pipeline.batch.options import BatchOptions
    from pipeline.results.outputs import reading

    with reading(output) as (store, _):
        stored = connection(store.directory)
    if stored.get("sandbox") and base_url is None:
        raise ConfigError(
            f"{output}: its batches went to the built-in sandbox, which stopped with its run;"
            " rerun the job with --sandbox (or give --base-url)"
        )
    env = str(stored.get("api_key_env") or "ANTHROPIC_API_KEY")
    key = os.environ.get(env, "").strip() or (SANDBOX_KEY if stored.get("sandbox") else "")
    if not key:
        raise ConfigError(f"{env} is not set (the key variable {output}'s batches were submitted with)")
    request = stored.get("request")
    files = isinstance(request, dict) and request.get("image_transport") == "files"
    return BatchOptions(
        base_url=(base_url or str(stored["base_url"])).rstrip("/"),
        api_key=key,
        output=output,
        auth=stored.get("auth") or "x-api-key",
        anthropic_version=str(stored.get("anthropic_version") or "2023-06-01"),
        betas=tuple(
            dict.fromkeys(
                [str(name) for name in stored.get("beta") or ()] + (["files-api-2025-04-14"] if files else [])
            )
        ),
        **extra,
    )


@click.group()
def batch() -> None:
    """Batch mode's submissions in an OUTPUT directory: status, collect, cancel, forget.

    Submit with `pipeline run JOB --mode batch`; these commands need only OUTPUT (and the key).
    """


_BASE_URL_HELP = "API base URL; default: the one the batches were submitted to."


@batch.command("status")
@click.argument("output", type=OUTPUT)
@click.option("--base-url", help=_BASE_URL_HELP)
@click.option("--offline", is_flag=True, help="Show what OUTPUT records, without asking the API.")
@click.option("--json", "as_json", is_flag=True, help="Print the submissions as JSON on stdout.")
@expected_errors
def batch_status(output: Path | str, base_url: str | None, offline: bool, as_json: bool) -> None:
    """List OUTPUT's batches: pending ones with their processing status and counts."""
    from pipeline.batch.manage import batch_status as read_batches
    from pipeline.results.outputs import reading

    options = None if offline else _stored_options(output, base_url)
    with reading(output) as (store, _):
        entries = asyncio.run(read_batches(store.directory, options, label=str(output)))
    if as_json:
        click.echo(json.dumps({"output": str(output), "batches": entries}))
        sys.exit(EXIT_OK)
    for entry in entries:
        counts = entry.get("request_counts") or {}
        shown = ", ".join(f"{value} {name}" for name, value in counts.items() if value)
        status = entry.get("processing_status", entry["state"])
        line = f"{entry['batch_id'] or entry['key']}  {status}  {entry['requests']} requests"
        line += f"  submitted {entry['submitted_at']}" + (f"  ({shown})" if shown else "")
        if entry.get("problem") or entry.get("note"):
            line += f"  {entry.get('problem') or entry.get('note')}"
        click.echo(line)
    pending = [e for e in entries if e["state"] in ("submitted", "unconfirmed")]
    click.echo(f"{len(pending)} of {len(entries)} batches pending", err=True)
    sys.exit(EXIT_OK)


@batch.command("collect")
@click.argument("output", type=OUTPUT)
@click.option("--base-url", help=_BASE_URL_HELP)
@click.option("--wait", is_flag=True, help="Wait until every pending batch has ended, with progress.")
@click.option(
    "--max-error-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Exit 0 while error rows stay at or below this share of the rows collected.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("-v", "--verbose", count=True, help="More log lines on stderr (-vv for debug).")
@expected_errors
def batch_collect(
    output: Path | str, base_url: str | None, wait: bool, max_error_rate: float, as_json: bool, verbose: int
) -> None:
    """Collect OUTPUT's batches that have ended into results.parquet (submits nothing)."""
    from pipeline.batch.run import run_batch
    from pipeline.results.compaction import prefer_system_allocator

    setup_logging(verbose)
    prefer_system_allocator()
    options = _stored_options(output, base_url, wait=wait)
    outcome = asyncio.run(run_batch(None, options))
    _finish_batch(outcome, base_url=options.base_url, max_error_rate=max_error_rate, as_json=as_json)


@batch.command("cancel")
@click.argument("output", type=OUTPUT)
@click.option("--base-url", help=_BASE_URL_HELP)
@expected_errors
def batch_cancel(output: Path | str, base_url: str | None) -> None:
    """Cancel OUTPUT's pending batches; collect them afterwards.

    What was done before the cancel is kept; canceled rows are submitted again by the next run.
    """
    from pipeline.batch.run import cancel_batches

    for line in asyncio.run(cancel_batches(_stored_options(output, base_url))):
        click.echo(line, err=True)
    sys.exit(EXIT_OK)


@batch.command("forget")
@click.argument("output", type=OUTPUT)
@click.argument("batch_id", metavar="BATCH_ID")
@click.option(
    "--yes", is_flag=True, help="Forget it even though its rows may be paid twice if the batch still exists."
)
@expected_errors
def batch_forget(output: Path | str, batch_id: str, yes: bool) -> None:
    """Give up a pending batch the API no longer knows; the next run submits its rows again.

    BATCH_ID is a msgbatch_ id, or the key of an unconfirmed submission (`pipeline batch status
    --offline` lists both). Nothing is sent to the API. If the batch still exists (under another key
    or workspace, or at another base URL), its rows may be paid twice: check first, then pass --yes.
    """
    from pipeline.batch.manage import find_pending, forget_batch
    from pipeline.results.outputs import reading

    with reading(output) as (store, _):
        sub = find_pending(store.directory, batch_id)
    if not yes:
        fail(
            f"batch forget: {sub.label()} ({sub.requests} requests) would be given up and its rows submitted"
            " again by the next run; if that batch still exists (under another key or workspace, or at"
            f" another base URL) they may be paid twice. Check with `pipeline batch status {output}`,"
            " then add --yes"
        )
    sub = forget_batch(output, batch_id)
    click.echo(
        f"pipeline: forgot {sub.label()} ({sub.requests} requests); the next run submits its rows again",
        err=True,
    )
    sys.exit(EXIT_OK)

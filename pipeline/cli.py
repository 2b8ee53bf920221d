"""The ``pipeline`` command: options, job loading, one ``asyncio.run`` per command, errors to exit codes.

Exit codes: 0 every row ok; 1 the run finished but some rows are errors (they are in the output);
2 the job cannot run (bad job file, unreadable input, no API key, auth rejected); 130 interrupted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from pipeline.errors import ConfigError, PipelineError
from pipeline.spec import JobSpec, load_job

EXIT_OK, EXIT_ROW_ERRORS, EXIT_CANNOT_RUN, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
SANDBOX_KEY = "sk-sandbox-not-a-real-key"
F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int = EXIT_CANNOT_RUN) -> None:
    click.echo(f"pipeline: error: {message}", err=True)
    sys.exit(code)


def _expected_errors(func: F) -> F:
    """Turn the pipeline's own errors into one line and exit 2: never a traceback for these."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PipelineError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            click.echo("pipeline: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        return None

    return wrapper  # type: ignore[return-value]


def _setup_logging(verbose: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("pipeline: %(message)s"))
    root = logging.getLogger("pipeline")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING)
    logging.getLogger("pipeline.run").setLevel(logging.DEBUG if verbose > 1 else logging.INFO)


@click.group(
    # a fixed width keeps --help identical everywhere, so the README can show it verbatim (tests/test_docs.py)
    context_settings={"help_option_names": ["-h", "--help"], "terminal_width": 100, "max_content_width": 100}
)
@click.version_option(package_name="pipeline")
def cli() -> None:
    """Batch vision and text jobs on the Anthropic Messages API: a table in, Parquet out."""


@cli.command()
@click.argument("job", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--sandbox", is_flag=True, help="Send to a built-in local sandbox instead of the API (free, offline)."
)
@click.option("--base-url", help="API base URL; overrides ANTHROPIC_BASE_URL and the job's [api] base_url.")
@click.option("--input", "input_", help="Input file or glob; overrides the job's input.")
@click.option(
    "--output",
    type=click.Path(path_type=Path, file_okay=False),
    help="Output directory; overrides the job's.",
)
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N input rows.")
@click.option(
    "--fresh", is_flag=True, help="Start over: ignore earlier results (kept as results.previous.parquet)."
)
@click.option(
    "--retry-errors",
    metavar="TYPES",
    help="Which earlier error rows to send again: all, none, or error types (comma-separated). "
    "Default: all but invalid_request_error, request_too_large and not_found_error.",
)
@click.option(
    "--max-error-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Exit 0 while error rows stay at or below this share of the rows sent (0: any error exits 1).",
)
@click.option(
    "--grace-s",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="After Ctrl-C or SIGTERM, how long requests in flight may finish (a second signal stops at once).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("-v", "--verbose", count=True, help="More log lines on stderr (-vv for debug).")
@_expected_errors
def run(
    job: Path,
    sandbox: bool,
    base_url: str | None,
    input_: str | None,
    output: Path | None,
    limit: int | None,
    fresh: bool,
    retry_errors: str | None,
    max_error_rate: float,
    grace_s: float,
    as_json: bool,
    verbose: int,
) -> None:
    """Run JOB: send one request per input row and write OUTPUT/results.parquet."""
    from pipeline.report import summary_json, summary_text
    from pipeline.runner import RunOptions, run_job
    from pipeline.writer import RetryPolicy

    _setup_logging(verbose)
    spec = load_job(job)
    if sandbox and base_url:
        raise ConfigError("--sandbox and --base-url both name a server; use one")
    api_key = _api_key(spec, sandbox=sandbox)
    with _sandbox_url() if sandbox else nullcontext(None) as sandbox_url:
        url = sandbox_url or base_url or os.environ.get("ANTHROPIC_BASE_URL") or spec.api.base_url
        options = RunOptions(
            base_url=url.rstrip("/"),
            api_key=api_key,
            input=input_ if input_ is not None else spec.input,
            output=output if output is not None else Path(spec.output),
            limit=limit,
            fresh=fresh,
            retry=RetryPolicy.parse(retry_errors),
            grace_s=grace_s,
        )
        outcome = asyncio.run(run_job(spec, options))
    summary = outcome.summary
    sent = summary.rows_ok + summary.rows_error
    if outcome.fatal is not None:
        code = EXIT_CANNOT_RUN
    elif outcome.interrupted is not None:
        code = EXIT_TERMINATED if outcome.interrupted == "SIGTERM" else EXIT_INTERRUPTED
    elif summary.rows_error and summary.rows_error / sent > max_error_rate:
        code = EXIT_ROW_ERRORS
    else:
        code = EXIT_OK
    results = outcome.output / "results.parquet"
    click.echo(summary_text(summary, output=str(results)), err=True)
    if as_json:
        click.echo(summary_json(summary, output=str(outcome.output), exit_code=code))
    if outcome.fatal is not None:
        _fail(f"the API refused the run at {options.base_url}: {outcome.fatal}; results so far are saved")
    if outcome.interrupted is not None:
        click.echo(
            f"pipeline: stopped by {outcome.interrupted}: {sent} rows answered this run are saved"
            f" in {results}; rerun to continue",
            err=True,
        )
    sys.exit(code)


@cli.command()
@click.argument("job", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--input", "input_", help="Input file or glob; overrides the job's input.")
@click.option("--show", type=click.IntRange(min=0), default=20, show_default=True, help="Problems to list.")
@_expected_errors
def validate(job: Path, input_: str | None, show: int) -> None:
    """Check JOB and every input row without sending anything (exit 1 if some rows would fail)."""
    from pipeline.checks import validate_job

    spec = load_job(job)
    report = validate_job(spec, input_ if input_ is not None else spec.input)
    for problem in report.problems[:show]:
        click.echo(f"  {problem}", err=True)
    if len(report.problems) > show:
        click.echo(f"  ... and {len(report.problems) - show} more", err=True)
    click.echo(
        f"{spec.source}: job ok; {report.rows} rows, {report.images} images checked,"
        f" {len(report.problems)} rows with problems",
        err=True,
    )
    sys.exit(EXIT_ROW_ERRORS if report.problems else EXIT_OK)


@cli.command()
@click.argument("output", type=click.Path(path_type=Path, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON on stdout.")
@_expected_errors
def status(output: Path, as_json: bool) -> None:
    """Summarise an output directory (counts, errors by type, tokens) without any network."""
    from pipeline.status import read_status, status_json, status_text

    state = read_status(output)
    if as_json:
        click.echo(status_json(state))
    else:
        click.echo(status_text(state))
    sys.exit(EXIT_ROW_ERRORS if state.error else EXIT_OK)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8080, show_default=True, help="0 picks a free port.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for latency jitter and faults.")
@click.option("--latency-ms", type=float, default=0.0, show_default=True)
@click.option("--jitter-ms", type=float, default=0.0, show_default=True)
@click.option("--rpm", type=float, help="Enforce requests per minute (429 with retry-after above it).")
@click.option("--itpm", type=float, help="Enforce input tokens per minute.")
@click.option("--otpm", type=float, help="Enforce output tokens per minute.")
@click.option("--fault-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option(
    "--faults", default="529,500,html503,drop,slow", show_default=True, help="Fault kinds, comma-separated."
)
@click.option("--slow-s", type=float, default=30.0, show_default=True, help="Delay of a 'slow' fault.")
@click.option("--api-key", help="Accept only this key (default: any non-empty key).")
@click.option("--auth", type=click.Choice(["any", "x-api-key", "bearer"]), default="any", show_default=True)
@click.option("--shape", type=click.Choice(["anthropic", "openai"]), default="anthropic", show_default=True)
@click.option("--no-ratelimit-headers", is_flag=True, help="Send no anthropic-ratelimit-* headers.")
@_expected_errors
def sandbox(
    host: str,
    port: int,
    seed: int,
    latency_ms: float,
    jitter_ms: float,
    rpm: float | None,
    itpm: float | None,
    otpm: float | None,
    fault_rate: float,
    faults: str,
    slow_s: float,
    api_key: str | None,
    auth: str,
    shape: str,
    no_ratelimit_headers: bool,
) -> None:
    """Serve the local sandbox that speaks the Messages API (for trying jobs and for other tools)."""
    from pipeline.sandbox import SandboxConfig, serve

    try:
        config = SandboxConfig(
            host=host,
            port=port,
            seed=seed,
            latency_ms=latency_ms,
            jitter_ms=jitter_ms,
            requests_per_minute=rpm,
            input_tokens_per_minute=itpm,
            output_tokens_per_minute=otpm,
            ratelimit_headers=not no_ratelimit_headers,
            fault_rate=fault_rate,
            faults=tuple(kind.strip() for kind in faults.split(",") if kind.strip()),
            slow_s=slow_s,
            api_key=api_key,
            auth=auth,
            shape=shape,
        )
    except ValueError as exc:
        raise ConfigError(f"sandbox: {exc}") from None
    try:
        serve(config)
    except OSError as exc:
        raise ConfigError(f"sandbox cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _api_key(spec: JobSpec, *, sandbox: bool) -> str:
    key = os.environ.get(spec.api.api_key_env, "").strip()
    if key:
        return key
    if sandbox:
        return SANDBOX_KEY
    raise ConfigError(
        f"{spec.api.api_key_env} is not set (named by [api] api_key_env in {spec.source}); "
        "export the key, or try the job with --sandbox"
    )


@contextmanager
def _sandbox_url() -> Iterator[str]:
    from pipeline.sandbox import SandboxConfig, running_sandbox

    with running_sandbox(SandboxConfig()) as handle:
        yield handle.base_url


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="pipeline")

"""The ``pipeline`` command: options, job loading, one ``asyncio.run`` per command, errors to exit codes.

Exit codes: 0 every row ok; 1 the run finished but some rows are errors (they are in the output);
2 the job cannot run (bad job file, unreadable input, no API key, auth rejected); 130 interrupted;
143 terminated. Shared helpers live in ``cli_support``, the batch-mode commands in ``cli_batch``.
"""

from __future__ import annotations

import asyncio
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import click

from pipeline.catalog.providers import PRESETS
from pipeline.cli.batch import batch, refuse_pending_batches, run_batch_mode
from pipeline.cli.files import files
from pipeline.cli.support import (
    EXIT_OK,
    EXIT_ROW_ERRORS,
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
from pipeline.extras import require


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
    "--output", type=OUTPUT, help="Output directory (or s3://, gs://, az:// URL); overrides the job's."
)
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N input rows.")
@click.option(
    "--fresh", is_flag=True, help="Start over: ignore earlier results (kept as results.previous.parquet)."
)
@click.option(
    "--retry-errors",
    metavar="TYPES",
    help="Which earlier error rows to send again: all, none, or error types (comma-separated). "
    "Default: all but invalid_request_error, request_too_large, not_found_error, refusal and "
    "model_context_window_exceeded; rows cut off at max_tokens go again once it is raised.",
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
@click.option(
    "--mode",
    type=click.Choice(["realtime", "batch"]),
    help="realtime: a request per row now; batch: the Message Batches API (half price, results "
    "within 24 h; see the README). Default: the job's [api] mode.",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    help="local: this process sends; ray: the workers of a Ray cluster, sharing one rate limit (see the "
    "README). Default: the job's [run] engine.",
)
@click.option(
    "--ray-address",
    metavar="ADDRESS",
    help="With --engine ray: the cluster (auto, or an address). Default: the job's [run] ray_address, "
    "RAY_ADDRESS, else a local Ray instance for the run.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="With --engine ray: senders on the cluster. Default: the job's [run] workers, else one per CPU (at "
    "most 16).",
)
@click.option(
    "--wait",
    is_flag=True,
    help="With --mode batch: wait until every batch has ended and is collected, with progress "
    "(without it: submit, collect what ended, and exit).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("-v", "--verbose", count=True, help="More log lines on stderr (-vv for debug).")
@expected_errors
def run(
    job: Path,
    sandbox: bool,
    base_url: str | None,
    input_: str | None,
    output: Path | str | None,
    limit: int | None,
    fresh: bool,
    retry_errors: str | None,
    max_error_rate: float,
    grace_s: float,
    mode: str | None,
    engine: str | None,
    ray_address: str | None,
    workers: int | None,
    wait: bool,
    as_json: bool,
    verbose: int,
) -> None:
    """Run JOB: send one request per input row and write OUTPUT/results.parquet."""
    from pipeline.job.spec import load_job
    from pipeline.realtime.run import RunOptions, run_job
    from pipeline.results.compaction import prefer_system_allocator
    from pipeline.results.store import RerunPolicy
    from pipeline.results.summary import results_location, summary_json, summary_text

    setup_logging(verbose)
    prefer_system_allocator()
    spec = load_job(job)
    on_ray = (engine or spec.run.engine) == "ray"
    if on_ray:
        require("ray", "--engine ray")
    elif ray_address is not None or workers is not None:
        raise ConfigError("--ray-address and --workers apply to --engine ray")
    if (mode or spec.api.mode) == "batch":
        if on_ray:
            raise ConfigError("--engine ray runs realtime jobs; batch mode (--mode batch) runs locally")
        run_batch_mode(
            spec,
            sandbox=sandbox,
            base_url=base_url,
            input_=input_,
            output=output,
            limit=limit,
            fresh=fresh,
            retry_errors=retry_errors,
            wait=wait,
            grace_s=grace_s,
            max_error_rate=max_error_rate,
            as_json=as_json,
        )
    if wait:
        raise ConfigError("--wait applies to --mode batch (a realtime run always runs to the end)")
    target = job_output(spec, output)
    if isinstance(target, Path):  # an object-storage output is checked once its mirror is pulled
        refuse_pending_batches(target)
    api_key = api_key_for(spec, sandbox=sandbox)
    with server_url(spec, sandbox=sandbox, base_url=base_url) as url:
        options = RunOptions(
            base_url=url,
            api_key=api_key,
            input=input_ if input_ is not None else spec.input,
            output=target,
            limit=limit,
            fresh=fresh,
            retry=RerunPolicy.parse(retry_errors),
            grace_s=grace_s,
            sandbox=sandbox,
        )
        if on_ray:
            from pipeline.cluster.engine import ClusterOptions, run_on_ray

            cluster = ClusterOptions(
                address=ray_address or spec.run.ray_address, workers=workers or spec.run.workers
            )
            outcome = asyncio.run(run_on_ray(spec, options, cluster))
        else:
            outcome = asyncio.run(run_job(spec, options))
    summary = outcome.summary
    sent = summary.rows_ok + summary.rows_error
    code = exit_code(
        fatal=outcome.fatal,
        interrupted=outcome.interrupted,
        errors=summary.rows_error,
        decided=sent,
        max_error_rate=max_error_rate,
    )
    if outcome.unanswered and code == EXIT_OK:
        code = EXIT_ROW_ERRORS
    results = results_location(outcome.output)
    click.echo(summary_text(summary, output=results), err=True)
    if as_json:
        click.echo(summary_json(summary, output=str(outcome.output), exit_code=code))
    if outcome.fatal is not None:
        fail(f"the API refused the run at {options.base_url}: {outcome.fatal}; results so far are saved")
    if outcome.interrupted is not None:
        click.echo(
            f"pipeline: stopped by {outcome.interrupted}: {sent} rows answered this run are saved"
            f" in {results}; rerun to continue",
            err=True,
        )
    if outcome.unanswered:
        click.echo(
            f"pipeline: error: {outcome.unanswered} rows came back from the cluster without a result;"
            f" the {sent} answered are saved in {results}; rerun to send the rest",
            err=True,
        )
    sys.exit(code)


@cli.command()
@click.argument("job", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--input", "input_", help="Input file or glob; overrides the job's input.")
@click.option("--show", type=click.IntRange(min=0), default=20, show_default=True, help="Problems to list.")
@click.option(
    "--fetch", is_flag=True, help="Also download images and documents from URLs and object storage."
)
@expected_errors
def validate(job: Path, input_: str | None, show: int, fetch: bool) -> None:
    """Check JOB and every input row without sending anything (exit 1 if some rows would fail)."""
    from pipeline.dryrun.validate import validate_job
    from pipeline.job.spec import load_job

    spec = load_job(job)
    report = validate_job(spec, input_ if input_ is not None else spec.input, fetch=fetch)
    click.echo(report.text(show), err=True)
    sys.exit(EXIT_ROW_ERRORS if report.problems else EXIT_OK)


@cli.command()
@click.argument("job", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--input", "input_", help="Input file or glob; overrides the job's input.")
@click.option(
    "--output", type=OUTPUT, help="Output directory whose finished rows are left out; overrides the job's."
)
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N input rows.")
@click.option(
    "--exact",
    is_flag=True,
    help="Also count a sample of requests with the free /v1/messages/count_tokens endpoint "
    "(needs the API key, or --sandbox) and correct the estimate by it.",
)
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Requests to count with --exact.",
)
@click.option(
    "--sandbox",
    is_flag=True,
    help="Estimate a sandbox run: rows the sandbox answered count as done, and --exact counts with it.",
)
@click.option("--base-url", help="With --exact: API base URL; overrides ANTHROPIC_BASE_URL and the job's.")
@click.option(
    "--fetch", is_flag=True, help="Also download images from URLs and object storage, to count their tokens."
)
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as JSON on stdout.")
@expected_errors
def estimate(
    job: Path,
    input_: str | None,
    output: Path | str | None,
    limit: int | None,
    exact: bool,
    sample: int,
    sandbox: bool,
    base_url: str | None,
    fetch: bool,
    as_json: bool,
) -> None:
    """Estimate JOB's tokens and cost before spending anything (never sends a Messages request)."""
    from pipeline.api.config import is_loopback
    from pipeline.dryrun.costs import estimate_json, estimate_text
    from pipeline.dryrun.estimate import estimate_job
    from pipeline.job.spec import load_job

    spec = load_job(job)
    if exact and not spec.api.preset.count_tokens and not sandbox:
        raise ConfigError(f"--exact: provider {spec.api.provider!r} has no count_tokens endpoint")
    api_key = api_key_for(spec, sandbox=sandbox) if exact else ""
    with server_url(spec, sandbox=sandbox, base_url=base_url) if exact else nullcontext("") as url:
        with server_url(spec, sandbox=False, base_url=base_url) as target:  # the run's server: names it
            local = sandbox or is_loopback(target)
        result = estimate_job(
            spec,
            input_ if input_ is not None else spec.input,
            job_output(spec, output),
            limit=limit,
            exact_base_url=url or None,
            api_key=api_key,
            sample=sample,
            fetch=fetch,
            sandbox_answers=local,
        )
    click.echo(estimate_json(result) if as_json else estimate_text(result))


@cli.command()
@click.argument("output", type=OUTPUT)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON on stdout.")
@expected_errors
def status(output: Path | str, as_json: bool) -> None:
    """Summarise an output directory (counts, errors by type, tokens) without any network."""
    from pipeline.results.outputs import reading
    from pipeline.review.status import read_status, status_json, status_text

    with reading(output) as (store, holder):
        state = read_status(store.directory, label=output, running=holder)
    if as_json:
        click.echo(status_json(state))
    else:
        click.echo(status_text(state))
    sys.exit(EXIT_ROW_ERRORS if state.error else EXIT_OK)


@cli.command()
@click.argument("output", type=OUTPUT)
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "jsonl", "parquet"]), required=True, help="File format."
)
@click.option(
    "--to",
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    help="Where to write (- for stdout). Default: OUTPUT/export.<format>.",
)
@expected_errors
def export(output: Path | str, fmt: str, to: Path | None) -> None:
    """Write OUTPUT's results as CSV, JSONL or Parquet, every column kept (nested ones as JSON in CSV)."""
    from pipeline.results.outputs import publish, reading
    from pipeline.review.export import STDOUT, export_results

    with reading(output) as (store, _):
        path, rows = export_results(store.directory, fmt, to)  # type: ignore[arg-type]
        # the default place is beside the results: in the bucket, for an object-storage output
        where = publish(output, path) if to is None and isinstance(output, str) else str(path)
    if path != STDOUT:
        click.echo(f"{rows} rows written to {where}", err=True)


@cli.command()
@click.argument("output", type=OUTPUT)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write the HTML. Default: OUTPUT/report.html.",
)
@click.option(
    "--job",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The job that wrote OUTPUT (default: the one OUTPUT/job.json names), for its image columns.",
)
@click.option(
    "--thumb-px", type=click.IntRange(32, 512), default=160, show_default=True, help="Thumbnail long edge."
)
@expected_errors
def report(output: Path | str, out: Path | None, job: Path | None, thumb_px: int) -> None:
    """Write an offline HTML gallery of OUTPUT: each row's image beside its answer, errors, numbers."""
    from pipeline.job.spec import load_job
    from pipeline.results.outputs import publish, reading
    from pipeline.review.gallery import write_gallery

    spec = load_job(job) if job is not None else None
    with reading(output) as (store, _):
        info = write_gallery(store.directory, out, job=spec, edge=thumb_px)
        # the default place is beside the results: in the bucket, for an object-storage output
        where = publish(output, info.path) if out is None and isinstance(output, str) else str(info.path)
    missing = f", {info.missing_images} images could not be read" if info.missing_images else ""
    click.echo(
        f"{info.rows} rows, {info.thumbnails} thumbnails{missing}; {info.bytes / 1024:,.0f} KiB written to"
        f" {where}",
        err=True,
    )


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
@click.option(
    "--preset",
    type=click.Choice(sorted(PRESETS)),
    metavar="PROVIDER",
    help="Answer like a provider preset (" + ", ".join(PRESETS) + "): its auth header, reply shape, "
    "rate-limit headers and missing features. Overrides --auth, --shape and --no-ratelimit-headers.",
)
@click.option(
    "--tool-violation-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of answers whose tool input (or JSON answer) breaks its schema (seeded).",
)
@click.option(
    "--refusal-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of answers that come back refused (stop_reason refusal; seeded).",
)
@click.option(
    "--truncation-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of answers cut short at max_tokens (seeded).",
)
@click.option(
    "--batch-processing-s",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="How long a message batch stays in_progress.",
)
@click.option(
    "--batch-errored-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of batch results that come back errored (api_error; seeded).",
)
@click.option(
    "--batch-expired-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of batch results that come back expired (seeded).",
)
@expected_errors
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
    preset: str | None,
    tool_violation_rate: float,
    refusal_rate: float,
    truncation_rate: float,
    batch_processing_s: float,
    batch_errored_rate: float,
    batch_expired_rate: float,
) -> None:
    """Serve the local sandbox that speaks the Messages API (for trying jobs and for other tools)."""
    require("sandbox", "pipeline sandbox")
    from pipeline.sandbox import SandboxConfig, serve
    from pipeline.sandbox.config import preset_config

    try:
        dialect: dict[str, Any] = {
            "auth": auth,
            "shape": shape,
            "ratelimit_headers": not no_ratelimit_headers,
        }
        settings: dict[str, Any] = dict(
            host=host,
            port=port,
            seed=seed,
            latency_ms=latency_ms,
            jitter_ms=jitter_ms,
            requests_per_minute=rpm,
            input_tokens_per_minute=itpm,
            output_tokens_per_minute=otpm,
            fault_rate=fault_rate,
            faults=tuple(kind.strip() for kind in faults.split(",") if kind.strip()),
            slow_s=slow_s,
            api_key=api_key,
            tool_violation_rate=tool_violation_rate,
            refusal_rate=refusal_rate,
            truncation_rate=truncation_rate,
            batch_processing_s=batch_processing_s,
            batch_errored_rate=batch_errored_rate,
            batch_expired_rate=batch_expired_rate,
        )
        if preset is not None:
            config = preset_config(preset, **settings)
        else:
            config = SandboxConfig(**settings, **dialect)
    except ValueError as exc:
        raise ConfigError(f"sandbox: {exc}") from None
    try:
        serve(config)
    except OSError as exc:
        raise ConfigError(f"sandbox cannot listen on {host}:{port}: {exc.strerror or exc}") from None


cli.add_command(batch)
cli.add_command(files)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="pipeline")

"""What every CLI command shares: exit codes, the one-line error, logging, the key and the server.

At import it loads only click and the package's light modules (errors, provider presets), so
``pipeline --help`` stays fast; commands import their back-ends inside the function
(``tests/test_exported_members.py`` checks that no heavy library loads for ``--help``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from pipeline.catalog.providers import SANDBOX_KEY
from pipeline.errors import ConfigError, PipelineError
from pipeline.extras import require
from pipeline.rows.storage import is_object_url

if TYPE_CHECKING:
    from pipeline.job.spec import JobSpec

EXIT_OK, EXIT_ROW_ERRORS, EXIT_CANNOT_RUN, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
F = TypeVar("F", bound=Callable[..., Any])


class OutputLocation(click.ParamType[Path | str]):
    """An output: a local directory (a ``Path``), or an object-storage URL kept as text (``s3://b/p``)."""

    name = "directory"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path | str:
        text = str(value)
        if is_object_url(text):
            return text
        if "://" in text:
            self.fail(f"{text!r}: an output is a directory or an s3://, gs:// or az:// URL", param, ctx)
        path = Path(text)
        if path.exists() and not path.is_dir():
            self.fail(f"Directory {text!r} is a file.", param, ctx)
        return path


OUTPUT = OutputLocation()


def job_output(spec: JobSpec, given: Path | str | None = None) -> Path | str:
    """Where a job writes: ``--output``, else the job's ``output`` (a URL stays a URL)."""
    if given is not None:
        return given
    return spec.output if is_object_url(spec.output) else Path(spec.output)


def exit_code(
    *, fatal: object, interrupted: str | None, errors: int, decided: int, max_error_rate: float
) -> int:
    """The README's exit code for a finished invocation: fatal 2, signal 130/143, too many errors 1, else 0.

    ``errors`` of the ``decided`` rows are final errors; up to ``max_error_rate`` of them still exit 0.
    """
    if fatal is not None:
        return EXIT_CANNOT_RUN
    if interrupted is not None:
        return EXIT_TERMINATED if interrupted == "SIGTERM" else EXIT_INTERRUPTED
    if errors and errors / decided > max_error_rate:
        return EXIT_ROW_ERRORS
    return EXIT_OK


def fail(message: str, code: int = EXIT_CANNOT_RUN) -> NoReturn:
    """Print the one-line error and exit with ``code``."""
    click.echo(f"pipeline: error: {message}", err=True)
    sys.exit(code)


def expected_errors(func: F) -> F:
    """Turn the pipeline's own errors into one line and exit 2: never a traceback for these."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PipelineError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            click.echo("pipeline: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        return None

    return wrapper  # type: ignore[return-value]


def setup_logging(verbose: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("pipeline: %(message)s"))
    root = logging.getLogger("pipeline")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING)
    logging.getLogger("pipeline.run").setLevel(logging.DEBUG if verbose > 1 else logging.INFO)


def api_key_for(spec: JobSpec, *, sandbox: bool, sandbox_hint: str = "--sandbox") -> str:
    """The key from the job's ``api_key_env``; the sandbox's when trying it; ConfigError when unset.

    :param sandbox_hint: how the caller spells trying the sandbox (the Python API: ``sandbox=True``).
    """
    key = os.environ.get(spec.api.api_key_env, "").strip()
    if key:
        return key
    if sandbox:
        return SANDBOX_KEY
    if not spec.api.preset.key_required:
        from pipeline.catalog.providers import PLACEHOLDER_KEY

        return PLACEHOLDER_KEY  # a self-hosted server that checks no key
    raise ConfigError(
        f"{spec.api.api_key_env} is not set (named by [api] api_key_env in {spec.source}); "
        f"export the key, or try the job with {sandbox_hint}"
    )


@contextmanager
def server_url(spec: JobSpec, *, sandbox: bool, base_url: str | None) -> Iterator[str]:
    """The server a command talks to: a built-in sandbox for the command's duration, or a URL.

    Precedence: ``--sandbox``, ``--base-url``, ``ANTHROPIC_BASE_URL`` (for the anthropic provider
    only: it must not redirect a job that names another provider), then the job's ``[api] base_url``.
    """
    if sandbox and base_url:
        raise ConfigError("--sandbox and --base-url both name a server; use one")
    if sandbox:
        require("sandbox", "--sandbox")
        from pipeline.sandbox import SandboxConfig, running_sandbox

        # a job for a self-hosted server names its own models: only the hosted API's preset knows them all
        with running_sandbox(SandboxConfig(models_api=spec.api.preset.models_api)) as handle:
            yield handle.base_url
        return
    from_env = os.environ.get("ANTHROPIC_BASE_URL") if spec.api.provider == "anthropic" else None
    yield (base_url or from_env or spec.api.base_url).rstrip("/")

"""The public surface is exactly ``pipeline.__all__``, it loads lazily, and every command has help."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pipeline
from pipeline.cli import cli

# what `pipeline --help` must not pay for (each costs tens to hundreds of milliseconds to import)
HEAVY = ("polars", "pyarrow", "httpx", "PIL", "aiohttp", "pydantic", "rich", "tenacity", "aiolimiter")


def public_names() -> list[str]:
    """Names on the package that are neither private nor one of its subpackages or modules."""
    return sorted(
        name
        for name in dir(pipeline)
        if not name.startswith("_") and not isinstance(getattr(pipeline, name), types.ModuleType)
    )


def test_all_is_exactly_the_public_names() -> None:
    """__all__ lists every public name and nothing else, sorted (httpx's check), each importable."""
    assert pipeline.__all__ == public_names()
    for name in pipeline.__all__:
        assert getattr(pipeline, name) is not None
    assert pipeline.__all__ == public_names()  # resolving the lazy names adds nothing


def python(code: str) -> str:
    command = [sys.executable, "-c", code]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60)
    return done.stdout.strip()


def test_import_and_help_load_no_heavy_library() -> None:
    """`import pipeline.cli` and `pipeline --help` import none of polars, pyarrow, httpx, Pillow..."""
    code = (
        "import sys\nimport pipeline, pipeline.cli\nfrom click.testing import CliRunner\n"
        "CliRunner().invoke(pipeline.cli.cli, ['--help'])\n"
        "CliRunner().invoke(pipeline.cli.cli, ['run', '--help'])\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r})))"
    )
    assert python(code) == "[]"


def test_importing_the_package_leaves_arrows_memory_pool_alone() -> None:
    """Importing pipeline (every public name, the CLI included) does not change pyarrow's global pool."""
    baseline = python("import pyarrow as pa; print(pa.default_memory_pool().backend_name)")
    code = (
        "import json, pipeline, pipeline.cli\n[getattr(pipeline, n) for n in pipeline.__all__]\n"
        "import pipeline.results.compaction, pipeline.results.store, pipeline.realtime.run\n"
        "import pyarrow as pa\nprint(json.dumps(pa.default_memory_pool().backend_name))"
    )
    assert json.loads(python(code)) == baseline


def test_every_command_has_help() -> None:
    """Each CLI command carries a help text (the README shows it)."""
    for name, command in cli.commands.items():
        assert command.help, name

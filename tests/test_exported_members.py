"""The public surface is exactly ``pipeline.__all__``, and every command has help."""

from __future__ import annotations

import pipeline
from pipeline.cli import cli


def test_all_names_are_importable_and_sorted() -> None:
    """Every name in __all__ exists on the package, and the list stays sorted."""
    for name in pipeline.__all__:
        assert hasattr(pipeline, name), name
    assert list(pipeline.__all__) == sorted(pipeline.__all__)


def test_every_command_has_help() -> None:
    """Each CLI command carries a help text (the README shows it)."""
    for name, command in cli.commands.items():
        assert command.help, name

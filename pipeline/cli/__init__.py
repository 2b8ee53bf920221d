"""The ``pipeline`` command line, on top of everything else: options, exit codes, one-line errors.

``pipeline.cli:main`` is the console-script entry point. Commands import their back-ends inside the
command, so ``pipeline --help`` loads none of the heavy libraries.
"""

from pipeline.cli.main import cli, main

__all__ = ["cli", "main"]

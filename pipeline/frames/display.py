"""How a run started from Python shows its progress: a live notebook output, or the CLI's lines.

In Jupyter (any frontend of an IPython kernel: JupyterLab, Notebook, VS Code, Colab) progress is one
output of the cell, replaced in place about once a second with the terminal display's figures
(rendered by rich to HTML, with the CLI's plain line as its text form): the cell output does not
grow with the run. This uses IPython's display ids, not widgets, so it needs nothing installed
beyond the kernel and survives in an executed notebook (``nbclient`` keeps the last update).

In a script, a run prints what ``pipeline run`` prints: on a terminal rich's live display, anywhere
else a ``pipeline:`` line every 10 s. The lines are log records of ``pipeline.run``; when the
application has set up logging itself they go to its handlers instead, at its levels.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console

from pipeline.results.progress import Limits, Snapshot, plain_line, render

# wide enough for the display's longest line (the rates against three limits)
WIDTH = 110
_HTML = '<pre style="font-family: monospace; line-height: 1.3; margin: 0">{code}</pre>'

_lock = threading.Lock()


class _Lines:
    """The stderr handler runs share while any of them wants the CLI's lines, and what it replaced."""

    handler: logging.Handler | None = None
    users = 0
    saved: tuple[int, bool, int] = (logging.NOTSET, True, logging.NOTSET)


def in_notebook() -> bool:
    """Whether this process is an IPython kernel (Jupyter and friends), judged without importing IPython."""
    module = sys.modules.get("IPython")
    if module is None:
        return False
    shell = module.get_ipython()
    # a kernel's shell has a kernel; the terminal IPython's has none
    return shell is not None and getattr(shell, "kernel", None) is not None


class NotebookView:
    """The live progress of a run as one notebook output, updated in place (``results.progress.View``)."""

    def __init__(self) -> None:
        from IPython.display import display

        self._handle: Any = display(  # type: ignore[no-untyped-call]
            {"text/plain": "pipeline: starting"}, raw=True, display_id=True
        )

    def show(self, snap: Snapshot, limits: Limits) -> None:
        """Replace the output with these figures."""
        self._handle.update(bundle(snap, limits), raw=True)


def bundle(snap: Snapshot, limits: Limits) -> dict[str, str]:
    """The figures as a display bundle: the terminal display in HTML, the plain line as text."""
    console = Console(
        record=True,
        file=io.StringIO(),
        width=WIDTH,
        force_terminal=True,
        force_jupyter=False,  # rich would display in the notebook itself; here it only renders
        color_system="truecolor",
    )
    console.print(render(snap, limits))
    html = console.export_html(inline_styles=True, code_format=_HTML)
    return {"text/html": html, "text/plain": f"pipeline: {plain_line(snap)}"}


@contextmanager
def plain_lines(enabled: bool) -> Iterator[None]:
    """While the block runs, print ``pipeline.run``'s lines to stderr as the CLI does, unless the
    application has configured logging (then its handlers decide) or ``enabled`` is False."""
    package = logging.getLogger("pipeline")
    run = logging.getLogger("pipeline.run")
    with _lock:
        ours = [_Lines.handler] if _Lines.handler is not None else []
        configured = (package.handlers and package.handlers != ours) or logging.getLogger().handlers
        use = enabled and not configured
        if use:
            if _Lines.users == 0:
                handler = logging.StreamHandler(sys.stderr)
                handler.setFormatter(logging.Formatter("pipeline: %(message)s"))
                _Lines.handler = handler
                _Lines.saved = (package.level, package.propagate, run.level)
                package.addHandler(handler)
                package.propagate = False
                package.setLevel(logging.WARNING)
                run.setLevel(logging.INFO)
            _Lines.users += 1
    try:
        yield
    finally:
        if use:
            with _lock:
                _Lines.users -= 1
                if _Lines.users == 0 and _Lines.handler is not None:
                    package.removeHandler(_Lines.handler)
                    _Lines.handler = None
                    package.setLevel(_Lines.saved[0])
                    package.propagate = _Lines.saved[1]
                    run.setLevel(_Lines.saved[2])

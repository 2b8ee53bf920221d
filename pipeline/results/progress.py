"""How a run is going, while it goes: a live display on a terminal, plain log lines anywhere else.

Owns: the figures (rows done of the rows to do, ok and error, requests and tokens per minute against
the job's limits, dollars so far and projected for the whole run, time left) and their two
renderings. On a terminal, rich redraws a few lines in place on stderr; when stderr is a file, a
pipe or a journal, one ``pipeline:`` log line every ``PLAIN_EVERY_S`` seconds, never an escape code.
A caller may bring its own :class:`View` instead (the Python API shows a notebook's output this way).
Reads the runner's running tally; changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from pipeline.catalog.prices import CacheTtl, Price
from pipeline.records import Usage

log = logging.getLogger("pipeline.run")

PLAIN_EVERY_S = 10.0
LIVE_EVERY_S = 0.25
VIEW_EVERY_S = 1.0  # a View may cost a message to another process (a notebook's frontend) per update
RATE_WINDOW_S = 60.0  # rates are measured over the last minute, like the limits they are shown against


class Tally(Protocol):
    """What the progress reads from the runner's running counts."""

    to_do: int
    ok: int
    error: int
    input_tokens: int
    output_tokens: int
    cache_creation: int
    cache_read: int


@dataclass(frozen=True, slots=True)
class Limits:
    """The job's per-minute limits (None: not set)."""

    requests: float | None = None
    input_tokens: float | None = None
    output_tokens: float | None = None


class View(Protocol):
    """Somewhere else to show the live figures, updated in place about once a second."""

    def show(self, snap: Snapshot, limits: Limits) -> None:
        """Show these figures instead of the last ones (the last call has the final figures)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The figures of one moment."""

    done: int
    total: int
    total_known: bool
    ok: int
    error: int
    requests_per_min: float
    input_per_min: float
    output_per_min: float
    cost_usd: float | None
    projected_usd: float | None
    eta_s: float | None
    elapsed_s: float


class Progress:
    """Watches a run's tally and shows it.

    :param requests_sent: how many HTTP requests the client has started (retries included).
    :param reading_done: whether the input has been read to the end (before that the total grows).
    :param live: force the live display on or off; None decides by whether ``stream`` is a terminal.
    :param view: show the figures there instead of on ``stream`` (``live`` is then not used).
    """

    def __init__(
        self,
        tally: Tally,
        *,
        limits: Limits,
        price: Price | None,
        cache_ttl: CacheTtl = "5m",
        requests_sent: Callable[[], int],
        reading_done: Callable[[], bool],
        stream: TextIO | None = None,
        live: bool | None = None,
        view: View | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tally = tally
        self.limits = limits
        self.price = price
        self.cache_ttl: CacheTtl = cache_ttl
        self.requests_sent = requests_sent
        self.reading_done = reading_done
        self.stream = stream if stream is not None else sys.stderr
        self.live = live if live is not None else _is_terminal(self.stream)
        self.view = view
        self._clock = clock
        self._started = clock()
        # (time, requests, input tokens, output tokens, rows done): the last minute of samples
        self._samples: deque[tuple[float, int, int, int, int]] = deque()

    def snapshot(self) -> Snapshot:
        """The figures now (also records a sample for the per-minute rates)."""
        t = self.tally
        now = self._clock()
        done = t.ok + t.error
        # what the input-token limit counts (the rate-limits docs): cache reads are free against it
        input_tokens = t.input_tokens + t.cache_creation
        sample = (now, self.requests_sent(), input_tokens, t.output_tokens, done)
        self._samples.append(sample)
        while len(self._samples) > 2 and self._samples[1][0] <= now - RATE_WINDOW_S:
            self._samples.popleft()
        first = self._samples[0]
        span = now - first[0]
        if span < 1.0:  # too short to say; measure from the start instead
            first, span = (self._started, 0, 0, 0, 0), max(now - self._started, 1e-9)
        per_min = 60.0 / span
        rows_per_s = (done - first[4]) / span
        cost = projected = None
        if self.price is not None:
            usage = Usage(t.input_tokens, t.output_tokens, t.cache_creation, t.cache_read)
            cost = self.price.cost_usd(usage, cache_ttl=self.cache_ttl)
            projected = cost * t.to_do / done if done else None
        remaining = t.to_do - done
        return Snapshot(
            done=done,
            total=t.to_do,
            total_known=self.reading_done(),
            ok=t.ok,
            error=t.error,
            requests_per_min=(sample[1] - first[1]) * per_min,
            input_per_min=(sample[2] - first[2]) * per_min,
            output_per_min=(sample[3] - first[3]) * per_min,
            cost_usd=cost,
            projected_usd=projected,
            eta_s=remaining / rows_per_s if rows_per_s > 0 and self.reading_done() else None,
            elapsed_s=now - self._started,
        )

    async def run(self) -> None:
        """Show the progress until cancelled (the runner cancels it when the run ends)."""
        if self.view is not None:
            try:
                while True:
                    self.view.show(self.snapshot(), self.limits)
                    await asyncio.sleep(VIEW_EVERY_S)
            finally:
                self.view.show(self.snapshot(), self.limits)
        if not self.live:
            while True:
                await asyncio.sleep(PLAIN_EVERY_S)
                log.info("%s", plain_line(self.snapshot()))
        console = Console(file=self.stream, stderr=self.stream is sys.stderr, highlight=False)
        with Live(
            render(self.snapshot(), self.limits),
            console=console,
            auto_refresh=False,
            redirect_stderr=False,
            transient=False,
        ) as live:
            # log lines printed while the display is up go above it, not through it
            handlers = _stream_handlers(self.stream)
            for handler in handlers:
                handler.setStream(_ConsoleWriter(console))  # type: ignore[arg-type]
            try:
                while True:
                    live.update(render(self.snapshot(), self.limits), refresh=True)
                    await asyncio.sleep(LIVE_EVERY_S)
            finally:
                live.update(render(self.snapshot(), self.limits), refresh=True)
                for handler in handlers:
                    handler.setStream(self.stream)


class _ConsoleWriter:
    """A file-like object that prints through the live console (above the display)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def write(self, text: str) -> int:
        if text.strip():
            self.console.print(text.rstrip("\n"), markup=False, highlight=False)
        return len(text)

    def flush(self) -> None:
        """Nothing is buffered."""


def _stream_handlers(stream: TextIO) -> list[logging.StreamHandler[TextIO]]:
    handlers = logging.getLogger("pipeline").handlers
    return [h for h in handlers if isinstance(h, logging.StreamHandler) and h.stream is stream]


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def plain_line(snap: Snapshot) -> str:
    """The progress as one log line (no colour, no control characters)."""
    total = f"{snap.total}" if snap.total_known else f"{snap.total}+"
    parts = [
        f"{snap.done}/{total} rows done ({snap.ok} ok, {snap.error} error)",
        f"{snap.requests_per_min:.0f} requests/min",
        f"{snap.input_per_min:,.0f} input and {snap.output_per_min:,.0f} output tokens/min",
    ]
    if snap.cost_usd is not None:
        money = f"${snap.cost_usd:,.4f} so far"
        if snap.projected_usd is not None and snap.total_known:
            money += f", ~${snap.projected_usd:,.4f} projected"
        parts.append(money)
    if snap.eta_s is not None:
        parts.append(f"ETA {_duration(snap.eta_s)}")
    return ", ".join(parts)


def render(snap: Snapshot, limits: Limits) -> Group:
    """The live display: a bar of rows done, then rates against limits, then dollars and time."""
    total = max(snap.total, 1)
    bar = ProgressBar(total=total, completed=snap.done, width=40)
    head = Table.grid(padding=(0, 1))
    head.add_row(
        Text("rows", style="bold"),
        bar,
        Text(f"{snap.done:,}/{snap.total:,}{'' if snap.total_known else '+'}"),
        Text(f"ok {snap.ok:,}", style="green"),
        Text(f"error {snap.error:,}", style="red" if snap.error else ""),
    )
    rates = Text.assemble(
        ("rate  ", "bold"),
        _rate("requests", snap.requests_per_min, limits.requests),
        "   ",
        _rate("input tok", snap.input_per_min, limits.input_tokens),
        "   ",
        _rate("output tok", snap.output_per_min, limits.output_tokens),
    )
    money = Text.assemble(("cost  ", "bold"))
    if snap.cost_usd is None:
        money.append("unknown (no price for this model)")
    else:
        money.append(f"${snap.cost_usd:,.4f} so far")
        if snap.projected_usd is not None and snap.total_known:
            money.append(f"   ~${snap.projected_usd:,.4f} projected")
    money.append(f"   elapsed {_duration(snap.elapsed_s)}")
    money.append(f"   ETA {_duration(snap.eta_s)}" if snap.eta_s is not None else "   ETA -")
    return Group(head, rates, money)


def _rate(name: str, per_min: float, limit: float | None) -> str:
    shown = f"{per_min:,.0f}"
    return f"{name} {shown}/min" + (f" (limit {limit:,.0f})" if limit is not None else "")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"

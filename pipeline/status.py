"""``pipeline status OUTPUT``: what an output directory holds, read without network or writes.

Owns: folding the latest result per row (``results.parquet`` plus journals of a run in progress or
killed) into counts, errors by type with an example message each, token totals, and their cost at
the shipped prices of the models that answered (realtime rates; the job's ``[prices]`` is not read).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.errors import OutputError
from pipeline.lock import lock_holder
from pipeline.prices import describe_price, price_for
from pipeline.records import Usage
from pipeline.report import cost_line
from pipeline.writer import ResultStore

TOKEN_COLUMNS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
# the sandbox reports "sandbox:<model>"; its tokens are priced as the model it stands in for
SANDBOX_MODEL_PREFIX = "sandbox:"


@dataclass(frozen=True, slots=True)
class ErrorGroup:
    """Rows that failed the same way: their count and one message as an example."""

    error_type: str
    rows: int
    example: str


@dataclass(frozen=True, slots=True)
class OutputStatus:
    """The state of an output directory."""

    directory: Path
    rows: int
    ok: int
    error: int
    errors: tuple[ErrorGroup, ...]
    tokens: dict[str, int] = field(default_factory=dict)
    last_finished_at: str | None = None
    unfolded_journals: int = 0
    running: str | None = None
    cost_usd: float | None = None  # None when some answering model has no known price
    priced_as: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``--json``)."""
        return {
            "output": str(self.directory),
            "rows": {"total": self.rows, "ok": self.ok, "error": self.error},
            "errors_by_type": {g.error_type: {"rows": g.rows, "example": g.example} for g in self.errors},
            "tokens": self.tokens,
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 6),
            "priced_as": self.priced_as,
            "last_finished_at": self.last_finished_at,
            "unfolded_journals": self.unfolded_journals,
            "running": self.running,
        }


def read_status(directory: Path) -> OutputStatus:
    """Summarise ``directory``; OutputError when it holds no results at all."""
    store = ResultStore(directory)
    if not directory.is_dir():
        raise OutputError(f"{directory} is not a directory")
    journals = store.journals()
    frame = store.snapshot()
    if frame is None:
        raise OutputError(f"{directory} holds no results (no results.parquet and no journal)")
    errors = (
        frame.filter(pl.col("status") == "error")
        .group_by(pl.col("error_type").fill_null("unknown"))
        .agg(pl.len().alias("rows"), pl.col("error_message").drop_nulls().first().alias("example"))
        .sort(["rows", "error_type"], descending=[True, False])
    )
    tokens = {name: int(frame[name].fill_null(0).sum()) for name in TOKEN_COLUMNS if name in frame.columns}
    last = frame["finished_at"].max()
    cost, priced_as = _cost(frame)
    return OutputStatus(
        cost_usd=cost,
        priced_as=priced_as,
        directory=directory,
        rows=frame.height,
        ok=int((frame["status"] == "ok").sum()),
        error=int((frame["status"] == "error").sum()),
        errors=tuple(ErrorGroup(t, int(n), e or "") for t, n, e in errors.iter_rows()),
        tokens=tokens,
        last_finished_at=None if last is None else str(last),
        unfolded_journals=len(journals),
        running=lock_holder(directory),
    )


def status_text(status: OutputStatus) -> str:
    """Lines for people."""
    lines = [f"{status.directory}: {status.rows} rows, {status.ok} ok, {status.error} error"]
    for group in status.errors:
        lines.append(f"  {group.error_type}: {group.rows} rows, e.g. {group.example[:200]}")
    tokens = ", ".join(
        f"{count} {name.removesuffix('_tokens').replace('_', ' ')}" for name, count in status.tokens.items()
    )
    lines.append(f"tokens: {tokens}")
    lines.append(cost_line(status.cost_usd, status.priced_as))
    if status.last_finished_at:
        lines.append(f"last result: {status.last_finished_at}")
    if status.running:
        lines.append(f"a run is in progress ({status.running})")
    elif status.unfolded_journals:
        lines.append(
            f"{status.unfolded_journals} journal(s) of an interrupted run; the next run folds them in"
        )
    return "\n".join(lines)


def _cost(frame: pl.DataFrame) -> tuple[float | None, str]:
    """Dollars the output's tokens cost, summed per answering model, and which prices were used."""
    columns = [name for name in TOKEN_COLUMNS if name in frame.columns]
    if "model" not in frame.columns or not columns:
        return 0.0, "no answers yet"
    by_model = (
        frame.filter(pl.col("model").is_not_null())
        .group_by("model")
        .agg(pl.col(name).fill_null(0).sum() for name in columns)
        .sort("model")
    )
    total = 0.0
    described: list[str] = []
    for record in by_model.iter_rows(named=True):
        model = str(record["model"]).removeprefix(SANDBOX_MODEL_PREFIX)
        price = price_for(model)
        if price is None:
            return None, describe_price(None, model)
        usage = Usage(**{name: int(record.get(name) or 0) for name in TOKEN_COLUMNS})
        total += price.cost_usd(usage)
        described.append(describe_price(price, model))
    if not described:
        return 0.0, "no answers yet"
    return total, "realtime rates; " + "; ".join(dict.fromkeys(described))


def status_json(status: OutputStatus) -> str:
    """One line of JSON."""
    return json.dumps(status.to_dict())

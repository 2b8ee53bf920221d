"""``pipeline status OUTPUT``: what an output directory holds, read without network or writes.

Owns: folding the latest result per row (``results.parquet`` plus journals of a run in progress or
killed) into counts, errors by type with an example message each, token totals, their cost, and
the batches still pending (from ``OUTPUT/.batches``, never the API).

The cost uses the prices the run used, row by row:

- a row from a batch result (its ``request_id`` is the batch id, ``msgbatch_...``) at batch prices,
  with the ``[prices]`` and ``cache_ttl`` its submission recorded in ``.batches/log.jsonl``;
- a realtime row whose ``request_fingerprint`` is that of the latest realtime run at that run's
  ``[prices]`` and ``cache_ttl`` (``OUTPUT/job.json``, see :func:`pipeline.review.gallery.note_job`);
- any other row at the shipped realtime price of the model that answered it, 5-minute cache writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import ValidationError

from pipeline.batch.state import BatchLog, pending_row_ids
from pipeline.catalog.prices import CacheTtl, describe_price, price_for
from pipeline.errors import OutputError
from pipeline.job.spec import PricesSpec
from pipeline.records import Usage
from pipeline.results.lock import lock_holder
from pipeline.results.store import JOB_NOTE, ResultStore
from pipeline.results.summary import cost_line

TOKEN_COLUMNS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
# the sandbox reports "sandbox:<model>"; its tokens are priced as the model it stands in for
SANDBOX_MODEL_PREFIX = "sandbox:"
# batch mode records the batch id as a row's request_id; the API's request ids are "req_..."
BATCH_ID_PREFIX = "msgbatch_"
PENDING_IDS_SHOWN = 5


@dataclass(frozen=True, slots=True)
class ErrorGroup:
    """Rows that failed the same way: their count and one message as an example."""

    error_type: str
    rows: int
    example: str


@dataclass(frozen=True, slots=True)
class PriceUse:
    """One set of prices that part of the output's tokens was priced at."""

    mode: str  # realtime | batch
    model: str
    source: str
    input: float
    output: float
    batch_multiplier: float | None  # None for realtime rows
    cache_ttl: CacheTtl
    rows: int
    cost_usd: float

    def describe(self) -> str:
        """``batch (x0.5): $1/$5 per MTok in/out for claude-haiku-4-5, from ...``."""
        mode = f"batch (x{self.batch_multiplier:g})" if self.mode == "batch" else "realtime"
        ttl = ", 1-hour cache writes" if self.cache_ttl == "1h" else ""
        rates = f"${self.input:g}/${self.output:g} per MTok in/out"
        return f"{mode}: {rates} for {self.model}{ttl}, from {self.source}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "mode": self.mode,
            "model": self.model,
            "source": self.source,
            "input_per_mtok": self.input,
            "output_per_mtok": self.output,
            "batch_multiplier": self.batch_multiplier,
            "cache_ttl": self.cache_ttl,
            "rows": self.rows,
            "cost_usd": round(self.cost_usd, 6),
        }


@dataclass(frozen=True, slots=True)
class PendingBatches:
    """Batches submitted from the output that are not collected yet (as ``.batches`` records them)."""

    batches: int = 0
    rows: int = 0
    ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"batches": self.batches, "rows": self.rows, "ids": list(self.ids)}


@dataclass(frozen=True, slots=True)
class OutputStatus:
    """The state of an output directory."""

    directory: Path | str  # as the user named it (a URL for an object-storage output)
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
    prices: tuple[PriceUse, ...] = ()
    pending: PendingBatches = field(default_factory=PendingBatches)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``--json``)."""
        return {
            "output": str(self.directory),
            "rows": {"total": self.rows, "ok": self.ok, "error": self.error},
            "errors_by_type": {g.error_type: {"rows": g.rows, "example": g.example} for g in self.errors},
            "tokens": self.tokens,
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 6),
            "priced_as": self.priced_as,
            "prices": [use.to_dict() for use in self.prices],
            "pending_batches": self.pending.to_dict(),
            "last_finished_at": self.last_finished_at,
            "unfolded_journals": self.unfolded_journals,
            "running": self.running,
        }


@dataclass(frozen=True, slots=True)
class _JobPrices:
    """The ``[prices]`` and ``cache_ttl`` a run or a submission used."""

    prices: PricesSpec | None = None
    cache_ttl: CacheTtl = "5m"


def read_status(
    directory: Path, *, label: Path | str | None = None, running: str | None = None
) -> OutputStatus:
    """Summarise ``directory``; OutputError when it holds no results and no batch was submitted.

    :param label: how the output is named (its URL, when ``directory`` is a copy of an object-storage output).
    :param running: who holds it, when that is known otherwise (an object-storage output's lease).
    """
    store = ResultStore(directory)
    if not directory.is_dir():
        raise OutputError(f"{label or directory} is not a directory")
    journals = store.journals()
    batch_log = BatchLog(directory)
    submissions = batch_log.submissions()
    frame = store.snapshot()
    holder = running if label is not None else lock_holder(directory)
    if frame is None:
        if not submissions and holder is None:
            raise OutputError(f"{label or directory} holds no results (no results.parquet and no journal)")
        frame = pl.DataFrame(  # only batches so far, or a run that has recorded nothing yet
            schema={"status": pl.String, "error_type": pl.String, "error_message": pl.String}
        )
    errors = (
        frame.filter(pl.col("status") == "error")
        .group_by(pl.col("error_type").fill_null("unknown"))
        .agg(pl.len().alias("rows"), pl.col("error_message").drop_nulls().first().alias("example"))
        .sort(["rows", "error_type"], descending=[True, False])
    )
    tokens = {name: int(frame[name].fill_null(0).sum()) for name in TOKEN_COLUMNS if name in frame.columns}
    last = frame["finished_at"].max() if "finished_at" in frame.columns else None
    batch_jobs = {sub.batch_id: _job_prices(sub.job) for sub in submissions if sub.batch_id}
    cost, priced_as, uses = _cost(frame, _realtime_job(directory), batch_jobs)
    still_open = [sub for sub in submissions if sub.open]
    try:
        pending_rows = len(pending_row_ids(batch_log, still_open))
    except OutputError:  # a rows file gone missing: one row a request is the best count left
        pending_rows = sum(sub.requests for sub in still_open)
    return OutputStatus(
        cost_usd=cost,
        priced_as=priced_as,
        prices=uses,
        pending=PendingBatches(len(still_open), pending_rows, tuple(s.label() for s in still_open)),
        directory=label or directory,
        rows=frame.height,
        ok=int((frame["status"] == "ok").sum()),
        error=int((frame["status"] == "error").sum()),
        errors=tuple(ErrorGroup(t, int(n), e or "") for t, n, e in errors.iter_rows()),
        tokens=tokens,
        last_finished_at=None if last is None else str(last),
        unfolded_journals=len(journals),
        running=holder,
    )


def status_text(status: OutputStatus) -> str:
    """Lines for people."""
    lines = [f"{status.directory}: {status.rows} rows, {status.ok} ok, {status.error} error"]
    for group in status.errors:
        lines.append(f"  {group.error_type}: {group.rows} rows, e.g. {group.example[:200]}")
    tokens = ", ".join(
        f"{count} {name.removesuffix('_tokens').replace('_', ' ')}" for name, count in status.tokens.items()
    )
    lines.append(f"tokens: {tokens or 'none yet'}")
    if status.ok or status.error:
        lines.append(cost_line(status.cost_usd, status.priced_as))
    else:
        lines.append("cost: $0 (no answers yet)")
    pending = status.pending
    if pending.batches:
        ids = ", ".join(pending.ids[:PENDING_IDS_SHOWN])
        ids += " ..." if pending.batches > PENDING_IDS_SHOWN else ""
        lines.append(
            f"pending: {pending.batches} batches ({pending.rows} rows): {ids}; rerun the job, or"
            f" `pipeline batch collect {status.directory}`, to collect them once they end"
        )
    if status.last_finished_at:
        lines.append(f"last result: {status.last_finished_at}")
    if status.running:
        lines.append(f"a run is in progress ({status.running})")
    elif status.unfolded_journals:
        lines.append(
            f"{status.unfolded_journals} journal(s) of an interrupted run; the next run folds them in"
        )
    return "\n".join(lines)


def status_json(status: OutputStatus) -> str:
    """One line of JSON."""
    return json.dumps(status.to_dict())


def _job_prices(job: dict[str, Any]) -> _JobPrices:
    """The prices and cache TTL in a job record (``job.json`` or a batch intent's ``job``)."""
    raw_prices = job.get("prices")
    request = job.get("request")
    ttl = job.get("cache_ttl", request.get("cache_ttl") if isinstance(request, dict) else None)
    try:
        prices = PricesSpec.model_validate(raw_prices) if raw_prices else None
    except ValidationError:
        prices = None  # a record this version cannot read: shipped prices
    return _JobPrices(prices, "1h" if ttl == "1h" else "5m")


def _realtime_job(directory: Path) -> tuple[str | None, _JobPrices] | None:
    """The latest realtime run's fingerprint (None: any row) and prices, from ``OUTPUT/job.json``."""
    try:
        note = json.loads((directory / JOB_NOTE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # no realtime run recorded (or not readable): shipped prices
    if not isinstance(note, dict):
        return None
    fingerprint = note.get("fingerprint")
    return (str(fingerprint) if fingerprint else None), _job_prices(note)


def _cost(
    frame: pl.DataFrame,
    realtime: tuple[str | None, _JobPrices] | None,
    batch_jobs: dict[str, _JobPrices],
) -> tuple[float | None, str, tuple[PriceUse, ...]]:
    """Dollars the output's tokens cost at the prices each row was run at, and which prices those were."""
    columns = [name for name in TOKEN_COLUMNS if name in frame.columns]
    if "model" not in frame.columns or not columns:
        return 0.0, "no answers yet", ()
    request_id = pl.col("request_id") if "request_id" in frame.columns else pl.lit(None, pl.String)
    batch_id = pl.when(request_id.str.starts_with(BATCH_ID_PREFIX)).then(request_id)
    if realtime is None:
        this_job = pl.lit(value=False)
    elif realtime[0] is None or "request_fingerprint" not in frame.columns:
        this_job = pl.lit(value=True)  # a job.json without a fingerprint: its prices for every row
    else:
        this_job = (pl.col("request_fingerprint") == realtime[0]).fill_null(value=False)
    groups = (
        frame.filter(pl.col("model").is_not_null())
        .with_columns(batch_id.alias("_batch_id"), this_job.alias("_this_job"))
        .group_by("model", "_batch_id", "_this_job")
        .agg(pl.len().alias("_rows"), *(pl.col(name).fill_null(0).sum() for name in columns))
        .sort("model", "_batch_id", "_this_job", nulls_last=True)
    )
    total = 0.0
    uses: dict[tuple[Any, ...], PriceUse] = {}
    for record in groups.iter_rows(named=True):
        model = str(record["model"]).removeprefix(SANDBOX_MODEL_PREFIX)
        batch = record["_batch_id"] is not None
        if batch:
            job = batch_jobs.get(record["_batch_id"], _JobPrices())
        else:
            job = realtime[1] if realtime is not None and record["_this_job"] else _JobPrices()
        price = price_for(model, job.prices)
        if price is None:
            return None, describe_price(None, model), ()
        usage = Usage(**{name: int(record.get(name) or 0) for name in TOKEN_COLUMNS})
        dollars = price.cost_usd(usage, batch=batch, cache_ttl=job.cache_ttl)
        total += dollars
        multiplier = price.batch_multiplier if batch else None
        key = (batch, model, price.source, price.input, price.output, multiplier, job.cache_ttl)
        seen = uses.get(key)
        uses[key] = PriceUse(
            mode="batch" if batch else "realtime",
            model=model,
            source=price.source,
            input=price.input,
            output=price.output,
            batch_multiplier=multiplier,
            cache_ttl=job.cache_ttl,
            rows=(seen.rows if seen else 0) + int(record["_rows"]),
            cost_usd=(seen.cost_usd if seen else 0.0) + dollars,
        )
    if not uses:
        return 0.0, "no answers yet", ()
    return total, "; ".join(use.describe() for use in uses.values()), tuple(uses.values())

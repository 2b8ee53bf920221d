"""``pipeline report OUTPUT``: one self-contained HTML file to review a run's results.

Owns: gathering what the page shows (every row's thumbnail next to its answer or its tool fields,
its error, the run's numbers, charts of latency and tokens per row) and rendering it into the
template ``data/gallery.html``. The page needs no network: thumbnails are small JPEG data URIs,
each distinct image stored once; rows are JSON the page renders one page of cards at a time, so
10,000 rows open as fast as 100. A content security policy forbids every request but ``data:``.

Which columns hold images and where relative paths start come from ``OUTPUT/job.json``, written
by each run (``note_job``), or from ``--job``; failing both, from columns whose cells look like
image paths or URLs, resolved against the current directory.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.atomic import write_text
from pipeline.catalog.prices import Price, price_for
from pipeline.errors import OutputError
from pipeline.job.spec import JobSpec, PricesSpec
from pipeline.records import Usage
from pipeline.results.schema import RESULT_COLUMNS, output_column
from pipeline.results.store import JOB_NOTE
from pipeline.review.export import read_results
from pipeline.review.thumbs import THUMB_EDGE, thumbnails
from pipeline.rows.folder import fixed_prefix
from pipeline.rows.storage import ObjectUrl, is_object_url

REPORT_FILE = "report.html"
TEXT_LIMIT = 1500  # characters of an answer or error shown on a card (the export has them whole)
CHART_BARS = 240
IMAGE_CELL = re.compile(r"(?i)^(data:image/|https?://\S+|\S.*\.(jpe?g|png|gif|webp|bmp|tiff?|heic))\s*$")
TOKEN_COLUMNS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


@dataclass(frozen=True, slots=True)
class JobContext:
    """What the report needs from the job: its name, image columns, where paths start, prices."""

    name: str
    images: tuple[str, ...]
    base_dir: Path
    model: str | None = None
    prices: PricesSpec | None = None
    base_url: str | None = None  # the input's folder in object storage, when it lives there


@dataclass(frozen=True, slots=True)
class GalleryInfo:
    """What ``write_gallery`` wrote."""

    path: Path
    rows: int
    thumbnails: int
    missing_images: int
    bytes: int


def job_context(directory: Path, frame: pl.DataFrame, job: JobSpec | None) -> JobContext:
    """The report's view of the job: from ``job``, else ``OUTPUT/job.json``, else guessed from cells."""
    if job is not None:
        return JobContext(
            job.name,
            tuple(job.request.images),
            _input_dir(job.input),
            job.request.model,
            job.prices,
            _input_url(job.input),
        )
    note_path = directory / JOB_NOTE
    if note_path.is_file():
        try:
            note = json.loads(note_path.read_text(encoding="utf-8"))
            prices = PricesSpec.model_validate(note["prices"]) if note.get("prices") else None
            return JobContext(
                str(note["name"]),
                tuple(note["images"]),
                _input_dir(note["input"]),
                note.get("model"),
                prices,
                _input_url(note["input"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise OutputError(f"cannot read {note_path}: {exc}; pass --job JOB") from None
    return JobContext(directory.name, tuple(guess_image_columns(frame)), Path.cwd())


def _input_url(pattern: str) -> str | None:
    """The folder relative image paths start from when the input is in object storage, else None."""
    if not is_object_url(pattern):
        return None
    parsed = ObjectUrl.parse(pattern)
    return str(ObjectUrl(parsed.scheme, parsed.bucket, fixed_prefix(parsed.key)))


def _input_dir(pattern: str) -> Path:
    """The folder relative image paths start from: the input file's (a glob's fixed part)."""
    if is_object_url(pattern):
        return Path.cwd()
    path = Path(pattern)
    parts = path.parts
    first_glob = next((i for i, part in enumerate(parts) if any(ch in part for ch in "*?[")), None)
    parent = path.parent if first_glob is None else Path(*parts[:first_glob]) if first_glob else Path()
    return parent if parent.parts else Path.cwd()


def guess_image_columns(frame: pl.DataFrame) -> list[str]:
    """Input columns whose non-empty cells mostly look like image paths, URLs or data URIs."""
    found = []
    for name, dtype in frame.schema.items():
        if name in RESULT_COLUMNS or name.startswith("out_") or dtype != pl.String:
            continue
        cells = frame[name].drop_nulls().head(200).to_list()
        if cells and sum(bool(IMAGE_CELL.match(cell)) for cell in cells) >= 0.8 * len(cells):
            found.append(name)
    return found


def write_gallery(
    directory: Path, out: Path | None = None, *, job: JobSpec | None = None, edge: int = THUMB_EDGE
) -> GalleryInfo:
    """Write the gallery of ``directory``'s results to ``out`` (default ``OUTPUT/report.html``)."""
    frame = read_results(directory)
    context = job_context(directory, frame, job)
    html, thumbs, missing = render_gallery(frame, context, edge=edge)
    target = out if out is not None else directory / REPORT_FILE
    write_text(target, html)
    return GalleryInfo(target, frame.height, thumbs, missing, len(html.encode("utf-8")))


def render_gallery(
    frame: pl.DataFrame, context: JobContext, *, edge: int = THUMB_EDGE
) -> tuple[str, int, int]:
    """The page's HTML, how many distinct thumbnails it holds, and how many image cells had none."""
    tool_columns = [name for name in frame.columns if name.startswith("out_")]
    reserved = RESULT_COLUMNS | frozenset(tool_columns)
    image_columns = [
        column for name in context.images if (column := output_column(name, reserved)) in frame.columns
    ]
    cells = {
        item
        for column in image_columns
        for cell in frame[column].drop_nulls().to_list()
        for item in cell_texts(cell)
    }
    made = thumbnails(cells, context.base_dir, edge, base_url=context.base_url) if cells else {}
    # identical images (the same file under two names, a repeated URL) are stored once
    thumb_ids: dict[str, int] = {}
    thumb_data: list[str] = []
    cell_thumb: dict[str, int | str] = {}
    for cell, thumb in made.items():
        if thumb.jpeg is None:
            cell_thumb[cell] = thumb.problem or "no thumbnail"
            continue
        digest = hashlib.sha256(thumb.jpeg).hexdigest()
        if digest not in thumb_ids:
            thumb_ids[digest] = len(thumb_data)
            thumb_data.append(base64.b64encode(thumb.jpeg).decode("ascii"))
        cell_thumb[cell] = thumb_ids[digest]
    rows = _rows(frame, image_columns, tool_columns, cell_thumb)
    missing = sum(1 for value in cell_thumb.values() if isinstance(value, str))
    page = _fill(
        {
            "title": escape(f"{context.name}: review"),
            "summary": _summary_html(frame, context),
            "charts": _charts_html(frame),
            "rows": _script_json(rows),
            "thumbs": _script_json(thumb_data),
            "generated": escape(datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        }
    )
    return page, len(thumb_data), missing


def _rows(
    frame: pl.DataFrame, image_columns: list[str], tool_columns: list[str], cell_thumb: dict[str, int | str]
) -> list[dict[str, Any]]:
    wanted = ["row_id", "status", "error_type", "error_message", "response_text", "tool_calls"]
    wanted += ["latency_ms", "attempts", *TOKEN_COLUMNS[:2], *image_columns, *tool_columns]
    present = [name for name in dict.fromkeys(wanted) if name in frame.columns]
    rows: list[dict[str, Any]] = []
    for index, record in enumerate(frame.select(present).iter_rows(named=True)):
        row: dict[str, Any] = {"i": index, "id": str(record["row_id"]), "s": record["status"]}
        if record.get("status") == "error":
            row["e"] = record.get("error_type") or "unknown"
            row["m"] = _clip(record.get("error_message") or "")
        fields = [[name.removeprefix("out_"), _display(record[name])] for name in tool_columns]
        if fields and any(value is not None for _, value in fields):
            row["f"] = fields
        elif record.get("response_text"):
            row["t"] = _clip(record["response_text"])
        elif record.get("tool_calls"):
            row["t"] = _clip("; ".join(f"{call['name']}: {call['input']}" for call in record["tool_calls"]))
        images: list[int | str] = []
        for column in image_columns:
            images.extend(cell_thumb.get(item, "no thumbnail") for item in cell_texts(record.get(column)))
        if images:
            row["g"] = images
        if record.get("latency_ms") is not None:
            row["l"] = round(float(record["latency_ms"]))
        if (record.get("attempts") or 0) > 1:
            row["a"] = int(record["attempts"])
        tokens = [record.get(name) for name in TOKEN_COLUMNS[:2]]
        if any(value is not None for value in tokens):
            row["k"] = [int(value or 0) for value in tokens]
        rows.append(row)
    return rows


def cell_texts(cell: Any) -> list[str]:
    """The images an output's image cell names, as text: itself, each item of a list, and a
    ``{bytes, path}`` struct's digest when its bytes were embedded, else its path."""
    if cell is None:
        return []
    if isinstance(cell, dict):
        chosen = cell.get("bytes") or cell.get("path")
        return cell_texts(chosen)
    if isinstance(cell, (list, tuple)):
        return [text for item in cell for text in cell_texts(item)]
    text = str(cell).strip()
    return [text] if text else []


def _display(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return _clip(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"{value:g}" if isinstance(value, float) else str(value)
    return _clip(json.dumps(value, ensure_ascii=False, default=str))


def _clip(text: str) -> str:
    return text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + "…"


def _script_json(value: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``<`` can end the element early."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def _summary_html(frame: pl.DataFrame, context: JobContext) -> str:
    statuses = Counter(frame["status"].to_list())
    errors = Counter(frame.filter(pl.col("status") == "error")["error_type"].fill_null("unknown").to_list())
    sums = {
        name: int(frame[name].fill_null(0).sum()) if name in frame.columns else 0 for name in TOKEN_COLUMNS
    }
    usage = Usage(*(sums[name] for name in TOKEN_COLUMNS))
    model = context.model or _answering_model(frame)
    if model is None:
        cost = "cost: unknown (no model answered)"
    else:
        price = price_for(model, context.prices)
        cost = _cost_text(price, usage, model)
    latency = (
        frame["latency_ms"].drop_nulls() if "latency_ms" in frame.columns else pl.Series([], dtype=pl.Float64)
    )
    numbers = [
        ("rows", f"{frame.height:,}"),
        ("ok", f"{statuses.get('ok', 0):,}"),
        ("errors", f"{statuses.get('error', 0):,}"),
        ("input tokens", f"{usage.input_tokens:,}"),
        ("output tokens", f"{usage.output_tokens:,}"),
    ]
    if usage.cache_creation_input_tokens or usage.cache_read_input_tokens:
        numbers.append(
            (
                "cache write / read",
                f"{usage.cache_creation_input_tokens:,} / {usage.cache_read_input_tokens:,}",
            )
        )
    if latency.len():
        p50, p95 = latency.quantile(0.5) or 0.0, latency.quantile(0.95) or 0.0
        numbers.append(("latency p50 / p95", f"{p50:.0f} / {p95:.0f} ms"))
    cells = "".join(f'<div class="num"><b>{escape(v)}</b><span>{escape(k)}</span></div>' for k, v in numbers)
    error_rows = "".join(
        f"<tr><td>{escape(kind)}</td><td>{count:,}</td></tr>" for kind, count in errors.most_common()
    )
    table = (
        f'<table class="errors"><tr><th>error type</th><th>rows</th></tr>{error_rows}</table>'
        if errors
        else ""
    )
    return f'<div class="numbers">{cells}</div><p class="cost">{escape(cost)}</p>{table}'


def _cost_text(price: Price | None, usage: Usage, model: str) -> str:
    # no source URL here: the page links to nothing outside itself
    if price is None:
        return f"cost: unknown (no price known for model {model!r}; set [prices] in the job)"
    return (
        f"cost: ${price.cost_usd(usage):,.4f} at ${price.input:g}/${price.output:g} per MTok in/out"
        f" for {model} (standard, non-batch prices)"
    )


def _answering_model(frame: pl.DataFrame) -> str | None:
    if "model" not in frame.columns:
        return None
    models = frame["model"].drop_nulls()
    if not models.len():
        return None
    top = str(models.mode().sort()[0])
    return top.removeprefix("sandbox:")  # the sandbox's answers are priced as the model they imitate


def _charts_html(frame: pl.DataFrame) -> str:
    charts = []
    if "latency_ms" in frame.columns:
        charts.append(_bar_chart("latency per row (ms)", [frame["latency_ms"].to_list()], ["#4a7bd0"]))
    if "input_tokens" in frame.columns and "output_tokens" in frame.columns:
        series = [frame["input_tokens"].to_list(), frame["output_tokens"].to_list()]
        charts.append(_bar_chart("tokens per row (input, output)", series, ["#4a7bd0", "#e08a2c"]))
    return "".join(charts)


def _bar_chart(
    title: str, series: list[list[Any]], colours: list[str], width: int = 560, height: int = 120
) -> str:
    """An inline SVG bar chart of values per row (stacked series), averaged into at most CHART_BARS bars."""
    count = len(series[0])
    if not count:
        return ""
    per_bar = max(1, math.ceil(count / CHART_BARS))
    bars: list[list[float]] = []
    for start in range(0, count, per_bar):
        stack = []
        for values in series:
            chunk = [float(v) for v in values[start : start + per_bar] if v is not None]
            stack.append(sum(chunk) / len(chunk) if chunk else 0.0)
        bars.append(stack)
    top = max((sum(stack) for stack in bars), default=0.0) or 1.0
    bar_w = width / len(bars)
    shapes = []
    for index, stack in enumerate(bars):
        y = float(height)
        first = index * per_bar
        label = f"rows {first}–{min(first + per_bar, count) - 1}" if per_bar > 1 else f"row {first}"
        for value, colour in zip(stack, colours, strict=True):
            h = value / top * (height - 4)
            y -= h
            shapes.append(
                f'<rect x="{index * bar_w:.1f}" y="{y:.1f}" width="{max(bar_w - 0.5, 0.5):.1f}"'
                f' height="{h:.1f}" fill="{colour}"><title>{label}: {value:,.0f}</title></rect>'
            )
    note = f"each bar: mean of {per_bar} rows" if per_bar > 1 else "one bar per row"
    return (
        f'<figure class="chart"><figcaption>{escape(title)}'
        f" <small>max {top:,.0f}; {note}</small></figcaption>"
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img"'
        f' aria-label="{escape(title)}">{"".join(shapes)}</svg></figure>'
    )


def _fill(parts: dict[str, str]) -> str:
    template = resources.files("pipeline").joinpath("data/gallery.html").read_text(encoding="utf-8")
    # one pass over the template only: text inside a value is never taken for a placeholder
    return re.sub(r"\{\{(\w+)\}\}", lambda match: parts[match.group(1)], template)

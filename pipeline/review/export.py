"""``pipeline export OUTPUT --format csv|jsonl|parquet``: the results in another format, nothing dropped.

Owns: reading what an output directory holds (``results.parquet`` plus the journals of a run in
progress or killed, latest result per row) and writing it whole to one file, atomically. CSV has no
nested types, so list and struct columns (``tool_calls``, ``out_*``) become JSON text there; binary
cells become base64 in CSV and JSONL. Every column and every row is kept.
"""

from __future__ import annotations

import base64
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import polars as pl

from pipeline.atomic import replace_file
from pipeline.errors import OutputError
from pipeline.results.store import ResultStore

Format = Literal["csv", "jsonl", "parquet"]
FORMATS: tuple[Format, ...] = ("csv", "jsonl", "parquet")
STDOUT = Path("-")


def read_results(directory: Path) -> pl.DataFrame:
    """The latest result per row in ``directory``, without writing anything there."""
    if not directory.is_dir():
        raise OutputError(f"{directory} is not a directory")
    frame = ResultStore(directory).snapshot()
    if frame is None:
        raise OutputError(f"{directory} holds no results (no results.parquet and no journal)")
    return frame


def default_path(directory: Path, fmt: Format) -> Path:
    """Where an export goes without ``--to``: ``OUTPUT/export.<format>``."""
    return directory / f"export.{fmt}"


def export_results(directory: Path, fmt: Format, to: Path | None = None) -> tuple[Path, int]:
    """Write the results of ``directory`` as ``fmt`` to ``to`` (``-``: stdout); returns (path, rows)."""
    frame = read_results(directory)
    target = to if to is not None else default_path(directory, fmt)
    if target == STDOUT:
        if fmt == "parquet":
            raise OutputError("parquet is binary; write it to a file with --to PATH")
        sys.stdout.write(render(frame, fmt).decode("utf-8"))
        sys.stdout.flush()
        return target, frame.height
    if target.resolve() == (directory / "results.parquet").resolve():
        raise OutputError(f"{target} is the results file itself; export somewhere else")
    replace_file(target, lambda tmp: _write(frame, fmt, tmp))
    return target, frame.height


def render(frame: pl.DataFrame, fmt: Format) -> bytes:
    """The whole export as bytes (small outputs and stdout)."""
    buffer = io.BytesIO()
    _write(frame, fmt, buffer)
    return buffer.getvalue()


def flatten_for_csv(frame: pl.DataFrame) -> pl.DataFrame:
    """Nested columns as JSON text and binary as base64, so that CSV can hold every column."""
    replacements = []
    for name, dtype in frame.schema.items():
        if isinstance(dtype, (pl.List, pl.Array, pl.Struct)):
            replacements.append(_map_cells(frame[name], _json_text))
        elif dtype == pl.Binary:
            replacements.append(_map_cells(frame[name], _base64))
    return frame.with_columns(replacements) if replacements else frame


def _binary_as_base64(frame: pl.DataFrame) -> pl.DataFrame:
    columns = [_map_cells(frame[name], _base64) for name, dtype in frame.schema.items() if dtype == pl.Binary]
    return frame.with_columns(columns) if columns else frame


def _map_cells(series: pl.Series, convert: Callable[[Any], str]) -> pl.Series:
    values = [None if value is None else convert(value) for value in series.to_list()]
    return pl.Series(series.name, values, dtype=pl.String)


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _base64(value: Any) -> str:
    return base64.b64encode(bytes(value)).decode("ascii")


def _write(frame: pl.DataFrame, fmt: Format, handle: Any) -> None:  # a path or a binary file
    if fmt == "csv":
        flatten_for_csv(frame).write_csv(handle)
    elif fmt == "jsonl":
        _binary_as_base64(frame).write_ndjson(handle)
    else:
        frame.write_parquet(handle, compression="zstd")

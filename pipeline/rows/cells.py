"""Image and document cells of every shape: what one cell holds, and what the output records of it.

A media cell (a column in ``request.images`` or ``request.documents``) is one of:

- text: a local path, an ``http(s)://`` URL, a ``data:`` URI, or an ``s3://``, ``gs://`` or ``az://`` URL;
- bytes: a binary column, a WebDataset member;
- a struct with ``bytes`` and/or ``path`` (the Hugging Face ``Image`` feature, ``struct<bytes: binary,
  path: string>``): the bytes when present, else the path;
- a list of any of these: one item each, in order.

Empty cells, empty text, empty bytes and null items are left out, as an empty text cell always was.

Bytes are never copied into the output: ``results.parquet`` (and a batch's rows file) keeps each byte
cell of a media column as ``sha256:<hex>`` of its bytes (:func:`recorded_value`), a struct or a list
keeping its shape around it (:func:`recorded_dtype`). The row hash covers that digest, so an answer
is reused only while the bytes are the same. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl
from polars._typing import PolarsDataType

# polars types a media column may hold (Null: every cell empty)
TEXT_TYPES = frozenset({pl.String, pl.Categorical, pl.Enum, pl.Null})
BYTES_TYPES = frozenset({pl.Binary})
STRUCT_FIELDS = ("bytes", "path")
DIGEST_PREFIX = "sha256:"
EXPECTED = (
    "text (paths, URLs or data: URIs), bytes (a binary column), a struct with bytes and/or path"
    " (the Hugging Face Image feature), or a list of these"
)


@dataclass(frozen=True, slots=True)
class MediaItem:
    """One image or document a cell holds: text to load, or the bytes themselves.

    :param name: the struct's ``path`` beside its bytes, for messages (``photo.jpg``).
    :param position: the item's place in a list cell, for messages (None for a single-item cell).
    """

    value: str | bytes
    name: str | None = None
    position: int | None = None

    def label(self, column: str) -> str:
        """How messages name this item: ``photo image.png``, ``frames[2] (embedded, 1,234 bytes)``."""
        where = column if self.position is None else f"{column}[{self.position}]"
        if isinstance(self.value, bytes):
            named = f" {self.name}" if self.name else ""
            return f"{where}{named} (embedded, {len(self.value):,} bytes)"
        from pipeline.rows.media import describe_cell

        return f"{where} {describe_cell(self.value)}"


def cell_items(value: Any) -> list[MediaItem]:
    """The items of one media cell, in order (see the module docstring); empty for an empty cell."""
    items = _items(value, None)
    if isinstance(value, (list, tuple)):
        return [MediaItem(item.value, item.name, index) for index, item in enumerate(items)]
    return items


def _items(value: Any, name: str | None) -> list[MediaItem]:
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        return [MediaItem(text, name)] if text else []
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return [MediaItem(data, name)] if data else []
    if isinstance(value, Mapping):
        path = value.get("path")
        named = path.strip() if isinstance(path, str) and path.strip() else None
        embedded = value.get("bytes")
        if isinstance(embedded, (bytes, bytearray, memoryview)) and len(embedded):
            return [MediaItem(bytes(embedded), named)]
        return _items(named, None)
    if isinstance(value, (list, tuple)):
        return [item for element in value for item in _items(element, name)]
    text = str(value).strip()
    return [MediaItem(text, name)] if text else []


def digest_text(data: bytes) -> str:
    """``sha256:<hex>`` of some bytes: what the output records in place of a byte cell."""
    return DIGEST_PREFIX + hashlib.sha256(data).hexdigest()


def recorded_value(value: Any) -> Any:
    """A media cell as the output records it: every bytes value replaced by its digest, shape kept."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return digest_text(bytes(value))
    if isinstance(value, Mapping):
        return {key: recorded_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [recorded_value(item) for item in value]
    return value


def holds_bytes(dtype: PolarsDataType) -> bool:
    """Whether cells of this type may carry bytes (binary, or a struct or list around binary)."""
    if dtype.base_type() in BYTES_TYPES:
        return True
    if isinstance(dtype, pl.Struct):
        return any(holds_bytes(field.dtype) for field in dtype.fields)
    if isinstance(dtype, (pl.List, pl.Array)):
        return holds_bytes(dtype.inner)
    return False


def recorded_dtype(dtype: PolarsDataType) -> PolarsDataType:
    """The type :func:`recorded_value` gives a column of ``dtype``: binary becomes text, shapes stay."""
    if dtype.base_type() in BYTES_TYPES:
        return pl.String()
    if isinstance(dtype, pl.Struct):
        return pl.Struct([pl.Field(field.name, recorded_dtype(field.dtype)) for field in dtype.fields])
    if isinstance(dtype, pl.List):
        return pl.List(recorded_dtype(dtype.inner))
    if isinstance(dtype, pl.Array):
        return pl.List(recorded_dtype(dtype.inner))
    return dtype


def media_type_problem(dtype: PolarsDataType) -> str | None:
    """Why a column of ``dtype`` cannot hold images or documents, or None when it can."""
    if _usable(dtype, depth=0):
        return None
    return f"holds {dtype}, expected {EXPECTED}"


def _usable(dtype: PolarsDataType, *, depth: int) -> bool:
    base = dtype.base_type()
    if base in TEXT_TYPES or base in BYTES_TYPES:
        return True
    if isinstance(dtype, pl.Struct):
        fields = {field.name: field.dtype for field in dtype.fields}
        if not any(name in fields for name in STRUCT_FIELDS):
            return False
        data, path = fields.get("bytes"), fields.get("path")
        return (data is None or data.base_type() in BYTES_TYPES | {pl.Null}) and (
            path is None or path.base_type() in TEXT_TYPES
        )
    if isinstance(dtype, (pl.List, pl.Array)) and depth < 2:
        return _usable(dtype.inner, depth=depth + 1)
    return False

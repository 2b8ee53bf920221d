"""WebDataset tar shards as an input, streamed: one row per sample, a column per member extension.

The WebDataset convention (https://github.com/webdataset/webdataset, the Hugging Face Hub's
webdataset page): a shard is a plain tar; consecutive members that share a *key* form one sample;
the key is the member path up to the first dot of its file name (``dir/000001.seg.png`` is key
``dir/000001``, extension ``seg.png``, as webdataset's ``base_plus_ext``); members named ``__x__``
are metadata and skipped. Columns: ``key`` (the row id by default), then one per extension, lower
case: text extensions (``txt``, ``json``, ``cls``...) as UTF-8 text, everything else (``jpg``,
``png``, ``webp``, ``pdf``...) as bytes.

Each shard is read once, front to back, as a stream (``tarfile`` mode ``r|``, one GET per shard in
object storage): memory holds a batch of samples, never a shard. The columns come from the first
samples of the first shard; an extension first seen later is left out, with one warning.
"""

from __future__ import annotations

import io
import logging
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from typing import IO, Any, Final

import polars as pl

from pipeline.errors import InputError
from pipeline.rows.tables import SOURCE_COLUMN

log = logging.getLogger("pipeline.run")

KEY_COLUMN = "key"
SHARD_SUFFIXES: Final = (".tar", ".tar.gz", ".tgz")
TEXT_EXTENSIONS: Final = frozenset({
    "txt", "text", "caption", "cls", "cls2", "json", "jsonl", "md", "html", "htm", "xml", "csv", "tsv",
    "yaml", "yml", "id", "index", "label", "url",
})  # fmt: skip
_MEMBER: Final = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_META: Final = re.compile(r"__[^/]*__($|/)")
# samples read from the first shard to learn the columns
PEEK_SAMPLES = 64

Opener = Callable[[str], IO[bytes]]


def is_shard(name: str) -> bool:
    """Whether a file name (or URL) is a tar shard."""
    return name.lower().endswith(SHARD_SUFFIXES)


def base_plus_ext(name: str) -> tuple[str, str] | None:
    """``(key, extension)`` of a member path, or None for a member that belongs to no sample."""
    if _META.search(name):
        return None
    match = _MEMBER.match(name)
    if match is None:
        return None
    return match.group(1), match.group(2).lower()


def iter_samples(handle: IO[bytes], where: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` for each sample of one shard, streamed in archive order."""
    key: str | None = None
    sample: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=handle, mode="r|*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                split = base_plus_ext(member.name)
                if split is None:
                    continue
                extracted = archive.extractfile(member)
                # read now: in stream mode the archive moves past the member
                data = extracted.read() if extracted is not None else b""
                if split[0] != key:
                    if key is not None and sample:
                        yield key, sample
                    key, sample = split[0], {}
                sample[split[1]] = data
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise InputError(f"{where}: cannot read the tar shard ({exc or type(exc).__name__})") from None
    if key is not None and sample:
        yield key, sample


def discover(shards: list[str], opener: Opener) -> dict[str, pl.DataType]:
    """The columns of the shards' samples, from the first :data:`PEEK_SAMPLES` of the first shard."""
    extensions: list[str] = []
    with closing(opener(shards[0])) as handle:
        for count, (_, sample) in enumerate(iter_samples(handle, shards[0]), start=1):
            extensions.extend(ext for ext in sample if ext not in extensions)
            if count >= PEEK_SAMPLES:
                break
    if not extensions:
        raise InputError(f"{shards[0]}: the shard holds no samples (no member named key.extension)")
    schema: dict[str, pl.DataType] = {KEY_COLUMN: pl.String()}
    for ext in extensions:
        if ext == KEY_COLUMN:
            continue  # a member "x.key" would shadow the key itself
        schema[ext] = pl.String() if ext.rsplit(".", 1)[-1] in TEXT_EXTENSIONS else pl.Binary()
    return schema


def shard_batches(
    shards: list[str], opener: Opener, schema: dict[str, pl.DataType], rows: int
) -> Iterator[pl.DataFrame]:
    """Every sample of every shard, in order, as frames of at most ``rows`` rows with ``schema``."""
    dropped: set[str] = set()
    frame_schema = {**schema, SOURCE_COLUMN: pl.String()}
    pending: list[dict[str, Any]] = []
    for shard in shards:
        with closing(opener(shard)) as handle:
            for key, sample in iter_samples(handle, shard):
                record: dict[str, Any] = {KEY_COLUMN: key, SOURCE_COLUMN: shard}
                for ext, data in sample.items():
                    dtype = schema.get(ext)
                    if dtype is None or ext == KEY_COLUMN:
                        if ext not in dropped:
                            dropped.add(ext)
                            log.warning(
                                "%s: member extension %r is not among the columns; left out", shard, ext
                            )
                        continue
                    record[ext] = data.decode("utf-8", "replace") if dtype == pl.String else data
                pending.append(record)
                if len(pending) >= rows:
                    yield pl.DataFrame(pending, schema=frame_schema)
                    pending = []
    if pending:
        yield pl.DataFrame(pending, schema=frame_schema)


class ChunkReader(io.RawIOBase):
    """A forward-only file over an iterator of byte chunks (an object-storage GET as it streams)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        super().__init__()
        self._chunks = iter(chunks)
        self._buffer = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size

    def close(self) -> None:
        closer = getattr(self._chunks, "close", None)
        if closer is not None:
            closer()  # stops the generator, and with it the GET
        super().close()


def chunk_file(chunks: Iterable[bytes]) -> IO[bytes]:
    """A buffered, forward-only binary file over ``chunks``."""
    return io.BufferedReader(ChunkReader(chunks), buffer_size=1 << 20)


def expand_braces(pattern: str) -> list[str]:
    """Brace expansion as webdataset's shard lists use it: ``{000..099}`` keeps its zero padding,
    ``{a,b}`` lists, several braces make the cross product. A pattern without braces is itself."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    body = match.group(1)
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric is not None:
        first, last = numeric.groups()
        width = len(first) if first.startswith("0") or len(first) == len(last) else 0
        step = 1 if int(last) >= int(first) else -1
        choices = [str(n).zfill(width) for n in range(int(first), int(last) + step, step)]
    elif "," in body:
        choices = body.split(",")
    else:
        return [head + "{" + body + "}" + item for item in expand_braces(tail)]
    return [item for choice in choices for item in expand_braces(head + choice + tail)]

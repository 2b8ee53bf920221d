"""What the job's ``input`` names: the local files or the objects a path, a glob or a URL matches, and
their kind (tables, image files or WebDataset shards). Reads no file's contents.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import InputError
from pipeline.rows import folder, webdataset
from pipeline.rows.storage import ObjectStorage, ObjectStoreError, ObjectUrl
from pipeline.rows.tables import TABLE_SUFFIXES, describe, scan_table, suffix_of


def find_files(pattern: str) -> tuple[Path, ...]:
    """The local files a path or glob names, sorted; InputError when there are none."""
    if glob.has_magic(pattern):
        files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not files:
            raise InputError(f"no input files match {pattern}")
        return tuple(files)
    path = Path(pattern)
    if not path.exists():
        raise InputError(f"input file not found: {path}")
    if path.is_dir():
        raise InputError(f"input is a directory, not a file: {path} (use a glob such as {path}/*.csv)")
    return (path,)


def list_remote(pattern: str, storage: ObjectStorage) -> list[Any]:
    """The objects an object-storage URL or glob names, sorted; InputError when there are none."""
    try:
        parsed = ObjectUrl.parse(pattern)
        if not any(glob.has_magic(part) for part in parsed.key.split("/")):
            if parsed.key.endswith("/") or not parsed.key:
                raise InputError(
                    f"input is a folder, not an object: {pattern} (use a glob such as"
                    f" {pattern.rstrip('/')}/*.parquet)"
                )
            try:
                return [storage.head(pattern)]
            except ObjectStoreError as exc:
                raise InputError(
                    f"input not found: {pattern}" if "not found" in str(exc) else str(exc)
                ) from None
        prefix = folder.fixed_prefix(parsed.key)
        matcher = glob_regex(parsed.key)
        listed = storage.list(str(ObjectUrl(parsed.scheme, parsed.bucket, prefix)))
    except ObjectStoreError as exc:
        raise InputError(f"cannot list {pattern}: {exc}") from None
    except ValueError as exc:
        raise InputError(f"input {pattern!r}: {exc}") from None
    found = [info for info in listed if matcher.fullmatch(ObjectUrl.parse(info.url).key)]
    if not found:
        raise InputError(f"no input files match {pattern}")
    return found


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob as a regular expression on keys: ``*`` and ``?`` stay within a folder, ``**`` crosses them."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(char))
            else:
                body = pattern[i + 1 : end]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = end
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out))


def input_kind(files: Sequence[Path | str]) -> str:
    """``tables``, ``images`` or ``webdataset`` from what was matched; InputError for a mix or the unknown."""
    kinds: set[str] = set()
    for item in files:
        name = str(item)
        suffix = suffix_of(name)
        if suffix in TABLE_SUFFIXES:
            kinds.add("tables")
        elif suffix in folder.IMAGE_SUFFIXES:
            kinds.add("images")
        elif webdataset.is_shard(name):
            kinds.add("webdataset")
        else:
            scan_table(name)  # raises the "unsupported input format" error
    if len(kinds) > 1:
        raise InputError(
            f"{describe(files)}: the input mixes {' and '.join(sorted(kinds))}; name one kind"
            " (a narrower glob)"
        )
    return kinds.pop()

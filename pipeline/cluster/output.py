"""Where a cluster run's workers write: one journal per sender, and the settled rows read tasks skip.

The driver holds the output's lock and folds the journals into ``results.parquet`` at the end,
exactly as a local run does (:class:`~pipeline.results.store.ResultStore`); the workers only append
journals and read the rerun rule's settled rows. :class:`OutputTarget` is that small surface, so that
an output in object storage is one more implementation of it. A directory output must be one every
node reaches at the same path (on one machine, any directory; across machines, a shared filesystem).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pyarrow as pa

from pipeline.records import Result
from pipeline.results.store import RerunPolicy, ResultStore


class JournalWriter(Protocol):
    """A sender's journal."""

    def append(self, results: Sequence[Result]) -> None:
        """Record results together (all or none survive a crash)."""

    def flush(self) -> None:
        """Make what was appended part of the output before returning."""

    def close(self) -> None:
        """Finish the journal."""


@dataclass(frozen=True, slots=True)
class OutputTarget:
    """An output directory, as the workers of a run see it (an absolute path)."""

    directory: Path

    def open_journal(self, schema: pa.Schema, *, writer: str) -> JournalWriter:
        """A new journal for one sender; ``writer`` names it apart from every other sender's."""
        return ResultStore(self.directory).new_journal(schema, writer=writer)

    def settled(self, fingerprint: str, retry: RerunPolicy, *, sandbox_answers: bool) -> dict[str, str]:
        """The rerun rule's settled rows (row_id -> row hash), read once per worker process.

        :param sandbox_answers: whether the sandbox's answers count (a run to a loopback server).
        """
        path = ResultStore(self.directory).results_path
        try:
            info = path.stat()
        except FileNotFoundError:
            return {}
        stamp = (info.st_mtime_ns, info.st_size)
        return _settled(self.directory, stamp, fingerprint, retry, sandbox_answers)


@functools.lru_cache(maxsize=2)
def _settled(
    directory: Path, stamp: tuple[int, int], fingerprint: str, retry: RerunPolicy, sandbox_answers: bool
) -> dict[str, str]:
    """Cached per process by the file's identity: every read task of a worker process shares one read."""
    del stamp  # part of the cache key only
    return ResultStore(directory).settled(fingerprint, retry, sandbox_answers=sandbox_answers)


def writer_name() -> str:
    """A name for this process's journal that no other process of the run shares, on any node."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    return f"{node[:12]}-{os.getpid()}"

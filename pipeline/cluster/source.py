"""The job's input as a Ray Data source: read tasks on the cluster that read rows exactly as a local run does.

Each read task runs the project's own reader (:func:`pipeline.rows.reader.iter_rows`), so row ids,
row hashes and row indexes are the local run's, and drops the rows the rerun rule settles
(:meth:`OutputTarget.settled`, read on the worker) before anything is shipped. A block holds one row
per pickled :class:`~pipeline.rows.reader.SourcedRow` still to send, and, when some of its rows were
skipped, one more row that only counts them.

How the input is split: a table input (CSV, Parquet, JSONL files, local or in object storage) with an
``id_column`` makes every file a read task of its own (its first row index is the number of rows in
the files before it); without one, a row's id is a hash of its cells with a suffix for repeats
(``-2``, ``-3``) counted over the whole input, so the input is read in one task, in order, as are
image folders and WebDataset shards. Either way the blocks spread over every sender, so reading is
rarely what binds.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import pyarrow as pa

from pipeline.cluster.output import OutputTarget
from pipeline.job.request import RequestSpec
from pipeline.results.store import RerunPolicy
from pipeline.rows.reader import InputTable, SourcedRow, count_rows, file_table, iter_rows
from pipeline.rows.storage import ObjectStorage

MAX_BLOCK_ROWS = 256  # rows to send per block a read task yields, at most
SCAN_ROWS = 4096  # rows read per block, at most (the rest were settled)

BLOCK_SCHEMA = pa.schema([pa.field("row", pa.binary()), pa.field("skipped", pa.int64())])


@dataclass(frozen=True, slots=True)
class ReadPiece:
    """One read task: a table (a file, or the whole input), the index of its first row, rows to take."""

    table: InputTable
    first_index: int
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class ReadRule:
    """What every read task of a run follows: which rows not to send again, how many rows to a block,
    and where to hear that the run stops (then it reads no further).

    :param sandbox_answers: whether answers the sandbox gave count as settled (a run to a loopback
        server, ``api.config.is_loopback``).
    :param block_rows: a block goes to one sender as one task: small enough that a small input still
        spreads over every sender, large enough that a task keeps a sender busy.
    :param limiter: the run's limiter actor, asked before each block whether the run is stopping.
    """

    output: OutputTarget
    request: RequestSpec
    retry: RerunPolicy
    sandbox_answers: bool
    block_rows: int = MAX_BLOCK_ROWS
    limiter: Any = None


def plan_reads(
    table: InputTable, limit: int | None, storage: ObjectStorage | None = None
) -> tuple[list[ReadPiece], int]:
    """The read tasks of an input, and the number of rows they read (at most ``limit``).

    :param storage: object storage, for a table input there (its files are counted from here).
    """
    if table.id_column is None or len(table.files) == 1 or table.kind != "table":
        total = count_rows(table)
        return [ReadPiece(table, 0, limit)], total if limit is None else min(total, limit)
    pieces: list[ReadPiece] = []
    first = 0
    for path in table.files:
        if limit is not None and first >= limit:
            break
        part = file_table(table, path, storage)
        rows = count_rows(part)
        take = None if limit is None else min(rows, limit - first)
        pieces.append(ReadPiece(part, first, take))
        first += rows if take is None else take
    return pieces, first


def read_piece(piece: ReadPiece, rule: ReadRule) -> Iterator[pa.Table]:
    """A read task: the piece's rows still to send, ``block_rows`` to a block, and counts of the rows skipped.

    A block also ends after ``SCAN_ROWS`` rows read, so that an input mostly settled yields few blocks.
    """
    done = rule.output.settled(rule.request, rule.retry, sandbox_answers=rule.sandbox_answers)
    kept: list[bytes | None] = []
    skipped = 0
    for sourced in iter_rows(piece.table, limit=piece.limit, first_index=piece.first_index):
        row = sourced.row
        if done.get(row.row_id) == row.content_hash:
            skipped += 1
        else:
            kept.append(pickle.dumps(sourced, protocol=pickle.HIGHEST_PROTOCOL))
        if len(kept) >= rule.block_rows or len(kept) + skipped >= SCAN_ROWS:
            if _stopping(rule):
                return
            yield _block(kept, skipped)
            kept, skipped = [], 0
    if (kept or skipped) and not _stopping(rule):
        yield _block(kept, skipped)


def _block(kept: list[bytes | None], skipped: int) -> pa.Table:
    counts = [0] * len(kept)
    if skipped:
        kept = [*kept, None]
        counts.append(skipped)
    return pa.table({"row": pa.array(kept, pa.binary()), "skipped": pa.array(counts, pa.int64())})


def _stopping(rule: ReadRule) -> bool:
    if rule.limiter is None:
        return False
    import ray

    return ray.get(rule.limiter.stopping.remote()) is not None


def block_rows(block: pa.Table) -> tuple[list[SourcedRow], int]:
    """A block's rows to send, and how many rows it skipped."""
    rows = [pickle.loads(data) for data in block.column("row").to_pylist() if data is not None]  # noqa: S301  (our own blocks)
    return rows, sum(block.column("skipped").to_pylist())


def job_source(pieces: list[ReadPiece], rule: ReadRule) -> Any:
    """The Ray Data ``Datasource`` of the pieces (made here, where Ray may be imported)."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class JobRows(Datasource):
        """The job's input: one read task per piece."""

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(
            self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
        ) -> list[ReadTask]:
            return [
                ReadTask(
                    partial(read_piece, piece, rule),
                    BlockMetadata(
                        num_rows=None,
                        size_bytes=None,
                        input_files=tuple(str(path) for path in piece.table.files),
                        exec_stats=None,
                    ),
                    schema=BLOCK_SCHEMA,
                    per_task_row_limit=per_task_row_limit,
                )
                for piece in pieces
            ]

    return JobRows()  # type: ignore[no-untyped-call]

"""The result store: journals survive torn writes, compaction keeps the latest result per row."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from pipeline.errors import OutputError
from pipeline.lock import locked_output
from pipeline.records import Reply, Result, Row, ToolCall, Usage
from pipeline.writer import ResultStore, RetryPolicy, output_schema, read_journal

INPUT = pa.schema([("id", pa.large_string()), ("status", pa.large_string()), ("n", pa.int64())])
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _result(index: int, status: str = "ok", *, fingerprint: str = "fp", seconds: int = 0) -> Result:
    row = Row(index, f"r{index}", {"id": f"r{index}", "status": "input-status", "n": index})
    reply = Reply(
        "m",
        f"answer {index}",
        (ToolCall("t1", "rec", '{"a":1}'),),
        "end_turn",
        Usage(5, 6, 0, 0),
        "msg",
        "req",
    )
    if status == "ok":
        return Result(
            row, "ok", T0 + timedelta(seconds=seconds), fingerprint, reply=reply, attempts=1, latency_ms=3.0
        )
    return Result(
        row,
        "error",
        T0 + timedelta(seconds=seconds),
        fingerprint,
        attempts=2,
        error_type="api_error",
        error_message="boom",
    )


def test_compact_writes_one_row_per_row_id_latest_wins(tmp_path: Path) -> None:
    """Two runs' journals fold into results.parquet with the later result for a repeated row."""
    store = ResultStore(tmp_path)
    store.prepare()
    first = store.new_journal(output_schema(INPUT))
    first.append([_result(0, "error"), _result(1)])
    first.close()
    store.compact()
    second = store.new_journal(output_schema(INPUT))
    second.append([_result(0, seconds=5)])
    second.close()
    assert store.compact() == 2
    frame = pl.read_parquet(tmp_path / "results.parquet")
    assert frame["row_id"].to_list() == ["r0", "r1"]
    assert frame["status"].to_list() == ["ok", "ok"]
    assert frame.columns[:5] == ["row_id", "status", "id", "input_status", "n"]
    assert frame["n"].dtype == pl.Int64
    assert frame["tool_calls"][0].to_list() == [{"id": "t1", "name": "rec", "input": '{"a":1}'}]
    assert not store.journals()


def test_torn_journal_tail_is_dropped_not_fatal(tmp_path: Path) -> None:
    """A journal cut mid-record (kill -9 during a write) reads back every complete batch."""
    store = ResultStore(tmp_path)
    store.prepare()
    journal = store.new_journal(output_schema(INPUT))
    journal.append([_result(0)])
    journal.append([_result(1)])
    journal.close()
    data = journal.path.read_bytes()
    journal.path.write_bytes(data[:-40])
    table = read_journal(journal.path)
    assert table is not None
    assert table.column("row_id").to_pylist() == ["r0"]


def test_settled_rows_respect_fingerprint_and_retry_policy(tmp_path: Path) -> None:
    """Ok rows under the current fingerprint are settled; error rows only when the policy skips their type."""
    store = ResultStore(tmp_path)
    store.prepare()
    journal = store.new_journal(output_schema(INPUT))
    bad_request = replace(_result(3, "error"), error_type="invalid_request_error")
    journal.append([_result(0), _result(1, "error"), _result(2, fingerprint="old"), bad_request])
    journal.close()
    store.compact()
    assert set(store.settled("fp", RetryPolicy())) == {"r0", "r3"}
    assert set(store.settled("fp", RetryPolicy.parse("all"))) == {"r0"}
    assert set(store.settled("fp", RetryPolicy.parse("none"))) == {"r0", "r1", "r3"}
    assert set(store.settled("fp", RetryPolicy.parse("invalid_request_error"))) == {"r0", "r1"}


def test_fresh_keeps_previous_results_aside(tmp_path: Path) -> None:
    """start_fresh moves results.parquet to results.previous.parquet instead of deleting it."""
    store = ResultStore(tmp_path)
    store.prepare()
    journal = store.new_journal(output_schema(INPUT))
    journal.append([_result(0)])
    journal.close()
    store.compact()
    store.start_fresh()
    assert not (tmp_path / "results.parquet").exists()
    assert pl.read_parquet(tmp_path / "results.previous.parquet").height == 1


def test_unwritable_output_is_output_error(tmp_path: Path) -> None:
    """An output path under a regular file cannot be prepared: OutputError, nothing else."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write to output directory"):
        ResultStore(blocker / "out").prepare()


def test_second_holder_of_output_lock_is_refused_with_pid(tmp_path: Path) -> None:
    """While one run holds the output lock, another gets an OutputError naming the holder's pid."""
    holder = f"in use by another run \\(pid {os.getpid()}"
    with locked_output(tmp_path), pytest.raises(OutputError, match=holder), locked_output(tmp_path):
        pass
    with locked_output(tmp_path):  # released on exit: the next run takes it
        pass


def test_journal_of_many_small_batches_reads_back_coalesced(tmp_path: Path) -> None:
    """A journal of one-row batches reads back as a few large chunks (memory tracks data, not batches)."""
    store = ResultStore(tmp_path)
    store.prepare()
    journal = store.new_journal(output_schema(INPUT))
    for index in range(5000):
        journal.append([_result(index)])
    journal.close()
    table = read_journal(journal.path)
    assert table is not None
    assert table.num_rows == 5000
    assert table.column("row_id").num_chunks <= 3
    assert table.column("row_id")[4999].as_py() == "r4999"

"""The result store: journals survive torn writes, compaction keeps the latest result per row."""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import OutputError
from pipeline.job.request import RequestSpec
from pipeline.records import Reply, Result, Row, ToolCall, Usage
from pipeline.results import compaction
from pipeline.results.journal import read_journal
from pipeline.results.lock import locked_output
from pipeline.results.schema import output_schema, result_record
from pipeline.results.store import RerunPolicy, ResultStore

INPUT = pa.schema([("id", pa.large_string()), ("status", pa.large_string()), ("n", pa.int64())])
T0 = datetime(2026, 1, 1, tzinfo=UTC)
REQUEST = RequestSpec(model="m", max_tokens=10, prompt="p")
FP = REQUEST.fingerprint()


def _result(index: int, status: str = "ok", *, fingerprint: str = FP, seconds: int = 0) -> Result:
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
    for sandbox_answers in (False, True):  # none of these rows is a sandbox's answer
        assert set(store.settled(REQUEST, RerunPolicy(), sandbox_answers=sandbox_answers)) == {"r0", "r3"}
        every = RerunPolicy.parse("all")
        assert set(store.settled(REQUEST, every, sandbox_answers=sandbox_answers)) == {"r0"}
        none = RerunPolicy.parse("none")
        assert set(store.settled(REQUEST, none, sandbox_answers=sandbox_answers)) == {"r0", "r1", "r3"}
        invalid = RerunPolicy.parse("invalid_request_error")
        assert set(store.settled(REQUEST, invalid, sandbox_answers=sandbox_answers)) == {"r0", "r1"}


def test_a_sandbox_answer_is_settled_only_for_a_run_that_takes_sandbox_answers(tmp_path: Path) -> None:
    """A row the sandbox answered (model sandbox:...) stands for local runs, not for one to a real server."""
    store = ResultStore(tmp_path)
    store.prepare()
    journal = store.new_journal(output_schema(INPUT))
    from_sandbox = _result(1)
    from_sandbox = replace(from_sandbox, reply=replace(from_sandbox.reply, model="sandbox:claude-haiku-4-5"))
    journal.append([_result(0), from_sandbox])
    journal.close()
    store.compact()
    assert set(store.settled(REQUEST, RerunPolicy(), sandbox_answers=True)) == {"r0", "r1"}
    assert set(store.settled(REQUEST, RerunPolicy(), sandbox_answers=False)) == {"r0"}


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


# ---------------------------------------------------------------- streaming compaction


def _journal(store: ResultStore, results: list[Result], schema: pa.Schema | None = None) -> Path:
    """One run's journal holding ``results``, one batch each, closed."""
    journal = store.new_journal(schema if schema is not None else output_schema(INPUT))
    for result in results:
        journal.append([result])
    journal.close()
    return journal.path


def test_compaction_matches_the_in_memory_merge_across_row_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Old results plus two out-of-order journals fold exactly as the in-memory merge, step by step."""
    monkeypatch.setattr(compaction, "FOLD_ROWS", 7)  # many steps, row groups and copied batches
    rng = random.Random(5)
    store = ResultStore(tmp_path)
    store.prepare()
    _journal(store, [_result(i, rng.choice(["ok", "error"])) for i in rng.sample(range(40), 40)])
    store.compact()
    for run in range(2):
        picked = [rng.randrange(60) for _ in range(30)]  # repeats within a run: the later one wins
        _journal(store, [_result(i, rng.choice(["ok", "error"]), seconds=run + 1) for i in picked])
    expected = store.snapshot()
    assert expected is not None
    assert store.compact() == expected.height
    folded = pl.read_parquet(store.results_path)
    assert folded.equals(expected.select(folded.columns))
    assert folded["row_index"].is_sorted()
    groups = pq.ParquetFile(store.results_path).metadata
    assert max(groups.row_group(i).num_rows for i in range(groups.num_row_groups)) <= 7
    assert not list(store.journal_dir.iterdir())  # journals and the compaction's copies are gone


def test_compaction_reads_an_old_single_row_group_file_in_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A results.parquet written whole (one row group, as polars writes) folds in steps, unchanged."""
    store = ResultStore(tmp_path)
    store.prepare()
    _journal(store, [_result(i) for i in range(50)])
    store.compact()
    pl.read_parquet(store.results_path).write_parquet(store.results_path, row_group_size=1000)
    assert pq.ParquetFile(store.results_path).metadata.num_row_groups == 1
    monkeypatch.setattr(compaction, "FOLD_ROWS", 7)
    _journal(store, [_result(i, "error", seconds=1) for i in (3, 17, 49)])
    expected = store.snapshot()
    assert expected is not None
    assert store.compact() == 50
    folded = pl.read_parquet(store.results_path)
    assert folded.equals(expected.select(folded.columns))
    assert folded.filter(pl.col("status") == "error")["row_id"].to_list() == ["r3", "r17", "r49"]


def test_compaction_widens_the_schema_diagonally(tmp_path: Path) -> None:
    """Columns a newer run adds appear (null for older rows); a column whose type changed widens."""
    store = ResultStore(tmp_path)
    store.prepare()
    _journal(store, [_result(0), _result(1)])
    store.compact()
    old = pl.read_parquet(store.results_path).drop("shared_request_with")
    old.write_parquet(store.results_path)  # as an older version wrote it, before that column existed
    newer = pa.schema([("id", pa.large_string()), ("status", pa.large_string()), ("n", pa.float64())])
    schema = output_schema(newer).insert(5, pa.field("out_score", pa.int64()))
    later = replace(_result(2, seconds=1), row=Row(2, "r2", {"id": "r2", "status": "s", "n": 2.5}))
    journal = store.new_journal(schema)
    record = result_record(later, schema)
    record["out_score"] = 7
    journal._writer.write_batch(pa.RecordBatch.from_pylist([record], schema=schema))
    journal.close()
    expected = store.snapshot()
    assert expected is not None
    assert store.compact() == 3
    folded = pl.read_parquet(store.results_path)
    assert folded["row_id"].to_list() == ["r0", "r1", "r2"]
    assert folded["out_score"].to_list() == [None, None, 7]
    assert folded["n"].dtype == pl.Float64
    assert folded["n"].to_list() == [0.0, 1.0, 2.5]
    assert folded["shared_request_with"].to_list() == [None, None, None]
    assert folded.columns.index("out_score") < folded.columns.index("model")  # between inputs and results
    assert folded.equals(expected.select(folded.columns))


def test_compaction_drops_a_torn_tail_and_keeps_the_rest(tmp_path: Path) -> None:
    """A journal cut mid-record folds its complete results; the torn one and stale copies are gone."""
    store = ResultStore(tmp_path)
    store.prepare()
    path = _journal(store, [_result(i) for i in range(5)])
    path.write_bytes(path.read_bytes()[:-40])
    stale = store.journal_dir / f".{path.name}.fold-99999"  # left by a compaction killed midway
    stale.write_bytes(b"partial")
    assert store.compact() == 4
    assert pl.read_parquet(store.results_path)["row_id"].to_list() == ["r0", "r1", "r2", "r3"]
    assert not list(store.journal_dir.iterdir())


def test_compaction_of_empty_journals_leaves_results_untouched(tmp_path: Path) -> None:
    """Journals with no results (a rerun that sent nothing, a run killed early) rewrite nothing."""
    store = ResultStore(tmp_path)
    store.prepare()
    _journal(store, [_result(0)])
    store.compact()
    before = store.results_path.stat().st_mtime_ns
    _journal(store, [])
    (store.journal_dir / "00000000T000000000000Z-1.arrows").write_bytes(b"")  # died before the schema
    assert store.compact() == 1
    assert store.results_path.stat().st_mtime_ns == before
    assert not store.journals()


# ---------------------------------------------------------------- journal batching


def _batch_sizes(path: Path) -> list[int]:
    """Rows per record batch of a journal, as written (none before the first: the schema comes with it)."""
    with pa.OSFile(str(path), "rb") as source:
        try:
            return [batch.num_rows for batch in pa.ipc.open_stream(source)]
        except pa.ArrowInvalid:
            return []


async def test_results_of_one_loop_turn_are_written_as_one_batch(tmp_path: Path) -> None:
    """Appends in the same turn of the event loop share one batch, written when the turn ends."""
    store = ResultStore(tmp_path)
    store.prepare()
    journal = store.new_journal(output_schema(INPUT))
    journal.append([_result(0)])
    journal.append([_result(1), _result(2)])
    assert _batch_sizes(journal.path) == []  # not yet: the turn has not ended
    await asyncio.sleep(0)
    assert _batch_sizes(journal.path) == [3]
    journal.append([_result(3)])
    await asyncio.sleep(0)
    journal.append([_result(4)])
    journal.close()  # writes what is still pending
    assert _batch_sizes(journal.path) == [3, 1, 1]
    assert journal.rows_written == 5


async def test_a_failed_deferred_write_is_raised_by_the_next_append(tmp_path: Path) -> None:
    """A write that fails after its turn surfaces as OutputError on the next append, and on close."""
    store = ResultStore(tmp_path)
    store.prepare()
    journal = store.new_journal(output_schema(INPUT))

    class Full:
        def write_batch(self, batch: pa.RecordBatch) -> None:
            raise OSError(28, "No space left on device")

        def close(self) -> None:
            pass

    journal._writer = Full()
    journal.append([_result(0)])
    await asyncio.sleep(0)
    with pytest.raises(OutputError, match="No space left"):
        journal.append([_result(1)])
    with pytest.raises(OutputError, match="No space left"):
        journal.close()


def _cut(index: int, *, max_tokens: int | None, fingerprint: str = FP) -> Result:
    """A row whose answer was cut off at max_tokens (an error that keeps its reply)."""
    reply = Reply("m", "half an ans", (), "max_tokens", Usage(5, 10), "msg", "req")
    row = Row(index, f"r{index}", {"id": f"r{index}", "status": "s", "n": index})
    return Result(
        row,
        "error",
        T0,
        fingerprint,
        reply=reply,
        error_type="max_tokens",
        error_message="cut",
        max_tokens=max_tokens,
    )


def test_a_row_cut_off_is_sent_again_only_when_max_tokens_is_raised(tmp_path: Path) -> None:
    """Truncated rows stay settled at the same or a lower max_tokens and are sent again above it."""
    store = ResultStore(tmp_path)
    store.prepare()
    journal = store.new_journal(output_schema(INPUT))
    journal.append([replace(_result(0), max_tokens=10), _cut(1, max_tokens=10)])
    journal.close()
    store.compact()
    same, lower, higher = (
        REQUEST,
        REQUEST.model_copy(update={"max_tokens": 5}),
        REQUEST.model_copy(update={"max_tokens": 50}),
    )
    assert same.fingerprint() == higher.fingerprint()
    assert set(store.settled(same, RerunPolicy(), sandbox_answers=False)) == {"r0", "r1"}
    assert set(store.settled(lower, RerunPolicy(), sandbox_answers=False)) == {"r0", "r1"}
    # the completed row is never sent again; the cut-off one is, whatever --retry-errors says
    assert set(store.settled(higher, RerunPolicy(), sandbox_answers=False)) == {"r0"}
    assert set(store.settled(higher, RerunPolicy.parse("none"), sandbox_answers=False)) == {"r0"}
    assert set(store.settled(same, RerunPolicy.parse("max_tokens"), sandbox_answers=False)) == {"r0"}


def test_results_of_an_earlier_version_are_adopted_once_and_survive_a_raised_max_tokens(
    tmp_path: Path,
) -> None:
    """Rows with the previous formula's fingerprint (no max_tokens column) are settled, relabelled, kept."""
    legacy = REQUEST.legacy_fingerprint()
    assert legacy is not None
    old_fields = [
        field
        for field in output_schema(INPUT)
        if field.name not in ("thinking", "refusal_category", "max_tokens")
    ]
    rows = [
        {
            k: v
            for k, v in result_record(_result(i, fingerprint=legacy)).items()
            if k in {f.name for f in old_fields}
        }
        for i in range(3)
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(old_fields)), tmp_path / "results.parquet")
    store = ResultStore(tmp_path)
    assert set(store.settled(REQUEST, RerunPolicy(), sandbox_answers=False)) == {"r0", "r1", "r2"}
    assert store.adopt_legacy(REQUEST) == 3
    frame = pl.read_parquet(tmp_path / "results.parquet")
    assert frame["request_fingerprint"].to_list() == [FP] * 3
    assert frame["max_tokens"].to_list() == [10] * 3
    assert frame["response_text"].to_list() == ["answer 0", "answer 1", "answer 2"]
    assert store.adopt_legacy(REQUEST) == 0  # nothing left to adopt: the file is not rewritten again
    raised = REQUEST.model_copy(update={"max_tokens": 500})
    assert set(store.settled(raised, RerunPolicy(), sandbox_answers=False)) == {"r0", "r1", "r2"}

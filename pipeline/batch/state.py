"""What batch mode has submitted, persisted in the output directory before anything else can fail.

Layout (inside the output directory)::

    .batches/log.jsonl            append-only event log, one JSON object a line, fsynced per line
    .batches/<key>.rows.arrow     the rows of one submission: custom_id, row id/index/hash, attempt,
                                  leader, and the row's input cells (types kept), written before the intent

Events, in the order a submission lives through them:

- ``intent``: written (and fsynced) *before* the create POST: the submission's key, the local time,
  how many requests and bytes, the request fingerprint, where it goes (base URL, key variable, auth)
  and the ``[request]`` and ``[prices]`` it was built from, so ``pipeline batch collect`` needs no job.
- ``submitted``: the batch id the API returned (or, for an orphan, the id found by listing; see
  :func:`match_orphans`).
- ``collected``: every result line was journalled (and the journal fsynced).
- ``abandoned``: no batch exists for the intent (the POST was refused, or never arrived), or
  ``pipeline batch forget`` gave it up (``"forgotten": true``: the API no longer knows the batch);
  its rows may be submitted again. ``lost``: a sandbox batch whose server is gone.
- ``cancel``: ``pipeline batch cancel`` asked the API to cancel it.

A torn last line (the process died mid-write) is ignored. The log is replayed into
:class:`Submission` records; rows of a submission that is neither collected nor abandoned are
*pending* and are never submitted again.

``custom_id``: the row id itself when it matches ``^[a-zA-Z0-9_-]{1,64}$`` and is not used yet in the
batch, else ``h_`` plus a hash of the row id (then ``i<index>_`` plus the hash on a clash). The rows
file maps every custom_id back to its row, so the mapping is exact whatever the ids look like.

``leader`` (dedupe): null for a row whose request is in the batch body; for a *follower*, a row whose
request is identical to an earlier row's of the same submission, the leader's custom_id. A follower
has a custom_id of its own (unique in the file) that is never sent: its row gets the leader's result.
Rows files written before followers existed have no ``leader`` column; every row there is sent
(:func:`row_leaders`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from pipeline.atomic import fsync_path
from pipeline.errors import ConfigError, OutputError

BATCH_DIR = ".batches"
LOG_FILE = "log.jsonl"
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
ROW_FIELDS = [
    pa.field("custom_id", pa.string(), nullable=False),
    pa.field("row_id", pa.string(), nullable=False),
    pa.field("row_index", pa.int64(), nullable=False),
    pa.field("row_hash", pa.string()),
    pa.field("attempt", pa.int32(), nullable=False),
    pa.field("leader", pa.string()),  # the leader's custom_id for a follower (not in the body), else null
]
Phase = Literal["unconfirmed", "submitted", "collected", "abandoned", "lost"]
OPEN_PHASES = frozenset({"unconfirmed", "submitted"})


def custom_id_for(row_id: str, index: int, used: set[str] | frozenset[str]) -> str:
    """A ``custom_id`` for the row that is not in ``used`` (the caller adds it once it is taken)."""
    if CUSTOM_ID.match(row_id) and row_id not in used:
        return row_id
    digest = hashlib.blake2b(row_id.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    for candidate in (f"h_{digest}", f"i{index}_{digest}"):
        if candidate not in used:
            return candidate
    raise AssertionError(f"no free custom_id for row {index}")  # row indexes are unique in a run


def utc_now() -> datetime:
    """Now, in UTC (one place, so the log's times all look alike)."""
    return datetime.now(UTC)


@dataclass(slots=True)
class Submission:
    """One create call: what it held, and how far it got."""

    key: str
    intent_at: datetime
    requests: int
    bytes: int
    fingerprint: str
    base_url: str
    sandbox: bool
    job: dict[str, Any]
    phase: Phase = "unconfirmed"
    batch_id: str | None = None
    created_at: str | None = None
    adopted: bool = False
    cancel_requested: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    note: str = ""

    @property
    def open(self) -> bool:
        """Whether its rows are pending: submitted (or maybe submitted) and not yet collected."""
        return self.phase in OPEN_PHASES

    def label(self) -> str:
        """The batch id, or the key while no id is known."""
        return self.batch_id or f"{self.key} (unconfirmed)"

    @classmethod
    def from_intent(cls, record: Mapping[str, Any]) -> Submission:
        """The submission an ``intent`` event opens, before anything else happened to it."""
        return cls(
            key=str(record["key"]),
            intent_at=datetime.fromisoformat(str(record["at"])),
            requests=int(record["requests"]),
            bytes=int(record["bytes"]),
            fingerprint=str(record["fingerprint"]),
            base_url=str(record["base_url"]),
            sandbox=bool(record.get("sandbox", False)),
            job=dict(record.get("job") or {}),
        )


class BatchLog:
    """The event log and rows files of one output directory."""

    def __init__(self, output: Path, *, on_write: Callable[[Path], None] | None = None) -> None:
        """:param on_write: told of each file that must be saved now (an object-storage output
        uploads the rows file and the log before the create request leaves)."""
        self.directory = output / BATCH_DIR
        self.path = self.directory / LOG_FILE
        self.on_write = on_write

    def exists(self) -> bool:
        """Whether anything was ever submitted from this output directory."""
        return self.path.exists()

    def rows_path(self, key: str) -> Path:
        """Where a submission's rows live."""
        return self.directory / f"{key}.rows.arrow"

    def spool_path(self, key: str) -> Path:
        """Where a submission's request body is assembled before it is sent."""
        return self.directory / f"{key}.body.json"

    def new_key(self, sequence: int) -> str:
        """A key that sorts by time and is unique per process."""
        return f"{utc_now().strftime('%Y%m%dT%H%M%S%fZ')}-{os.getpid()}-{sequence}"

    def append(self, event: str, key: str, **fields: Any) -> dict[str, Any]:
        """Append one event and fsync it: when this returns, the event survives a crash. Returns it."""
        record = {"event": event, "key": key, "at": utc_now().isoformat(), **fields}
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=str) + "\n"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        if self.on_write is not None:
            rows = self.rows_path(key)
            if event == "intent" and rows.exists():
                self.on_write(rows)
            self.on_write(self.path)
        return record

    def submissions(self) -> list[Submission]:
        """Every submission, oldest first, as the log says it stands."""
        found: dict[str, Submission] = {}
        for record in self._records():
            key = str(record.get("key", ""))
            event = record.get("event")
            if event == "intent":
                found[key] = Submission.from_intent(record)
                continue
            sub = found.get(key)
            if sub is None:
                continue
            if event == "submitted":
                sub.batch_id = str(record["batch_id"])
                sub.created_at = record.get("created_at")
                sub.adopted = bool(record.get("adopted", False))
                if sub.phase == "unconfirmed":
                    sub.phase = "submitted"
            elif event == "collected":
                sub.phase = "collected"
                sub.counts = dict(record.get("counts") or {})
            elif event in ("abandoned", "lost"):
                sub.phase = event
                sub.note = str(record.get("reason", ""))
            elif event == "cancel":
                sub.cancel_requested = True
        return list(found.values())

    def _records(self) -> Iterator[dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return  # nothing was ever submitted from here
        except OSError as exc:
            raise OutputError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn last line: the process died while writing it
            if isinstance(record, dict):
                yield record

    def remove_spools(self) -> None:
        """Delete request bodies left by a run that died before sending them (they were never needed)."""
        for path in self.directory.glob("*.body.json"):
            with contextlib.suppress(OSError):
                path.unlink()


def pending_row_ids(log: BatchLog, submissions: Iterable[Submission]) -> set[str]:
    """Row ids in submissions that are still open: these rows must not be submitted again."""
    pending: set[str] = set()
    for sub in submissions:
        if sub.open:
            table = read_rows(log.rows_path(sub.key), columns=["row_id"])
            pending.update(table.column("row_id").to_pylist())
    return pending


def rows_schema(input_schema: pa.Schema) -> pa.Schema:
    """The rows file's schema: the mapping columns plus the input cells as one struct."""
    return pa.schema([*ROW_FIELDS, pa.field("values", pa.struct(list(input_schema)))])


class RowsWriter:
    """Writes a submission's rows file: an Arrow IPC stream, fsynced when closed."""

    def __init__(self, path: Path, input_schema: pa.Schema, flush_every: int = 1000) -> None:
        self.path = path
        self.schema = rows_schema(input_schema)
        self.flush_every = flush_every
        self._pending: list[dict[str, Any]] = []
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._sink = pa.OSFile(str(path), "wb")
            self._writer = pa.ipc.new_stream(self._sink, self.schema)
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None

    def add(
        self,
        custom_id: str,
        row_id: str,
        index: int,
        row_hash: str,
        attempt: int,
        values: Mapping[str, Any],
        leader: str | None = None,
    ) -> None:
        """Add one row (written in batches); ``leader`` is the custom_id whose result a follower shares."""
        self._pending.append(
            {
                "custom_id": custom_id,
                "row_id": row_id,
                "row_index": index,
                "row_hash": row_hash,
                "attempt": attempt,
                "leader": leader,
                "values": dict(values),
            }
        )
        if len(self._pending) >= self.flush_every:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        batch = pa.RecordBatch.from_pylist(self._pending, schema=self.schema)
        try:
            self._writer.write_batch(batch)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self._pending = []

    def close(self) -> None:
        """Write what is left, finish the stream and fsync it."""
        self._flush()
        try:
            self._writer.close()
            self._sink.close()
            fsync_path(self.path)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def discard(self) -> None:
        """Close and delete (the submission never happened)."""
        with contextlib.suppress(OSError):
            self._writer.close()
        with contextlib.suppress(OSError):
            self._sink.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


def read_rows(path: Path, columns: list[str] | None = None) -> pa.Table:
    """A submission's rows file (optionally some columns)."""
    try:
        with pa.OSFile(str(path), "rb") as source:
            table = pa.ipc.open_stream(source).read_all()
    except (OSError, pa.ArrowInvalid) as exc:
        raise OutputError(f"cannot read {path}: {exc}") from None
    return table.select(columns) if columns is not None else table


def row_leaders(rows: pa.Table) -> list[str | None]:
    """Each row's leader custom_id (None: its request is in the batch), for old rows files too."""
    if "leader" not in rows.schema.names:
        return [None] * rows.num_rows  # written before dedupe in batch mode: every row was sent
    leaders: list[str | None] = rows.column("leader").to_pylist()
    return leaders


def refuse_pending(output: Path, label: str | None = None) -> None:
    """A realtime run would pay again for rows that a pending batch holds: ConfigError instead.

    :param label: how messages name the output (its URL, for an object-storage output's mirror).
    """
    pending = [sub.label() for sub in BatchLog(output).submissions() if sub.open]
    if pending:
        name = label or str(output)
        raise ConfigError(
            f"{name} has {len(pending)} pending batches ({', '.join(pending[:3])}); collect them"
            f" (pipeline batch collect {name}) or cancel them first, or keep running with --mode batch"
            " (a batch that no longer exists: pipeline batch forget)"
        )


def not_found_message(output: Path | str, sub: Submission, base_url: str) -> str:
    """What to do about a batch the API says does not exist (the key, the URL, or ``batch forget``)."""
    return (
        f"batch {sub.batch_id} is not found at {base_url} (it was submitted to {sub.base_url}); check the"
        f" key and --base-url; if it is gone for good, `pipeline batch forget {output} {sub.batch_id}`"
        " lets the next run submit its rows again"
    )


# error rows written from batch results start with this; a rerun counts their attempts
ERROR_PREFIX = "in batch "

"""How a cluster run ends, on the driver: the senders' last uploads, stopping them, what the journals hold.

The driver ends the run for the senders (those journalling to object storage upload what they still
stage, and it waits for them), kills every sender and waits until each is gone, then summarises the
run from the journals alone (each row's latest result) and counts the rows it had to send that have
none.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.records import Usage
from pipeline.results.journal import iter_journal
from pipeline.results.summary import ResultTally

log = logging.getLogger("pipeline.run")

STOP_WAIT_S = 30.0  # how long the driver waits for an answer of Ray's at the end
UPLOAD_WAIT_S = 120.0  # how long the driver waits for the senders' last segments at the end
SUMMARY_COLUMNS = (
    "row_id",
    "status",
    "error_type",
    "shared_request_with",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


def await_uploads(registry: Any, wait_s: float) -> None:
    """End the run for the senders, and wait until those journalling to object storage uploaded it all."""
    import ray

    deadline = time.monotonic() + wait_s
    with contextlib.suppress(Exception):
        ray.get(registry.end.remote(), timeout=STOP_WAIT_S)
        checked = 0.0
        while time.monotonic() < deadline:
            waiting = ray.get(registry.not_uploaded.remote(), timeout=STOP_WAIT_S)
            if not waiting:
                return
            if time.monotonic() - checked > 1.0:
                checked = time.monotonic()
                for name, actor in waiting:
                    if not _alive(name, actor):
                        registry.gone.remote(name)
            time.sleep(0.1)
        log.warning(
            "%d senders did not upload their last journal segments in time; a later run folds in"
            " what they left",
            len(waiting),
        )


def _alive(name: str, actor: Any) -> bool:
    """Whether the sender named ``name`` (``<node>-<pid>``) still runs: its actor answers, from that pid."""
    import ray

    try:
        pid = ray.get(actor.__ray_call__.remote(_pid), timeout=5.0)
    except Exception:  # noqa: BLE001  (dead, or not answering: either way it uploads nothing more)
        return False
    return name.endswith(f"-{pid}")


def _pid(_: object) -> int:
    return os.getpid()


def stop_senders(registry: Any) -> None:
    """Kill every sender that enlisted and wait until each is gone (a killed actor answers nothing more)."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    try:
        senders = ray.get(registry.senders.remote(), timeout=STOP_WAIT_S)
    except (GetTimeoutError, RayActorError):
        return
    for sender in senders:
        with contextlib.suppress(Exception):
            ray.kill(sender, no_restart=True)
    for sender in senders:
        with contextlib.suppress(GetTimeoutError, RayActorError, Exception):
            ray.get(sender.__ray_ready__.remote(), timeout=STOP_WAIT_S)


def journal_tally(journals: list[Path]) -> ResultTally:
    """What this run recorded, from its journals (all of them are this run's): each row's latest result."""
    frames = []
    for path in journals:
        for batch in iter_journal(path):
            names = [name for name in SUMMARY_COLUMNS if name in batch.schema.names]
            frame = pl.from_arrow(batch.select(names))
            assert isinstance(frame, pl.DataFrame)
            frames.append(frame)
    tally = ResultTally()
    if not frames:
        return tally
    results = pl.concat(frames, how="diagonal_relaxed").unique(
        subset="row_id", keep="last", maintain_order=True
    )
    for row in results.iter_rows(named=True):
        usage = Usage(
            row["input_tokens"] or 0,
            row["output_tokens"] or 0,
            row["cache_creation_input_tokens"] or 0,
            row["cache_read_input_tokens"] or 0,
        )
        tally.add_outcome(
            row["status"], row["error_type"], shared=row["shared_request_with"] is not None, usage=usage
        )
    return tally


def unanswered(expected: int, tally: ResultTally, *, stopped: bool) -> int:
    """Rows a run had to send (``expected``) that have no result in its journals, when nothing stopped it.

    Ray Data takes a batch that returns as done; a sender that returned one short (a bug like the
    one a lost node once caused) would leave rows without a result in a run that says it succeeded.
    Counting them turns any such gap into a non-zero exit, and a rerun sends exactly those rows.
    """
    return 0 if stopped else max(0, expected - (tally.ok + tally.error))

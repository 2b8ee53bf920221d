"""Looking after an output directory's batches without running the job: status, forget, where they went.

Reads ``OUTPUT/.batches`` (and, for ``batch status``, asks the API about open batches); the run itself,
collection and cancelling live in :mod:`pipeline.batch.run`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.api.batches import BatchesApi, BatchInfo
from pipeline.batch.state import BatchLog, Submission, not_found_message
from pipeline.errors import ConfigError, OutputError, PermanentApiError
from pipeline.results.outputs import open_output

if TYPE_CHECKING:
    import httpx

if TYPE_CHECKING:
    from pipeline.batch.options import BatchOptions


def connection(output: Path) -> dict[str, Any]:
    """Where the latest submission from ``output`` went (base URL, key variable, auth...)."""
    batch_log = BatchLog(output)
    submissions = batch_log.submissions()
    if not submissions:
        raise OutputError(f"{output}: nothing was submitted in batch mode from here (no {batch_log.path})")
    latest = submissions[-1]
    return {**latest.job, "base_url": latest.base_url, "sandbox": latest.sandbox}


def find_pending(output: Path, ident: str) -> Submission:
    """The open submission whose batch id or key is ``ident``; ConfigError naming what is pending else."""
    submissions = BatchLog(output).submissions()
    if not submissions:
        raise OutputError(f"{output}: nothing was submitted in batch mode from here")
    found = [sub for sub in submissions if ident in (sub.batch_id, sub.key)]
    if not found:
        still_open = [sub.batch_id or sub.key for sub in submissions if sub.open]
        pending = f"pending: {', '.join(still_open[:5])}" if still_open else "nothing is pending"
        raise ConfigError(f"{output} has no batch or submission key {ident!r} ({pending})")
    sub = found[-1]
    if not sub.open:
        raise ConfigError(f"{sub.batch_id or sub.key} is not pending (it is {sub.phase}); nothing to forget")
    return sub


def forget_batch(output: Path | str, ident: str) -> Submission:
    """Log an open submission as abandoned by hand, so its rows may be submitted again.

    For a batch the API no longer knows (a 404 on retrieve), which otherwise stops every invocation.
    Nothing is sent: if the batch does exist somewhere, its rows may be paid twice (the CLI warns).
    """
    store = open_output(output)
    with store.locked():  # not while a run is collecting or submitting
        sub = find_pending(store.directory, ident)
        BatchLog(store.directory, on_write=store.sync).append(
            "abandoned",
            sub.key,
            batch_id=sub.batch_id,
            forgotten=True,
            reason="forgotten by `pipeline batch forget`",
        )
    return sub


async def batch_status(
    output: Path,
    options: BatchOptions | None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    label: str | None = None,
) -> list[dict[str, Any]]:
    """Every submission of an output directory; open ones are retrieved when ``options`` allow it.

    :param label: how messages name the output (its URL, when ``output`` is a copy of one in object storage).
    """
    submissions = BatchLog(output).submissions()
    infos: dict[str, BatchInfo | str] = {}
    if options is not None:
        async with BatchesApi(options.client_config(), transport=transport) as api:
            for sub in submissions:
                if sub.phase == "submitted" and sub.batch_id is not None:
                    try:
                        infos[sub.key] = await api.retrieve(sub.batch_id)
                    except (PermanentApiError, OutputError) as exc:
                        gone = isinstance(exc, PermanentApiError) and exc.status == 404
                        where = label or output
                        problem = not_found_message(where, sub, options.base_url) if gone else str(exc)
                        infos[sub.key] = problem
    rows: list[dict[str, Any]] = []
    for sub in submissions:
        entry: dict[str, Any] = {
            "key": sub.key,
            "batch_id": sub.batch_id,
            "state": sub.phase,
            "requests": sub.requests,
            "submitted_at": sub.intent_at.isoformat(timespec="seconds"),
            "adopted": sub.adopted,
            "cancel_requested": sub.cancel_requested,
        }
        found = infos.get(sub.key)
        if isinstance(found, BatchInfo):
            entry["processing_status"] = found.processing_status
            entry["request_counts"] = found.request_counts
        elif isinstance(found, str):
            entry["problem"] = found
        if sub.phase == "collected":
            entry["request_counts"] = sub.counts
        if sub.note:
            entry["note"] = sub.note
        rows.append(entry)
    return rows

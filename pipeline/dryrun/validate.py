"""``pipeline validate``: checks a job and every input row without sending anything.

Owns: the offline walk over the input (image cells load and pass the image rules, templates render,
the request is within the API's size limits). URLs are not fetched (no network); they are counted
and left for the run to check, so a row's size is checked without them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from pipeline.errors import RowError
from pipeline.job.spec import JobSpec
from pipeline.payloads.prepare import open_job_input, prepare_request
from pipeline.records import Row
from pipeline.rows.media import offline_loader
from pipeline.rows.reader import SourcedRow, iter_rows


@dataclass(slots=True)
class ValidationReport:
    """What ``validate`` found: rows and images checked, one line per problem row."""

    rows: int = 0
    images: int = 0
    remote_images: int = 0
    problems: list[str] = field(default_factory=list)


def validate_job(spec: JobSpec, input_pattern: str) -> ValidationReport:
    """Open the input (InputError if the job cannot run) and check every row offline."""
    table = open_job_input(spec, input_pattern)
    return asyncio.run(_check_rows(spec, iter_rows(table)))


async def _check_rows(spec: JobSpec, rows: Iterable[SourcedRow]) -> ValidationReport:
    report = ValidationReport()
    slots = asyncio.Semaphore((os.cpu_count() or 2) * 2)
    async with asyncio.TaskGroup() as group:
        for sourced in rows:
            report.rows += 1
            await slots.acquire()
            group.create_task(_check_row(spec, sourced, report, slots))
    report.problems.sort(key=lambda line: int(line.split(" ", 2)[1]))
    return report


async def _check_row(
    spec: JobSpec, sourced: SourcedRow, report: ValidationReport, slots: asyncio.Semaphore
) -> None:
    def remote() -> None:
        report.remote_images += 1

    load = offline_loader(spec.request.image_root, remote)
    try:
        _, _, images = await prepare_request(spec.request, sourced, load)
        report.images += images
    except RowError as exc:
        report.problems.append(row_problem(sourced.row, exc))
    finally:
        slots.release()


def row_problem(row: Row, exc: Exception) -> str:
    """``row N (id ID): what is wrong``: N counts from 1, as people number rows (``validate`` sorts on it)."""
    return f"row {row.index + 1} (id {row.row_id}): {exc}"

"""``pipeline validate``: checks a job and every input row without sending anything.

Owns: the offline walk over the input (image cells load and pass the image rules, templates render,
the request is within the API's size limits). URLs are not fetched (no network); they are counted
and left for the run to check, so a row's size is checked without them.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field

from pipeline.build import build_payload, check_request_size, estimate_input_tokens
from pipeline.errors import RowError
from pipeline.images import ImagePolicy, PreparedImage, prepare_image
from pipeline.reader import SourcedRow, iter_rows
from pipeline.runner import MANY_IMAGES, image_cells, open_job_input
from pipeline.sources import describe_cell, is_remote, load_local_image
from pipeline.spec import JobSpec


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


async def _check_rows(spec: JobSpec, rows: object) -> ValidationReport:
    report = ValidationReport()
    slots = asyncio.Semaphore((os.cpu_count() or 2) * 2)
    assert hasattr(rows, "__iter__")
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
    row = sourced.row
    request = spec.request
    try:
        cells = image_cells(request, row)
        policy = ImagePolicy(max_edge=request.image_max_edge)
        if len(cells) > MANY_IMAGES:
            policy = policy.for_many_images()
        images: list[PreparedImage] = []
        for column, cell in cells:
            if is_remote(cell):
                report.remote_images += 1
                continue
            data = await load_local_image(cell, base_dir=sourced.base_dir, root=request.image_root)
            label = f"{column} {describe_cell(cell)}"
            images.append(await asyncio.to_thread(prepare_image, data, policy, label=label))
            report.images += 1
        # the same order of checks as a run: images, then the prompt, then the request's size
        payload = build_payload(request, row.values, images)
        check_request_size(payload, estimate_input_tokens(payload, images), request.input_token_limit)
    except RowError as exc:
        report.problems.append(f"row {row.index + 1} (id {row.row_id}): {exc}")
    finally:
        slots.release()

"""``pipeline validate``: checks a job and every input row without sending anything.

Owns: the offline walk over the input (image cells load and pass the image rules, templates render,
the request is within the API's size limits), after the job's check against its model's rules
(:mod:`pipeline.job.rules`, with a cached ``/v1/models`` answer or the shipped table: no request).
URLs are not fetched (no network); they are counted and left for the run to check, so a row's size
is checked without them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.api.models import checked_job_offline
from pipeline.job.rules import job_warnings
from pipeline.job.spec import JobSpec
from pipeline.payloads.prepare import Prepared, open_job_input, prepare_rows
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
    model_facts: str = ""  # where the model's rules came from
    notes: list[str] = field(default_factory=list)  # worth saying, not refused (a deprecated model)


def validate_job(spec: JobSpec, input_pattern: str) -> ValidationReport:
    """Check the job against its model, open the input (InputError if the job cannot run) and check
    every row offline.

    :raises SpecError: the job breaks its model's rules.
    """
    spec, facts = checked_job_offline(spec, Path(spec.output))
    table = open_job_input(spec, input_pattern)
    report = ValidationReport(model_facts=facts.source, notes=job_warnings(spec, facts))

    def remote() -> None:
        report.remote_images += 1

    def count(_: SourcedRow) -> bool:
        report.rows += 1
        return True

    async def check(prepared: Prepared) -> None:
        if prepared.error is not None:
            report.problems.append(row_problem(prepared.row, prepared.error))
        else:
            report.images += prepared.image_count

    load = offline_loader(spec.request.image_root, remote)
    asyncio.run(prepare_rows(spec.request, iter_rows(table), load, check, wanted=count))
    report.problems.sort(key=lambda line: int(line.split(" ", 2)[1]))
    return report


def row_problem(row: Row, exc: Exception) -> str:
    """``row N (id ID): what is wrong``: N counts from 1, as people number rows (``validate`` sorts on it)."""
    return f"row {row.index + 1} (id {row.row_id}): {exc}"

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
from typing import Any

from pipeline.api.models import checked_job_offline
from pipeline.job.rules import job_warnings
from pipeline.job.spec import JobSpec
from pipeline.payloads.prepare import Prepared, open_job_input, prepare_rows
from pipeline.records import Row
from pipeline.rows.media import offline_loader
from pipeline.rows.memory import InputSource
from pipeline.rows.reader import SourcedRow, iter_rows


@dataclass(slots=True)
class ValidationReport:
    """What ``validate`` found: rows and images checked, one line per problem row."""

    rows: int = 0
    images: int = 0
    remote_images: int = 0
    problems: list[str] = field(default_factory=list)
    source: str = ""  # the job checked (its file), for the text
    model_facts: str = ""  # where the model's rules came from
    notes: list[str] = field(default_factory=list)  # worth saying, not refused (a deprecated model)

    def text(self, show: int = 20) -> str:
        """What ``pipeline validate`` prints: notes, the first ``show`` problems, then the counts and
        where the model's rules came from."""
        lines = [f"pipeline: {note}" for note in self.notes]
        lines += [f"  {problem}" for problem in self.problems[:show]]
        if len(self.problems) > show:
            lines.append(f"  ... and {len(self.problems) - show} more")
        lines.append(
            f"{self.source}: job ok; {self.rows} rows, {self.images} images checked,"
            f" {len(self.problems)} rows with problems"
        )
        if self.model_facts:
            lines.append(f"model rules: {self.model_facts}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """IPython and Jupyter show the command's text, not the record's fields."""
        printer.text(str(self))


def validate_job(spec: JobSpec, source: InputSource) -> ValidationReport:
    """Check the job against its model, open the input (InputError if the job cannot run) and check
    every row offline.

    :raises SpecError: the job breaks its model's rules.
    """
    spec, facts = checked_job_offline(spec, Path(spec.output))
    table = open_job_input(spec, source)
    report = ValidationReport(source=spec.source, model_facts=facts.source, notes=job_warnings(spec, facts))

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

"""``pipeline validate``: checks a job and every input row without sending anything.

Owns: the walk over the input (image and document cells load and pass their rules, templates
render, the request is within the API's size limits), after the job's check against its model's rules
(:mod:`pipeline.job.rules`, with a cached ``/v1/models`` answer or the shipped table: no request).
Offline by default: images and documents behind URLs or in object storage are counted, not fetched,
and a row's size is checked without them; with ``fetch`` they are downloaded and checked like the rest.
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
from pipeline.results.outputs import is_remote_output
from pipeline.rows.media import Loader, download_client, offline_loader, online_loader
from pipeline.rows.memory import InputSource
from pipeline.rows.reader import InputTable, SourcedRow, iter_rows
from pipeline.rows.storage import ObjectStorage, StorageSettings


@dataclass(slots=True)
class ValidationReport:
    """What ``validate`` found: rows, images and documents checked, one line per problem row."""

    rows: int = 0
    images: int = 0
    remote_images: int = 0  # cells behind http(s) URLs, not fetched
    stored_images: int = 0  # cells in object storage, not fetched
    documents: int = 0
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
        unchecked = self.remote_images + self.stored_images
        where = ", ".join(
            part
            for part in (
                f"{self.remote_images} by URL" if self.remote_images else "",
                f"{self.stored_images} in object storage" if self.stored_images else "",
            )
            if part
        )
        skipped = f" ({unchecked} not fetched: {where}; --fetch checks them)" if unchecked else ""
        documents = f", {self.documents} documents" if self.documents else ""
        lines.append(
            f"{self.source}: job ok; {self.rows} rows, {self.images} images{documents} checked{skipped},"
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


def validate_job(spec: JobSpec, source: InputSource, *, fetch: bool = False) -> ValidationReport:
    """Check the job against its model, open the input (InputError if the job cannot run) and check
    every row (offline unless ``fetch``).

    :raises SpecError: the job breaks its model's rules.
    """
    spec, facts = checked_job_offline(spec, None if is_remote_output(spec.output) else Path(spec.output))
    storage = ObjectStorage(StorageSettings.from_spec(spec.storage))
    try:
        table = open_job_input(spec, source, storage)
        notes = job_warnings(spec, facts)
        report = ValidationReport(source=spec.source, model_facts=facts.source, notes=notes)
        return asyncio.run(_walk(spec, table, storage, report, fetch=fetch))
    finally:
        storage.close()


async def _walk(
    spec: JobSpec, table: InputTable, storage: ObjectStorage, report: ValidationReport, *, fetch: bool
) -> ValidationReport:
    request = spec.request

    def remote() -> None:
        report.remote_images += 1

    def stored() -> None:
        report.stored_images += 1

    def count(_: SourcedRow) -> bool:
        report.rows += 1
        return True

    async def check(prepared: Prepared) -> None:
        if prepared.error is not None:
            report.problems.append(row_problem(prepared.row, prepared.error))
        elif prepared.payload is not None:
            report.images += prepared.image_count
            report.documents += sum(
                1 for block in prepared.payload["messages"][0]["content"] if block["type"] == "document"
            )

    rows = iter_rows(table)
    if not fetch:
        load: Loader = offline_loader(request.image_root, remote, stored)
        await prepare_rows(request, rows, load, check, wanted=count)
    else:
        async with download_client() as http:
            load = online_loader(
                http, root=request.image_root, timeout_s=spec.limits.timeout_s, storage=storage
            )
            await prepare_rows(request, rows, load, check, wanted=count)
    report.problems.sort(key=lambda line: int(line.split(" ", 2)[1]))
    return report


def row_problem(row: Row, exc: Exception) -> str:
    """``row N (id ID): what is wrong``: N counts from 1, as people number rows (``validate`` sorts on it)."""
    return f"row {row.index + 1} (id {row.row_id}): {exc}"

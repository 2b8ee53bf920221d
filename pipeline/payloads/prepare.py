"""The one path from a row to a request, shared by ``run`` (both modes), ``validate`` and
``estimate``: images loaded and prepared, the payload built, its size checked."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from pipeline.job.spec import JobSpec, RequestSpec, template_fields
from pipeline.payloads.build import build_payload, check_request_size, estimate_input_tokens
from pipeline.payloads.images import ImagePolicy, PreparedImage, prepare_image
from pipeline.records import Row
from pipeline.rows.media import describe_cell
from pipeline.rows.reader import InputTable, SourcedRow, open_input
from pipeline.wire import MessagePayload

# Above this many images in one request every image must fit 2000 px (reference §3).
MANY_IMAGES = 20


def needed_columns(request: RequestSpec) -> dict[str, str]:
    """Input columns the job reads, each with what reads it (for the missing-column message)."""
    users = [("request.prompt", template_fields(request.prompt)), ("request.images", request.images)]
    if request.system is not None:
        users.insert(1, ("request.system", template_fields(request.system)))
    needed: dict[str, str] = {}
    for user, columns in users:
        for name in columns:
            # every user is named: the image-type check looks for "request.images" among them
            needed[name] = f"{needed[name]}, {user}" if name in needed else user
    return needed


def open_job_input(spec: JobSpec, input_pattern: str) -> InputTable:
    """Open the job's input and check that every column it uses is there."""
    return open_input(input_pattern, id_column=spec.id_column, needed=needed_columns(spec.request))


async def prepare_request(
    request: RequestSpec,
    sourced: SourcedRow,
    load: Callable[[str, Path], Awaitable[bytes | None]],
    *,
    prepared: list[PreparedImage] | None = None,
) -> tuple[MessagePayload, int, int]:
    """A row's payload, its input-token estimate and how many images it holds; RowError if it can't be sent.

    The one place a row becomes a request, for ``run``, ``validate`` and ``estimate`` alike: ``load``
    fetches an image cell's bytes, or returns None to leave the image out (``validate`` and
    ``estimate`` fetch no URLs). ``prepared``, when given, receives the images as they will be sent.
    """
    cells = image_cells(request, sourced.row)
    policy = ImagePolicy(max_edge=request.image_max_edge, max_pixels=request.image_max_pixels)
    if len(cells) > MANY_IMAGES:
        policy = policy.for_many_images()
    images: list[PreparedImage] = []
    for column, cell in cells:
        data = await load(cell, sourced.base_dir)
        if data is None:
            continue
        label = f"{column} {describe_cell(cell)}"
        # Decoding and re-encoding is CPU work: keep it off the event loop.
        images.append(await asyncio.to_thread(prepare_image, data, policy, label=label))
    payload = build_payload(request, sourced.row.values, images)
    input_tokens = estimate_input_tokens(payload, images)
    # a request the API would refuse for its size is this row's error, and is never sent
    check_request_size(payload, input_tokens, request.input_token_limit)
    if prepared is not None:
        prepared.extend(images)
    return payload, input_tokens, len(images)


def image_cells(request: RequestSpec, row: Row) -> list[tuple[str, str]]:
    """(column, cell) for each non-empty image cell of the row, in the job's column order."""
    return [
        (column, str(value).strip())
        for column in request.images
        if (value := row.values.get(column)) is not None and str(value).strip()
    ]

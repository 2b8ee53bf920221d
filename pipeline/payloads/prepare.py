"""The one path from rows to requests, shared by ``run`` (both modes), ``validate`` and ``estimate``.

:func:`prepare_request` turns one row into its payload (images loaded and prepared, the payload
built, its size checked); :func:`prepare_rows` walks an input through it: rows read in a worker
thread, filtered, prepared a bounded number at a time, and each outcome (a payload, or the row's
error) handed to the caller while its slot is still held. The drivers and the dry runs differ only
in what they do with each outcome. The few-shot examples (:func:`prepare_examples`) are prepared
once per walk and shared by every row; an example image that cannot be read stops the job (a
``SpecError``), since every row would carry it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.errors import DocumentError, ImageError, RowError, SpecError
from pipeline.job.request import RequestSpec, template_fields
from pipeline.job.spec import JobSpec
from pipeline.payloads.build import (
    build_payload,
    check_request_size,
    estimate_input_tokens,
    example_messages,
    request_key,
)
from pipeline.payloads.documents import PreparedDocument, prepare_document
from pipeline.payloads.images import ImagePolicy, PreparedImage, prepare_image, url_image
from pipeline.payloads.transport import Transport
from pipeline.records import Row
from pipeline.rows.cells import MediaItem, cell_items
from pipeline.rows.media import is_remote
from pipeline.rows.memory import FrameInput, InputSource, open_frame
from pipeline.rows.reader import InputTable, SourcedRow, open_input
from pipeline.rows.storage import ObjectStorage
from pipeline.wire import Message, MessagePayload

log = logging.getLogger("pipeline.run")

# Above this many images in one request every image must fit 2000 px
# (https://platform.claude.com/docs/en/build-with-claude/vision).
MANY_IMAGES = 20
# rows read from the table per trip to the worker thread, and the most media bytes such a trip holds
READ_ROWS = 500
READ_MEDIA_BYTES = 32 << 20
# rows being prepared or handed on at once by default: enough to keep the cores and the senders busy
DEFAULT_SLOTS = (os.cpu_count() or 2) * 2 + 2
# images decoded and encoded at once: one per core and one more, so a core never waits for a file
# read, however many rows are on their way (downloads in flight need many)
CPU_SLOTS = (os.cpu_count() or 2) + 1

# what the walk calls for each text media cell: its bytes, or None to leave it out
Loader = Callable[[str, SourcedRow], Awaitable[bytes | None]]
INLINE = Transport()


@dataclass(frozen=True, slots=True)
class ExamplePrefix:
    """The few-shot turns as sent, prepared once: under the usual image policy, and under the
    more-than-20-images one (used when a row's images and the examples' pass 20 together)."""

    messages: tuple[Message, ...] = ()
    images: tuple[PreparedImage, ...] = ()
    many_messages: tuple[Message, ...] = ()
    many_images: tuple[PreparedImage, ...] = ()

    def pick(self, many: bool) -> tuple[tuple[Message, ...], tuple[PreparedImage, ...]]:
        """The messages and images to send, for a request that holds more than 20 images or not."""
        return (self.many_messages, self.many_images) if many else (self.messages, self.images)


NO_EXAMPLES = ExamplePrefix()


async def prepare_examples(request: RequestSpec) -> ExamplePrefix:
    """The job's ``[[request.examples]]`` as messages, their images loaded and prepared (in threads).

    :raises SpecError: an example image cannot be read or prepared (every row would fail with it).
    """
    if not request.examples:
        return NO_EXAMPLES
    policy = ImagePolicy(max_edge=request.image_edge, max_pixels=request.image_max_pixels)
    usual = await _example_images(request, policy)
    many = usual
    if any(usual) and policy.max_edge > policy.for_many_images().max_edge:
        many = await _example_images(request, policy.for_many_images())
    return ExamplePrefix(
        messages=example_messages(request, usual),
        images=tuple(image for turn in usual for image in turn),
        many_messages=example_messages(request, many),
        many_images=tuple(image for turn in many for image in turn),
    )


async def _example_images(request: RequestSpec, policy: ImagePolicy) -> list[list[PreparedImage]]:
    turns: list[list[PreparedImage]] = []
    for index, turn in enumerate(request.examples):
        prepared: list[PreparedImage] = []
        for path in turn.images:
            label = f"request.examples.{index}.images {path!r}"
            try:
                data = await asyncio.to_thread(Path(path).read_bytes)
                prepared.append(await asyncio.to_thread(prepare_image, data, policy, label=label))
            except OSError as exc:
                raise SpecError(f"{label}: cannot read it: {exc.strerror or exc}") from None
            except RowError as exc:
                raise SpecError(str(exc)) from None
        turns.append(prepared)
    return turns


@dataclass(frozen=True, slots=True)
class Prepared:
    """One row made ready to send, or the reason it cannot be (``error``; then there is no payload).

    :param input_tokens: the high estimate rate limits and size checks use (``build``).
    :param images: the row's images as they will be sent, when the walk was asked to keep them.
    :param prefix_images: the examples' images this request carries, when the walk keeps images.
    :param key: the request key (``build.request_key``), when the walk was asked for keys.
    """

    sourced: SourcedRow
    payload: MessagePayload | None = None
    input_tokens: int = 0
    image_count: int = 0
    images: tuple[PreparedImage, ...] = ()
    key: str | None = None
    error: RowError | None = None
    prefix_images: tuple[PreparedImage, ...] = ()

    @property
    def row(self) -> Row:
        """The input row."""
        return self.sourced.row


async def prepare_rows(
    request: RequestSpec,
    rows: Iterator[SourcedRow],
    load: Loader,
    take: Callable[[Prepared], Awaitable[None]],
    *,
    wanted: Callable[[SourcedRow], bool] | None = None,
    slots: int = DEFAULT_SLOTS,
    download_slots: int = 0,
    keys: bool = False,
    keep_images: bool = False,
    stopping: Callable[[], bool] | None = None,
    on_read: Callable[[], None] | None = None,
    transport: Transport = INLINE,
) -> None:
    """Prepare every wanted row, at most ``slots`` at once, and await ``take`` with each outcome.

    :param wanted: which rows to prepare (rows an earlier run settled are the caller's to skip and
        count); every row when None.
    :param slots: a slot is taken before a row is prepared and given back only when ``take``
        returns, so rows waiting downstream (for a sender, say) count against the bound and memory
        stays flat however far the reader runs ahead.
    :param download_slots: when above ``slots``, a row with an image URL takes one of these instead,
        so that downloads overlap (a sender asks for as many as it has requests in flight: preparing
        runs ahead of sending instead of gating it). Rows of local files and text keep ``slots``:
        their preparation is CPU work, bounded apart (:data:`CPU_SLOTS`), and more of them waiting
        prepared would only hold more payloads in memory.
    :param keys: also compute each request's dedupe key (off the loop when the request has images).
    :param keep_images: keep the prepared images on the outcome (``estimate`` measures them).
    :param stopping: read no further once this is true (a graceful stop).
    :param on_read: called once the whole input has been read (the number of rows is then known).
    :param transport: how images and documents travel (inline by default; see ``payloads.transport``).

    A row that cannot be sent (``RowError``), or whose preparation fails any other way (the preparing
    boundary: a decoder's surprise is that row's error, logged with its traceback), reaches ``take``
    with ``error`` set. What ``take`` raises ends the walk.
    """
    gate = asyncio.Semaphore(slots)
    downloads = asyncio.Semaphore(download_slots) if download_slots > slots and request.images else None
    cpu = asyncio.Semaphore(CPU_SLOTS)
    examples = await prepare_examples(request)

    async def one(sourced: SourcedRow, held: asyncio.Semaphore) -> None:
        try:
            outcome = await _prepare_one(
                request,
                sourced,
                load,
                cpu,
                keys=keys,
                keep_images=keep_images,
                transport=transport,
                examples=examples,
            )
            await take(outcome)
        finally:
            held.release()

    async with asyncio.TaskGroup() as group:
        # reading a batch of the table is blocking I/O: do it in a thread
        while not (stopping is not None and stopping()) and (batch := await asyncio.to_thread(_take, rows)):
            for sourced in batch:
                if wanted is not None and not wanted(sourced):
                    continue
                held = gate
                if downloads is not None and _has_image_url(request, sourced):
                    held = downloads
                await held.acquire()
                group.create_task(one(sourced, held))
        if on_read is not None:
            on_read()


def _has_image_url(request: RequestSpec, sourced: SourcedRow) -> bool:
    items = media_items(request.images, sourced)
    return any(isinstance(item.value, str) and is_remote(item.value) for _, item in items)


async def _prepare_one(
    request: RequestSpec,
    sourced: SourcedRow,
    load: Loader,
    cpu: asyncio.Semaphore,
    *,
    keys: bool,
    keep_images: bool,
    transport: Transport,
    examples: ExamplePrefix,
) -> Prepared:
    images: list[PreparedImage] = []
    try:
        payload, input_tokens, count = await prepare_request(
            request,
            sourced,
            load,
            prepared=images if keep_images else None,
            transport=transport,
            examples=examples,
            cpu=cpu,
        )
    except RowError as exc:
        return Prepared(sourced, error=exc)
    except Exception as exc:  # the preparing boundary: a decoder's surprise is this row's error
        log.exception("unexpected error preparing row %s", sourced.row.row_id)
        kind = type(exc).__name__
        return Prepared(sourced, error=RowError(str(exc) or kind, error_type=kind))
    key = None
    if keys:
        # hashing megabytes of base64 is CPU work: keep it off the loop when there are images
        key = await asyncio.to_thread(request_key, payload) if count else request_key(payload)
    prefix = examples.pick(count + len(examples.images) > MANY_IMAGES)[1] if keep_images else ()
    return Prepared(sourced, payload, input_tokens, count, tuple(images), key, prefix_images=prefix)


def _take(rows: Iterator[SourcedRow]) -> list[SourcedRow]:
    """Up to READ_ROWS rows, fewer when their image or document bytes reach READ_MEDIA_BYTES."""
    taken: list[SourcedRow] = []
    held = 0
    for row in rows:
        taken.append(row)
        held += row.media_bytes
        if len(taken) >= READ_ROWS or held >= READ_MEDIA_BYTES:
            break
    return taken


def needed_columns(request: RequestSpec) -> dict[str, str]:
    """Input columns the job reads, each with what reads it (for the missing-column message)."""
    users: list[tuple[str, list[str]]] = [
        ("request.prompt", template_fields(request.prompt)),
        ("request.images", request.images),
        ("request.documents", request.documents),
    ]
    if request.system is not None:
        users.insert(1, ("request.system", template_fields(request.system)))
    needed: dict[str, str] = {}
    for user, columns in users:
        for name in columns:
            # every user is named: the image-type check looks for "request.images" among them
            needed[name] = f"{needed[name]}, {user}" if name in needed else user
    return needed


def media_columns(request: RequestSpec) -> list[str]:
    """The columns holding images and documents."""
    return [*request.images, *request.documents]


def open_job_input(spec: JobSpec, source: InputSource, storage: ObjectStorage | None = None) -> InputTable:
    """Open the job's input (a file, glob or URL, or a table held in Python) and check every column it uses.

    :param storage: object storage, for ``s3://``, ``gs://`` and ``az://`` inputs (made when needed).
    """
    needed = needed_columns(spec.request)
    if isinstance(source, FrameInput):
        return open_frame(source, id_column=spec.id_column, needed=needed)
    return open_input(
        source, id_column=spec.id_column, needed=needed, media=media_columns(spec.request), storage=storage
    )


async def prepare_request(
    request: RequestSpec,
    sourced: SourcedRow,
    load: Loader,
    *,
    prepared: list[PreparedImage] | None = None,
    transport: Transport = INLINE,
    examples: ExamplePrefix | None = None,
    cpu: asyncio.Semaphore | None = None,
) -> tuple[MessagePayload, int, int]:
    """A row's payload, its input-token estimate and how many images it holds; RowError if it can't be sent.

    The one place a row becomes a request, for ``run``, ``validate`` and ``estimate`` alike: ``load``
    fetches a text cell's bytes, or returns None to leave the image out (``validate`` and
    ``estimate`` fetch no URLs); cells that hold bytes need no loading. ``transport`` says how each
    image and document travels. ``prepared``, when given, receives the images as they will be sent.
    ``examples`` is the walk's prepared few-shot prefix (prepared here when not given). ``cpu``, when
    given, is held while an image is decoded and encoded (:data:`CPU_SLOTS`).
    """
    if examples is None:
        examples = await prepare_examples(request)
    image_items = media_items(request.images, sourced)
    policy = ImagePolicy(max_edge=request.image_edge, max_pixels=request.image_max_pixels)
    many = len(image_items) + len(examples.images) > MANY_IMAGES
    if many:
        policy = policy.for_many_images()
    images: list[PreparedImage] = []
    for column, item in image_items:
        data = await _media_bytes(item, "image", sourced, load, transport)
        if isinstance(data, str):
            images.append(url_image(data))
            continue
        if data is None:
            continue
        # Decoding and re-encoding is CPU work: keep it off the event loop.
        image = await _prepare_image(data, policy, item.label(column), cpu)
        images.append(await transport.place(image))
    documents: list[PreparedDocument] = []
    for column, item in media_items(request.documents, sourced):
        data = await _media_bytes(item, "document", sourced, load, transport)
        if isinstance(data, str):
            documents.append(
                PreparedDocument("application/pdf", "", 0, 0, source={"type": "url", "url": data})
            )
            continue
        if data is None:
            continue
        document = await asyncio.to_thread(prepare_document, data, label=item.label(column))
        documents.append(await transport.place(document))
    turns, prefix_images = examples.pick(many)
    payload = build_payload(request, sourced.row.values, images, turns, documents=documents)
    input_tokens = estimate_input_tokens(payload, [*prefix_images, *images], documents)
    # a request the API would refuse for its size is this row's error, and is never sent
    check_request_size(payload, input_tokens, request.input_token_limit)
    if prepared is not None:
        prepared.extend(images)
    return payload, input_tokens, len(images)


async def _prepare_image(
    data: bytes, policy: ImagePolicy, label: str, cpu: asyncio.Semaphore | None
) -> PreparedImage:
    # decoding and re-encoding is CPU work: off the event loop, at most CPU_SLOTS at once in a walk
    if cpu is None:
        return await asyncio.to_thread(prepare_image, data, policy, label=label)
    async with cpu:
        return await asyncio.to_thread(prepare_image, data, policy, label=label)


async def _media_bytes(
    item: MediaItem,
    kind: Literal["image", "document"],
    sourced: SourcedRow,
    load: Loader,
    transport: Transport,
) -> bytes | str | None:
    """An item's bytes (loaded when it is text), a URL to send instead (str), or None to leave it out."""
    if isinstance(item.value, bytes):
        return item.value
    reference = await transport.reference(item.value, kind)
    if reference is not None:
        return reference
    if kind == "image":
        return await load(item.value, sourced)
    try:
        return await load(item.value, sourced)
    except ImageError as exc:  # the loader reads any file; for a document column it is a document's error
        raise DocumentError(str(exc)) from None


def media_items(columns: Sequence[str], sourced: SourcedRow) -> list[tuple[str, MediaItem]]:
    """(column, item) for each image or document a row's media cells hold, in the job's column order.

    A cell that holds bytes is read from ``sourced.media`` (the row's values hold its digest).
    """
    media, values = sourced.media, sourced.row.values
    return [
        (column, item)
        for column in columns
        for item in cell_items(media[column] if column in media else values.get(column))
    ]

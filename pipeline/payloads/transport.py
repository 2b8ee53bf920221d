"""How an image or a document reaches the API: inline base64, a URL the API fetches, or a Files API id.

``[request] image_transport`` picks one (:func:`transport_for`); the one walk that prepares rows
(:mod:`pipeline.payloads.prepare`) asks the transport, for each text cell, whether to send a
reference instead of loading it (:meth:`Transport.reference`), and hands it every image and
document it prepared (:meth:`Transport.place`) to be sent as it says:

- ``base64`` (:class:`Transport`): every image and document is loaded, prepared and sent inline.
- ``url`` (:class:`ByUrl`): an ``http(s)://`` cell is sent as a URL source, never downloaded (the
  API fetches and resizes it, so ``image_max_edge`` and the size checks cannot apply to it); with
  ``presign``, an ``s3://``/``gs://``/``az://`` cell is sent as a presigned https URL valid for
  ``expires`` (a run's requests use it at once; a batch may be processed up to 24 h later). Other
  cells (paths, ``data:`` URIs, bytes) go inline.
- ``files``: each distinct image or document is uploaded once through the Files API and referenced
  by its id (``pipeline.results.uploads.FilesTransport``, which keeps the mapping in the output).
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import timedelta
from typing import Final, Literal, TypeVar

from pipeline.errors import ImageError
from pipeline.payloads.documents import PreparedDocument
from pipeline.payloads.images import PreparedImage
from pipeline.rows.media import describe_cell, is_remote
from pipeline.rows.storage import ObjectStorage, ObjectStoreError, is_object_url

Kind = Literal["image", "document"]
M = TypeVar("M", PreparedImage, PreparedDocument)
# how long a presigned URL stays valid: a realtime request is sent within minutes of preparing it;
# a batch may be processed up to 24 hours after it is created (batch-processing docs), plus margin
REALTIME_PRESIGN: Final = timedelta(hours=1)
BATCH_PRESIGN: Final = timedelta(hours=30)
# presigned URLs kept per run, so identical cells give identical requests (dedupe compares them)
SIGNED_CACHE = 100_000


class Transport:
    """Inline base64: everything is loaded, prepared and sent in the request body (the default)."""

    name = "base64"

    @property
    def betas(self) -> tuple[str, ...]:
        """``anthropic-beta`` values the requests need with this transport."""
        return ()

    async def reference(self, cell: str, kind: Kind) -> str | None:
        """A URL to send in place of ``cell`` without loading it, or None to load it."""
        del cell, kind
        return None

    async def place(self, media: M) -> M:
        """``media`` as it will be sent (here: as it is, inline)."""
        return media


class ByUrl(Transport):
    """``image_transport = "url"``: http(s) cells by URL; object-storage cells presigned when asked."""

    name = "url"

    def __init__(
        self,
        storage: ObjectStorage | None = None,
        *,
        presign: bool = False,
        expires: timedelta = REALTIME_PRESIGN,
    ) -> None:
        self.storage = storage
        self.presign = presign
        self.expires = expires
        self._signed: OrderedDict[str, str] = OrderedDict()

    async def reference(self, cell: str, kind: Kind) -> str | None:
        text = cell.strip()
        if is_remote(text):
            return text
        if not (self.presign and is_object_url(text)):
            return None
        found = self._signed.get(text)
        if found is not None:
            self._signed.move_to_end(text)
            return found
        if self.storage is None:
            self.storage = ObjectStorage()
        try:
            signed = await self.storage.call(self.storage.sign, text, self.expires)
        except ObjectStoreError as exc:
            raise ImageError(f"{describe_cell(text)}: cannot presign ({exc})") from None
        self._signed[text] = signed
        if len(self._signed) > SIGNED_CACHE:
            self._signed.popitem(last=False)
        return signed


def transport_for(
    name: str, storage: ObjectStorage | None = None, *, presign: bool = False, batch: bool = False
) -> Transport:
    """The transport for ``base64`` or ``url`` (``files`` needs the API: see ``results.uploads``)."""
    if name == "url":
        return ByUrl(storage, presign=presign, expires=BATCH_PRESIGN if batch else REALTIME_PRESIGN)
    return Transport()

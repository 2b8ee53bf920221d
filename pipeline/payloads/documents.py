"""Document preparation: bytes in, a ``document`` block's source out (PDF as base64, or plain text).

Owns: telling a PDF from plain text by the bytes (``%PDF-`` near the start; text must be UTF-8 with
no NUL byte), refusing what the API refuses up front (an encrypted PDF, more pages than the API
takes in one request, a document that is neither), the page count, and the input-token estimate.
Pure and CPU-bound; knows nothing about rows, files or HTTP.

Limits from https://platform.claude.com/docs/en/build-with-claude/pdf-support: 100 pages per
request, a 32 MB request (checked on the whole body by ``build.check_request_size``), standard PDFs
only (no passwords or encryption); each page costs about 1,500-3,000 text tokens plus its image.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Final, Literal

from pipeline.errors import DocumentError
from pipeline.payloads.sniff import preview, sniff_media_type

MAX_PDF_PAGES: Final = 100
# the docs' upper figure of text per page, plus an image's worth (a page is also seen as an image)
PDF_PAGE_TOKENS: Final = 3_000 + 1_600
_PAGE: Final = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")
_COUNT: Final = re.compile(rb"/Type\s*/Pages\b[^>]*?/Count\s+(\d+)", re.DOTALL)
_ENCRYPT: Final = re.compile(rb"/Encrypt\s+\d+\s+\d+\s+R|/Encrypt\s*<<")

DocumentType = Literal["application/pdf", "text/plain"]


@dataclass(frozen=True, slots=True)
class PreparedDocument:
    """A document ready for a ``document`` block.

    :param data: base64 of the PDF, or the text itself; empty once it travels by reference (``source``).
    :param pages: the PDF's page count (0 when it could not be read from the file; 1 for text).
    :param source: set when the document travels by reference (a Files API id, a URL) instead.
    """

    media_type: DocumentType
    data: str
    pages: int
    source_bytes: int
    source: dict[str, str] | None = None

    @property
    def tokens(self) -> int:
        """Input tokens this document likely costs (high: rate limits reserve it before sending)."""
        if self.media_type == "application/pdf":
            return max(1, self.pages) * PDF_PAGE_TOKENS
        return max(1, -(-len(self.data) * 2 // 7))  # 3.5 characters a token, as for prompt text

    @property
    def raw(self) -> bytes:
        """The bytes as uploaded (PDF bytes, or the text as UTF-8)."""
        if self.media_type == "application/pdf":
            return base64.b64decode(self.data)
        return self.data.encode("utf-8")


def prepare_document(data: bytes, *, label: str) -> PreparedDocument:
    """Make ``data`` a document the API takes: a PDF (base64), or UTF-8 text.

    :raises DocumentError: ``"{label}: <reason>"`` for an empty, encrypted or too-long PDF, or bytes
        that are neither a PDF nor UTF-8 text.
    """
    if not data:
        raise DocumentError(f"{label}: empty document")
    if b"%PDF-" in data[:1024]:
        if _ENCRYPT.search(data):
            raise DocumentError(
                f"{label}: the PDF is encrypted or password-protected; the API takes standard PDFs only"
            )
        pages = count_pages(data)
        if pages > MAX_PDF_PAGES:
            raise DocumentError(
                f"{label}: the PDF has {pages} pages, over the API's {MAX_PDF_PAGES} per request; split it",
                error_type="request_too_large",
            )
        return PreparedDocument("application/pdf", base64.b64encode(data).decode("ascii"), pages, len(data))
    sniffed = sniff_media_type(data)
    if sniffed is not None:
        raise DocumentError(f"{label}: is an image ({sniffed}), not a PDF or text document")
    if b"\x00" in data:
        raise DocumentError(f"{label}: not a PDF or UTF-8 text (starts with {preview(data)})")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DocumentError(f"{label}: not a PDF or UTF-8 text (starts with {preview(data)})") from None
    if not text.strip():
        raise DocumentError(f"{label}: the text document is blank")
    return PreparedDocument("text/plain", text, 1, len(data))


def count_pages(data: bytes) -> int:
    """A PDF's pages: the page objects, else the page tree's ``/Count``; 0 when neither is readable.

    Page objects inside compressed object streams (PDF 1.5+) are invisible to this scan; the root's
    ``/Count`` usually is not. 0 means "unknown", and the page limit is left to the API.
    """
    pages = len(_PAGE.findall(data))
    if pages:
        return pages
    counts = [int(match) for match in _COUNT.findall(data)]
    return max(counts) if counts else 0

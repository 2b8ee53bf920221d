"""The whole exception tree of the pipeline.

::

    PipelineError                  root; everything the CLI turns into a one-line message
    ├── SpecError                  the job file is wrong (exit 2)
    ├── ConfigError                the run cannot be set up: no API key, bad option (exit 2)
    ├── InputError                 the input table cannot be read or lacks a column (exit 2)
    ├── OutputError                the output directory cannot be written or is locked (exit 2)
    ├── CreateUnconfirmed          a batch create got no clear answer: list batches to find out
    ├── ForeignBatch               an adopted batch holds custom_ids that are not its submission's
    ├── RowError                   one row cannot become a request; the row is recorded as an error
    │   ├── ImageError             an image is missing, unreadable, empty or not an image
    │   └── DocumentError          a document is missing, unreadable, or not a PDF or text the API takes
    └── ApiError                   the API (or the network to it) answered with a failure
        ├── RetryableApiError      worth another attempt (429, 5xx, 529, timeouts, dropped connections)
        ├── PermanentApiError      this request will never succeed (400, 404, 413); the row is an error
        └── FatalApiError          no request can succeed (401, 403, spend limit); the run stops (exit 2)

A bad row becomes output data; a broken run raises. Messages never contain the API key.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Root of every error the pipeline raises on purpose."""


class SpecError(PipelineError):
    """The job file is invalid; the message names the file and the key."""


class ConfigError(PipelineError):
    """The run cannot be configured (missing API key, conflicting options)."""


class InputError(PipelineError):
    """The input table cannot be read, or lacks a column the job needs."""


class OutputError(PipelineError):
    """The output directory cannot be written."""


class RowError(PipelineError):
    """One row cannot be turned into a request. ``error_type`` goes into the output."""

    error_type = "row_error"

    def __init__(self, message: str, *, error_type: str | None = None) -> None:
        super().__init__(message)
        if error_type is not None:
            self.error_type = error_type


class ImageError(RowError):
    """An image cell could not be loaded or prepared."""

    error_type = "image_error"


class DocumentError(RowError):
    """A document cell could not be loaded, or is not a PDF or plain text the API takes."""

    error_type = "document_error"


class ApiError(PipelineError):
    """A failed call to the Messages API.

    :param status: HTTP status, or ``None`` when no response arrived (timeout, dropped connection).
    :param error_type: the API's ``error.type`` (``overloaded_error``...) or ours
        (``timeout_error``, ``connection_error``, ``parse_error``).
    :param request_id: the ``request-id`` header or body field, when known.
    :param retry_after: seconds the server asked us to wait, when it said so.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None,
        error_type: str,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_type = error_type
        self.request_id = request_id
        self.retry_after = retry_after
        # set by the retry loop: how many attempts were made before giving up
        self.attempts = 1

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status is not None else "no response"
        return f"{where} {self.error_type}: {self.message}"


class RetryableApiError(ApiError):
    """A failure worth retrying after a delay."""


class PermanentApiError(ApiError):
    """A failure that retrying will not fix; the row becomes an error."""


class FatalApiError(ApiError):
    """A failure that no row can get past (bad key, no permission, spend limit): stop the run."""


class CreateUnconfirmed(PipelineError):
    """A create whose outcome is unknown: the request may have made a batch. Find it by listing."""


class ForeignBatch(PipelineError):
    """The results hold a custom_id this submission never sent: the adopted batch is not ours."""

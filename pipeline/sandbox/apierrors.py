"""The API's error shape: the exception a check raises, and the JSON body the server sends for it."""

from __future__ import annotations

from typing import Any


class RequestError(Exception):
    """A request the sandbox refuses, with the status and ``error.type`` the hosted API would send.

    :param message: the API-style message, usually prefixed with the JSON path of the bad field.
    :param details: extra ``error.details`` (the spend cap sets ``error_code``).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        error_type: str = "invalid_request_error",
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_type = error_type
        self.details = details


def error_body(
    error_type: str, message: str, request_id: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The hosted API's error JSON: ``{"type":"error","error":{...},"request_id":...}``."""
    error: dict[str, Any] = {"type": error_type, "message": message}
    if details is not None:
        error["details"] = details
    return {"type": "error", "error": error, "request_id": request_id}

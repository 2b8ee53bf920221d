"""What a batch invocation is given (``BatchOptions``) and what it ends with (``BatchOutcome``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.api.config import ClientConfig
from pipeline.batch.state import Submission
from pipeline.errors import FatalApiError
from pipeline.job.spec import StorageSpec
from pipeline.records import Summary
from pipeline.results.store import RerunPolicy
from pipeline.rows.memory import InputSource


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """Where a batch invocation reads, writes and sends; resolved by the CLI."""

    base_url: str
    api_key: str = field(repr=False)
    output: Path | str  # a directory, or an object-storage URL
    input: InputSource = ""
    limit: int | None = None
    fresh: bool = False
    retry: RerunPolicy = field(default_factory=RerunPolicy)
    wait: bool = False
    sandbox: bool = False
    grace_s: float = 30.0
    auth: Literal["x-api-key", "bearer"] = "x-api-key"
    anthropic_version: str = "2023-06-01"
    timeout_s: float = 120.0
    max_attempts: int = 8
    betas: tuple[str, ...] = ()  # anthropic-beta values ([api] beta, the Files API's for file sources)
    storage: StorageSpec | None = None  # [storage], for an object-storage output

    def client_config(self) -> ClientConfig:
        """The batch endpoints' connection: the same value (and retry policy) as the Messages client's."""
        return ClientConfig(
            base_url=self.base_url,
            api_key=self.api_key,
            auth=self.auth,
            anthropic_version=self.anthropic_version,
            timeout_s=self.timeout_s,
            max_attempts=self.max_attempts,
            betas=self.betas,
        )


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """How a batch invocation ended and what is still pending."""

    summary: Summary
    output: Path | str
    results_rows: int
    submitted_batches: int
    submitted_rows: int  # followers (dedupe) included
    submitted_requests: int  # requests in their bodies: fewer than the rows when some were identical
    collected_batches: int
    pending: tuple[Submission, ...]
    pending_rows: int
    final_errors: int
    exhausted: int
    notes: tuple[str, ...] = ()
    fatal: FatalApiError | None = None
    interrupted: str | None = None

    def batch_dict(self) -> dict[str, Any]:
        """The batch part of the ``--json`` summary."""
        return {
            "submitted_batches": self.submitted_batches,
            "submitted_rows": self.submitted_rows,
            "submitted_requests": self.submitted_requests,
            "collected_batches": self.collected_batches,
            "pending_batches": [sub.label() for sub in self.pending],
            "pending_rows": self.pending_rows,
            "final_errors": self.final_errors,
            "max_attempts_reached": self.exhausted,
        }

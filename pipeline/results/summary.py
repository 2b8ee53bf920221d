"""Renders a run's ``Summary`` as a human line block or as JSON. Pure; printing is the CLI's job."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pipeline.records import Result, Summary, Usage


@dataclass(slots=True)
class ResultTally:
    """Results folded as they are recorded: counts, errors by type, shared rows, tokens."""

    ok: int = 0
    error: int = 0
    errors_by_type: Counter[str] = field(default_factory=Counter)
    shared: int = 0  # rows that got another row's result (dedupe), no request of their own
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation: int = 0
    cache_read: int = 0

    def add(self, result: Result) -> None:
        """Count one recorded result."""
        usage = result.reply.usage if result.reply is not None else None
        self.add_outcome(result.status, result.error_type, shared=result.shared_with is not None, usage=usage)

    def add_outcome(
        self, status: str, error_type: str | None, *, shared: bool = False, usage: Usage | None = None
    ) -> None:
        """Count one result from its parts (a result read back from a journal, or reported by a worker)."""
        if shared:
            self.shared += 1
        if status == "ok":
            self.ok += 1
        else:
            self.error += 1
            self.errors_by_type[error_type or "unknown"] += 1
        if usage is not None:
            self.input_tokens += usage.input_tokens
            self.output_tokens += usage.output_tokens
            self.cache_creation += usage.cache_creation_input_tokens
            self.cache_read += usage.cache_read_input_tokens

    @property
    def usage(self) -> Usage:
        """Tokens of the results counted so far, as the API reported them."""
        return Usage(self.input_tokens, self.output_tokens, self.cache_creation, self.cache_read)


def summary_dict(summary: Summary, *, output: str, exit_code: int) -> dict[str, Any]:
    """The machine-readable summary (``--json``)."""
    usage = summary.usage
    return {
        "output": output,
        "exit_code": exit_code,
        "rows": {
            "total": summary.rows_total,
            "ok": summary.rows_ok,
            "error": summary.rows_error,
            "skipped": summary.rows_skipped,
        },
        "rows_shared": summary.rows_shared,
        "errors_by_type": dict(sorted(summary.errors_by_type.items())),
        "tokens": {
            "input": usage.input_tokens,
            "output": usage.output_tokens,
            "cache_creation_input": usage.cache_creation_input_tokens,
            "cache_read_input": usage.cache_read_input_tokens,
        },
        "requests_sent": summary.requests_sent,
        "retries": summary.retries,
        "wall_s": round(summary.wall_s, 3),
        "cost_usd": None if summary.cost_usd is None else round(summary.cost_usd, 6),
        "priced_as": summary.priced_as,
        "model_facts": summary.model_facts,
    }


def summary_json(summary: Summary, *, output: str, exit_code: int) -> str:
    """``summary_dict`` as one line of JSON."""
    return json.dumps(summary_dict(summary, output=output, exit_code=exit_code), sort_keys=False)


def summary_text(summary: Summary, *, output: str) -> str:
    """A few lines for people: counts, errors by type, tokens, speed, where the results are."""
    done = summary.rows_ok + summary.rows_error
    rate = done / summary.wall_s if summary.wall_s > 0 else 0.0
    lines = [
        f"{done} rows sent: {summary.rows_ok} ok, {summary.rows_error} error"
        f" ({summary.rows_skipped} already done, skipped) in {summary.wall_s:.1f}s ({rate:.1f} rows/s)",
    ]
    lines += shared_and_error_lines(summary, shared="not sent again")
    lines.append(f"{tokens_text(summary.usage)}; {summary.requests_sent} requests, {summary.retries} retries")
    lines.append(cost_line(summary.cost_usd, summary.priced_as))
    if summary.model_facts:
        lines.append(f"model rules: {summary.model_facts}")
    lines.append(f"results: {output}")
    return "\n".join(lines)


def results_location(output: object) -> str:
    """Where an output's ``results.parquet`` is, as text (a path, or a URL in object storage)."""
    return f"{str(output).rstrip('/')}/results.parquet"


def cost_line(cost_usd: float | None, priced_as: str) -> str:
    """``cost: $0.0123 (at ...)``, or why no cost can be given."""
    if cost_usd is None:
        return f"cost: unknown ({priced_as})"
    return f"cost: ${cost_usd:,.4f} (at {priced_as})"


def shared_and_error_lines(summary: Summary, *, shared: str) -> list[str]:
    """The dedupe line (``shared`` says what became of those rows) and errors by type, when there are any."""
    lines: list[str] = []
    if summary.rows_shared:
        lines.append(
            f"{summary.rows_shared} rows answered by an identical request of another row (dedupe), {shared}"
        )
    if summary.errors_by_type:
        parts = ", ".join(f"{kind} {count}" for kind, count in sorted(summary.errors_by_type.items()))
        lines.append(f"errors by type: {parts}")
    return lines


def tokens_text(usage: Usage) -> str:
    """``tokens: N input, M output`` plus cache writes and reads when there were any."""
    tokens = f"tokens: {usage.input_tokens} input, {usage.output_tokens} output"
    if usage.cache_creation_input_tokens or usage.cache_read_input_tokens:
        tokens += (
            f", {usage.cache_creation_input_tokens} cache write, {usage.cache_read_input_tokens} cache read"
        )
    return tokens

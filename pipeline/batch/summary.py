"""A batch invocation's outcome as lines for people (``--json`` adds ``batch_dict`` to the run summary).

Pure; printing is the CLI's job.
"""

from __future__ import annotations

from pipeline.batch.options import BatchOutcome
from pipeline.results.summary import cost_line, results_location, shared_and_error_lines, tokens_text


def batch_text(outcome: BatchOutcome) -> str:
    """What was collected and submitted, errors by type, tokens, cost, where results are, what is pending."""
    summary = outcome.summary
    collected = summary.rows_ok + summary.rows_error
    lines = [
        f"{collected} results recorded: {summary.rows_ok} ok, {summary.rows_error} error;"
        f" {outcome.submitted_rows} rows submitted in {outcome.submitted_batches} batches"
        f" ({summary.rows_skipped} already done, skipped) in {summary.wall_s:.1f}s",
    ]
    lines += shared_and_error_lines(summary, shared="no request of their own")
    lines.append(tokens_text(summary.usage))
    lines.append(cost_line(summary.cost_usd, summary.priced_as))
    if summary.model_facts:
        lines.append(f"model rules: {summary.model_facts}")
    lines.append(f"results: {results_location(outcome.output)}")
    lines.append(pending_line(outcome))
    return "\n".join(lines)


def pending_line(outcome: BatchOutcome) -> str:
    """``batch: ... collected; pending: N batches (M rows): ids`` or ``...; nothing pending``."""
    shared = outcome.submitted_rows - outcome.submitted_requests
    requests = f", {outcome.submitted_requests} requests" if shared else ""
    done = f"batch: {outcome.submitted_batches} submitted ({outcome.submitted_rows} rows{requests}), "
    done += f"{outcome.collected_batches} collected"
    if outcome.exhausted:
        done += f", {outcome.exhausted} rows left as errors after [batch] max_attempts"
    if not outcome.pending:
        return f"{done}; nothing pending"
    ids = ", ".join(sub.label() for sub in outcome.pending[:5]) + (" ..." if len(outcome.pending) > 5 else "")
    return (
        f"{done}; pending: {len(outcome.pending)} batches ({outcome.pending_rows} rows): {ids};"
        f" rerun, or `pipeline batch collect {outcome.output}`, to collect them once they end"
    )

"""What a reply makes of its row: ``ok``, or an error of its stop reason's type or ``schema_violation``.

The one place (for the realtime recorder and the batch collector alike) that decides whether an
answer that came back with a 200 is a success:

- ``stop_reason`` ``max_tokens`` (cut off), ``refusal`` (declined; ``stop_details.category`` says
  why) and ``model_context_window_exceeded`` (the context window filled up) are errors whose
  ``error_type`` is the stop reason. The reply stays in the row (its text and the tokens paid).
  Sending the same request again would give the same end, so there is no resend within the run;
  the rerun rule (:func:`pipeline.results.store.settled_rows`) decides what a later run sends.
- otherwise a reply whose tool input or structured answer breaks its schema is ``schema_violation``,
  worth sending again within the run (``request.schema_attempts``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.job.request import RequestSpec
from pipeline.job.toolschema import schema_violation
from pipeline.records import Reply

# stop reasons that are not a finished answer (anthropic-sdk-python 2.15.0 types/stop_reason.py)
ERROR_STOPS = frozenset({"max_tokens", "refusal", "model_context_window_exceeded"})


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why a reply is not ``ok``: the row's ``error_type`` and ``error_message``, and whether a resend
    within the run may help (only a schema violation: a model may answer right the next time)."""

    error_type: str
    message: str
    resend: bool = False


def judge(request: RequestSpec | None, reply: Reply) -> Verdict | None:
    """None when ``reply`` is a success for ``request``; else the verdict (see the module docstring).

    ``request`` is None when it is not known (a batch whose stored request no longer parses): then
    only the stop reason is judged.
    """
    stop = reply.stop_reason
    if stop in ERROR_STOPS:
        return Verdict(stop, _stop_message(stop, reply, request))
    if request is None:
        return None
    violation = schema_violation(request, reply)
    return None if violation is None else Verdict("schema_violation", violation, resend=True)


def _stop_message(stop: str, reply: Reply, request: RequestSpec | None) -> str:
    used = reply.usage.output_tokens
    if stop == "max_tokens":
        limit = f"max_tokens {request.max_tokens:,}" if request is not None else "max_tokens"
        return (
            f"the answer was cut off at {limit} ({used:,} output tokens paid); raise request.max_tokens"
            " and rerun: only rows cut off are sent again"
        )
    if stop == "refusal":
        details = reply.stop_details
        category = details.category if details is not None else None
        explanation = details.explanation if details is not None else None
        what = f"refusal, category {category}" if category else "refusal"
        tail = f": {explanation}" if explanation else ""
        return (
            f"the model declined to answer ({what}){tail}; rerun with --retry-errors refusal to send it again"
        )
    return (
        "the answer stopped when the model's context window was full (model_context_window_exceeded);"
        " shorten the input"
    )

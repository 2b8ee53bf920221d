"""Sending one row's request until its tool input conforms to the tool's schema (or the tries run out).

A model may answer a forced tool with input that breaks the tool's ``input_schema``; sending the same
request again often gets a conforming answer. Every try is paid for, so the tokens and attempts of
all tries are added up. Shared by every driver that sends requests one at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from pipeline.api.client import MessagesClient
from pipeline.job.request import RequestSpec
from pipeline.job.toolschema import schema_violation
from pipeline.records import Sent
from pipeline.wire import MessagePayload

log = logging.getLogger("pipeline.run")


async def send_conforming(
    client: MessagesClient,
    request: RequestSpec,
    payload: MessagePayload,
    *,
    input_tokens: int,
    row_id: str,
    stopping: Callable[[], bool] = lambda: False,
) -> tuple[Sent, str | None]:
    """Send, and send again while the tool input breaks its schema (up to ``request.schema_attempts``).

    Returns the last reply, with the attempts and tokens of every try added up (all were paid for),
    and the last violation, or None when the reply conforms. Raises what
    :meth:`MessagesClient.send` raises. No further try starts once ``stopping()`` is true.
    """
    sent = await client.send(payload, input_tokens=input_tokens)
    violation = schema_violation(request, sent.reply)
    tries = 1
    while violation is not None and tries < request.schema_attempts and not stopping():
        log.debug("row %s: %s; sending again", row_id, violation)
        again = await client.send(payload, input_tokens=input_tokens)
        sent = Sent(
            reply=replace(again.reply, usage=sent.reply.usage + again.reply.usage),
            attempts=sent.attempts + again.attempts,
            latency_ms=again.latency_ms,
        )
        violation = schema_violation(request, sent.reply)
        tries += 1
    return sent, violation

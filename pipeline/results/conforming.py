"""Sending one row's request until its answer passes (or the tries run out), for every driver that sends
requests one at a time (the local senders and the cluster's).

Whether an answer is a success is :func:`pipeline.results.verdict.judge`'s to say; a verdict that
says ``resend`` (a tool input that breaks the tool's ``input_schema``) is worth another try, since
the same request often gets a conforming answer. Every try is paid for, so the tokens and attempts
of all tries are added up. An answer cut off, refused or out of context is not sent again: the same
request would end the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from pipeline.api.client import MessagesClient
from pipeline.job.request import RequestSpec
from pipeline.records import Sent
from pipeline.results.verdict import Verdict, judge
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
) -> tuple[Sent, Verdict | None]:
    """Send, and send again while the verdict says so (up to ``request.schema_attempts`` tries).

    Returns the last reply, with the attempts and tokens of every try added up (all were paid for),
    and its verdict (None: a success). Raises what :meth:`MessagesClient.send` raises. No further try
    starts once ``stopping()`` is true.
    """
    sent = await client.send(payload, input_tokens=input_tokens)
    verdict = judge(request, sent.reply)
    tries = 1
    while verdict is not None and verdict.resend and tries < request.schema_attempts and not stopping():
        log.debug("row %s: %s; sending again", row_id, verdict.message)
        again = await client.send(payload, input_tokens=input_tokens)
        sent = Sent(
            reply=replace(again.reply, usage=sent.reply.usage + again.reply.usage),
            attempts=sent.attempts + again.attempts,
            latency_ms=again.latency_ms,
        )
        verdict = judge(request, sent.reply)
        tries += 1
    return sent, verdict

"""What every peer driver shares: its options, the input rows, the request's content, the results file,
and a guard that keeps the process on loopback.

A driver runs under a peer's own venv python (never the project's), so this module uses the standard
library only and imports nothing from ``pipeline``. Every driver sends the same request per row as
``pipeline run`` does for the benchmark's job: model ``claude-haiku-4-5``, ``max_tokens`` 64, one user
message "Say something short about {topic}." and, for image rows, the row's JPEG as base64 before the
text (as read from disk: the peers do not resize).

The results file has one JSON object per row, ``{"id": ..., "ok": true|false, "error": ...}``; the last
line on stdout is a JSON summary (``rows``, ``ok``, ``failed``, ``imports_s``, ``blocked``).
"""

from __future__ import annotations

import argparse
import base64
import csv
import ipaddress
import json
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL = "claude-haiku-4-5"
MAX_TOKENS = 64
PROMPT = "Say something short about {topic}."
MEDIA_TYPE = "image/jpeg"

# hosts the guard refused, in order (reported in the summary, so a leak shows in the table's notes)
BLOCKED: list[str] = []


@dataclass(frozen=True, slots=True)
class Row:
    """One input row: its id, its topic and, for image workloads, the JPEG it carries."""

    id: str
    topic: str
    image: Path | None


@dataclass(frozen=True, slots=True)
class Options:
    """What the harness tells every driver (the same flags for each peer).

    :param rpm: the requests-per-minute limit to configure, or ``None`` when the workload has none.
    :param started_at: ``time.time()`` when the harness spawned this process (for ``imports_s``).
    :param knobs: peer-specific settings that differ from the driver's documented configuration.
    """

    input: Path
    results: Path
    base_url: str
    api_key: str
    concurrency: int
    attempts: int
    rpm: float | None
    timeout_s: float
    workdir: Path
    started_at: float
    knobs: dict[str, str]


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description="Send one Messages request per input row.")
    parser.add_argument("--input", type=Path, required=True, help="CSV with id, topic[, img]")
    parser.add_argument("--results", type=Path, required=True, help="write one JSON line per row here")
    parser.add_argument("--base-url", required=True, help="the sandbox, e.g. http://127.0.0.1:PORT")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--attempts", type=int, required=True, help="attempts per row, the first included")
    parser.add_argument("--rpm", type=float, help="requests-per-minute limit (none: unlimited)")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="per-request timeout")
    parser.add_argument("--workdir", type=Path, required=True, help="scratch space for the peer")
    parser.add_argument("--started-at", type=float, default=0.0)
    parser.add_argument(
        "--knob",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a peer-specific setting (repeatable)",
    )
    args = parser.parse_args(argv)
    return Options(
        input=args.input,
        results=args.results,
        base_url=args.base_url.rstrip("/"),
        api_key=args.api_key,
        concurrency=args.concurrency,
        attempts=args.attempts,
        rpm=args.rpm,
        timeout_s=args.timeout_s,
        workdir=args.workdir,
        started_at=args.started_at or time.time(),
        knobs=dict(knob.split("=", 1) for knob in args.knob),
    )


def read_rows(path: Path) -> list[Row]:
    """The CSV's rows; an ``img`` cell is a path relative to the CSV."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return [Row(r["id"], r["topic"], (path.parent / r["img"]) if r.get("img") else None) for r in reader]


def prompt_text(row: Row) -> str:
    return PROMPT.format(topic=row.topic)


def image_base64(path: Path) -> str:
    """The file's bytes as base64, as sent (no resizing, no re-encoding)."""
    return base64.b64encode(path.read_bytes()).decode("ascii")


def anthropic_content(row: Row) -> str | list[dict[str, Any]]:
    """The user message's content in the Messages API's own shape."""
    if row.image is None:
        return prompt_text(row)
    return [
        {
            "type": "image",
            "source": {"type": "base64", "media_type": MEDIA_TYPE, "data": image_base64(row.image)},
        },
        {"type": "text", "text": prompt_text(row)},
    ]


def write_results(path: Path, outcomes: Iterable[tuple[str, bool, str | None]]) -> dict[str, int]:
    """Write ``(id, ok, error)`` per row; return the counts."""
    ok = failed = 0
    with path.open("w") as out:
        for row_id, success, error in outcomes:
            out.write(json.dumps({"id": row_id, "ok": success, "error": error}) + "\n")
            if success:
                ok += 1
            else:
                failed += 1
    return {"rows": ok + failed, "ok": ok, "failed": failed}


def report(options: Options, counts: dict[str, int], imports_done: float, **extra: Any) -> None:
    """The summary line the harness reads (the last line on stdout)."""
    summary = {
        **counts,
        "imports_s": round(imports_done - options.started_at, 3),
        "blocked": BLOCKED,
        **extra,
    }
    print(json.dumps(summary), flush=True)


def describe(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ")
    return f"{type(exc).__name__}: {text[:300]}"


# --------------------------------------------------------------------------- loopback guard


def _loopback(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _refuse(host: object) -> None:
    BLOCKED.append(str(host))
    print(f"[loopback guard] refused a connection to {host!r}", file=sys.stderr, flush=True)


def guard_network() -> None:
    """Refuse every name lookup and internet connection that is not for loopback.

    Installed before the peer is imported, so nothing it does at import or run time (price lists,
    telemetry, tokenizer downloads) can leave the machine; what it tried is reported in ``blocked``.
    """
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_sendto = socket.socket.sendto
    inet = (socket.AF_INET, socket.AF_INET6)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and not _loopback(host):
            _refuse(host)
            raise socket.gaierror(socket.EAI_NONAME, f"refused by the benchmark's loopback guard: {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in inet and not _loopback(address[0]):
            _refuse(address[0])
            raise ConnectionRefusedError(f"refused by the benchmark's loopback guard: {address[0]}")
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if self.family in inet and not _loopback(address[0]):
            _refuse(address[0])
            return 111  # ECONNREFUSED
        return real_connect_ex(self, address)

    def sendto(self: socket.socket, data: Any, *args: Any) -> int:
        address = args[-1]
        if self.family in inet and not _loopback(address[0]):
            _refuse(address[0])
            raise ConnectionRefusedError(f"refused by the benchmark's loopback guard: {address[0]}")
        return real_sendto(self, data, *args)

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign,assignment]
    socket.socket.sendto = sendto  # type: ignore[method-assign,assignment]

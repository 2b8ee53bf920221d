"""Where provider calls go, how they authenticate and how hard they may push: one value for every endpoint.

:class:`ClientConfig` serves the Messages client, ``count_tokens`` and the Message Batches
endpoints alike: the URL, the auth header, the ``anthropic-version``, the timeouts, the retry
policy and the pacing. It builds the only request headers that carry the key, and blanks the key
out of anything a server echoes back. The key never shows in a repr.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

import httpx

from pipeline.api.retry import RetryPolicy
from pipeline.errors import ApiError

if TYPE_CHECKING:
    from pipeline.job.spec import JobSpec

USER_AGENT = "pipeline/0.1 (+httpx)"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
CONNECT_TIMEOUT_S = 10.0
REDACTED = "[redacted]"
# the Files API's beta (https://platform.claude.com/docs/en/build-with-claude/files): needed on its own
# endpoints and on every Messages or batch request that references an uploaded file
FILES_API_BETA = "files-api-2025-04-14"


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Where requests go, how they authenticate, and how hard the client may push.

    :param base_url: the server root; requests go to ``{base_url}/v1/messages`` and below.
    :param api_key: sent as ``x-api-key`` or ``Authorization: Bearer``; never shown in a repr.
    :param max_attempts: attempts per request, the first included.
    :param concurrency: requests in flight at once; also sizes the connection pool.
    :param max_retry_wait_s: the longest single wait, whether the server asked for it or backoff chose it.
    :param slow_start: while the server states no rate limits, open with one request and ramp the pace
        up until the first 429 (:mod:`pipeline.api.ratelimit`), instead of opening with a full burst.
    """

    base_url: str
    api_key: str = field(repr=False)
    auth: Literal["x-api-key", "bearer"] = "x-api-key"
    anthropic_version: str = "2023-06-01"
    betas: tuple[str, ...] = ()  # sent as anthropic-beta, comma-joined
    timeout_s: float = 120.0
    max_attempts: int = 8
    concurrency: int = 16
    requests_per_minute: float | None = None
    input_tokens_per_minute: float | None = None
    output_tokens_per_minute: float | None = None
    max_retry_wait_s: float = 120.0
    slow_start: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")

    @classmethod
    def for_job(
        cls, spec: JobSpec, *, base_url: str, api_key: str, concurrency: int | None = None
    ) -> ClientConfig:
        """The job's ``[api]`` and ``[limits]`` as a client configuration, sending to ``base_url``."""
        limits = spec.limits
        return cls(
            base_url=base_url,
            api_key=api_key,
            auth=spec.api.auth,
            anthropic_version=spec.api.anthropic_version,
            betas=job_betas(spec),
            timeout_s=limits.timeout_s,
            max_attempts=limits.max_attempts,
            concurrency=limits.concurrency if concurrency is None else concurrency,
            requests_per_minute=limits.requests_per_minute,
            input_tokens_per_minute=limits.input_tokens_per_minute,
            output_tokens_per_minute=limits.output_tokens_per_minute,
        )

    @property
    def endpoint(self) -> str:
        """The Messages URL."""
        return self.url("/v1/messages")

    def url(self, path: str) -> str:
        """``path`` (``/v1/...``) on the configured server."""
        return f"{self.base_url.rstrip('/')}{path}"

    def retry_policy(self) -> RetryPolicy:
        """A fresh retry policy (with its own jitter source) for one client."""
        return RetryPolicy(max_attempts=self.max_attempts, max_wait_s=self.max_retry_wait_s)

    def headers(self, *, accept: str = "application/json") -> dict[str, str]:
        """The headers of one API request: version, betas, accept and the key (nowhere else does it go)."""
        headers = {"anthropic-version": self.anthropic_version, "accept": accept}
        if self.betas:
            headers["anthropic-beta"] = ",".join(self.betas)
        if self.auth == "bearer":
            headers["authorization"] = f"Bearer {self.api_key}"
        else:
            headers["x-api-key"] = self.api_key
        return headers

    def redact(self, error: ApiError) -> ApiError:
        """Blank the key out of a message built from server text (a proxy may echo request headers)."""
        key = self.api_key
        if key and key in error.message:
            error.message = error.message.replace(key, REDACTED)
            error.args = (error.message,)
        return error

    def open_http(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        limits: httpx.Limits | None = None,
        follow_redirects: bool = False,
    ) -> httpx.AsyncClient:
        """A new HTTP client with this configuration's timeouts and user agent, and no credentials.

        The key is never a default header: it goes only on the API requests themselves
        (:meth:`headers`), so a redirect or an image download through the same client never sees it.
        """
        return httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(self.timeout_s, connect=CONNECT_TIMEOUT_S),
            limits=limits or httpx.Limits(),
            headers={"user-agent": USER_AGENT},
            follow_redirects=follow_redirects,
        )


def job_betas(spec: JobSpec) -> tuple[str, ...]:
    """The ``anthropic-beta`` values a job's requests carry: ``[api] beta``, and the Files API's when
    images go by file id."""
    files = (FILES_API_BETA,) if spec.request.image_transport == "files" else ()
    return tuple(dict.fromkeys((*spec.api.beta, *files)))


def is_loopback(base_url: str) -> bool:
    """Whether ``base_url`` is a server on this machine (the sandbox, a self-hosted model).

    Answers a sandbox gave count as done only for runs that go to such a server again; a run to the
    hosted API or any other remote server sends those rows for real.
    """
    host = urlsplit(base_url).hostname or ""
    return host in LOOPBACK_HOSTS or host.startswith("127.")

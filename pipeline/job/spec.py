"""Parses a job file (TOML) into a frozen ``JobSpec``.

Owns: the job file's tables other than ``[request]`` (:mod:`pipeline.job.request`): ``[api]``,
``[limits]``, ``[batch]``, ``[prices]``, ``[storage]``, ``[run]``; reading and validating the file
(unknown keys are errors that name the key); the checks that span tables (a provider's missing
features); and resolving paths relative to the job file (URLs stay as they are). Opens no table and
no network.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline.catalog.models import model_facts
from pipeline.catalog.providers import PRESETS, Provider, ProviderName, preset, unsupported_features
from pipeline.errors import SpecError
from pipeline.job.request import ExampleTurn, RequestSpec, StrictModel


class ApiSpec(StrictModel):
    """The ``[api]`` table: where requests go and how they authenticate.

    ``provider`` names a preset (``providers.PRESETS``) that fills in ``base_url``, ``auth`` and
    ``api_key_env`` when the job leaves them out.
    """

    provider: ProviderName = "anthropic"
    base_url: str = "https://api.anthropic.com"
    api_key_env: str = "ANTHROPIC_API_KEY"
    auth: Literal["x-api-key", "bearer"] = "x-api-key"
    anthropic_version: str = "2023-06-01"
    # "batch": send through the Message Batches API (half price, results within 24 h); see [batch]
    mode: Literal["realtime", "batch"] = "realtime"
    # sent as the anthropic-beta header (comma-joined), for features newer than the job file's keys
    beta: list[str] = Field(default_factory=list)

    @field_validator("beta")
    @classmethod
    def _beta_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not name.strip() or "," in name or any(ch.isspace() for ch in name):
                raise ValueError(f'beta: {name!r} is not a beta name (like "files-api-2025-04-14")')
        return value

    @model_validator(mode="before")
    @classmethod
    def _preset_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        name = data.get("provider", "anthropic")
        if name not in PRESETS:
            return data  # the Literal check names the choices
        chosen = preset(name)
        if not chosen.base_url and "base_url" not in data:
            raise ValueError(f"provider {name!r} has no default base_url; set base_url")
        defaults = {"base_url": chosen.base_url, "auth": chosen.auth, "api_key_env": chosen.api_key_env}
        return {**defaults, **data}

    @property
    def preset(self) -> Provider:
        """The provider preset this job talks to."""
        return preset(self.provider)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {value!r}")
        return value.rstrip("/")


class LimitsSpec(StrictModel):
    """The ``[limits]`` table. Limits left out are not enforced on the client."""

    concurrency: int = Field(default=16, ge=1, le=1024)
    requests_per_minute: float | None = Field(default=None, gt=0)
    input_tokens_per_minute: float | None = Field(default=None, gt=0)
    output_tokens_per_minute: float | None = Field(default=None, gt=0)
    max_attempts: int = Field(default=8, ge=1, le=100)
    timeout_s: float = Field(default=120.0, gt=0)


# The Message Batches API's caps per batch (https://platform.claude.com/docs/en/build-with-claude/batch-processing):
# 100,000 requests or 256 MB.
BATCH_MAX_REQUESTS = 100_000
BATCH_MAX_BYTES = 256_000_000


class BatchSpec(StrictModel):
    """The optional ``[batch]`` table: how ``--mode batch`` splits, polls and resubmits.

    None of it shapes an answer, so none of it feeds the request fingerprint.
    """

    max_requests: int = Field(default=BATCH_MAX_REQUESTS, ge=1, le=BATCH_MAX_REQUESTS)
    max_bytes: int = Field(default=BATCH_MAX_BYTES, ge=10_000, le=BATCH_MAX_BYTES)
    poll_interval_s: float = Field(default=10.0, gt=0)
    max_poll_interval_s: float = Field(default=300.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=20)
    orphan_grace_s: float = Field(default=600.0, ge=0)


class StorageSpec(StrictModel):
    """The optional ``[storage]`` table: object storage (S3, GCS, Azure) for input, images and output.

    Credentials never go here: they come from the standard environment (``AWS_ACCESS_KEY_ID``,
    ``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_ACCOUNT_KEY``...). None of it feeds the fingerprint.
    """

    # an S3-compatible endpoint (MinIO, R2, a local server); overrides AWS_ENDPOINT_URL
    endpoint: str | None = None
    region: str | None = None
    # unsigned requests, for public buckets
    anonymous: bool = False
    # object-storage image fetches in flight at once
    fetch_concurrency: int = Field(default=32, ge=1, le=256)
    # an object-storage output: the lease's lifetime (renewed at a third of it) and how often the
    # journal is uploaded as a segment (whichever of the two comes first)
    lease_ttl_s: float = Field(default=120.0, ge=1.0, le=86_400.0)
    segment_s: float = Field(default=10.0, gt=0, le=3600.0)
    segment_rows: int = Field(default=1000, ge=1, le=1_000_000)
    # where an object-storage output is staged on this machine (default: the user cache folder)
    staging_dir: str | None = None

    @field_validator("endpoint")
    @classmethod
    def _endpoint_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"endpoint must start with http:// or https://, got {value!r}")
        return value.rstrip("/") if value else value


class PricesSpec(StrictModel):
    """The optional ``[prices]`` table: dollars per million tokens, overriding the shipped table."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    batch_multiplier: float | None = Field(default=None, gt=0, le=1)


class RunSpec(StrictModel):
    """The optional ``[run]`` table: which engine sends a realtime run's requests, and where.

    ``local``: one process (the default). ``ray``: the workers of a Ray cluster, sharing one rate
    limit (``pip install 'pipeline[ray]'``). None of it shapes an answer, so none of it feeds the
    request fingerprint: a job may switch engines between runs and resume.
    """

    engine: Literal["local", "ray"] = "local"
    # "auto", or a cluster's address; unset: RAY_ADDRESS, else a local Ray instance for the run
    ray_address: str | None = Field(default=None, min_length=1)
    # senders on the cluster; unset: one per CPU of the cluster, at most 16
    workers: int | None = Field(default=None, ge=1, le=1024)


class JobSpec(StrictModel):
    """A whole job file, with ``input`` and ``output`` resolved against the job file's folder."""

    name: str = Field(min_length=1)
    input: str
    output: str
    id_column: str | None = None
    request: RequestSpec
    api: ApiSpec = ApiSpec()
    limits: LimitsSpec = LimitsSpec()
    batch: BatchSpec = BatchSpec()
    prices: PricesSpec | None = None
    storage: StorageSpec = StorageSpec()
    run: RunSpec = RunSpec()
    source: str = Field(default="", exclude=True)


def load_job(path: Path) -> JobSpec:
    """Read and validate a job file; every problem is a one-line SpecError naming the file and key."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path}: job file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read job file: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: invalid TOML: {exc}") from None
    return parse_job(raw, path)


def parse_job(raw: dict[str, Any], path: Path) -> JobSpec:
    """Validate a decoded job table and resolve its paths relative to ``path``'s folder."""
    try:
        spec = JobSpec.model_validate({**raw, "source": str(path)})
    except ValidationError as exc:
        raise SpecError(f"{path}: {describe_validation_error(exc)}") from None
    base = path.parent
    request = spec.request
    # refused once, up front, rather than as a 400 (or a silently ignored field) on every row
    if request.cache and not spec.api.preset.prompt_caching:
        raise SpecError(
            f"{path}: request.cache: provider {spec.api.provider!r} does not support prompt caching"
        )
    if request.cache and not (request.system or request.tools or request.examples):
        raise SpecError(
            f"{path}: request.cache: nothing to cache; caching marks the shared system prompt, tools"
            " and examples"
        )
    problems = unsupported_features(
        spec.api.preset,
        tool_choice=request.tool_choice is not None,
        image_transport=request.image_transport,
        documents=bool(request.documents),
    )
    for problem in problems:
        raise SpecError(f"{path}: {problem}")
    if request.documents and not model_facts(request.model).pdf_input:
        raise SpecError(f"{path}: request.documents: model {request.model!r} does not take PDF input")
    if request.image_root is not None:
        root = _resolve(base, request.image_root)
        # checked here so a typo is one error for the job, not an image_error on every row
        if not Path(root).is_dir():
            raise SpecError(f"{path}: request.image_root: {root!r} is not a directory")
        request = request.model_copy(update={"image_root": root})
    storage = spec.storage
    if storage.staging_dir is not None:
        storage = storage.model_copy(update={"staging_dir": _resolve(base, storage.staging_dir)})
    if any(turn.images for turn in request.examples):
        request = request.model_copy(update={"examples": _resolve_examples(path, request)})
    return spec.model_copy(
        update={
            "input": _resolve(base, spec.input),
            "output": _resolve(base, spec.output),
            "request": request,
            "storage": storage,
        }
    )


def _resolve_examples(path: Path, request: RequestSpec) -> list[ExampleTurn]:
    """Example images resolved next to the job file; a missing one is an error for the job, once."""
    turns: list[ExampleTurn] = []
    for index, turn in enumerate(request.examples):
        images = [_resolve(path.parent, image) for image in turn.images]
        for image in images:
            if not Path(image).is_file():
                raise SpecError(f"{path}: request.examples.{index}.images: {image!r} is not a file")
        turns.append(turn.model_copy(update={"images": images}))
    return turns


def describe_validation_error(exc: ValidationError) -> str:
    """The first validation problem as ``dotted.key: what is wrong`` (plus a count of the others)."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        message = f"unknown key {where!r}"
    elif first["type"] == "missing":
        message = f"missing required key {where!r}"
    else:
        reason = first["msg"].removeprefix("Value error, ")
        message = f"{where}: {reason}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return message


def is_url(value: str) -> bool:
    """Whether a job path is a URL (``s3://bucket/x``, ``https://...``) rather than a local path."""
    return _URL.match(value) is not None


_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def _resolve(base: Path, value: str) -> str:
    if is_url(value):
        return value  # object storage and web locations are absolute already
    candidate = Path(value).expanduser()
    # normpath, not resolve(): "jobs/../out" reads as "out" in messages, symlinks stay as the user made them
    return os.path.normpath(candidate if candidate.is_absolute() else base / candidate)

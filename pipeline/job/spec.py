"""Parses a job file (TOML) into a frozen ``JobSpec``.

Owns: the job-file schema (unknown keys are errors that name the key), defaults, checks that need no
table or network (template syntax, tool_choice naming a declared tool), and resolving paths relative
to the job file. Opens no table and no network.
"""

from __future__ import annotations

import hashlib
import json
import os
import string
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.catalog.models import model_facts
from pipeline.catalog.providers import PRESETS, Provider, ProviderName, preset, unsupported_features
from pipeline.errors import SpecError
from pipeline.job.toolschema import check_tool_schema

TOOL_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "_-")
# Settings added after outputs existed: hashed only when set, so their arrival invalidates nothing.
FINGERPRINTED_WHEN_SET = ("image_max_pixels",)
# Settings that decide whether a row is sent, not what the answer is: kept out of the fingerprint so
# that changing them does not re-send (and re-pay for) every finished row.
NOT_FINGERPRINTED = frozenset(
    {"stream", "max_input_tokens", "image_root", "schema_attempts", "cache", "cache_ttl", "dedupe"}
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ToolSpec(_Strict):
    """One tool the model may call, as the API takes it."""

    name: str
    description: str | None = None
    input_schema: dict[str, Any]

    @field_validator("name")
    @classmethod
    def _name_pattern(cls, value: str) -> str:
        if not (1 <= len(value) <= 128) or not set(value) <= TOOL_NAME_CHARS:
            raise ValueError(f"tool name {value!r} must match ^[a-zA-Z0-9_-]{{1,128}}$")
        return value

    @field_validator("input_schema")
    @classmethod
    def _object_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value.get("type") != "object":
            raise ValueError('input_schema must have type = "object"')
        check_tool_schema(value)
        return value


class RequestSpec(_Strict):
    """The ``[request]`` table: what each row's Messages request holds."""

    model: str = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    prompt: str = Field(min_length=1)
    system: str | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    stop_sequences: list[str] | None = None
    images: list[str] = Field(default_factory=list)
    image_max_edge: int = Field(default=1568, ge=200, le=8000)
    tools: list[ToolSpec] = Field(default_factory=list)
    tool_choice: dict[str, Any] | None = None
    stream: bool | None = None
    max_input_tokens: int | None = Field(default=None, ge=1)
    image_root: str | None = Field(default=None, min_length=1)
    # requests per row while its tool input breaks the tool's input_schema (first included)
    schema_attempts: int = Field(default=3, ge=1, le=20)
    # fewer pixels, fewer image tokens: an image over this many pixels is shrunk to fit (fingerprinted)
    image_max_pixels: int | None = Field(default=None, ge=40_000, le=64_000_000)
    # mark the shared prefix (tools and system) with cache_control; never changes an answer
    cache: bool = False
    cache_ttl: Literal["5m", "1h"] = "5m"
    # send identical requests once; None: on when temperature is 0 (the answer is meant to repeat)
    dedupe: bool | None = None

    @field_validator("prompt", "system")
    @classmethod
    def _template_syntax(cls, value: str | None) -> str | None:
        if value is not None:
            template_fields(value)
        return value

    @field_validator("stop_sequences")
    @classmethod
    def _visible_stops(cls, value: list[str] | None) -> list[str] | None:
        # the API answers 400 to a whitespace-only stop sequence; say so once instead of once per row
        if value is not None and any(not stop.strip() for stop in value):
            raise ValueError("each stop sequence must contain non-whitespace (the API rejects it)")
        return value

    @model_validator(mode="after")
    def _tool_choice_matches(self) -> RequestSpec:
        names = [tool.name for tool in self.tools]
        if len(set(names)) != len(names):
            raise ValueError(f"tool names must be unique, got {names}")
        choice = self.tool_choice
        if choice is None:
            return self
        kind = choice.get("type")
        if kind not in {"auto", "any", "tool", "none"}:
            raise ValueError(f'tool_choice.type must be "auto", "any", "tool" or "none", not {kind!r}')
        if not self.tools:
            raise ValueError("tool_choice is set but no [[request.tools]] are declared")
        if kind == "tool" and choice.get("name") not in names:
            raise ValueError(
                f"tool_choice names {choice.get('name')!r}, which is not a declared tool {names}"
            )
        return self

    @property
    def streaming(self) -> bool:
        """Whether requests go out as SSE streams: on request, or forced by a max_tokens too large without."""
        cap = model_facts(self.model).nonstreaming_max_tokens
        return self.max_tokens > cap or bool(self.stream)

    @property
    def dedupes(self) -> bool:
        """Whether identical requests in a run are sent once: ``dedupe``, else on at temperature 0."""
        return self.dedupe if self.dedupe is not None else self.temperature == 0

    @property
    def input_token_limit(self) -> int:
        """Most input tokens one request may hold: ``max_input_tokens``, else the model's context window."""
        if self.max_input_tokens is not None:
            return self.max_input_tokens
        return model_facts(self.model).context_window

    def fingerprint(self) -> str:
        """A hash of everything that shapes the answer; a change means old answers are stale."""
        settings = self.model_dump(mode="json", exclude=set(NOT_FINGERPRINTED))
        for name in FINGERPRINTED_WHEN_SET:
            if settings.get(name) is None:
                del settings[name]  # a setting added later must not make every earlier answer stale
        canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class ApiSpec(_Strict):
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


class LimitsSpec(_Strict):
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


class BatchSpec(_Strict):
    """The optional ``[batch]`` table: how ``--mode batch`` splits, polls and resubmits.

    None of it shapes an answer, so none of it feeds the request fingerprint.
    """

    max_requests: int = Field(default=BATCH_MAX_REQUESTS, ge=1, le=BATCH_MAX_REQUESTS)
    max_bytes: int = Field(default=BATCH_MAX_BYTES, ge=10_000, le=BATCH_MAX_BYTES)
    poll_interval_s: float = Field(default=10.0, gt=0)
    max_poll_interval_s: float = Field(default=300.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=20)
    orphan_grace_s: float = Field(default=600.0, ge=0)


class PricesSpec(_Strict):
    """The optional ``[prices]`` table: dollars per million tokens, overriding the shipped table."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    batch_multiplier: float | None = Field(default=None, gt=0, le=1)


class JobSpec(_Strict):
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
    source: str = Field(default="", exclude=True)


def template_fields(template: str) -> list[str]:
    """The column names a ``{placeholder}`` template uses, in order; raises ValueError on bad syntax."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(
            f"template {template[:60]!r} is malformed: {exc} (write {{{{ and }}}} for literal braces)"
        ) from None
    for _literal, name, _spec, _conversion in parsed:
        if name is None:
            continue
        if name == "" or name.isdigit():
            raise ValueError(
                f"template {template[:60]!r} has a placeholder without a column name: use {{column}}"
            )
        if any(ch in name for ch in ".["):
            raise ValueError(f"template placeholder {{{name}}} must be a plain column name")
        if name not in names:
            names.append(name)
    return names


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
    if request.cache and not (request.system or request.tools):
        raise SpecError(
            f"{path}: request.cache: nothing to cache; caching marks the shared system prompt and tools"
        )
    for problem in unsupported_features(spec.api.preset, tool_choice=request.tool_choice is not None):
        raise SpecError(f"{path}: {problem}")
    if request.image_root is not None:
        root = _resolve(base, request.image_root)
        # checked here so a typo is one error for the job, not an image_error on every row
        if not Path(root).is_dir():
            raise SpecError(f"{path}: request.image_root: {root!r} is not a directory")
        request = request.model_copy(update={"image_root": root})
    return spec.model_copy(
        update={
            "input": _resolve(base, spec.input),
            "output": _resolve(base, spec.output),
            "request": request,
        }
    )


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


def _resolve(base: Path, value: str) -> str:
    candidate = Path(value).expanduser()
    # normpath, not resolve(): "jobs/../out" reads as "out" in messages, symlinks stay as the user made them
    return os.path.normpath(candidate if candidate.is_absolute() else base / candidate)

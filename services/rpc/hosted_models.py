"""The hosted models the platform offers, read once from `AP_MODEL_*` / `AP_MODELS`.

The control plane reads them to know which models a session may choose (and stamps the
choice on the session); the worker reads the same settings to call them. Two ways to say it:

    AP_MODEL_BASE_URL + AP_MODEL_NAME (+ AP_MODEL_API, AP_MODEL_API_KEY, prices…)   one model
    AP_MODELS='[{"id": …, "api": …, "base_url": …, "model": …, "api_key_env": …}, …]'
    AP_MODEL_DEFAULT=<id>                                                          several

Credentials are platform configuration, never the integration vault: the single model's key
is `AP_MODEL_API_KEY`; an `AP_MODELS` entry names the environment variable holding its key
(`api_key_env`), so the JSON itself never carries a secret.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.rpc.settings import SettingsError

ApiKind = Literal["chat_completions", "responses", "messages"]
API_KINDS: tuple[ApiKind, ...] = ("chat_completions", "responses", "messages")
ReasoningEffort = Literal["minimal", "low", "medium", "high"]
# Anthropic refuses a smaller thinking budget.
MIN_THINKING_BUDGET_TOKENS = 1024


def reasoning_problem(
    api: ApiKind,
    effort: ReasoningEffort | None,
    budget: int | None,
    max_output_tokens: int,
    *,
    names: tuple[str, str, str],
) -> str | None:
    """Say what is wrong with a model's reasoning settings, naming the variables; None if fine.

    `names` are how the configuration spells the effort, the thinking budget and the output
    limit (AP_MODEL_REASONING_EFFORT… or an AP_MODELS entry's keys).
    """
    effort_name, budget_name, max_name = names
    if effort is not None and api == "messages":
        return (
            f"{effort_name} is set for a messages (Anthropic) model, which takes a thinking "
            f"budget instead: set {budget_name}"
        )
    if budget is None:
        return None
    if api != "messages":
        return (
            f"{budget_name} is set for a {api} model; only messages (Anthropic) models take "
            f"a thinking budget: set {effort_name} instead"
        )
    if budget < MIN_THINKING_BUDGET_TOKENS:
        return f"{budget_name} is {budget}; Anthropic needs at least {MIN_THINKING_BUDGET_TOKENS}"
    if budget >= max_output_tokens:
        return (
            f"{budget_name} ({budget}) must be less than {max_name} ({max_output_tokens}): "
            "the thinking budget is part of the reply's tokens"
        )
    return None


class ModelPrices(BaseModel):
    """What a model costs, in US dollars per million tokens of each kind."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: float = Field(default=0.0, ge=0)
    cached_input: float | None = Field(
        default=None, ge=0, description="Prompt tokens served from the cache; default: input."
    )
    output: float = Field(default=0.0, ge=0)

    def cost_micros(self, input_tokens: int, cached_input_tokens: int, output_tokens: int) -> int:
        """Return the cost of these tokens in millionths of a dollar (dollars per million × tokens).

        `input_tokens` counts every prompt token, the cached ones among them; reasoning
        tokens are part of `output_tokens`, as every API reports them.
        """
        cached = min(cached_input_tokens, input_tokens)
        cached_price = self.input if self.cached_input is None else self.cached_input
        return round(
            (input_tokens - cached) * self.input
            + cached * cached_price
            + output_tokens * self.output
        )


class HostedModelConfig(BaseModel):
    """One offered model: which API it speaks, where, as what, with which key, at what price."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=128, description="The name sessions choose it by.")
    api: ApiKind = "chat_completions"
    base_url: str = Field(min_length=1, description="e.g. https://api.openai.com/v1")
    model: str = Field(min_length=1, description="The model id sent to the endpoint.")
    api_key: SecretStr | None = None
    key_variable: str = Field(
        default="AP_MODEL_API_KEY", description="Where the key comes from, for messages."
    )
    context_window: int | None = Field(
        default=None, gt=0, description="Tokens the model reads at most; unset: never trimmed."
    )
    max_output_tokens: int = Field(default=4096, gt=0, description="Sent as max_tokens.")
    reasoning_effort: ReasoningEffort | None = Field(
        default=None, description="Reasoning asked of an OpenAI-format model; unset: none asked."
    )
    thinking_budget_tokens: int | None = Field(
        default=None, gt=0, description="Extended thinking asked of a messages model."
    )
    prices: ModelPrices = Field(default_factory=ModelPrices)
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    idle_timeout_seconds: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=3, ge=0, le=10)
    retry_max_wait_seconds: float = Field(default=30.0, ge=0)

    @model_validator(mode="after")
    def _strip_slash(self) -> Self:
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        return self


class _ModelsEntry(BaseModel):
    """One element of AP_MODELS, as written (the key by reference)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str | None = None
    api: ApiKind = "chat_completions"
    base_url: str = Field(min_length=1)
    model: str = Field(min_length=1)
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    context_window: int | None = Field(default=None, gt=0)
    max_output_tokens: int = Field(default=4096, gt=0)
    reasoning_effort: ReasoningEffort | None = None
    thinking_budget_tokens: int | None = Field(default=None, gt=0)
    prices: ModelPrices = Field(default_factory=ModelPrices)


class HostedModelSettings(BaseSettings):
    """The hosted models: one through AP_MODEL_BASE_URL/AP_MODEL_NAME, or a list in AP_MODELS."""

    model_config = SettingsConfigDict(
        env_prefix="AP_MODEL_", extra="ignore", frozen=True, populate_by_name=True
    )

    base_url: str | None = Field(default=None, description="e.g. https://api.openai.com/v1")
    name: str | None = Field(default=None, description="The model id sent to the endpoint.")
    api: ApiKind = Field(
        default="chat_completions", description="chat_completions, responses or messages."
    )
    api_key: SecretStr | None = None
    context_window: int | None = Field(default=None, gt=0)
    max_output_tokens: int = Field(default=4096, gt=0)
    reasoning_effort: ReasoningEffort | None = Field(
        default=None, description="minimal, low, medium or high: reasoning asked of the model."
    )
    thinking_budget_tokens: int | None = Field(
        default=None, gt=0, description="Tokens of extended thinking (messages models)."
    )
    price_input: float = Field(default=0.0, ge=0, description="USD per million input tokens.")
    price_cached_input: float | None = Field(default=None, ge=0)
    price_output: float = Field(default=0.0, ge=0, description="USD per million output tokens.")
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    idle_timeout_seconds: float = Field(
        default=60.0, gt=0, description="Longest silence allowed inside a model stream."
    )
    max_retries: int = Field(
        default=3, ge=0, le=10, description="Retries of a call that failed before its first token."
    )
    retry_max_wait_seconds: float = Field(
        default=30.0, ge=0, description="Longest wait before one retry (Retry-After included)."
    )
    models: str | None = Field(
        default=None, validation_alias="AP_MODELS", description="JSON list of offered models."
    )
    default: str | None = Field(
        default=None, validation_alias="AP_MODEL_DEFAULT", description="Id of the default model."
    )

    _offered: tuple[HostedModelConfig, ...] = PrivateAttr(default=())

    @model_validator(mode="after")
    def _check(self) -> Self:
        base_url = self.base_url.rstrip("/") if self.base_url else None
        object.__setattr__(self, "base_url", base_url)
        name = self.name or None
        if base_url and not name:
            raise ValueError(
                "AP_MODEL_BASE_URL is set but AP_MODEL_NAME is not: set both (the endpoint "
                "and the model id it serves), or neither"
            )
        if name and not base_url:
            raise ValueError(
                "AP_MODEL_NAME is set but AP_MODEL_BASE_URL is not: set both (the endpoint "
                "and the model id it serves), or neither"
            )
        if self.models and base_url:
            raise ValueError(
                "AP_MODELS and AP_MODEL_BASE_URL/AP_MODEL_NAME are both set: list every model "
                "in AP_MODELS, or configure one with AP_MODEL_BASE_URL and AP_MODEL_NAME"
            )
        offered = self._parse_offered(os.environ)
        ids = [m.id for m in offered]
        if self.default is not None and self.default not in ids:
            raise ValueError(
                f"AP_MODEL_DEFAULT is {self.default!r}, which is not an offered model "
                f"(offered: {', '.join(ids) or 'none'})"
            )
        self._offered = offered
        return self

    def _parse_offered(self, env: Mapping[str, str]) -> tuple[HostedModelConfig, ...]:
        common: dict[str, Any] = {
            "connect_timeout_seconds": self.connect_timeout_seconds,
            "idle_timeout_seconds": self.idle_timeout_seconds,
            "max_retries": self.max_retries,
            "retry_max_wait_seconds": self.retry_max_wait_seconds,
        }
        if self.base_url and self.name:
            problem = reasoning_problem(
                self.api,
                self.reasoning_effort,
                self.thinking_budget_tokens,
                self.max_output_tokens,
                names=(
                    "AP_MODEL_REASONING_EFFORT",
                    "AP_MODEL_THINKING_BUDGET_TOKENS",
                    "AP_MODEL_MAX_OUTPUT_TOKENS",
                ),
            )
            if problem is not None:
                raise ValueError(problem)
            prices = ModelPrices(
                input=self.price_input,
                cached_input=self.price_cached_input,
                output=self.price_output,
            )
            return (
                HostedModelConfig(
                    id=self.name,
                    api=self.api,
                    base_url=self.base_url,
                    model=self.name,
                    api_key=self.api_key,
                    context_window=self.context_window,
                    max_output_tokens=self.max_output_tokens,
                    reasoning_effort=self.reasoning_effort,
                    thinking_budget_tokens=self.thinking_budget_tokens,
                    prices=prices,
                    **common,
                ),
            )
        if not self.models:
            return ()
        try:
            raw = json.loads(self.models)
        except ValueError as err:
            raise ValueError(f"AP_MODELS is not JSON: {err}") from None
        if not isinstance(raw, list) or not raw:
            raise ValueError("AP_MODELS must be a non-empty JSON list of model objects")
        offered: list[HostedModelConfig] = []
        for index, item in enumerate(raw):
            try:
                entry = _ModelsEntry.model_validate(item)
            except ValidationError as err:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: {e['msg']}"
                    for e in err.errors()
                )
                raise ValueError(f"AP_MODELS[{index}] is invalid: {problems}") from None
            problem = reasoning_problem(
                entry.api,
                entry.reasoning_effort,
                entry.thinking_budget_tokens,
                entry.max_output_tokens,
                names=(
                    f"AP_MODELS[{index}].reasoning_effort",
                    f"AP_MODELS[{index}].thinking_budget_tokens",
                    f"AP_MODELS[{index}].max_output_tokens",
                ),
            )
            if problem is not None:
                raise ValueError(problem)
            key = None
            if entry.api_key_env is not None:
                value = env.get(entry.api_key_env)
                if not value:
                    raise ValueError(
                        f"AP_MODELS[{index}] takes its key from {entry.api_key_env}, "
                        "which is not set"
                    )
                key = SecretStr(value)
            offered.append(
                HostedModelConfig(
                    id=entry.id or entry.model,
                    api=entry.api,
                    base_url=entry.base_url,
                    model=entry.model,
                    api_key=key,
                    key_variable=entry.api_key_env or f"AP_MODELS[{index}].api_key_env",
                    context_window=entry.context_window,
                    max_output_tokens=entry.max_output_tokens,
                    reasoning_effort=entry.reasoning_effort,
                    thinking_budget_tokens=entry.thinking_budget_tokens,
                    prices=entry.prices,
                    **common,
                )
            )
        ids = [m.id for m in offered]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"AP_MODELS offers the id {duplicates[0]!r} twice; give each an id")
        return tuple(offered)

    @property
    def offered(self) -> tuple[HostedModelConfig, ...]:
        """Return the offered models, the default first."""
        offered = self._offered
        default = self.default_model
        return tuple(sorted(offered, key=lambda m: m is not default))

    @property
    def default_model(self) -> HostedModelConfig | None:
        """Return the model a session gets when it names none; None when none is offered."""
        offered = self._offered
        if not offered:
            return None
        return next((m for m in offered if m.id == self.default), offered[0])

    @property
    def configured(self) -> bool:
        """Tell whether at least one model is offered."""
        return bool(self._offered)

    def find(self, model_id: str) -> HostedModelConfig | None:
        """Return the offered model with this id, or None."""
        return next((m for m in self.offered if m.id == model_id), None)

    @classmethod
    def from_env(cls, **overrides: object) -> Self:
        """Load the hosted models from the environment, exiting with the variables named."""
        try:
            return cls(**overrides)  # type: ignore[arg-type]
        except ValidationError as exc:
            lines = ["invalid hosted model configuration:"]
            for err in exc.errors():
                loc = [str(p) for p in err["loc"]]
                field = loc[0] if loc else ""
                variable = (
                    field
                    if field.startswith("AP_")
                    else (f"AP_MODEL_{field.upper()}" if field else "")
                )
                message = str(err["msg"]).removeprefix("Value error, ")
                lines.append(f"  {variable}: {message}" if variable else f"  {message}")
            print("\n".join(lines), file=sys.stderr)
            raise SettingsError(2) from None

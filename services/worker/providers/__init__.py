"""Adapters from the model seam (services/worker/model.py) to each hosted model API."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from services.rpc.hosted_models import ApiKind, HostedModelConfig, HostedModelSettings
from services.worker.model import HostedModel, ModelClient, ModelSettings
from services.worker.providers.chat_completions import ChatCompletionsClient
from services.worker.providers.messages import MessagesClient
from services.worker.providers.responses import ResponsesClient

# The adapter of each API kind a hosted model configuration may name (AP_MODEL_API).
ADAPTERS: dict[ApiKind, Callable[[HostedModelConfig, httpx.AsyncClient], ModelClient]] = {
    "chat_completions": ChatCompletionsClient,
    "responses": ResponsesClient,
    "messages": MessagesClient,
}


def open_model(config: HostedModelConfig, http: httpx.AsyncClient) -> HostedModel:
    """Return one offered model behind its API's adapter."""
    settings = ModelSettings(
        model=config.model,
        max_output_tokens=config.max_output_tokens,
        reasoning_effort=config.reasoning_effort,
        thinking_budget_tokens=config.thinking_budget_tokens,
    )
    return HostedModel(ADAPTERS[config.api](config, http), settings, config)


def open_hosted_models(
    settings: HostedModelSettings, http: httpx.AsyncClient
) -> dict[str, HostedModel]:
    """Return every offered model by id, the default first; empty if none is configured."""
    return {config.id: open_model(config, http) for config in settings.offered}

"""Adapters from the model seam (services/worker/model.py) to each hosted model API."""

from __future__ import annotations

import httpx

from services.rpc.settings import HostedModelSettings
from services.worker.model import HostedModel, ModelSettings
from services.worker.providers.chat_completions import ChatCompletionsClient


def open_hosted_model(settings: HostedModelSettings, http: httpx.AsyncClient) -> HostedModel | None:
    """Return the configured hosted model behind its API's adapter; None if none is configured."""
    if not settings.configured or settings.name is None:
        return None
    return HostedModel(ChatCompletionsClient(settings, http), ModelSettings(model=settings.name))

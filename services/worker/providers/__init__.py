"""Adapters from the model seam (services/worker/model.py) to each hosted model API."""

from __future__ import annotations

import httpx

from services.rpc.settings import HostedModelSettings
from services.worker.model import ModelClient
from services.worker.providers.chat_completions import ChatCompletionsClient


def open_model_client(settings: HostedModelSettings, http: httpx.AsyncClient) -> ModelClient:
    """Return the client for the configured hosted model's API."""
    return ChatCompletionsClient(settings, http)

"""Check that each configured model answers: `ap-service doctor`, and the worker at start-up.

For each offered model: can its endpoint be reached, does it accept the key, does it know
the model name. Asked through the model-list API every format has (`GET {base_url}/models/
{model}`, else the list), so a check costs no tokens. Each answer is one line in plain words.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

from services.rpc.hosted_models import HostedModelConfig, HostedModelSettings
from services.worker.providers.messages import ANTHROPIC_VERSION


@dataclass(frozen=True)
class ModelCheck:
    """What checking one model found."""

    model: HostedModelConfig
    ok: bool
    message: str

    def line(self) -> str:
        """Say it in one line: the model, ok or FAILED, and why."""
        verdict = "ok    " if self.ok else "FAILED"
        return f"{verdict} {self.model.id} ({self.model.api}): {self.message}"


def _headers(config: HostedModelConfig) -> dict[str, str]:
    if config.api == "messages":
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if config.api_key is not None:
            headers["x-api-key"] = config.api_key.get_secret_value()
        return headers
    if config.api_key is None:
        return {}
    return {"authorization": f"Bearer {config.api_key.get_secret_value()}"}


async def check_model(config: HostedModelConfig, http: httpx.AsyncClient) -> ModelCheck:
    """Ask the model's endpoint about the model; say what that showed."""
    timeout = httpx.Timeout(config.connect_timeout_seconds, read=config.connect_timeout_seconds)
    headers = _headers(config)
    url = config.base_url
    try:
        one = await http.get(f"{url}/models/{config.model}", headers=headers, timeout=timeout)
        # Not every server serves one model by id (or knows the model): ask for the list.
        listed = (
            await http.get(f"{url}/models", headers=headers, timeout=timeout)
            if one.status_code == 404
            else None
        )
    except httpx.TimeoutException:
        return ModelCheck(config, False, f"cannot reach {url}: no answer in time (timeout)")
    except httpx.HTTPError as err:
        return ModelCheck(config, False, f"cannot reach {url}: {err or type(err).__name__}")
    answer = listed if listed is not None else one
    if answer.status_code in (401, 403):
        return ModelCheck(
            config,
            False,
            f"{url} refused the credentials (HTTP {answer.status_code}); check "
            f"{config.key_variable}",
        )
    ok, message = _judge(config, one, listed)
    return ModelCheck(config, ok, message)


def _judge(
    config: HostedModelConfig, one: httpx.Response, listed: httpx.Response | None
) -> tuple[bool, str]:
    url, model = config.base_url, config.model
    if listed is None:
        if one.status_code == 200:
            return True, f"{url} serves {model!r}"
        return False, f"{url} answered HTTP {one.status_code} about the model"
    if listed.status_code != 200:
        return True, (
            f"{url} answers, but lists no models to check {model!r} against "
            f"(HTTP {listed.status_code})"
        )
    try:
        ids = [str(m.get("id")) for m in listed.json().get("data") or []]
    except (ValueError, AttributeError):
        ids = []
    if model in ids:
        return True, f"{url} serves {model!r}"
    known = ", ".join(ids[:10]) + (" …" if len(ids) > 10 else "")
    return False, f"{url} does not know the model name {model!r}" + (
        f" (it serves: {known})" if ids else ""
    )


async def check_models(settings: HostedModelSettings, http: httpx.AsyncClient) -> list[ModelCheck]:
    """Check every offered model at once."""
    return list(await asyncio.gather(*(check_model(m, http) for m in settings.offered)))


async def _doctor(settings: HostedModelSettings) -> int:
    if not settings.configured:
        print(
            "FAILED no hosted model is configured: set AP_MODEL_BASE_URL and AP_MODEL_NAME, or "
            "AP_MODELS; sessions and runs fail with HOSTED_MODEL_UNAVAILABLE until then"
        )
        return 1
    async with httpx.AsyncClient(trust_env=False) as http:
        checks = await check_models(settings, http)
    for check in checks:
        print(check.line())
    return 0 if all(c.ok for c in checks) else 1


def main() -> None:
    """Check the models the environment configures; exit 1 if any does not answer well."""
    settings = HostedModelSettings.from_env()
    raise SystemExit(asyncio.run(_doctor(settings)))


if __name__ == "__main__":
    main()

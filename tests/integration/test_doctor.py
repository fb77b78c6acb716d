"""`ap-service doctor` and the worker's start-up check: each model's answer in plain words."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from devtools.devmodel import DevModel
from devtools.processes import eventually, free_port
from services.rpc.hosted_models import HostedModelSettings
from tests.harness import start_worker

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]

KEY = "sk-doctor-test"


@pytest_asyncio.fixture(loop_scope="session")
async def devmodel() -> AsyncIterator[DevModel]:
    """A dev model that serves one model name and wants a key."""
    model = DevModel(models=["served-model"], api_key=KEY)
    await model.start()
    yield model
    await model.stop()


async def doctor(env: dict[str, str]) -> tuple[int, str]:
    """Run `python -m services doctor` with these model variables; return its code and output."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AP_MODEL")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services",
        "doctor",
        env=clean | env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    return await process.wait(), out.decode()


def entry(model_id: str, api: str, base_url: str, model: str, key_env: str) -> dict[str, str]:
    """One AP_MODELS entry."""
    return {
        "id": model_id,
        "api": api,
        "base_url": base_url,
        "model": model,
        "api_key_env": key_env,
    }


@pytest.mark.parametrize("api", ["chat_completions", "responses", "messages"])
async def test_a_well_configured_model_is_ok(devmodel: DevModel, api: str) -> None:
    """The endpoint answers, takes the key and serves the name: ok, exit 0."""
    code, out = await doctor(
        {
            "AP_MODEL_BASE_URL": devmodel.base_url,
            "AP_MODEL_NAME": "served-model",
            "AP_MODEL_API": api,
            "AP_MODEL_API_KEY": KEY,
        }
    )
    assert code == 0, out
    assert out.startswith("ok") and "serves 'served-model'" in out
    assert KEY not in out


async def test_each_problem_is_said_in_plain_words(devmodel: DevModel) -> None:
    """Wrong key, unknown model name, nothing listening: one line each, exit 1."""
    dead = f"http://127.0.0.1:{free_port()}/v1"
    models = [
        entry("good", "messages", devmodel.base_url, "served-model", "GOOD_KEY"),
        entry("bad-key", "chat_completions", devmodel.base_url, "served-model", "BAD_KEY"),
        entry("bad-name", "responses", devmodel.base_url, "gpt-nope", "GOOD_KEY"),
        entry("down", "chat_completions", dead, "served-model", "GOOD_KEY"),
    ]
    code, out = await doctor(
        {"AP_MODELS": json.dumps(models), "GOOD_KEY": KEY, "BAD_KEY": "sk-wrong"}
    )
    assert code == 1
    lines = {line.split()[1]: line for line in out.splitlines()}
    assert lines["good"].startswith("ok")
    assert "refused the credentials (HTTP 401); check BAD_KEY" in lines["bad-key"]
    assert "does not know the model name 'gpt-nope' (it serves: served-model)" in lines["bad-name"]
    assert f"cannot reach {dead}" in lines["down"]
    assert all(line.startswith("FAILED") for k, line in lines.items() if k != "good")
    assert KEY not in out and "sk-wrong" not in out


async def test_without_a_model_doctor_says_what_to_set() -> None:
    """Nothing configured: say which variables to set."""
    code, out = await doctor({})
    assert code == 1 and "AP_MODEL_BASE_URL and AP_MODEL_NAME, or AP_MODELS" in out


async def test_a_half_set_model_stops_the_doctor_naming_both_variables() -> None:
    """The same start-up error the services give."""
    code, out = await doctor({"AP_MODEL_BASE_URL": "http://127.0.0.1:9/v1"})
    assert code == 2
    assert "AP_MODEL_BASE_URL is set but AP_MODEL_NAME is not" in out


@pytest.mark.parametrize("service", ["worker", "control_plane"])
async def test_a_service_with_a_half_set_model_stops_at_start_up(service: str) -> None:
    """The worker and the control plane refuse to start, naming both variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AP_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services",
        service,
        env=clean | {"AP_MODEL_NAME": "gpt-4.1-mini", "AP_GRPC_PORT": "0"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    assert await process.wait() == 2
    text = out.decode()
    assert "AP_MODEL_NAME is set but AP_MODEL_BASE_URL is not" in text
    assert "Traceback" not in text


async def test_the_worker_reports_each_models_check_as_a_metric(devmodel: DevModel) -> None:
    """At start-up the worker sets ap_hosted_model_up per model: 1 answering, 0 refused."""
    models = [
        entry("metric-good", "chat_completions", devmodel.base_url, "served-model", "GOOD_KEY"),
        entry("metric-bad-key", "messages", devmodel.base_url, "served-model", "BAD_KEY"),
    ]
    variables = {"AP_MODELS": json.dumps(models), "GOOD_KEY": KEY, "BAD_KEY": "sk-wrong"}
    with pytest.MonkeyPatch.context() as env:
        for name, value in variables.items():
            env.setenv(name, value)
        model = HostedModelSettings.from_env()
    # No control plane listens there: the worker starts anyway and checks its models.
    worker = await start_worker(f"127.0.0.1:{free_port()}", "doctor-token", model)

    def up(model_id: str, api: str) -> float | None:
        return REGISTRY.get_sample_value("ap_hosted_model_up", {"model": model_id, "api": api})

    async def both_checked() -> bool:
        return None not in (up("metric-good", "chat_completions"), up("metric-bad-key", "messages"))

    try:
        await eventually(both_checked)
        assert up("metric-good", "chat_completions") == 1
        assert up("metric-bad-key", "messages") == 0
    finally:
        await worker.stop()

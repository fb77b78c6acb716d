"""The README's hosted model recipes parse into the configuration they describe."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from services.rpc.hosted_models import HostedModelSettings

README = Path(__file__).resolve().parents[2] / "README.md"


def recipes() -> dict[str, dict[str, str]]:
    """Return each recipe of the README's Hosted models section: its variables by heading."""
    text = README.read_text()
    section = text.split("\n## Hosted models\n", 1)[1].split("\n## ", 1)[0]
    found: dict[str, dict[str, str]] = {}
    for heading, block in re.findall(r"^### (.+?)\n.*?```sh\n(.*?)```", section, re.M | re.S):
        words = [w for w in shlex.split(block, comments=True) if w != "export"]
        found[heading] = dict(word.split("=", 1) for word in words)
    return found


def setting_names() -> set[str]:
    """Return every variable the hosted model settings read."""
    prefix = HostedModelSettings.model_config.get("env_prefix", "")
    return {
        (info.validation_alias if isinstance(info.validation_alias, str) else prefix + name).upper()
        for name, info in HostedModelSettings.model_fields.items()
    }


def load(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> HostedModelSettings:
    """Load the settings from exactly the recipe's variables."""
    for name in list(os.environ):
        if name.startswith("AP_MODEL"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return HostedModelSettings.from_env()


EXPECTED = {
    "OpenAI": [("gpt-4.1-mini", "responses", "https://api.openai.com/v1", "gpt-4.1-mini")],
    "Anthropic": [
        ("claude-sonnet-4-5", "messages", "https://api.anthropic.com/v1", "claude-sonnet-4-5")
    ],
    "vLLM": [
        (
            "Qwen/Qwen2.5-7B-Instruct",
            "chat_completions",
            "http://vllm.internal:8000/v1",
            "Qwen/Qwen2.5-7B-Instruct",
        )
    ],
    "Ollama": [("llama3.2", "chat_completions", "http://localhost:11434/v1", "llama3.2")],
    "LiteLLM (several models through one proxy)": [
        ("gpt-4.1-mini", "chat_completions", "http://litellm.internal:4000/v1", "gpt-4.1-mini"),
        ("claude-sonnet", "messages", "http://litellm.internal:4000/v1", "claude-sonnet-4-5"),
    ],
}


def test_the_readme_has_a_recipe_for_each_provider() -> None:
    """OpenAI, Anthropic, vLLM, Ollama and LiteLLM each have one."""
    assert set(recipes()) == set(EXPECTED)


@pytest.mark.parametrize("heading", sorted(EXPECTED))
def test_each_recipe_configures_what_it_says(monkeypatch: pytest.MonkeyPatch, heading: str) -> None:
    """Every variable is one the platform reads, and together they offer the models named."""
    env = recipes()[heading]
    unknown = {n for n in env if n.startswith("AP_")} - setting_names()
    assert not unknown, f"{heading} sets variables nothing reads: {unknown}"
    settings = load(monkeypatch, env)
    offered = [(m.id, m.api, m.base_url, m.model) for m in settings.offered]
    assert offered == EXPECTED[heading]
    for model in settings.offered:
        assert model.context_window is not None
        if heading in ("OpenAI", "Anthropic", "LiteLLM (several models through one proxy)"):
            assert model.api_key is not None and model.prices.output > 0

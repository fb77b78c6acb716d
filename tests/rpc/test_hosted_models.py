"""The hosted model configuration: one model or a list, every mistake named by its variable."""

from __future__ import annotations

import json

import pytest

from services.rpc.hosted_models import HostedModelSettings, ModelPrices
from services.rpc.settings import SettingsError


def load(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> HostedModelSettings:
    """Load the settings from exactly these variables."""
    for name in ("AP_MODEL_BASE_URL", "AP_MODEL_NAME", "AP_MODELS", "AP_MODEL_DEFAULT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return HostedModelSettings.from_env()


def refusal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str]
) -> str:
    """Return what start-up prints for a configuration it refuses."""
    with pytest.raises(SettingsError):
        load(monkeypatch, env)
    return capsys.readouterr().err


def test_nothing_configured_offers_no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without any model variable nothing is offered: sessions get HOSTED_MODEL_UNAVAILABLE."""
    settings = load(monkeypatch, {})
    assert not settings.configured and settings.default_model is None and settings.offered == ()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"AP_MODEL_BASE_URL": "https://api.openai.com/v1"}, "AP_MODEL_NAME is not"),
        ({"AP_MODEL_NAME": "gpt-4.1-mini"}, "AP_MODEL_BASE_URL is not"),
    ],
)
def test_a_half_set_model_is_a_start_up_error_naming_both_variables(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    named: str,
) -> None:
    """A URL without a name (or the reverse) never falls back to anything: it is refused."""
    err = refusal(monkeypatch, capsys, env)
    assert named in err
    assert "AP_MODEL_BASE_URL" in err and "AP_MODEL_NAME" in err


def test_one_model_from_the_single_model_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The simple case: the URL, name, API kind, key, window and prices of one model."""
    settings = load(
        monkeypatch,
        {
            "AP_MODEL_BASE_URL": "https://api.anthropic.com/v1/",
            "AP_MODEL_NAME": "claude-sonnet-4-5",
            "AP_MODEL_API": "messages",
            "AP_MODEL_API_KEY": "sk-ant-test",
            "AP_MODEL_CONTEXT_WINDOW": "200000",
            "AP_MODEL_PRICE_INPUT": "3",
            "AP_MODEL_PRICE_CACHED_INPUT": "0.3",
            "AP_MODEL_PRICE_OUTPUT": "15",
        },
    )
    (model,) = settings.offered
    assert settings.default_model is model
    assert (model.id, model.api, model.base_url) == (
        "claude-sonnet-4-5",
        "messages",
        "https://api.anthropic.com/v1",
    )
    assert model.api_key is not None and model.api_key.get_secret_value() == "sk-ant-test"
    assert model.context_window == 200000
    assert model.prices == ModelPrices(input=3, cached_input=0.3, output=15)


def test_a_list_of_models_with_keys_by_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """AP_MODELS offers several; each key comes from the variable its entry names."""
    models = [
        {"id": "fast", "base_url": "http://vllm:8000/v1", "model": "qwen"},
        {
            "id": "smart",
            "api": "responses",
            "base_url": "https://api.openai.com/v1",
            "model": "gpt-5",
            "api_key_env": "OPENAI_API_KEY",
            "prices": {"input": 1.25, "output": 10},
        },
    ]
    settings = load(
        monkeypatch,
        {"AP_MODELS": json.dumps(models), "AP_MODEL_DEFAULT": "smart", "OPENAI_API_KEY": "sk-x"},
    )
    assert [m.id for m in settings.offered] == ["smart", "fast"]  # the default first
    smart = settings.find("smart")
    assert smart is not None and smart.api == "responses"
    assert smart.api_key is not None and smart.api_key.get_secret_value() == "sk-x"
    assert settings.find("fast") is not None and settings.find("other") is None


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"AP_MODELS": "[{"}, "AP_MODELS is not JSON"),
        ({"AP_MODELS": "[]"}, "non-empty JSON list"),
        (
            {"AP_MODELS": '[{"base_url": "http://x"}]'},
            "AP_MODELS[0] is invalid: model: Field required",
        ),
        (
            {"AP_MODELS": '[{"base_url": "http://x", "model": "m", "api_key": "sk-plain"}]'},
            "api_key: Extra inputs are not permitted",
        ),
        (
            {"AP_MODELS": '[{"base_url": "http://x", "model": "m", "api_key_env": "NOPE_KEY"}]'},
            "takes its key from NOPE_KEY, which is not set",
        ),
        (
            {
                "AP_MODELS": '[{"base_url": "http://x", "model": "m"}, '
                '{"base_url": "http://y", "model": "m"}]'
            },
            "offers the id 'm' twice",
        ),
        (
            {"AP_MODELS": '[{"base_url": "http://x", "model": "m"}]', "AP_MODEL_DEFAULT": "n"},
            "AP_MODEL_DEFAULT is 'n', which is not an offered model (offered: m)",
        ),
        (
            {
                "AP_MODELS": '[{"base_url": "http://x", "model": "m"}]',
                "AP_MODEL_BASE_URL": "http://y",
                "AP_MODEL_NAME": "n",
            },
            "AP_MODELS and AP_MODEL_BASE_URL/AP_MODEL_NAME are both set",
        ),
        (
            {"AP_MODEL_BASE_URL": "http://x", "AP_MODEL_NAME": "m", "AP_MODEL_API": "grpc"},
            "AP_MODEL_API: Input should be",
        ),
        (
            {
                "AP_MODEL_BASE_URL": "http://x",
                "AP_MODEL_NAME": "m",
                "AP_MODEL_REASONING_EFFORT": "extreme",
            },
            "AP_MODEL_REASONING_EFFORT: Input should be 'minimal', 'low', 'medium' or 'high'",
        ),
        (
            {
                "AP_MODEL_BASE_URL": "http://x",
                "AP_MODEL_NAME": "m",
                "AP_MODEL_API": "messages",
                "AP_MODEL_REASONING_EFFORT": "high",
            },
            "AP_MODEL_REASONING_EFFORT is set for a messages (Anthropic) model, which takes a "
            "thinking budget instead: set AP_MODEL_THINKING_BUDGET_TOKENS",
        ),
        (
            {
                "AP_MODEL_BASE_URL": "http://x",
                "AP_MODEL_NAME": "m",
                "AP_MODEL_THINKING_BUDGET_TOKENS": "2048",
            },
            "AP_MODEL_THINKING_BUDGET_TOKENS is set for a chat_completions model",
        ),
        (
            {
                "AP_MODEL_BASE_URL": "http://x",
                "AP_MODEL_NAME": "m",
                "AP_MODEL_API": "messages",
                "AP_MODEL_THINKING_BUDGET_TOKENS": "lots",
            },
            "AP_MODEL_THINKING_BUDGET_TOKENS: Input should be a valid integer",
        ),
        (
            {
                "AP_MODEL_BASE_URL": "http://x",
                "AP_MODEL_NAME": "m",
                "AP_MODEL_API": "messages",
                "AP_MODEL_THINKING_BUDGET_TOKENS": "512",
            },
            "AP_MODEL_THINKING_BUDGET_TOKENS is 512; Anthropic needs at least 1024",
        ),
        (
            {
                "AP_MODEL_BASE_URL": "http://x",
                "AP_MODEL_NAME": "m",
                "AP_MODEL_API": "messages",
                "AP_MODEL_THINKING_BUDGET_TOKENS": "4096",
            },
            "AP_MODEL_THINKING_BUDGET_TOKENS (4096) must be less than AP_MODEL_MAX_OUTPUT_TOKENS "
            "(4096)",
        ),
        (
            {
                "AP_MODELS": '[{"api": "messages", "base_url": "http://x", "model": "m", '
                '"max_output_tokens": 2000, "thinking_budget_tokens": 3000}]'
            },
            "AP_MODELS[0].thinking_budget_tokens (3000) must be less than "
            "AP_MODELS[0].max_output_tokens (2000)",
        ),
        (
            {
                "AP_MODELS": '[{"api": "responses", "base_url": "http://x", "model": "m", '
                '"reasoning_effort": "max"}]'
            },
            "AP_MODELS[0] is invalid: reasoning_effort: Input should be",
        ),
    ],
)
def test_mistakes_are_refused_in_plain_words(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    expected: str,
) -> None:
    """Each mistake names what is wrong; a key written into AP_MODELS is refused."""
    err = refusal(monkeypatch, capsys, env)
    assert expected in err
    assert "sk-plain" not in err


def test_reasoning_is_asked_per_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """An effort for OpenAI-format models, a thinking budget for Anthropic ones; unset: none."""
    (single,) = load(
        monkeypatch,
        {
            "AP_MODEL_BASE_URL": "https://api.openai.com/v1",
            "AP_MODEL_NAME": "o4-mini",
            "AP_MODEL_API": "responses",
            "AP_MODEL_REASONING_EFFORT": "low",
        },
    ).offered
    assert (single.reasoning_effort, single.thinking_budget_tokens) == ("low", None)
    models = [
        {"id": "o", "api": "chat_completions", "base_url": "http://x", "model": "o3",
         "reasoning_effort": "high"},
        {"id": "c", "api": "messages", "base_url": "http://y", "model": "claude",
         "max_output_tokens": 16000, "thinking_budget_tokens": 10000},
        {"id": "plain", "base_url": "http://z", "model": "llama"},
    ]  # fmt: skip
    monkeypatch.delenv("AP_MODEL_REASONING_EFFORT")
    monkeypatch.delenv("AP_MODEL_API")
    settings = load(monkeypatch, {"AP_MODELS": json.dumps(models)})
    found = {m.id: (m.reasoning_effort, m.thinking_budget_tokens) for m in settings.offered}
    assert found == {"o": ("high", None), "c": (None, 10000), "plain": (None, None)}


def test_cost_is_dollars_per_million_times_tokens_in_micros() -> None:
    """Cost in millionths of a dollar: uncached input, cached input and output at their prices."""
    prices = ModelPrices(input=3, cached_input=0.3, output=15)
    assert prices.cost_micros(1000, 400, 200) == 600 * 3 + 120 + 200 * 15
    assert ModelPrices(input=2, output=8).cost_micros(10, 4, 1) == 10 * 2 + 8  # cached at input
    assert ModelPrices().cost_micros(10**6, 0, 10**6) == 0

"""Tenant model settings and the provider factory: no model, keys from references, no key in text."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from kontor.host.providers import ModelSettings, Provider, ProviderConfigError, provider_from_settings
from kontor.host.providers.anthropic_provider import AnthropicProvider
from kontor.host.providers.openai_provider import OpenAIProvider

SECRET = "sk-very-secret-value-42"


@pytest.mark.parametrize("settings", [None, {}, {"provider": "none"}, ModelSettings()])
def test_no_model_configured_gives_no_provider(settings):
    assert provider_from_settings(settings) is None  # the host then falls back to retrieval only


def test_the_key_never_appears_in_text_forms():
    settings = ModelSettings(provider="anthropic", model="claude-test", api_key=SecretStr(SECRET))
    for text in (repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())):
        assert SECRET not in text
    provider = provider_from_settings(settings)
    assert isinstance(provider, AnthropicProvider) and SECRET not in repr(provider)
    assert provider.base_url == "https://api.anthropic.com" and provider.model == "claude-test"


async def test_key_from_an_environment_variable_named_in_the_settings():
    settings = ModelSettings(provider="anthropic", model="claude-test", api_key_env="ACME_ANTHROPIC_KEY")
    assert settings.resolve_api_key({"ACME_ANTHROPIC_KEY": f" {SECRET}\n"}).get_secret_value() == SECRET
    with pytest.raises(ProviderConfigError, match="ACME_ANTHROPIC_KEY is not set"):
        provider_from_settings(settings, environ={})
    provider = provider_from_settings(settings, environ={"ACME_ANTHROPIC_KEY": SECRET})
    assert isinstance(provider, Provider)
    await provider.aclose()


def test_key_from_a_secret_reference(tmp_path: Path):
    secret_file = tmp_path / "anthropic_key"
    secret_file.write_text(SECRET + "\n")
    by_file = ModelSettings(provider="anthropic", model="m", api_key_ref=f"file:{secret_file}")
    assert by_file.resolve_api_key({}).get_secret_value() == SECRET
    by_env = ModelSettings(provider="openai", model="m", api_key_ref="env:VLLM_KEY")
    assert by_env.resolve_api_key({"VLLM_KEY": SECRET}).get_secret_value() == SECRET

    missing = ModelSettings(provider="anthropic", model="m", api_key_ref=f"file:{tmp_path / 'nope'}")
    with pytest.raises(ProviderConfigError, match="cannot read the API key file") as caught:
        missing.resolve_api_key({})
    assert SECRET not in str(caught.value)
    secret_file.write_text("  \n")
    with pytest.raises(ProviderConfigError, match="is empty"):
        by_file.resolve_api_key({})
    with pytest.raises(ValidationError, match="api_key_ref must be"):
        ModelSettings(provider="openai", model="m", api_key_ref="vault:kv/acme")


def test_invalid_settings_are_config_errors_that_name_the_field():
    with pytest.raises(ProviderConfigError, match="needs an API key"):
        provider_from_settings({"provider": "anthropic", "model": "claude-test"}, environ={})
    with pytest.raises(ProviderConfigError, match="needs a model name"):
        provider_from_settings({"provider": "openai", "base_url": "http://vllm:8000/v1"})
    with pytest.raises(ProviderConfigError, match="base_url"):
        provider_from_settings({"provider": "openai", "model": "m", "base_url": "vllm:8000"})
    with pytest.raises(ProviderConfigError, match="one way only"):
        provider_from_settings({"provider": "openai", "model": "m", "api_key": "x", "api_key_env": "K"})
    with pytest.raises(ProviderConfigError, match="provider"):
        provider_from_settings({"provider": "gemini", "model": "m"})


async def test_openai_settings_lora_and_defaults():
    settings = ModelSettings(provider="openai", base_url="http://vllm:8000/v1/", lora_adapter="acme-v2",
                             strict_tools=True, read_timeout_s=30)
    assert settings.base_url == "http://vllm:8000/v1" and settings.effective_model == "acme-v2"
    provider = provider_from_settings(settings)
    assert isinstance(provider, OpenAIProvider)
    assert (provider.model, provider.strict_tools, provider.retry.max_retries) == ("acme-v2", True, 2)
    await provider.aclose()
    # without an adapter the base model; the adapter is ignored for Anthropic
    assert ModelSettings(provider="openai", model="base").effective_model == "base"
    assert ModelSettings(provider="anthropic", model="c", lora_adapter="x").effective_model == "c"
    assert ModelSettings(provider="openai", model="m").effective_base_url == "https://api.openai.com/v1"


def test_settings_from_the_environment():
    env = {"KONTOR_MODEL_PROVIDER": "openai", "KONTOR_MODEL_BASE_URL": "http://localhost:11434/v1",
           "KONTOR_MODEL_MODEL": "llama3.1", "KONTOR_MODEL_STRICT_TOOLS": "false", "KONTOR_MODEL_MAX_TOKENS": "2048",
           "KONTOR_MODEL_API_KEY": "ignored: plain keys come by reference", "KONTOR_MODEL_API_KEY_ENV": "OLLAMA_KEY"}
    settings = ModelSettings.from_env(env)
    assert (settings.provider, settings.model, settings.max_tokens, settings.api_key) == (
        "openai", "llama3.1", 2048, None)
    assert settings.api_key_env == "OLLAMA_KEY"
    assert ModelSettings.from_env({}).provider == "none"

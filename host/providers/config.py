"""A tenant's model settings, and the factory that turns them into a :class:`~.base.Provider`.

Example (a tenant on vLLM with its promoted LoRA adapter)::

    ModelSettings(provider="openai", base_url="http://vllm:8000/v1", model="Qwen/Qwen2.5-7B-Instruct",
                  lora_adapter="tenant-acme-v3", strict_tools=False, api_key_env="VLLM_API_KEY")

The API key is never part of the settings' text form: give it as the name of an environment
variable (``api_key_env``), as a secret reference (``api_key_ref``: ``env:NAME`` or
``file:/run/secrets/NAME``), or, programmatically, as ``api_key`` (a ``SecretStr``, shown as
``**********`` in reprs, logs and JSON dumps). The reference is resolved when the provider is
built, so a rotated secret takes effect with the next provider.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from kontor.host.providers.base import Provider, ProviderConfigError, RetryPolicy

__all__ = ["DEFAULT_BASE_URLS", "ENV_PREFIX", "ModelSettings", "provider_from_settings"]

ENV_PREFIX = "KONTOR_MODEL_"

DEFAULT_BASE_URLS = {"anthropic": "https://api.anthropic.com", "openai": "https://api.openai.com/v1"}


class ModelSettings(BaseModel):
    """Which model a tenant's agent uses, and how to reach it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # "none": no model (the embedded default). The host then answers with retrieved passages only.
    provider: Literal["none", "anthropic", "openai"] = "none"
    # Anthropic: https://api.anthropic.com (default) or a proxy. OpenAI-compatible: the URL ending
    # in /v1, e.g. http://vllm:8000/v1 or http://localhost:11434/v1 (Ollama); default OpenAI's.
    base_url: str | None = None
    model: str | None = None
    api_key: SecretStr | None = None
    api_key_env: str | None = None  # the name of an environment variable holding the key
    api_key_ref: str | None = None  # "env:NAME" or "file:/path/to/secret"
    # The tenant's promoted LoRA adapter as vLLM serves it (``--lora-modules NAME=path`` or
    # loaded at runtime). When set it replaces ``model`` in requests to an OpenAI-compatible
    # endpoint. The training server fills it in on promotion and clears it on rollback.
    lora_adapter: str | None = None
    # OpenAI-compatible only: send function schemas with ``strict: true`` (OpenAI; vLLM with
    # structured-output tool calling). Schemas that cannot be made strict are sent non-strict.
    strict_tools: bool = False
    # OpenAI-compatible only: ask for token usage in the stream (``stream_options``). Some older
    # servers reject the option; switch it off for them.
    stream_usage: bool = True
    # OpenAI-compatible only: OpenAI's reasoning models want ``max_completion_tokens``.
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    max_tokens: int = Field(default=4096, ge=1, le=1_000_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    # The longest wait for the next bytes of a response (first token included).
    read_timeout_s: float = Field(default=120.0, gt=0)
    # Retries of a request that failed before anything streamed (429, 5xx, connection errors).
    max_retries: int = Field(default=2, ge=0, le=10)
    # A rate limit asking for a longer wait than this is reported, not waited out.
    max_retry_wait_s: float = Field(default=8.0, ge=0)

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL, got {value!r}")
        return value.rstrip("/")

    @field_validator("api_key_ref")
    @classmethod
    def _ref(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("env:", "file:")):
            raise ValueError("api_key_ref must be 'env:NAME' or 'file:/path/to/secret'")
        return value

    @model_validator(mode="after")
    def _complete(self) -> ModelSettings:
        sources = [name for name in ("api_key", "api_key_env", "api_key_ref") if getattr(self, name)]
        if len(sources) > 1:
            raise ValueError(f"give the API key one way only, not {' and '.join(sources)}")
        if self.provider != "none" and not (self.model or (self.provider == "openai" and self.lora_adapter)):
            raise ValueError(f"provider {self.provider!r} needs a model name")
        return self

    @property
    def effective_model(self) -> str:
        """The model name sent in requests: the LoRA adapter when one is promoted (OpenAI-compatible)."""
        if self.provider == "openai" and self.lora_adapter:
            return self.lora_adapter
        return self.model or ""

    @property
    def effective_base_url(self) -> str:
        return self.base_url or DEFAULT_BASE_URLS.get(self.provider, "")

    def resolve_api_key(self, environ: Mapping[str, str] | None = None) -> SecretStr | None:
        """The key from wherever the settings point; None when none is configured.

        Raises :class:`ProviderConfigError` (naming the variable or file, never the value) when
        the reference points at nothing.
        """
        env = os.environ if environ is None else environ
        if self.api_key is not None:
            return self.api_key
        ref = f"env:{self.api_key_env}" if self.api_key_env else self.api_key_ref
        if not ref:
            return None
        kind, _, name = ref.partition(":")
        if kind == "env":
            value = env.get(name, "")
            if not value.strip():
                raise ProviderConfigError(f"the API key variable {name} is not set (model settings: {self.provider})")
            return SecretStr(value.strip())
        try:
            value = Path(name).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ProviderConfigError(f"cannot read the API key file {name}: {exc.strerror}") from None
        if not value:
            raise ProviderConfigError(f"the API key file {name} is empty")
        return SecretStr(value)

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(max_retries=self.max_retries, max_wait_s=self.max_retry_wait_s)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, prefix: str = ENV_PREFIX) -> ModelSettings:
        """Settings from ``KONTOR_MODEL_PROVIDER``, ``KONTOR_MODEL_BASE_URL``, ... (the host's default)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            if name == "api_key":  # a key in plain text belongs in api_key_env / api_key_ref
                continue
            raw = env.get(f"{prefix}{name.upper()}")
            if raw is not None and raw != "":
                values[name] = raw
        return cls.model_validate(values)


def provider_from_settings(
    settings: ModelSettings | Mapping[str, Any] | None,
    *,
    environ: Mapping[str, str] | None = None,
    http_client: Any = None,
) -> Provider | None:
    """The provider for these settings; None for ``provider: none`` (or no settings at all).

    ``http_client``: an ``httpx2.AsyncClient`` to share one connection pool between the providers
    of many tenants (the SDKs' HTTP library; the caller closes it). Without it each provider
    has its own, closed by ``aclose()``.

    Raises :class:`ProviderConfigError` when the settings are invalid or the key cannot be found.
    """
    if settings is None:
        return None
    if not isinstance(settings, ModelSettings):
        try:
            settings = ModelSettings.model_validate(dict(settings))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
            raise ProviderConfigError(f"invalid model settings: {problems}") from None
    if settings.provider == "none":
        return None
    key = settings.resolve_api_key(environ)
    if settings.provider == "anthropic":
        if key is None:
            raise ProviderConfigError(
                "provider 'anthropic' needs an API key: set api_key_env (or api_key_ref) in the model settings"
            )
        from kontor.host.providers.anthropic_provider import AnthropicProvider

        return AnthropicProvider.from_settings(settings, api_key=key, http_client=http_client)
    from kontor.host.providers.openai_provider import OpenAIProvider

    return OpenAIProvider.from_settings(settings, api_key=key, http_client=http_client)

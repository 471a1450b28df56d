"""Model specs and named presets: how `--model` strings become backends.

Spec forms:
  local                 the embedded SmolLM2-135M-Instruct on llama.cpp (no network, no GPU)
  openai:<model>        any OpenAI-compatible endpoint (--base-url / OPENAI_BASE_URL)
  replay:<file.jsonl>   recorded responses
  <preset>              a named preset below (e.g. gpt-4.1, kimi-k2)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from evalkit.backends.base import Backend
from evalkit.errors import EvalkitError


@dataclass(frozen=True)
class Preset:
    name: str
    backend: str
    model: str
    description: str
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "gpt-4.1",
            "openai",
            "gpt-4.1-2025-04-14",
            "OpenAI GPT-4.1, pinned snapshot, via the OpenAI API",
            base_url="https://api.openai.com/v1",
            api_key_env="OPENAI_API_KEY",
        ),
        Preset(
            "kimi-k2",
            "openai",
            "kimi-k2-0711-preview",
            "Kimi K2 Instruct via Moonshot's OpenAI-compatible API",
            base_url="https://api.moonshot.ai/v1",
            api_key_env="MOONSHOT_API_KEY",
        ),
        Preset(
            "local",
            "local",
            "SmolLM2-135M-Instruct",
            "embedded default: SmolLM2-135M-Instruct (Q4_1 GGUF) on llama.cpp, offline",
        ),
    )
}


@dataclass(frozen=True)
class ModelOptions:
    base_url: str | None = None
    api_key: str | None = None
    api_key_env: str | None = None
    timeout_s: float = 600.0
    max_attempts: int = 6
    concurrency: int = 8
    # First retry backoff (doubling, jittered) when the server names no Retry-After; tests and
    # local servers set it small so that recovering from faults costs milliseconds, not seconds.
    backoff_base_s: float = 1.0


def parse_spec(spec: str) -> tuple[str, str]:
    """(backend, target) for a spec, validated without touching the network."""
    if spec in PRESETS:
        return PRESETS[spec].backend, spec
    kind, sep, rest = spec.partition(":")
    if sep and kind in ("openai", "replay") and rest:
        return kind, rest
    known = ", ".join(sorted(PRESETS))
    raise EvalkitError(
        f"unknown model {spec!r}: use one of {known}, openai:<model> or replay:<file.jsonl>"
    )


def build_backend(spec: str, options: ModelOptions) -> Backend:
    backend, target = parse_spec(spec)
    if backend == "replay":
        from evalkit.backends.replay import ReplayBackend

        return ReplayBackend(target)
    if backend == "local":
        from evalkit.backends.local import LocalBackend

        return LocalBackend(parallel=min(options.concurrency, 4), timeout_s=options.timeout_s)

    from evalkit.backends.openai_api import OpenAIBackend

    preset = PRESETS.get(target)
    model = preset.model if preset else target
    base_url = (
        options.base_url
        or (preset.base_url if preset else None)
        or os.environ.get("OPENAI_BASE_URL")
        or "https://api.openai.com/v1"
    )
    key_env = options.api_key_env or (preset.api_key_env if preset else "OPENAI_API_KEY")
    api_key = options.api_key or os.environ.get(key_env)
    extra: dict[str, Any] = {"preset": preset.name} if preset else {}
    if api_key is None and "127.0.0.1" not in base_url and "localhost" not in base_url:
        raise EvalkitError(f"no API key for {spec}: set {key_env} or pass --api-key-env")
    return OpenAIBackend(
        model,
        base_url,
        api_key,
        timeout_s=options.timeout_s,
        max_attempts=options.max_attempts,
        backoff_base_s=options.backoff_base_s,
        extra=extra,
    )

"""Model specs and named presets: how `--model` strings become backends.

Spec forms:
  local                 the embedded SmolLM2-135M-Instruct on llama.cpp (no network, no GPU)
  openai:<model>        any OpenAI-compatible endpoint (--base-url / OPENAI_BASE_URL)
  replay:<file.jsonl>   recorded responses
  vllm:<repo or path>   weights on vLLM's offline engine (optional extra: evalkit[vllm])
  <preset>              a named preset below (e.g. gpt-4.1, kimi-k2), on its default route
  <preset>@<route>      a preset on a chosen route, e.g. kimi-k2-instruct@vllm; the route is
                        part of the spec, so it is in the run's config identity and run id
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from evalkit.backends.base import Backend
from evalkit.errors import EvalkitError


@dataclass(frozen=True)
class Route:
    """One way to reach a preset's model: an API, or its weights on an engine."""

    backend: str  # openai | hf | vllm | local
    model: str  # API model name, or hub repo id for hf/vllm
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"


@dataclass(frozen=True)
class ServingLayout:
    """Recommended multi-GPU layout for serving the weights (used by `evalkit serve`)."""

    nodes: int
    gpus_per_node: int
    # Beyond this tensor-parallel degree, add pipeline stages instead (vendor guidance).
    max_tensor_parallel: int
    max_model_len: int
    note: str = ""


@dataclass(frozen=True)
class Preset:
    """A named model with its routes and the facts other parts need (engine flags, planner
    sizes, tool-call parser). `<preset>@<route>` picks a route; bare `<preset>` its default."""

    name: str
    description: str
    routes: dict[str, Route]
    default_route: str
    hf_repo: str | None = None
    # Hub commit the weights are pinned to; None when it could not be verified (see source).
    revision: str | None = None
    revision_source: str = ""
    trust_remote_code: bool = False
    tool_parser: str | None = None  # family for evalkit.tool_parsers and vLLM's parser
    chat_template: str = ""
    params_total: float | None = None
    params_active: float | None = None
    checkpoint: str = ""  # published checkpoint size and format
    serving: ServingLayout | None = None

    def route(self, name: str | None = None) -> Route:
        key = name or self.default_route
        if key not in self.routes:
            raise EvalkitError(
                f"preset {self.name} has no route {key!r}: use one of {', '.join(self.routes)}"
            )
        return self.routes[key]

    # The default route's fields, for code written before presets had routes.
    @property
    def backend(self) -> str:
        return self.route().backend

    @property
    def model(self) -> str:
        return self.route().model

    @property
    def base_url(self) -> str | None:
        return self.route().base_url

    @property
    def api_key_env(self) -> str:
        return self.route().api_key_env


MOONSHOT_API = Route(
    "openai", "kimi-k2-0711-preview", "https://api.moonshot.ai/v1", "MOONSHOT_API_KEY"
)
KIMI_K2_SOURCE = (
    "not verified against the hub from here (no network): commit seen pinned for this repo in "
    "public code (a tokenizer registry fetching tiktoken.model/LICENSE at it), found via code "
    "search; check with `huggingface-cli download <repo> --revision <rev>` before a real run"
)
KIMI_K2_TEMPLATE = (
    "Moonshot chat format: <|im_system|>system<|im_middle|>…<|im_end|><|im_user|>user"
    "<|im_middle|>…<|im_end|><|im_assistant|>assistant<|im_middle|>; the template ships in "
    "tokenizer_config.json at the pinned revision (custom tokenizer: trust_remote_code). "
    "Tool calls: <|tool_calls_section_begin|>… with ids functions.<name>:<idx>. Moonshot "
    "recommends temperature 0.6 for use (model card)."
)
KIMI_K2_CHECKPOINT = (
    "1.04T total / 32B activated parameters (MoE, DeepseekV3 architecture); released as "
    "block-FP8 (e4m3) safetensors, about 1 TB on disk"
)
KIMI_K2_SERVING = ServingLayout(
    nodes=2,
    gpus_per_node=8,
    max_tensor_parallel=16,
    max_model_len=131072,
    note=(
        "Moonshot deploy_guidance.md: smallest unit for FP8 weights at 128k context on "
        "H200/H20 is 16 GPUs, pure TP (<=16) or DP+EP; vLLM >= 0.10.0rc1; beyond 16 GPUs "
        "add pipeline parallelism"
    ),
)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "gpt-4.1",
            "OpenAI GPT-4.1, pinned snapshot, via the OpenAI API",
            routes={
                "openai": Route(
                    "openai", "gpt-4.1-2025-04-14", "https://api.openai.com/v1", "OPENAI_API_KEY"
                )
            },
            default_route="openai",
            revision="gpt-4.1-2025-04-14",
            revision_source="OpenAI dated snapshot name",
        ),
        Preset(
            "kimi-k2",
            "Kimi K2 Instruct via Moonshot's OpenAI-compatible API",
            routes={"moonshot": MOONSHOT_API},
            default_route="moonshot",
            tool_parser="kimi_k2",
        ),
        Preset(
            "kimi-k2-instruct",
            "Kimi K2 Instruct (1T MoE): Moonshot API, or the weights on hf / vllm",
            routes={
                "moonshot": MOONSHOT_API,
                "vllm": Route("vllm", "moonshotai/Kimi-K2-Instruct"),
                "hf": Route("hf", "moonshotai/Kimi-K2-Instruct"),
            },
            default_route="moonshot",
            hf_repo="moonshotai/Kimi-K2-Instruct",
            revision="fd1984e2b7a3350dbf7305fe73a4ede25c14de50",
            revision_source=KIMI_K2_SOURCE,
            trust_remote_code=True,
            tool_parser="kimi_k2",
            chat_template=KIMI_K2_TEMPLATE,
            params_total=1.04e12,
            params_active=32e9,
            checkpoint=KIMI_K2_CHECKPOINT,
            serving=KIMI_K2_SERVING,
        ),
        Preset(
            "kimi-k2-base",
            "Kimi K2 Base (1T MoE, pretrained only): weights on vllm / hf, few-shot base mode",
            routes={
                "vllm": Route("vllm", "moonshotai/Kimi-K2-Base"),
                "hf": Route("hf", "moonshotai/Kimi-K2-Base"),
            },
            default_route="vllm",
            hf_repo="moonshotai/Kimi-K2-Base",
            revision="ce72df012259dcc55d945e890f815fe7ef69159c",
            revision_source=KIMI_K2_SOURCE,
            trust_remote_code=True,
            chat_template="base model: no chat or tool-call training; use base/completion modes",
            params_total=1.04e12,
            params_active=32e9,
            checkpoint=KIMI_K2_CHECKPOINT,
            serving=KIMI_K2_SERVING,
        ),
        Preset(
            "local",
            "embedded default: SmolLM2-135M-Instruct (Q4_1 GGUF) on llama.cpp, offline",
            routes={"local": Route("local", "SmolLM2-135M-Instruct")},
            default_route="local",
        ),
    )
}


def preset_for_repo(repo: str) -> Preset | None:
    """The preset whose weights are `repo`, so `vllm:moonshotai/Kimi-K2-Instruct` (or the
    preset's own hf/vllm route) gets its revision pin and engine facts."""
    return next((p for p in PRESETS.values() if p.hf_repo == repo), None)


def resolve_preset(spec: str) -> tuple[Preset, str, Route] | None:
    """`<preset>` or `<preset>@<route>` -> (preset, route name, route); None if no preset."""
    name, sep, route_name = spec.partition("@")
    preset = PRESETS.get(name)
    if preset is None or (sep and not route_name):
        return None
    key = route_name or preset.default_route
    return preset, key, preset.route(key)


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
    # vLLM engine layout (vllm: specs, presets' vllm route); None: the preset's, else vLLM's.
    tensor_parallel_size: int | None = None
    pipeline_parallel_size: int | None = None
    enable_expert_parallel: bool | None = None
    max_model_len: int | None = None
    trust_remote_code: bool | None = None  # None: the preset's (False without one)
    # transformers backend (hf: specs, presets' hf route); see evalkit/backends/hf.py.
    dtype: str = "auto"  # auto | bfloat16 | float16 | float32
    device_map: str = "auto"  # auto (data-parallel replicas when the model fits) | cpu | cuda:0..
    max_memory: str | None = None  # per device cap, e.g. "0=70GiB,1=70GiB,cpu=200GiB"
    offload_folder: str | None = None  # disk offload for what fits nowhere in max_memory
    revision: str | None = None  # hub branch, tag or commit; None: the preset's
    batch_size: int = 8  # requests decoded together per replica


def parse_spec(spec: str) -> tuple[str, str]:
    """(backend, target) for a spec, validated without touching the network."""
    resolved = resolve_preset(spec)  # raises for a preset's unknown route
    if resolved is not None:
        route = resolved[2]
        # Engines get the repo id, by which they find the preset's pins (preset_for_repo).
        return route.backend, route.model if route.backend in ("hf", "vllm") else spec
    kind, sep, rest = spec.partition(":")
    if sep and kind in ("openai", "replay", "vllm", "hf") and rest:
        return kind, rest
    known = ", ".join(sorted(PRESETS))
    raise EvalkitError(
        f"unknown model {spec!r}: use one of {known} (optionally <preset>@<route>), "
        "openai:<model>, vllm:<repo or path>, hf:<repo, path or .gguf> or replay:<file.jsonl>"
    )


def build_backend(spec: str, options: ModelOptions) -> Backend:
    backend, target = parse_spec(spec)
    if backend == "replay":
        from evalkit.backends.replay import ReplayBackend

        return ReplayBackend(target)
    if backend == "local":
        from evalkit.backends.local import LocalBackend

        return LocalBackend(parallel=min(options.concurrency, 4), timeout_s=options.timeout_s)
    if backend == "vllm":
        from evalkit.backends.vllm import build_vllm_backend

        return build_vllm_backend(target, options)
    if backend == "hf":
        from evalkit.backends.hf import build_hf_backend

        return build_hf_backend(target, options)

    from evalkit.backends.openai_api import OpenAIBackend

    resolved = resolve_preset(target)
    preset, route = (resolved[0], resolved[2]) if resolved else (None, None)
    model = route.model if route else target
    base_url = (
        options.base_url
        or (route.base_url if route else None)
        or os.environ.get("OPENAI_BASE_URL")
        or "https://api.openai.com/v1"
    )
    key_env = options.api_key_env or (route.api_key_env if route else "OPENAI_API_KEY")
    api_key = options.api_key or os.environ.get(key_env) or None  # set but empty: no key
    extra: dict[str, Any] = {"preset": preset.name, "route": resolved[1]} if resolved else {}
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

"""Capacity planner: will a model fit on N GPUs, and how much KV cache is left?

Everything is derived from the model's config alone (no weights), shipped in
`evalkit/model_configs/*.json` so that it works offline:

- the parameter tensors, two ways: an analytic list written out here (pure Python) and, when
  torch + transformers + accelerate are installed, the real skeleton built on the meta device
  (`init_empty_weights()` + `AutoModelForCausalLM.from_config`) with transformers' own block-FP8
  modules swapped in (`replace_with_fp8_linear`), exactly as `from_pretrained` would do for a
  `quant_method: fp8` checkpoint. The two must agree (tests check it on a scaled-down config).
- weight bytes by dtype (FP8 e4m3 weights + float32 block scales, bf16 for the rest), compared
  with the published checkpoint size;
- accelerate's device map (`infer_auto_device_map`) over one node's GPUs;
- KV-cache bytes per token for the attention type and backend;
- per layout (HF device map, vLLM TP on one node, vLLM TP across nodes, vLLM DP+EP): whether the
  weights fit, the memory left per GPU and the largest batch x context that fits in it.

torch is imported only inside `meta_tensors` / `hf_device_map` (never at module import).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalkit.errors import EvalkitError

GiB = 1 << 30
CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
DTYPE_BYTES = {"float8_e4m3fn": 1, "bfloat16": 2, "float16": 2, "float32": 4}
GPUS_PER_NODE = 8
DEFAULT_RESERVE_FRACTION = 0.10  # vLLM's default gpu_memory_utilization is 0.90
KV_DTYPE_BYTES = 2  # bf16 KV cache (vLLM kv_cache_dtype "auto" for a bf16 model)

_MEM_UNITS = {
    "": GiB,
    "gib": GiB,
    "gb": 10**9,
    "mib": 1 << 20,
    "mb": 10**6,
    "tib": 1 << 40,
    "tb": 10**12,
}


# ----------------------------------------------------------------------------- input


def parse_mem(text: str) -> int:
    """'80GiB', '141GiB', '80GB', '512MiB' or a bare number of GiB -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*", text or "")
    unit = m.group(2).lower() if m else None
    if not m or unit not in _MEM_UNITS:
        raise EvalkitError(
            f"bad memory size {text!r}: expected a number with a unit, e.g. 80GiB, 141GiB, 80GB"
        )
    value = int(float(m.group(1)) * _MEM_UNITS[unit])
    if value <= 0:
        raise EvalkitError(f"bad memory size {text!r}: must be positive")
    return value


def fmt_bytes(n: float) -> str:
    if abs(n) >= GiB:
        return f"{n / GiB:,.1f} GiB"
    if abs(n) >= 1 << 20:
        return f"{n / (1 << 20):,.1f} MiB"
    if abs(n) >= 1 << 10:
        return f"{n / (1 << 10):,.1f} KiB"
    return f"{n:,.0f} B"


@dataclass(frozen=True)
class Preset:
    name: str
    hf_repo: str
    spec: dict[str, Any]  # the whole json file

    @property
    def config(self) -> dict[str, Any]:
        return self.spec["config"]

    @property
    def quant(self) -> dict[str, Any] | None:
        return self.config.get("quantization_config")


def presets() -> dict[str, Preset]:
    found: dict[str, Preset] = {}
    for path in sorted(CONFIG_DIR.glob("*.json")):
        spec = json.loads(path.read_text(encoding="utf-8"))
        for name, meta in spec["presets"].items():
            found[name] = Preset(name=name, hf_repo=meta["hf_repo"], spec=spec)
    return found


def get_preset(name: str) -> Preset:
    table = presets()
    key = name.lower()
    for preset in table.values():
        if key in (preset.name, preset.hf_repo.lower()):
            return preset
    raise EvalkitError(f"unknown model {name!r} for plan: known: {', '.join(sorted(table))}")


# ----------------------------------------------------------------------------- tensors


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BYTES[self.dtype]

    @property
    def is_scale(self) -> bool:
        return self.name.endswith("scale_inv")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def kind_of(name: str) -> str:
    """Coarse module class of a parameter, the same for meta names and analytic names."""
    if "embed_tokens" in name:
        return "embedding"
    if name.startswith("lm_head"):
        return "lm_head"
    if "norm" in name.rsplit(".", 1)[0].rsplit(".", 1)[-1] or name == "model.norm.weight":
        return "norm"
    if ".mlp.experts." in name:
        return "routed_experts"
    if ".mlp.shared_experts." in name:
        return "shared_experts"
    if ".mlp.gate." in name:
        return "router"
    if ".mlp." in name:
        return "dense_mlp"
    if ".self_attn." in name:
        return "attention"
    return "other"


def _linear(
    out: list[Tensor], name: str, n_out: int, n_in: int, block: list[int] | None, dtype: str
) -> None:
    if block:
        out.append(Tensor(f"{name}.weight", (n_out, n_in), "float8_e4m3fn"))
        scale = (_cdiv(n_out, block[0]), _cdiv(n_in, block[1]))
        out.append(Tensor(f"{name}.weight_scale_inv", scale, "float32"))
    else:
        out.append(Tensor(f"{name}.weight", (n_out, n_in), dtype))


def _block_size(quant: dict[str, Any] | None) -> list[int] | None:
    if not quant:
        return None
    if quant.get("quant_method") != "fp8" or not quant.get("weight_block_size"):
        raise EvalkitError(f"unsupported quantization_config {quant!r}: only block FP8")
    return list(quant["weight_block_size"])


def analytic_tensors(config: dict[str, Any], quant: dict[str, Any] | None = None) -> list[Tensor]:
    """Every parameter (and persistent buffer) of the transformers model, by hand, named and
    shaped as transformers 5.x names them (fused experts: gate_up_proj [E, 2I, H])."""
    arch = _arch(config)
    block = _block_size(quant)
    dt = "bfloat16"
    c = config
    h, v, n_layers = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"]
    out: list[Tensor] = [Tensor("model.embed_tokens.weight", (v, h), dt)]
    for i in range(n_layers):
        p = f"model.layers.{i}"
        if arch == "deepseek_v3":
            heads = c["num_attention_heads"]
            qk_head = c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
            if c.get("attention_bias"):
                raise EvalkitError("attention_bias is not supported by the planner")
            if c.get("q_lora_rank"):
                _linear(out, f"{p}.self_attn.q_a_proj", c["q_lora_rank"], h, block, dt)
                out.append(Tensor(f"{p}.self_attn.q_a_layernorm.weight", (c["q_lora_rank"],), dt))
                q_b = heads * qk_head
                _linear(out, f"{p}.self_attn.q_b_proj", q_b, c["q_lora_rank"], block, dt)
            else:
                _linear(out, f"{p}.self_attn.q_proj", heads * qk_head, h, block, dt)
            kv_a = c["kv_lora_rank"] + c["qk_rope_head_dim"]
            _linear(out, f"{p}.self_attn.kv_a_proj_with_mqa", kv_a, h, block, dt)
            out.append(Tensor(f"{p}.self_attn.kv_a_layernorm.weight", (c["kv_lora_rank"],), dt))
            kv_b = heads * (c["qk_nope_head_dim"] + c["v_head_dim"])
            _linear(out, f"{p}.self_attn.kv_b_proj", kv_b, c["kv_lora_rank"], block, dt)
            _linear(out, f"{p}.self_attn.o_proj", h, heads * c["v_head_dim"], block, dt)
            if i < c.get("first_k_dense_replace", 0):
                _mlp(out, f"{p}.mlp", h, c["intermediate_size"], block, dt)
            else:
                e, mi = c["n_routed_experts"], c["moe_intermediate_size"]
                q = f"{p}.mlp.experts"
                if block:
                    out.append(Tensor(f"{q}.gate_up_proj", (e, 2 * mi, h), "float8_e4m3fn"))
                    sf = (e, max(_cdiv(2 * mi, block[0]), 2), _cdiv(h, block[1]))
                    out.append(Tensor(f"{q}.gate_up_proj_scale_inv", sf, "float32"))
                    out.append(Tensor(f"{q}.down_proj", (e, h, mi), "float8_e4m3fn"))
                    sf = (e, _cdiv(h, block[0]), _cdiv(mi, block[1]))
                    out.append(Tensor(f"{q}.down_proj_scale_inv", sf, "float32"))
                else:
                    out.append(Tensor(f"{q}.gate_up_proj", (e, 2 * mi, h), dt))
                    out.append(Tensor(f"{q}.down_proj", (e, h, mi), dt))
                out.append(Tensor(f"{p}.mlp.gate.weight", (e, h), dt))
                out.append(Tensor(f"{p}.mlp.gate.e_score_correction_bias", (e,), dt))
                shared = mi * c.get("n_shared_experts", 1)
                _mlp(out, f"{p}.mlp.shared_experts", h, shared, block, dt)
        else:  # llama
            heads, kv_heads = c["num_attention_heads"], c["num_key_value_heads"]
            hd = c.get("head_dim") or h // heads
            _linear(out, f"{p}.self_attn.q_proj", heads * hd, h, block, dt)
            _linear(out, f"{p}.self_attn.k_proj", kv_heads * hd, h, block, dt)
            _linear(out, f"{p}.self_attn.v_proj", kv_heads * hd, h, block, dt)
            _linear(out, f"{p}.self_attn.o_proj", h, heads * hd, block, dt)
            _mlp(out, f"{p}.mlp", h, c["intermediate_size"], block, dt)
        out.append(Tensor(f"{p}.input_layernorm.weight", (h,), dt))
        out.append(Tensor(f"{p}.post_attention_layernorm.weight", (h,), dt))
    out.append(Tensor("model.norm.weight", (h,), dt))
    if not c.get("tie_word_embeddings"):
        out.append(Tensor("lm_head.weight", (v, h), dt))  # never quantized
    return out


def _mlp(out: list[Tensor], p: str, h: int, inter: int, block: list[int] | None, dt: str) -> None:
    _linear(out, f"{p}.gate_proj", inter, h, block, dt)
    _linear(out, f"{p}.up_proj", inter, h, block, dt)
    _linear(out, f"{p}.down_proj", h, inter, block, dt)


def _arch(config: dict[str, Any]) -> str:
    archs = config.get("architectures") or []
    if "DeepseekV3ForCausalLM" in archs or config.get("model_type") in ("deepseek_v3", "kimi_k2"):
        return "deepseek_v3"
    if "LlamaForCausalLM" in archs or config.get("model_type") == "llama":
        return "llama"
    raise EvalkitError(f"unsupported architecture {archs or config.get('model_type')!r}")


_HF_ONLY_KEYS = {"architectures", "model_type", "quantization_config", "auto_map", "torch_dtype"}


def build_meta_model(config: dict[str, Any], quant: dict[str, Any] | None = None) -> Any:
    """The transformers model on the meta device (no memory), with transformers' block-FP8
    modules (FP8Linear / FP8Experts, float32 weight_scale_inv) when the checkpoint is FP8."""
    import logging

    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    logging.getLogger("transformers").setLevel(logging.ERROR)
    kwargs = {k: v for k, v in config.items() if k not in _HF_ONLY_KEYS}
    hf_config = AutoConfig.for_model(_arch(config), **kwargs)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16)
    if config.get("tie_word_embeddings"):
        model.tie_weights()  # from_config on meta leaves lm_head untied (transformers 5.23)
    block = _block_size(quant)
    if block:
        from transformers.integrations.finegrained_fp8 import replace_with_fp8_linear
        from transformers.utils.quantization_config import FineGrainedFP8Config

        scheme = quant.get("activation_scheme", "dynamic")
        qc = FineGrainedFP8Config(weight_block_size=tuple(block), activation_scheme=scheme)
        skip = ["lm_head", *(quant.get("modules_to_not_convert") or [])]
        replace_with_fp8_linear(
            model, modules_to_not_convert=skip, quantization_config=qc, pre_quantized=True
        )
    return model


def meta_tensors(model: Any) -> list[Tensor]:
    """Parameters (tied ones once) and persistent buffers of a meta model."""
    persistent = set(model.state_dict().keys())
    out = [
        Tensor(name, tuple(p.shape), str(p.dtype).removeprefix("torch."))
        for name, p in model.named_parameters()
    ]
    out += [
        Tensor(name, tuple(b.shape), str(b.dtype).removeprefix("torch."))
        for name, b in model.named_buffers()
        if name in persistent
    ]
    return out


def summarize(tensors: list[Tensor]) -> dict[str, Any]:
    params_by_kind: dict[str, int] = {}
    bytes_by_dtype: dict[str, int] = {}
    for t in tensors:
        key = "float32 (FP8 block scales)" if t.is_scale else t.dtype
        bytes_by_dtype[key] = bytes_by_dtype.get(key, 0) + t.nbytes
        if not t.is_scale:
            kind = kind_of(t.name)
            params_by_kind[kind] = params_by_kind.get(kind, 0) + t.numel
    return {
        "params_total": sum(params_by_kind.values()),
        "params_by_kind": dict(sorted(params_by_kind.items(), key=lambda kv: -kv[1])),
        "bytes_by_dtype": dict(sorted(bytes_by_dtype.items(), key=lambda kv: -kv[1])),
        "bytes_total": sum(bytes_by_dtype.values()),
    }


def active_params(config: dict[str, Any], summary: dict[str, Any]) -> int:
    """Parameters used per token: all but the routed experts not selected."""
    routed = summary["params_by_kind"].get("routed_experts", 0)
    if not routed:
        return summary["params_total"]
    share = config["num_experts_per_tok"] / config["n_routed_experts"]
    return summary["params_total"] - routed + round(routed * share)


# ----------------------------------------------------------------------------- KV cache


def kv_bytes_per_token(config: dict[str, Any], dtype_bytes: int = KV_DTYPE_BYTES) -> dict[str, int]:
    """KV-cache bytes per token over all layers, per caching scheme."""
    c = config
    layers = c["num_hidden_layers"]
    if _arch(c) == "deepseek_v3":
        heads = c["num_attention_heads"]
        qk_head = c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
        return {
            # vLLM MLA (and transformers 5.x DeepseekV3): the compressed latent + shared rope key
            "mla_latent": (c["kv_lora_rank"] + c["qk_rope_head_dim"]) * layers * dtype_bytes,
            # full K and V per head (DeepSeek's trust_remote_code modeling_deepseek.py,
            # transformers 4.x DeepseekV3)
            "full_kv": layers * heads * (qk_head + c["v_head_dim"]) * dtype_bytes,
            # transformers 5.x expands one layer's K,V from the latent at every step: transient
            "expanded_one_layer": heads * (qk_head + c["v_head_dim"]) * dtype_bytes,
        }
    heads, kv_heads = c["num_attention_heads"], c["num_key_value_heads"]
    hd = c.get("head_dim") or c["hidden_size"] // heads
    return {"gqa": 2 * layers * kv_heads * hd * dtype_bytes}


def max_batch(tokens: int, context: int) -> int:
    """Whole sequences of `context` tokens that fit in a KV budget of `tokens` tokens."""
    return max(tokens, 0) // context


# ----------------------------------------------------------------------------- device map


def _blocks(tensors: list[Tensor]) -> list[tuple[str, int]]:
    """Top-level placement units in order (embed, each layer, norm, lm_head) with bytes."""
    order: list[str] = []
    sizes: dict[str, int] = {}
    for t in tensors:
        parts = t.name.split(".")
        unit = ".".join(parts[:3]) if parts[:2] == ["model", "layers"] else ".".join(parts[:-1])
        if unit not in sizes:
            order.append(unit)
            sizes[unit] = 0
        sizes[unit] += t.nbytes
    return [(u, sizes[u]) for u in order]


def pack_sequential(blocks: list[tuple[str, int]], n_gpus: int, per_gpu: int) -> dict[str, Any]:
    """Accelerate's greedy placement, analytically: GPUs in order, GPU 0 keeps room for the
    largest block (the offload buffer), the rest spills to cpu."""
    largest = max(size for _, size in blocks)
    device_map: dict[str, Any] = {}
    used = [0] * n_gpus
    dev = 0
    for name, size in blocks:
        while dev < n_gpus:
            cap = per_gpu - (largest if dev == 0 else 0)
            if used[dev] + size <= cap:
                break
            dev += 1
        if dev < n_gpus:
            device_map[name] = dev
            used[dev] += size
        else:
            device_map[name] = "cpu"
    return device_map


def min_memory_to_fit(blocks: list[tuple[str, int]], n_gpus: int) -> int:
    """Smallest per-GPU max_memory at which `pack_sequential` keeps everything on the GPUs."""
    lo, hi = 1, sum(size for _, size in blocks) * 2
    while lo < hi:
        mid = (lo + hi) // 2
        if "cpu" in pack_sequential(blocks, n_gpus, mid).values():
            lo = mid + 1
        else:
            hi = mid
    return lo


def hf_device_map(model: Any, n_gpus: int, per_gpu: int) -> dict[str, Any]:
    import logging

    from accelerate import infer_auto_device_map

    logging.getLogger("accelerate").setLevel(logging.ERROR)  # "Device 3 is not available"
    max_memory: dict[Any, int] = dict.fromkeys(range(n_gpus), per_gpu)
    max_memory["cpu"] = 1 << 50
    dm = infer_auto_device_map(
        model, max_memory=max_memory, no_split_module_classes=model._no_split_modules
    )
    return {k: v for k, v in dm.items() if "rotary_emb" not in k}


def _device_usage(tensors: list[Tensor], device_map: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Bytes and layers per device of a device map."""
    usage: dict[str, dict[str, Any]] = {}
    for t in tensors:
        prefix = max(
            (k for k in device_map if k == "" or t.name == k or t.name.startswith(k + ".")),
            key=len,
        )
        dev = device_map[prefix]
        key = f"cuda:{dev}" if isinstance(dev, int) else str(dev)
        u = usage.setdefault(key, {"bytes": 0, "layers": set(), "modules": []})
        u["bytes"] += t.nbytes
        if prefix not in u["modules"]:
            u["modules"].append(prefix)
        m = re.match(r"model\.layers\.(\d+)", t.name)
        if m:
            u["layers"].add(int(m.group(1)))
    return usage


def _describe_modules(modules: list[str]) -> str:
    if modules == [""]:
        return "the whole model"
    layers = [int(m.rsplit(".", 1)[1]) for m in modules if m.startswith("model.layers.")]
    others = [m for m in modules if not m.startswith("model.layers.")]
    parts = [o for o in others if o != "model.norm" or len(others) == 1]
    if layers:
        lo, hi = min(layers), max(layers)
        text = f"layers {lo}-{hi}" if hi > lo else f"layer {lo}"
        parts.insert(1 if others and others[0] == "model.embed_tokens" else 0, text)
    if "model.norm" in others and len(others) > 1:
        parts.append("model.norm")
    return ", ".join(parts)


# ----------------------------------------------------------------------------- the plan


def _tp_bytes_per_gpu(tensors: list[Tensor], config: dict[str, Any], tp: int) -> int:
    """Weight bytes on one rank of vLLM tensor parallelism: vocab-parallel embedding and
    lm_head, column/row-parallel projections and experts split tp ways; the MLA down
    projections (q_a_proj, kv_a_proj_with_mqa: ReplicatedLinear in vLLM), norms and the router
    replicated; GQA K/V heads replicated when tp > num_key_value_heads."""
    total = 0.0
    kv_heads = config.get("num_key_value_heads", 1)
    for t in tensors:
        kind = kind_of(t.name)
        if kind in ("norm", "router") or ".q_a_proj." in t.name or ".kv_a_proj_with_mqa." in t.name:
            total += t.nbytes
        elif _arch(config) == "llama" and (".k_proj." in t.name or ".v_proj." in t.name):
            total += t.nbytes * max(1 / tp, 1 / kv_heads)
        else:
            total += t.nbytes / tp
    return int(total)


def _tp_problems(config: dict[str, Any], tp: int, block: list[int] | None) -> list[str]:
    problems = []
    heads = config["num_attention_heads"]
    if heads % tp:
        problems.append(f"{heads} attention heads are not divisible by TP={tp}")
    if block:
        for key in ("moe_intermediate_size", "intermediate_size"):
            size = config.get(key)
            if size and (size % tp or (size // tp) % block[0]):
                problems.append(
                    f"{key} {size}/TP={tp} is not a multiple of the FP8 block {block[0]}"
                )
    return problems


def _kv_per_rank(config: dict[str, Any], tp: int) -> int:
    kv = kv_bytes_per_token(config)
    if "mla_latent" in kv:
        return kv["mla_latent"]  # the latent has no head axis: every TP rank holds all of it
    heads_per_rank = max(config["num_key_value_heads"] / tp, 1)
    return int(kv["gqa"] * heads_per_rank / config["num_key_value_heads"])


def make_plan(
    model: str,
    gpus: int,
    gpu_mem: str = "80GiB",
    nodes: int | None = None,
    context: int | None = None,
    reserve: str | None = None,
    use_meta: bool = True,
) -> dict[str, Any]:
    preset = get_preset(model)
    config, quant = preset.config, preset.quant
    block = _block_size(quant)
    if gpus < 1:
        raise EvalkitError(f"--gpus must be a positive integer, got {gpus}")
    mem = parse_mem(gpu_mem)
    nodes = nodes or max(1, _cdiv(gpus, GPUS_PER_NODE))
    if nodes < 1 or gpus % nodes:
        raise EvalkitError(f"--gpus {gpus} cannot be split evenly over --nodes {nodes}")
    per_node = gpus // nodes
    max_ctx = config["max_position_embeddings"]
    context = context or max_ctx
    if context < 1 or context > max_ctx:
        raise EvalkitError(f"--context {context} must be in 1..{max_ctx} (max_position_embeddings)")
    reserve_bytes = parse_mem(reserve) if reserve else int(mem * DEFAULT_RESERVE_FRACTION)
    if reserve_bytes >= mem:
        raise EvalkitError(f"--reserve {fmt_bytes(reserve_bytes)} leaves nothing of {gpu_mem}")
    usable = mem - reserve_bytes

    analytic = analytic_tensors(config, quant)
    meta_model = None
    source = "analytic (torch/transformers/accelerate not installed)"
    tensors = analytic
    meta_check = None
    if use_meta:
        try:
            meta_model = build_meta_model(config, quant)
        except ImportError:
            meta_model = None
        if meta_model is not None:
            tensors = meta_tensors(meta_model)
            a, m = summarize(analytic), summarize(tensors)
            meta_check = {
                "analytic_params": a["params_total"],
                "meta_params": m["params_total"],
                "analytic_bytes": a["bytes_total"],
                "meta_bytes": m["bytes_total"],
                "agree": a["params_total"] == m["params_total"]
                and a["bytes_total"] == m["bytes_total"],
            }
            source = "meta-device skeleton (transformers DeepseekV3/Llama + FP8 modules)"
    summary = summarize(tensors)
    published_gib = preset.spec["checkpoint"]["published_size_gib"]
    weights = summary["bytes_total"]

    kv = kv_bytes_per_token(config)
    is_mla = "mla_latent" in kv

    # --- HF transformers + accelerate device map on one node
    if meta_model is not None:
        device_map = hf_device_map(meta_model, per_node, usable)
        map_source = "accelerate.infer_auto_device_map"
    else:
        device_map = pack_sequential(_blocks(tensors), per_node, usable)
        map_source = "analytic sequential packing (accelerate's rule)"
    usage = _device_usage(tensors, device_map)
    offloaded = [k for k in usage if not k.startswith("cuda")]
    hf_fits = not offloaded
    hf_rows = []

    def _order(dev: str) -> tuple[bool, int]:
        return (not dev.startswith("cuda"), int(dev[5:]) if dev.startswith("cuda") else 0)

    for dev in sorted(usage, key=_order):
        u = usage[dev]
        hf_rows.append(
            {
                "device": dev,
                "bytes": u["bytes"],
                "modules": _describe_modules(u["modules"]),
                "layers": len(u["layers"]),
            }
        )
    hf_tokens = None
    hf_tokens_legacy = None
    if hf_fits:
        caps, caps_legacy = [], []
        per_layer_kv = (kv["mla_latent"] if is_mla else kv["gqa"]) // config["num_hidden_layers"]
        for row in hf_rows:
            free = usable - row["bytes"]
            if row["layers"]:
                transient = kv["expanded_one_layer"] if is_mla else 0
                caps.append(free // (row["layers"] * per_layer_kv + transient))
                if is_mla:
                    legacy = kv["full_kv"] // config["num_hidden_layers"]
                    caps_legacy.append(free // (row["layers"] * legacy))
        hf_tokens = min(caps) if caps else 0
        hf_tokens_legacy = min(caps_legacy) if caps_legacy else None

    layouts: list[dict[str, Any]] = []
    hf_reason = (
        f"fits ({_fmt_free(usable, hf_rows)}); one process, layers run one GPU at a time "
        "(slow but exact)"
        if hf_fits
        else "does not fit: "
        + ", ".join(_describe_modules(usage[d]["modules"]) for d in offloaded)
        + f" would be offloaded to {'/'.join(offloaded)}"
    )
    hf_min = min_memory_to_fit(_blocks(tensors), per_node)
    if not hf_fits:
        hf_reason += (
            f"; it needs max_memory >= {fmt_bytes(hf_min)} per GPU (accelerate keeps a "
            f"largest-layer buffer on GPU 0)"
        )
    if nodes > 1:
        hf_reason += f"; a device_map cannot span the {nodes} nodes"
    if block and hf_fits:
        hf_reason += "; FP8 kernels need compute capability >= 8.9 (H100/H200), else bf16 (2x)"
    layouts.append(
        _layout(
            "hf",
            f"HF transformers + accelerate device_map over {per_node} GPU(s) of one node",
            hf_fits,
            hf_reason,
            hf_tokens,
            context,
            replicas=1,
            extra={"tokens_if_full_kv_cached": hf_tokens_legacy, "min_max_memory_per_gpu": hf_min},
        )
    )

    # --- vLLM TP on one node (one replica per node)
    layouts.append(
        _tp_layout(
            f"vllm-tp{per_node}",
            per_node,
            nodes,
            tensors,
            config,
            block,
            usable,
            context,
            across_nodes=False,
        )
    )
    # --- vLLM TP across all nodes
    if nodes > 1:
        layouts.append(
            _tp_layout(
                f"vllm-tp{gpus}",
                gpus,
                1,
                tensors,
                config,
                block,
                usable,
                context,
                across_nodes=True,
                nodes=nodes,
            )
        )
    else:
        layouts.append(
            _layout(
                "vllm-tp-multinode",
                "vLLM TP across nodes",
                None,
                "not applicable: --nodes 1 (pass --nodes 2 with 16 GPUs)",
                None,
                context,
                replicas=0,
            )
        )
    # --- vLLM DP (attention) + EP (experts)
    if summary["params_by_kind"].get("routed_experts"):
        experts = config["n_routed_experts"]
        routed = sum(t.nbytes for t in tensors if kind_of(t.name) == "routed_experts")
        per_gpu = weights - routed + routed // gpus
        free = usable - per_gpu
        fits = free > 0 and experts % gpus == 0
        if experts % gpus:
            reason = f"{experts} experts are not divisible by EP={gpus}"
        elif free <= 0:
            reason = (
                f"attention, dense layer, shared experts and embeddings are replicated on "
                f"every rank: {fmt_bytes(per_gpu)} per GPU > {fmt_bytes(usable)} usable"
            )
        else:
            reason = (
                f"{experts // gpus} experts per rank + replicated non-expert weights: "
                f"{fmt_bytes(per_gpu)} per GPU, {fmt_bytes(free)} left for KV; each DP rank "
                "caches only its own sequences (no MLA latent duplication)"
            )
        tokens = free // _kv_per_rank(config, 1) if fits else None
        layouts.append(
            _layout(
                f"vllm-dp{gpus}-ep{gpus}",
                f"vLLM DP={gpus} attention + EP={gpus}",
                fits,
                reason,
                tokens,
                context,
                replicas=gpus,
                extra={"weights_per_gpu": per_gpu},
            )
        )
    else:
        layouts.append(
            _layout(
                "vllm-dp-ep",
                "vLLM DP+EP",
                None,
                "not applicable: dense model (no experts)",
                None,
                context,
                0,
            )
        )

    return {
        "model": preset.name,
        "hf_repo": preset.hf_repo,
        "architecture": (config.get("architectures") or ["?"])[0],
        "count_source": source,
        "meta_vs_analytic": meta_check,
        "params": summary["params_total"],
        "active_params": active_params(config, summary),
        "params_by_kind": summary["params_by_kind"],
        "weight_bytes_by_dtype": summary["bytes_by_dtype"],
        "weight_bytes": weights,
        "published_gib": published_gib,
        "published_text": preset.spec["checkpoint"]["published_size_text"],
        "weight_vs_published": weights / (published_gib * GiB) - 1,
        "quantization": quant,
        "hardware": {
            "gpus": gpus,
            "nodes": nodes,
            "gpus_per_node": per_node,
            "gpu_mem": mem,
            "reserve_per_gpu": reserve_bytes,
            "usable_per_gpu": usable,
            "total_usable": usable * gpus,
        },
        "context": context,
        "kv_bytes_per_token": kv,
        "kv_dtype": "bfloat16",
        "device_map": {
            "source": map_source,
            "gpus": per_node,
            "max_memory_per_gpu": usable,
            "fits": hf_fits,
            "devices": hf_rows,
        },
        "layouts": layouts,
        "sources": preset.spec.get("sources", {}),
        "assumptions": preset.spec.get("assumptions", []),
    }


def _fmt_free(usable: int, rows: list[dict[str, Any]]) -> str:
    gpu_rows = [r for r in rows if r["device"].startswith("cuda")]
    least = min(usable - r["bytes"] for r in gpu_rows)
    return f"least free GPU {fmt_bytes(least)}"


def _layout(
    key: str,
    title: str,
    fits: bool | None,
    reason: str,
    tokens: int | None,
    context: int,
    replicas: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    per_replica_batch = max_batch(tokens, context) if tokens is not None else None
    return {
        "layout": key,
        "title": title,
        "works": fits,
        "reason": reason,
        "kv_tokens_per_replica": tokens,
        "replicas": replicas,
        "max_batch_at_context": None if per_replica_batch is None else per_replica_batch * replicas,
        "max_context_at_batch_1": None if tokens is None else min(tokens, context),
        **(extra or {}),
    }


def _tp_layout(
    key: str,
    tp: int,
    replicas: int,
    tensors: list[Tensor],
    config: dict[str, Any],
    block: list[int] | None,
    usable: int,
    context: int,
    across_nodes: bool,
    nodes: int = 1,
) -> dict[str, Any]:
    per_gpu = _tp_bytes_per_gpu(tensors, config, tp)
    free = usable - per_gpu
    problems = _tp_problems(config, tp, block)
    fits = free > 0 and not problems
    kv_rank = _kv_per_rank(config, tp)
    where = f"across {nodes} nodes" if across_nodes else "on one node"
    title = f"vLLM TP={tp} {where}" + (f" (x{replicas} replicas)" if replicas > 1 else "")
    if problems:
        reason = "; ".join(problems)
    elif free <= 0:
        reason = f"weights {fmt_bytes(per_gpu)} per GPU > {fmt_bytes(usable)} usable"
    else:
        reason = f"weights {fmt_bytes(per_gpu)} per GPU, {fmt_bytes(free)} left for KV"
        if "mla_latent" in kv_bytes_per_token(config):
            reason += " (MLA latent cache is replicated on every TP rank)"
        if across_nodes:
            reason += "; all-reduces cross the node boundary every layer: needs InfiniBand/RoCE"
    tokens = free // kv_rank if fits else None
    return _layout(
        key,
        title,
        fits,
        reason,
        tokens,
        context,
        replicas,
        extra={"weights_per_gpu": per_gpu, "tp": tp},
    )


# ----------------------------------------------------------------------------- text


def format_plan(plan: dict[str, Any]) -> str:
    hw = plan["hardware"]
    lines = [
        f"plan: {plan['model']} ({plan['hf_repo']}, {plan['architecture']})",
        f"  hardware: {hw['gpus']} GPU(s) x {fmt_bytes(hw['gpu_mem'])} on {hw['nodes']} node(s); "
        f"reserve {fmt_bytes(hw['reserve_per_gpu'])}/GPU for activations/CUDA context -> "
        f"{fmt_bytes(hw['usable_per_gpu'])} usable per GPU, {fmt_bytes(hw['total_usable'])} total",
        f"  counted by: {plan['count_source']}",
    ]
    check = plan["meta_vs_analytic"]
    if check:
        verdict = "agree" if check["agree"] else "DISAGREE"
        lines.append(
            f"  meta vs analytic count: {check['meta_params']:,} vs {check['analytic_params']:,} "
            f"params, {check['meta_bytes']:,} vs {check['analytic_bytes']:,} bytes: {verdict}"
        )
    lines.append(
        f"parameters: {plan['params']:,} ({plan['params'] / 1e9:,.1f}B), "
        f"active per token {plan['active_params'] / 1e9:,.1f}B"
    )
    for kind, n in plan["params_by_kind"].items():
        lines.append(f"  {kind:15s} {n:>18,}")
    lines.append("weight bytes by dtype:")
    for dtype, n in plan["weight_bytes_by_dtype"].items():
        lines.append(f"  {dtype:27s} {n:>18,}  {fmt_bytes(n)}")
    lines.append(
        f"weights total: {plan['weight_bytes']:,} bytes = {fmt_bytes(plan['weight_bytes'])} "
        + (
            f"({plan['weight_bytes'] / 1e12:.2f} TB)"
            if plan["weight_bytes"] >= 1e11
            else f"({plan['weight_bytes'] / 1e9:.2f} GB)"
        )
    )
    lines.append(
        f"published checkpoint: {plan['published_text']}; "
        f"planner/published = {plan['weight_vs_published']:+.2%}"
    )
    kv = plan["kv_bytes_per_token"]
    lines.append(f"KV cache per token ({plan['kv_dtype']}, all layers):")
    if "mla_latent" in kv:
        lines.append(
            f"  MLA latent (kv_lora_rank + qk_rope_head_dim): {kv['mla_latent']:,} B "
            f"({fmt_bytes(kv['mla_latent'])}): vLLM/SGLang MLA; also transformers>=5 DeepseekV3"
        )
        lines.append(
            f"  full K,V per head: {kv['full_kv']:,} B ({fmt_bytes(kv['full_kv'])}): "
            f"transformers 4.x DeepseekV3 and trust_remote_code modeling_deepseek.py "
            f"({kv['full_kv'] / kv['mla_latent']:.0f}x more)"
        )
        lines.append(
            f"  transformers>=5 re-expands one layer's K,V each step: "
            f"{kv['expanded_one_layer']:,} B/token transient"
        )
    else:
        lines.append(f"  K,V (GQA, {kv['gqa']:,} B/token): vLLM paged cache and HF DynamicCache")
    dm = plan["device_map"]
    lines.append(
        f"device map ({dm['source']}, {dm['gpus']} GPU(s), max_memory "
        f"{fmt_bytes(dm['max_memory_per_gpu'])}/GPU): {'fits' if dm['fits'] else 'DOES NOT FIT'}"
    )
    for row in dm["devices"]:
        lines.append(f"  {row['device']:7s} {fmt_bytes(row['bytes']):>11s}  {row['modules']}")
    lines.append(f"layouts (context {plan['context']:,} tokens):")
    for lay in plan["layouts"]:
        mark = {True: "yes", False: "no", None: "n/a"}[lay["works"]]
        lines.append(f"  [{mark:3s}] {lay['title']}: {lay['reason']}")
        if lay["works"]:
            batch = lay["max_batch_at_context"]
            lines.append(
                f"        KV room {lay['kv_tokens_per_replica']:,} tokens per replica x "
                f"{lay['replicas']}: "
                + (
                    f"max batch {batch:,} x {plan['context']:,} tokens"
                    if batch
                    else f"no room for one {plan['context']:,}-token sequence"
                )
                + f"; max context at batch 1: {lay['max_context_at_batch_1']:,}"
            )
            legacy = lay.get("tokens_if_full_kv_cached")
            if legacy is not None:
                lines.append(
                    f"        (if full K,V were cached, as transformers 4.x/remote code: "
                    f"{legacy:,} tokens)"
                )
    return "\n".join(lines)

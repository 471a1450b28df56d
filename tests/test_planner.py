"""Capacity planner: hand-computed figures on a tiny config, meta-device build == analytic count,
Kimi K2 totals against the published checkpoint, the CLI and its bad-input errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from evalkit import planner
from evalkit.errors import EvalkitError
from evalkit.planner import GiB

# A scaled-down DeepseekV3 (MLA + MoE, one dense layer first), small enough to count by hand.
TINY = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "deepseek_v3",
    "vocab_size": 1000,
    "hidden_size": 256,
    "intermediate_size": 512,
    "moe_intermediate_size": 128,
    "num_hidden_layers": 3,
    "first_k_dense_replace": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "q_lora_rank": 64,
    "kv_lora_rank": 32,
    "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 8,
    "v_head_dim": 16,
    "n_routed_experts": 8,
    "n_shared_experts": 1,
    "num_experts_per_tok": 2,
    "n_group": 1,
    "topk_group": 1,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}
FP8 = {
    "quant_method": "fp8",
    "fmt": "e4m3",
    "activation_scheme": "dynamic",
    "weight_block_size": [128, 128],
}


def test_tiny_param_count_by_module_class():
    s = planner.summarize(planner.analytic_tensors(TINY, FP8))
    # attention per layer: q_a 256*64 + q_b 64*(4*24) + kv_a 256*(32+8) + kv_b 32*(4*32)
    #                      + o 64*256 = 16384 + 6144 + 10240 + 4096 + 16384 = 53248
    assert s["params_by_kind"] == {
        "embedding": 1000 * 256,
        "lm_head": 1000 * 256,
        "attention": 3 * 53248,
        "norm": 3 * (64 + 32 + 2 * 256) + 256,  # q_a/kv_a layernorms, 2 per layer, final
        "dense_mlp": 3 * 256 * 512,  # layer 0 only
        "routed_experts": 2 * 8 * 3 * 256 * 128,  # layers 1, 2
        "shared_experts": 2 * 3 * 256 * 128,
        "router": 2 * (8 * 256 + 8),  # gate weight + e_score_correction_bias
    }
    assert s["params_total"] == 2_840_624


def test_tiny_bytes_by_dtype_with_fp8_block_scales():
    s = planner.summarize(planner.analytic_tensors(TINY, FP8))
    fp8 = 3 * 53248 + 3 * 256 * 512 + 2 * 8 * 3 * 256 * 128 + 2 * 3 * 256 * 128
    bf16 = 2 * (2 * 256_000 + 2080 + 2 * 2056)
    # 128x128 blocks, rounded up, one float32 each:
    #   attention/layer q_a 1x2, q_b 1x1, kv_a 1x2, kv_b 1x1, o 2x1 = 8;  x3 layers = 24
    #   dense: gate 4x2, up 4x2, down 2x4 = 24
    #   MoE/layer: experts gate_up 8x2x2 (HF keeps >= 2 rows), down 8x2x1, shared 2+2+2 = 54; x2
    scales = 4 * (24 + 24 + 2 * 54)
    assert s["bytes_by_dtype"] == {
        "float8_e4m3fn": fp8,
        "bfloat16": bf16,
        "float32 (FP8 block scales)": scales,
    }
    assert s["bytes_total"] == 2_322_432 + 1_036_384 + 624
    # without quantization everything is bf16, no scales
    plain = planner.summarize(planner.analytic_tensors(TINY, None))
    assert plain["bytes_by_dtype"] == {"bfloat16": 2 * 2_840_624}


def test_kv_bytes_per_token_mla_and_gqa():
    kv = planner.kv_bytes_per_token(TINY)
    assert kv["mla_latent"] == (32 + 8) * 3 * 2  # latent + rope key, 3 layers, bf16
    assert kv["full_kv"] == 3 * 4 * ((16 + 8) + 16) * 2  # K (nope+rope) and V per head
    assert kv["expanded_one_layer"] == 4 * 40 * 2
    llama = {
        "architectures": ["LlamaForCausalLM"],
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
    }
    assert planner.kv_bytes_per_token(llama) == {"gqa": 2 * 2 * 2 * 8 * 2}  # K+V, GQA
    mha = llama | {"num_key_value_heads": 8}
    assert planner.kv_bytes_per_token(mha) == {"gqa": 2 * 2 * 8 * 8 * 2}
    kimi = planner.get_preset("kimi-k2-instruct").config
    k = planner.kv_bytes_per_token(kimi)
    assert k["mla_latent"] == 576 * 61 * 2 == 70_272
    assert k["full_kv"] == 61 * 64 * 320 * 2 == 2_498_560


def test_max_batch_context_arithmetic():
    tokens = (1 * GiB) // 70_272
    assert tokens == 15_279
    assert planner.max_batch(tokens, 4096) == 3
    assert planner.max_batch(tokens, 16_384) == 0
    assert planner.max_batch(-5, 10) == 0
    plan = planner.make_plan("kimi-k2-instruct", 16, "80GiB", use_meta=False)
    usable = plan["hardware"]["usable_per_gpu"]
    assert usable == 80 * GiB - 8 * GiB  # default reserve: 10%
    tp16 = next(x for x in plan["layouts"] if x["layout"] == "vllm-tp16")
    assert tp16["works"]
    assert tp16["kv_tokens_per_replica"] == (usable - tp16["weights_per_gpu"]) // 70_272
    assert tp16["max_batch_at_context"] == tp16["kv_tokens_per_replica"] // 131_072


def test_parse_mem():
    assert planner.parse_mem("80GiB") == 80 * GiB
    assert planner.parse_mem("141GiB") == 141 * GiB
    assert planner.parse_mem("80GB") == 80 * 10**9
    assert planner.parse_mem("80") == 80 * GiB
    for bad in ("lots", "80XB", "-1GiB", "0GiB", ""):
        with pytest.raises(EvalkitError):
            planner.parse_mem(bad)


@pytest.mark.parametrize("quant", [FP8, None])
def test_meta_device_count_equals_analytic(quant):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    model = planner.build_meta_model(TINY, quant)
    meta = {t.name: (t.shape, t.dtype) for t in planner.meta_tensors(model)}
    analytic = {t.name: (t.shape, t.dtype) for t in planner.analytic_tensors(TINY, quant)}
    assert meta == analytic
    assert all(p.device.type == "meta" for p in model.parameters())


def test_meta_count_equals_analytic_tied_llama():
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    cfg = planner.get_preset("smollm2-135m-instruct").config
    meta = planner.summarize(planner.meta_tensors(planner.build_meta_model(cfg)))
    assert meta == planner.summarize(planner.analytic_tensors(cfg))
    assert meta["params_total"] == 134_515_008  # SmolLM2-135M


def test_kimi_k2_totals_match_published_checkpoint():
    plan = planner.make_plan("kimi-k2-instruct", 8, "141GiB", use_meta=False)
    assert plan["published_gib"] == 959
    assert abs(plan["weight_bytes"] / (959 * GiB) - 1) < 0.03
    assert 1.00e12 < plan["params"] < 1.05e12  # "1T total"
    assert 31e9 < plan["active_params"] < 34e9  # "32B activated"
    assert plan["weight_bytes_by_dtype"]["float8_e4m3fn"] > 0.99 * plan["weight_bytes"]
    base = planner.make_plan("kimi-k2-base", 8, "141GiB", use_meta=False)
    assert base["weight_bytes"] == plan["weight_bytes"]


def test_sequential_packing_matches_accelerate():
    pytest.importorskip("accelerate")
    preset = planner.get_preset("kimi-k2-instruct")
    model = planner.build_meta_model(preset.config, preset.quant)
    tensors = planner.meta_tensors(model)
    for n_gpus, per_gpu in ((8, int(126.9 * GiB)), (8, int(127.5 * GiB)), (8, 72 * GiB)):
        acc = planner.hf_device_map(model, n_gpus, per_gpu)
        ours = planner.pack_sequential(planner._blocks(tensors), n_gpus, per_gpu)
        assert {k: v for k, v in acc.items()} == {k: v for k, v in ours.items()}


def _evalkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "evalkit", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_plan_8x_h200():
    pytest.importorskip("accelerate")
    r = _evalkit("plan", "--model", "kimi-k2-instruct", "--gpus", "8", "--gpu-mem", "141GiB")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "weights total: 1,029,173,203,808 bytes = 958.5 GiB (1.03 TB)" in out
    assert "published checkpoint: about 959 GiB (about 1.03 TB)" in out
    assert "planner/published = -0.05%" in out
    assert "meta vs analytic count" in out and ": agree" in out
    assert "MLA latent (kv_lora_rank + qk_rope_head_dim): 70,272 B" in out
    assert "full K,V per head: 2,498,560 B" in out
    assert "[yes] vLLM TP=8 on one node" in out
    assert "device map (accelerate.infer_auto_device_map, 8 GPU(s)" in out


def test_cli_plan_16x_80g_json():
    r = _evalkit("plan", "--model", "kimi-k2-instruct", "--gpus", "16", "--gpu-mem", "80GiB")
    assert r.returncode == 0, r.stderr
    assert "958.5 GiB" in r.stdout and "about 959 GiB" in r.stdout
    assert "[yes] vLLM TP=16 across 2 nodes" in r.stdout
    assert "[no ] vLLM TP=8 on one node (x2 replicas)" in r.stdout
    assert "a device_map cannot span the 2 nodes" in r.stdout
    j = _evalkit(
        "plan",
        "--model",
        "kimi-k2-instruct",
        "--gpus",
        "16",
        "--gpu-mem",
        "80GiB",
        "--json",
        "--analytic",
    )
    assert j.returncode == 0, j.stderr
    plan = json.loads(j.stdout)
    assert plan["hardware"]["nodes"] == 2 and plan["hardware"]["gpus_per_node"] == 8
    assert abs(plan["weight_vs_published"]) < 0.03


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "kimi-k2-instruct", "--gpus", "0"], "--gpus"),
        (["--model", "no-such-model", "--gpus", "8"], "unknown model"),
        (["--model", "kimi-k2-instruct", "--gpus", "8", "--gpu-mem", "lots"], "bad memory size"),
        (["--model", "kimi-k2-instruct", "--gpus", "8", "--gpu-mem", "0GiB"], "bad memory size"),
        (["--model", "kimi-k2-instruct", "--gpus", "12", "--nodes", "5"], "cannot be split"),
        (["--model", "kimi-k2-instruct", "--gpus", "8", "--context", "999999"], "--context"),
    ],
)
def test_cli_plan_bad_input(args, message):
    r = _evalkit("plan", *args)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evalkit: error:") and message in lines[0]


def test_help_never_imports_torch():
    code = (
        "import sys, contextlib, io\n"
        "from evalkit import cli\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    cli.main(['plan', '--help'])\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr

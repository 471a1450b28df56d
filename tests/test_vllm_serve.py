"""vLLM engine arguments, sampling mapping and `evalkit serve` commands: exact values, built
by pure functions that need neither vLLM nor a GPU. Without vLLM installed, the backend and
`serve` must refuse with an install hint and write nothing."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evalkit.backends.vllm import INSTALL_HINT, batch_key, engine_args, sampling_kwargs
from evalkit.errors import EvalkitError
from evalkit.models import PRESETS, ModelOptions, preset_for_repo
from evalkit.records import GenerationParams, Request
from evalkit.serve import format_plan, serve_plan

CLI = [sys.executable, "-m", "evalkit"]
INSTRUCT_REV = "fd1984e2b7a3350dbf7305fe73a4ede25c14de50"
BASE_REV = "ce72df012259dcc55d945e890f815fe7ef69159c"
VLLM_MISSING = importlib.util.find_spec("vllm") is None


# -- engine args --------------------------------------------------------------------------


def test_engine_args_for_kimi_k2_instruct_use_pins_and_layout() -> None:
    assert engine_args(PRESETS["kimi-k2-instruct"], ModelOptions()) == {
        "model": "moonshotai/Kimi-K2-Instruct",
        "revision": INSTRUCT_REV,
        "tokenizer_revision": INSTRUCT_REV,
        "trust_remote_code": True,
        "tensor_parallel_size": 16,
        "pipeline_parallel_size": 1,
        "max_model_len": 131072,
        "distributed_executor_backend": "ray",
    }


def test_engine_args_options_override_the_layout() -> None:
    options = ModelOptions(
        tensor_parallel_size=8,
        pipeline_parallel_size=1,
        enable_expert_parallel=True,
        max_model_len=32768,
    )
    assert engine_args(PRESETS["kimi-k2-base"], options) == {
        "model": "moonshotai/Kimi-K2-Base",
        "revision": BASE_REV,
        "tokenizer_revision": BASE_REV,
        "trust_remote_code": True,
        "tensor_parallel_size": 8,
        "pipeline_parallel_size": 1,
        "enable_expert_parallel": True,
        "max_model_len": 32768,
    }  # 8 GPUs fit one node: no Ray


def test_engine_args_for_a_plain_path() -> None:
    assert engine_args("/models/ckpt", ModelOptions()) == {"model": "/models/ckpt"}
    options = ModelOptions(
        tensor_parallel_size=2, trust_remote_code=True, max_model_len=4096, revision="v1.0"
    )
    assert engine_args("org/model", options) == {
        "model": "org/model",
        "revision": "v1.0",
        "tokenizer_revision": "v1.0",
        "trust_remote_code": True,
        "tensor_parallel_size": 2,
        "max_model_len": 4096,
    }


def test_a_presets_repo_id_gets_its_pins() -> None:
    assert preset_for_repo("moonshotai/Kimi-K2-Base") is PRESETS["kimi-k2-base"]
    assert preset_for_repo("org/other") is None


def test_engine_args_refuse_an_api_only_preset() -> None:
    with pytest.raises(EvalkitError, match="no weights"):
        engine_args(PRESETS["gpt-4.1"], ModelOptions())


def test_sampling_kwargs_mapping() -> None:
    params = GenerationParams(temperature=0.6, top_p=0.95, max_tokens=8192, seed=7)
    chat = Request("3", 2, params, messages=[{"role": "user", "content": "hi"}])
    assert sampling_kwargs(chat) == {
        "n": 1,
        "temperature": 0.6,
        "top_p": 0.95,
        "max_tokens": 8192,
        "seed": chat.seed,
    }
    completion = Request("3", 0, GenerationParams(), prompt="Q: 1+1?\n\nA:", stop=("Q:",))
    assert sampling_kwargs(completion) == {
        "n": 1,
        "temperature": 0.0,
        "max_tokens": 2048,
        "seed": 1234,
        "stop": ["Q:"],
    }


def test_batches_split_by_kind_and_tools() -> None:
    params = GenerationParams()
    tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    a = Request("1", 0, params, messages=[{"role": "user", "content": "a"}])
    b = Request("2", 0, params, messages=[{"role": "user", "content": "b"}])
    c = Request("3", 0, params, messages=[{"role": "user", "content": "c"}], tools=[tool])
    d = Request("4", 0, params, prompt="d")
    assert batch_key(a) == batch_key(b)
    assert len({batch_key(a), batch_key(c), batch_key(d)}) == 3


@pytest.mark.skipif(not VLLM_MISSING, reason="checks the refusal when vLLM is absent")
def test_run_without_vllm_refuses_and_writes_nothing(data_dir: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    for model in ("kimi-k2-instruct@vllm", "vllm:org/model"):
        out = subprocess.run(
            [
                *CLI,
                *("run", "--suite", "gsm8k", "--model", model, "--limit", "2", "--no-progress"),
                *("--data-dir", str(data_dir), "--results-dir", str(results)),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 2, out.stderr
        assert INSTALL_HINT in out.stderr
        assert not results.exists()


# -- evalkit serve ------------------------------------------------------------------------


def test_serve_kimi_k2_instruct_two_nodes_with_ray() -> None:
    plan = serve_plan("kimi-k2-instruct", head_address="10.0.0.1")
    assert plan.ray_head == ["ray", "start", "--head", "--port", "6379"]
    assert plan.ray_worker == ["ray", "start", "--address", "10.0.0.1:6379"]
    assert plan.vllm == [
        "vllm",
        "serve",
        "moonshotai/Kimi-K2-Instruct",
        "--revision",
        INSTRUCT_REV,
        "--tokenizer-revision",
        INSTRUCT_REV,
        "--served-model-name",
        "moonshotai/Kimi-K2-Instruct",
        "--port",
        "8000",
        "--trust-remote-code",
        "--tensor-parallel-size",
        "16",
        "--distributed-executor-backend",
        "ray",
        "--max-model-len",
        "131072",
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "kimi_k2",
    ]
    assert plan.evaluate == [
        "evalkit",
        "run",
        "--suite",
        "<suite>",
        "--model",
        "openai:moonshotai/Kimi-K2-Instruct",
        "--base-url",
        "http://10.0.0.1:8000/v1",
    ]


def test_serve_kimi_k2_base_has_no_tool_parser() -> None:
    plan = serve_plan("kimi-k2-base", port=9000, head_address="h")
    assert plan.vllm == [
        "vllm",
        "serve",
        "moonshotai/Kimi-K2-Base",
        "--revision",
        BASE_REV,
        "--tokenizer-revision",
        BASE_REV,
        "--served-model-name",
        "moonshotai/Kimi-K2-Base",
        "--port",
        "9000",
        "--trust-remote-code",
        "--tensor-parallel-size",
        "16",
        "--distributed-executor-backend",
        "ray",
        "--max-model-len",
        "131072",
    ]
    assert plan.evaluate[-1] == "http://h:9000/v1"


def test_serve_four_nodes_adds_pipeline_stages_and_one_node_needs_no_ray() -> None:
    plan = serve_plan("kimi-k2-instruct@vllm", nodes=4, head_address="h")
    i = plan.vllm.index("--tensor-parallel-size")
    assert plan.vllm[i : i + 6] == [
        "--tensor-parallel-size",
        "16",
        "--pipeline-parallel-size",
        "2",
        "--distributed-executor-backend",
        "ray",
    ]
    single = serve_plan("kimi-k2-instruct", nodes=1, gpus_per_node=8, head_address="h")
    assert single.ray_head is None and single.ray_worker is None
    assert (
        "ray" not in single.vllm
        and single.vllm[single.vllm.index("--tensor-parallel-size") + 1] == "8"
    )
    assert any("below the recommended 2x8" in n for n in single.notes)


@pytest.mark.parametrize("name", ["gpt-4.1", "kimi-k2", "local"])
def test_serve_refuses_presets_without_weights(name: str) -> None:
    with pytest.raises(EvalkitError, match="no open weights"):
        serve_plan(name)


def test_serve_cli_dry_run_prints_the_commands() -> None:
    out = subprocess.run(
        [
            *CLI,
            "serve",
            "kimi-k2-instruct",
            "--dry-run",
            "--head-address",
            "node0",
            "--port",
            "8001",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = out.stdout.splitlines()
    assert "ray start --head --port 6379" in lines
    assert "ray start --address node0:6379" in lines
    assert any(
        line.startswith("vllm serve moonshotai/Kimi-K2-Instruct --revision ") for line in lines
    )
    assert (
        "evalkit run --suite '<suite>' --model openai:moonshotai/Kimi-K2-Instruct "
        "--base-url http://node0:8001/v1" in lines
    )
    assert (
        out.stdout
        == format_plan(serve_plan("kimi-k2-instruct", port=8001, head_address="node0")) + "\n"
    )
    bad = subprocess.run([*CLI, "serve", "gpt-4.1", "--dry-run"], capture_output=True, text=True)
    assert bad.returncode == 2 and "no open weights" in bad.stderr


@pytest.mark.skipif(shutil.which("vllm") is not None, reason="checks the refusal without vLLM")
def test_serve_launch_without_vllm_refuses() -> None:
    out = subprocess.run(
        [*CLI, "serve", "kimi-k2-instruct", "--nodes", "1"], capture_output=True, text=True
    )
    assert out.returncode == 2 and "pip install 'evalkit[vllm]'" in out.stderr

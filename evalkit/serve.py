"""`evalkit serve <preset>`: the vLLM server command for a preset's weights, and how to
evaluate against it.

The commands are built as argv lists by a pure function (`serve_plan`), so what is printed,
what is launched and what the tests check are the same lists. Multi-node layouts use Ray:
start the head here, a worker on every other node, then `vllm serve` on the head with
`--distributed-executor-backend ray`. The served model speaks the OpenAI API, so the
evaluation is an ordinary `evalkit run --model openai:<served-name> --base-url ...`.
"""

from __future__ import annotations

import shlex
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass

from evalkit.errors import EvalkitError
from evalkit.models import PRESETS

RAY_PORT = 6379
INSTALL_HINT = "vLLM is not installed: pip install 'evalkit[vllm]' (needs CUDA GPUs)"


@dataclass(frozen=True)
class ServePlan:
    preset: str
    served_name: str
    head_address: str
    port: int
    gpus: int
    vllm: list[str]
    ray_head: list[str] | None  # None on a single node
    ray_worker: list[str] | None
    evaluate: list[str]
    notes: tuple[str, ...] = ()


def serve_plan(
    preset_name: str,
    *,
    nodes: int | None = None,
    gpus_per_node: int | None = None,
    port: int = 8000,
    head_address: str | None = None,
) -> ServePlan:
    """Commands to serve `preset_name` (`<preset>` or `<preset>@vllm`) with vLLM."""
    name = preset_name.partition("@")[0]
    preset = PRESETS.get(name)
    if preset is None:
        raise EvalkitError(f"unknown preset {preset_name!r}: use one of {', '.join(PRESETS)}")
    if preset.hf_repo is None:
        servable = ", ".join(p.name for p in PRESETS.values() if p.hf_repo)
        raise EvalkitError(
            f"preset {name} has no open weights to serve (it is reached through "
            f"{preset.route().backend}); presets with weights: {servable}"
        )
    layout = preset.serving
    nodes = nodes or (layout.nodes if layout else 1)
    gpus_per_node = gpus_per_node or (layout.gpus_per_node if layout else 1)
    gpus = nodes * gpus_per_node
    tp = min(gpus, layout.max_tensor_parallel if layout else gpus)
    if gpus % tp:
        raise EvalkitError(f"{gpus} GPUs do not split into tensor-parallel groups of {tp}")
    pp = gpus // tp
    head = head_address or socket.gethostname()

    argv = ["vllm", "serve", preset.hf_repo]
    if preset.revision:
        argv += ["--revision", preset.revision, "--tokenizer-revision", preset.revision]
    # Served under its repo id: `openai:<preset name>` would mean the preset's API route, whose
    # model name (e.g. kimi-k2-0711-preview) this server does not know.
    argv += ["--served-model-name", preset.hf_repo, "--port", str(port)]
    if preset.trust_remote_code:
        argv.append("--trust-remote-code")
    argv += ["--tensor-parallel-size", str(tp)]
    if pp > 1:
        argv += ["--pipeline-parallel-size", str(pp)]
    if nodes > 1:
        argv += ["--distributed-executor-backend", "ray"]
    if layout is not None:
        argv += ["--max-model-len", str(layout.max_model_len)]
    if preset.tool_parser:
        argv += ["--enable-auto-tool-choice", "--tool-call-parser", preset.tool_parser]

    notes = []
    if layout is not None:
        notes.append(f"layout: {layout.note}")
        if gpus < layout.nodes * layout.gpus_per_node:
            notes.append(
                f"warning: {gpus} GPUs is below the recommended "
                f"{layout.nodes}x{layout.gpus_per_node}; the weights may not fit"
            )
    if preset.checkpoint:
        notes.append(f"checkpoint: {preset.checkpoint}")
    return ServePlan(
        preset=preset.name,
        served_name=preset.hf_repo,
        head_address=head,
        port=port,
        gpus=gpus,
        vllm=argv,
        ray_head=["ray", "start", "--head", "--port", str(RAY_PORT)] if nodes > 1 else None,
        ray_worker=["ray", "start", "--address", f"{head}:{RAY_PORT}"] if nodes > 1 else None,
        evaluate=[
            "evalkit",
            "run",
            "--suite",
            "<suite>",
            "--model",
            f"openai:{preset.hf_repo}",
            "--base-url",
            f"http://{head}:{port}/v1",
        ],
        notes=tuple(notes),
    )


def format_plan(plan: ServePlan) -> str:
    lines = []
    if plan.ray_head and plan.ray_worker:
        lines += [
            f"# 1. on the head node ({plan.head_address}):",
            shlex.join(plan.ray_head),
            "# 2. on every other node:",
            shlex.join(plan.ray_worker),
            f"# 3. on the head node, once Ray sees {plan.gpus} GPUs (`ray status`):",
        ]
    lines.append(shlex.join(plan.vllm))
    lines.append("# then evaluate against it (an OpenAI-compatible server; no key needed):")
    lines.append(shlex.join(plan.evaluate))
    lines += [f"# {note}" for note in plan.notes]
    return "\n".join(lines)


def launch(plan: ServePlan, ray_wait_s: float = 3600.0) -> None:
    """Run the plan on this (head) node: Ray head, wait for the workers' GPUs, then vLLM in
    the foreground until it exits."""
    if shutil.which("vllm") is None:
        raise EvalkitError(INSTALL_HINT)
    if plan.ray_head is not None:
        if shutil.which("ray") is None:
            raise EvalkitError("Ray is not installed: pip install 'ray[default]'")
        subprocess.run(plan.ray_head, check=True)
        print(f"evalkit: waiting for {plan.gpus} GPUs in the Ray cluster", flush=True)
        _wait_for_gpus(plan.gpus, ray_wait_s)
    result = subprocess.run(plan.vllm, check=False)
    if result.returncode != 0:
        raise EvalkitError(f"vllm serve exited with status {result.returncode}")


def _wait_for_gpus(gpus: int, timeout_s: float) -> None:
    import ray

    ray.init(address="auto", logging_level="ERROR")
    try:
        deadline = time.monotonic() + timeout_s
        while ray.cluster_resources().get("GPU", 0) < gpus:
            if time.monotonic() > deadline:
                raise EvalkitError(f"Ray cluster did not reach {gpus} GPUs in {timeout_s:g} s")
            time.sleep(5)
    finally:
        ray.shutdown()

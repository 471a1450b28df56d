"""Weights on vLLM's offline engine (`vllm.LLM`), in this process.

vLLM is an optional extra (`pip install 'evalkit[vllm]'`, CUDA GPU needed) imported only when
this backend is built, so evalkit installs and tests without it. Requests from the runner
arrive one at a time; a short batching window groups them into one `LLM.chat` /
`LLM.generate` call so that the engine batches as it would behind a server. Engine settings
come from a pure function, `engine_args`, testable without vLLM.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import time
from typing import Any

from evalkit.backends.base import Backend
from evalkit.errors import EvalkitError
from evalkit.models import ModelOptions, Preset, preset_for_repo
from evalkit.records import Request, Response, Usage

INSTALL_HINT = (
    "the vllm backend needs vLLM and a CUDA GPU: pip install 'evalkit[vllm]' "
    "(or pip install vllm; Kimi K2 needs vllm>=0.10.0)"
)
BATCH_WINDOW_S = 0.05
MAX_BATCH = 512


def engine_args(target: Preset | str, options: ModelOptions) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM`: the preset's pinned weights and serving layout,
    then explicit options on top. A repo or path without a preset gets vLLM's defaults."""
    preset = target if isinstance(target, Preset) else None
    args: dict[str, Any] = {"model": preset.hf_repo if preset else target}
    if preset is not None and preset.hf_repo is None:
        raise EvalkitError(f"preset {preset.name} has no weights to load on vLLM")
    revision = options.revision or (preset.revision if preset else None)
    if revision:
        args["revision"] = revision
        args["tokenizer_revision"] = revision
    trust = options.trust_remote_code
    if trust is None and preset is not None:
        trust = preset.trust_remote_code
    if trust:
        args["trust_remote_code"] = True

    layout = preset.serving if preset else None
    tp, pp = options.tensor_parallel_size, options.pipeline_parallel_size
    if layout is not None and tp is None and pp is None:
        gpus = layout.nodes * layout.gpus_per_node
        tp = min(gpus, layout.max_tensor_parallel)
        pp = max(1, gpus // tp)
    if tp is not None:
        args["tensor_parallel_size"] = tp
    if pp is not None:
        args["pipeline_parallel_size"] = pp
    if options.enable_expert_parallel:
        args["enable_expert_parallel"] = True
    max_len = options.max_model_len or (layout.max_model_len if layout else None)
    if max_len is not None:
        args["max_model_len"] = max_len
    gpus_per_node = layout.gpus_per_node if layout else None
    if gpus_per_node and (tp or 1) * (pp or 1) > gpus_per_node:
        args["distributed_executor_backend"] = "ray"  # more GPUs than one node holds
    return args


def sampling_kwargs(request: Request) -> dict[str, Any]:
    """Keyword arguments for `vllm.SamplingParams` (same semantics as the OpenAI backend)."""
    return {"n": 1, **request.sampling()}


def batch_key(request: Request) -> str:
    """Requests batch together only with the same kind and tools (`LLM.chat` takes one
    tool list for the whole batch)."""
    return json.dumps([request.kind, request.tools], sort_keys=True)


class VLLMBackend(Backend):
    def __init__(
        self, args: dict[str, Any], *, tool_parser: str | None = None, label: str = ""
    ) -> None:
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise EvalkitError(INSTALL_HINT) from None
        self.args = args
        self.tool_parser = tool_parser
        self.label = label or str(args["model"])
        self._llm: Any = None
        self._pending: list[tuple[Request, asyncio.Future[Response]]] = []
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        import vllm

        self._llm = await asyncio.to_thread(vllm.LLM, **self.args)
        self._wakeup = asyncio.Event()
        self._loop_task = asyncio.create_task(self._batch_loop())

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            self._loop_task = None
        self._llm = None

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "vllm",
            "model_id": self.label,
            "revision": self.args.get("revision"),
            "engine_args": self.args,
            "vllm_version": _version("vllm"),
            "tool_parser": self.tool_parser,
        }

    async def generate(self, request: Request) -> Response:
        assert self._wakeup is not None, "start() first"
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        self._wakeup.set()
        return await future

    async def _batch_loop(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            await asyncio.sleep(BATCH_WINDOW_S)  # let the runner's other requests arrive
            self._wakeup.clear()
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            if self._pending:
                self._wakeup.set()
            groups: dict[str, list[tuple[Request, asyncio.Future[Response]]]] = {}
            for item in batch:
                groups.setdefault(batch_key(item[0]), []).append(item)
            for group in groups.values():
                requests = [r for r, _ in group]
                try:
                    responses = await asyncio.to_thread(self._run, requests)
                except Exception as exc:  # generate must not raise (see Backend)
                    error = f"vllm {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
                    responses = [Response(text="", error=error) for _ in requests]
                for (_, future), response in zip(group, responses, strict=True):
                    if not future.done():
                        future.set_result(response)

    def _run(self, requests: list[Request]) -> list[Response]:
        """One engine call for requests of one kind and one tool list (in a worker thread)."""
        import vllm

        params = [vllm.SamplingParams(**sampling_kwargs(r)) for r in requests]
        start = time.perf_counter()
        if requests[0].kind == "chat":
            outputs = self._llm.chat(
                [r.messages for r in requests],
                sampling_params=params,
                tools=requests[0].tools,
                use_tqdm=False,
            )
        else:
            outputs = self._llm.generate(
                [r.prompt for r in requests], sampling_params=params, use_tqdm=False
            )
        latency = (time.perf_counter() - start) / max(1, len(requests))
        return [self._response(r, o, latency) for r, o in zip(requests, outputs, strict=True)]

    def _response(self, request: Request, output: Any, latency: float) -> Response:
        completion = output.outputs[0]
        text = completion.text
        calls: tuple[Any, ...] = ()
        source = None
        if request.tools and self.tool_parser:
            from evalkit.tool_parsers import parse_tool_calls

            text, calls = parse_tool_calls(text, self.tool_parser)
            source = f"parsed:{self.tool_parser}" if calls else None
        return Response(
            text=text,
            finish_reason="tool_calls" if calls else completion.finish_reason,
            usage=Usage(
                prompt_tokens=len(output.prompt_token_ids or ()),
                completion_tokens=len(completion.token_ids or ()),
            ),
            latency_s=latency,
            model=self.label,
            tool_calls=calls,
            tool_call_source=source,
        )


def build_vllm_backend(target: str, options: ModelOptions) -> VLLMBackend:
    """`target`: a repo id (a preset's, from `<preset>@vllm`, or any other) or a local path."""
    preset = preset_for_repo(target)
    args = engine_args(preset if preset is not None else target, options)
    return VLLMBackend(
        args,
        tool_parser=preset.tool_parser if preset else None,
        label=preset.name if preset else target,
    )


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None

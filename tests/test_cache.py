"""Response cache against the real fault-injecting server on loopback: a repeated run is free and
identical, anything that changes the request misses, sampled requests and errors are never
stored, the key never reaches the disk, and concurrent writers leave a sound database."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fault_server import MODEL_NAME, FaultServer

from evalkit.backends.openai_api import OpenAIBackend
from evalkit.cache import (
    DB_FILE,
    CachedBackend,
    ResponseCache,
    decode_response,
    encode_response,
    request_key,
)
from evalkit.models import ModelOptions
from evalkit.records import GenerationParams, Request, Response, ToolCall, Usage
from evalkit.runner import RunConfig, execute

KEY = "sk-evalkit-cache-secret-456"
LIMIT = 40
# Fields that legitimately differ between two runs of the same requests.
VOLATILE = ("latency_s", "attempts", "details")


@pytest.fixture(scope="module")
def gsm8k_file(data_dir: Path) -> Path:
    return data_dir / "gsm8k" / "test.jsonl"


def run_gsm8k(
    server: FaultServer,
    data_dir: Path,
    results: Path,
    *,
    cache: bool = True,
    params: GenerationParams | None = None,
    mode: str | None = None,
    limit: int = LIMIT,
) -> dict[str, Any]:
    """One full run through the runner; returns run.json plus the samples."""
    run = execute(
        RunConfig(
            suite="gsm8k",
            model=f"openai:{MODEL_NAME}",
            mode=mode,
            params=params or GenerationParams(max_tokens=256),
            limit=limit,
            data_dir=str(data_dir),
            results_dir=str(results),
            model_options=ModelOptions(
                base_url=server.url,
                api_key=KEY,
                timeout_s=2.0,
                max_attempts=3,
                concurrency=8,
                backoff_base_s=0.01,
            ),
            progress=False,
            cache=cache,
        )
    )
    summary = run.summary()
    summary["_samples"] = sorted((r.to_dict() for r in run.samples()), key=lambda r: r["id"])
    return summary


def stable(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in s.items() if k not in VOLATILE} for s in samples]


def test_second_run_is_free_and_identical(gsm8k_file, data_dir, tmp_path, isolated_cache):
    with FaultServer(gsm8k_file, expected_key=KEY, wrong_rate=0.3) as srv:
        first = run_gsm8k(srv, data_dir, tmp_path / "results")
        assert srv.total_requests == LIMIT
        second = run_gsm8k(srv, data_dir, tmp_path / "results")
        assert srv.total_requests == LIMIT, "a cached request reached the server"
    assert first["run_id"] != second["run_id"]
    assert first["cache"] == {
        "enabled": True,
        "path": str(isolated_cache / DB_FILE),
        "hits": 0,
        "misses": LIMIT,
        "uncacheable": 0,
    }
    assert second["cache"]["hits"] == LIMIT and second["cache"]["misses"] == 0
    assert stable(first["_samples"]) == stable(second["_samples"])
    assert first["metrics"] == second["metrics"]
    assert 0 < first["metrics"]["accuracy"]["mean"] < 1  # wrong_rate makes the check non-trivial
    assert first["counts"] == second["counts"]
    assert all(s["details"].get("cached") is True for s in second["_samples"])
    assert not any("cached" in s["details"] for s in first["_samples"])
    assert all(s["attempts"] == 0 for s in second["_samples"])  # no request was made
    # The key was sent on every request; it must reach no file of the cache.
    for f in isolated_cache.iterdir():
        assert KEY.encode() not in f.read_bytes(), f


def test_no_cache_requests_again(gsm8k_file, data_dir, tmp_path, isolated_cache):
    with FaultServer(gsm8k_file) as srv:
        run_gsm8k(srv, data_dir, tmp_path / "results")
        bypass = run_gsm8k(srv, data_dir, tmp_path / "results", cache=False)
        assert srv.total_requests == 2 * LIMIT
    assert bypass["cache"]["enabled"] is False and bypass["cache"]["hits"] == 0
    assert not any("cached" in s["details"] for s in bypass["_samples"])


def test_no_cache_flag_through_the_cli(gsm8k_file, data_dir, tmp_path):
    with FaultServer(gsm8k_file) as srv:
        for _ in range(2):
            out = subprocess.run(
                [
                    *(sys.executable, "-m", "evalkit", "run", "--suite", "gsm8k"),
                    *("--model", f"openai:{MODEL_NAME}", "--base-url", srv.url),
                    *("--limit", "5", "--no-cache", "--no-progress"),
                    *("--data-dir", str(data_dir), "--results-dir", str(tmp_path / "r")),
                ],
                capture_output=True,
                text=True,
                timeout=300,
                env=os.environ,
            )
            assert out.returncode == 0, out.stderr
        assert srv.total_requests == 10


def test_sampled_requests_are_never_cached(gsm8k_file, data_dir, tmp_path, isolated_cache):
    params = GenerationParams(temperature=0.7, max_tokens=256)
    with FaultServer(gsm8k_file) as srv:
        run_gsm8k(srv, data_dir, tmp_path / "results", params=params)
        again = run_gsm8k(srv, data_dir, tmp_path / "results", params=params)
        assert srv.total_requests == 2 * LIMIT
    assert again["cache"]["hits"] == 0 and again["cache"]["uncacheable"] == LIMIT
    db = isolated_cache / DB_FILE
    if db.exists():
        assert ResponseCache(isolated_cache).count() == 0


def test_base_mode_with_stop_sequences_is_cached(gsm8k_file, data_dir, tmp_path):
    with FaultServer(gsm8k_file) as srv:
        run_gsm8k(srv, data_dir, tmp_path / "results", mode="base", limit=10)
        again = run_gsm8k(srv, data_dir, tmp_path / "results", mode="base", limit=10)
        assert srv.total_requests == 10
    assert again["cache"]["hits"] == 10


# -- the wrapper alone, one request at a time ---------------------------------------------


def chat(content: str, system: str | None = None, **params: Any) -> Request:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": content})
    return Request("0", 0, GenerationParams(**{"max_tokens": 64, **params}), messages=messages)


def ask(server: FaultServer, cache_dir: Path, requests: list[Request]) -> list[Response]:
    """The requests in order through one cached backend (started and closed around them)."""
    backend = CachedBackend(
        OpenAIBackend(
            MODEL_NAME, server.url, KEY, timeout_s=2.0, max_attempts=2, backoff_base_s=0.01
        ),
        cache_dir,
    )

    async def go() -> list[Response]:
        await backend.start()
        try:
            return [await backend.generate(r) for r in requests]
        finally:
            await backend.close()

    return asyncio.run(go())


@pytest.fixture(scope="module")
def question(gsm8k_file: Path) -> str:
    with gsm8k_file.open(encoding="utf-8") as fh:
        return json.loads(fh.readline())["question"]


@pytest.mark.parametrize(
    "change",
    [
        {"max_tokens": 65},
        {"seed": 99},
        {"top_p": 0.5},
        {"stop": ("Q:",)},
        {"system": "You are terse."},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"sample_index": 1},  # a different per-request seed
    ],
    ids=lambda c: next(iter(c)),
)
def test_a_changed_request_misses(gsm8k_file, question, isolated_cache, change):
    base = chat(question)
    if "system" in change:
        changed = chat(question, system=change["system"])
    elif change.keys() & {"max_tokens", "seed", "top_p"}:
        changed = chat(question, **change)
    else:
        changed = dataclasses.replace(base, **change)
    assert request_key({}, base) != request_key({}, changed)
    with FaultServer(gsm8k_file) as srv:
        out = ask(srv, isolated_cache, [base, changed, base, changed])
        assert srv.total_requests == 2
    assert [r.cached for r in out] == [False, False, True, True]
    assert out[2].text == out[0].text


def test_other_endpoint_or_model_misses(gsm8k_file, question, isolated_cache):
    with FaultServer(gsm8k_file) as a, FaultServer(gsm8k_file) as b:
        ask(a, isolated_cache, [chat(question)])
        ask(b, isolated_cache, [chat(question)])  # same model name, another server
        assert a.total_requests == 1 and b.total_requests == 1


def test_errors_are_not_cached(gsm8k_file, question, isolated_cache):
    # 400 is final at once; 500, 500 exhausts max_attempts=2; then the server answers.
    with FaultServer(gsm8k_file, script=["400", "500", "500"]) as srv:
        out = ask(srv, isolated_cache, [chat(question)] * 4)
        assert [h.fault for h in srv.hits] == ["400", "500", "500", "ok"]
    assert out[0].error and out[0].error.startswith("HTTP 400")
    assert out[1].error and "gave up" in out[1].error
    assert out[2].error is None and not out[2].cached
    assert out[3].cached and out[3].text == out[2].text
    assert ResponseCache(isolated_cache).count() == 1


WRITER = """
import sys
from evalkit.cache import ResponseCache
from pathlib import Path
cache = ResponseCache(Path(sys.argv[1]))
tag = sys.argv[2]
for i in range(int(sys.argv[3])):
    # one transaction per entry, as the runner writes; keys shared between writers too
    cache.put_many([(f"{tag}-{i}", '{"text": "%s %d"}' % (tag, i), "{}"),
                    (f"shared-{i}", '{"text": "shared %d"}' % i, "{}")])
    if i % 50 == 0:
        assert cache.get(f"{tag}-{i}") is not None
cache.close()
"""


def test_concurrent_writers_do_not_corrupt(isolated_cache):
    n = 400
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(isolated_cache), tag, str(n)])
        for tag in ("a", "b")
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    db = sqlite3.connect(isolated_cache / DB_FILE)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 3 * n
    db.close()


def test_two_runs_in_parallel_share_one_cache(gsm8k_file, data_dir, tmp_path):
    """Two evalkit processes (e.g. shards on one node) write the same cache at once; a third
    run is then answered entirely from it."""
    with FaultServer(gsm8k_file, ok_delay_s=0.01) as srv:
        cmds = [
            [
                *(sys.executable, "-m", "evalkit", "run", "--suite", "gsm8k"),
                *("--model", f"openai:{MODEL_NAME}", "--base-url", srv.url),
                *("--limit", "60", "--shard", f"{i}/2", "--no-progress", "--concurrency", "8"),
                *("--data-dir", str(data_dir), "--results-dir", str(tmp_path / f"r{i}")),
            ]
            for i in range(2)
        ]
        procs = [subprocess.Popen(c, stderr=subprocess.PIPE, text=True) for c in cmds]
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
        assert srv.total_requests == 60
        third = run_gsm8k(srv, data_dir, tmp_path / "results", limit=60, params=GenerationParams())
        assert srv.total_requests == 60
    assert third["cache"]["hits"] == 60


def test_replay_bypasses_the_cache(data_dir, tmp_path, isolated_cache):
    replay = tmp_path / "r.jsonl"
    replay.write_text(
        "".join(json.dumps({"id": str(i), "response": "42"}) + "\n" for i in range(5))
    )
    run = execute(
        RunConfig(
            suite="gsm8k",
            model=f"replay:{replay}",
            limit=5,
            data_dir=str(data_dir),
            results_dir=str(tmp_path / "results"),
            progress=False,
        )
    )
    assert run.summary()["cache"]["enabled"] is False
    assert not (isolated_cache / DB_FILE).exists()


def test_stored_response_round_trips_with_tool_calls():
    """Everything a backend answered comes back from disk, tool calls included (a malformed
    call keeps its error); only what describes the request made (attempts, latency) does not."""
    original = Response(
        text="",
        finish_reason="tool_calls",
        usage=Usage(12, 7),
        latency_s=0.8,
        attempts=2,
        model="m",
        tool_calls=(
            ToolCall("c1", "add", {"a": 1, "b": 2}, raw='{"a": 1, "b": 2}'),
            ToolCall("c2", "add", None, raw="{oops", error="arguments are not valid JSON"),
        ),
    )
    back = decode_response(encode_response(original))
    assert back.cached and back.attempts == 0 and back.error is None
    assert dataclasses.replace(back, latency_s=0.8, attempts=2, cached=False) == original


def test_unusable_cache_location_warns_and_runs(gsm8k_file, data_dir, tmp_path, monkeypatch):
    not_a_dir = tmp_path / "cache-is-a-file"
    not_a_dir.write_text("")
    monkeypatch.setenv("EVALKIT_CACHE_DIR", str(not_a_dir))
    with FaultServer(gsm8k_file) as srv:
        summary = run_gsm8k(srv, data_dir, tmp_path / "results", limit=5)
        assert srv.total_requests == 5
    assert summary["cache"]["enabled"] is False
    assert "cannot open" in summary["cache"]["disabled_reason"]
    assert summary["counts"]["errors"] == 0

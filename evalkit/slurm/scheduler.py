"""The Slurm commands evalkit uses: sbatch, squeue/scontrol (job states), sacct (only when
accounting exists), scancel. Plain subprocess calls with state polling: no result objects that
can wait forever on a job that died without writing one."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from evalkit.errors import EvalkitError

# States after which a job never runs again (unless requeued, which makes it PENDING).
TERMINAL = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
}
SQUEUE_FORMAT = "%i|%F|%K|%T|%r"


@dataclass(frozen=True)
class JobState:
    """One job or array task as Slurm reports it; `key` is `<id>` or `<array id>_<task>`."""

    key: str
    state: str
    reason: str = ""

    @property
    def active(self) -> bool:
        return self.state not in TERMINAL and self.state != "UNKNOWN"

    @property
    def never_runs(self) -> bool:
        """Pending on a dependency that can no longer be satisfied."""
        return self.state == "PENDING" and self.reason == "DependencyNeverSatisfied"


def _slurm(argv: Sequence[str], timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    if shutil.which(argv[0]) is None:
        raise EvalkitError(f"{argv[0]} not found: is this a Slurm login node (or PATH set)?")
    try:
        return subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise EvalkitError(f"{argv[0]} did not answer within {timeout_s:g} s") from None


def sbatch(
    script: Path,
    *,
    dependency: str | None = None,
    array: Sequence[int] | None = None,
    args: Sequence[str] = (),
) -> str:
    argv = ["sbatch", "--parsable"]
    if array is not None:
        argv.append("--array=" + ",".join(str(i) for i in array))
    if dependency:
        argv.append(f"--dependency={dependency}")
    proc = _slurm([*argv, str(script), *args])
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise EvalkitError(f"sbatch {script.name} failed: {last}")
    return proc.stdout.strip().split(";")[0]  # "<id>[;cluster]"


def cancel(keys: Iterable[str]) -> None:
    keys = list(keys)
    if keys:
        _slurm(["scancel", *keys])


def _expand(array_id: str, tasks: str) -> list[str]:
    """`0-3,5` (a pending array's remaining tasks, maybe `%2`-throttled) -> task keys."""
    keys = []
    for part in tasks.split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit():
            keys += [f"{array_id}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return keys


def job_states(job_ids: Iterable[str]) -> dict[str, JobState]:
    """States of jobs (array tasks expanded) Slurm still knows: squeue --states=all covers
    finished jobs for MinJobAge, sacct beyond it when accounting exists. A job Slurm has
    forgotten is absent; if Slurm cannot be asked, every job is UNKNOWN with the reason."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    states: dict[str, JobState] = {}
    # Purged ids are skipped when the list holds several; one alone is "Invalid job id".
    proc = _slurm(["squeue", "--states=all", "-h", "-j", ",".join(ids), "-o", SQUEUE_FORMAT])
    if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
        error = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        return {i: JobState(i, "UNKNOWN", f"squeue failed: {error}") for i in ids}
    for line in proc.stdout.splitlines() if proc.returncode == 0 else ():
        key, array_id, task, state, reason = line.strip().split("|", 4)
        if task not in ("N/A", "") and not task.isdigit():
            for k in _expand(array_id, task):
                states[k] = JobState(k, state, reason)
        else:
            states[key] = JobState(key, state, reason)
    missing = [i for i in ids if not any(k == i or k.startswith(f"{i}_") for k in states)]
    if missing and shutil.which("sacct"):
        proc = _slurm(["sacct", "-n", "-P", "-X", "-j", ",".join(missing), "-o", "JobID,State"])
        for line in proc.stdout.splitlines() if proc.returncode == 0 else ():
            key, _, state = line.partition("|")
            if re.fullmatch(r"\d+(_\d+)?", key):
                states[key] = JobState(key, state.split()[0] if state else "UNKNOWN")
    return states

"""A submission's state, `<results-dir>/slurm/<submission-id>/submission.json`: what was asked
for (suites, shards, the config hash of every shard's run and of the merged run) and every job
submitted for it, so `status` and `resume` work from any login node, at any later time."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evalkit.errors import EvalkitError
from evalkit.store import results_root, write_json_atomic

SUBMISSION_FILE = "submission.json"
SCHEMA_VERSION = 1


@dataclass
class Job:
    """One sbatch submission. `kind`: server | server-stop | eval | merge | report; an eval
    job is an array whose task ids are the shard indices in `array`."""

    kind: str
    name: str
    script: str
    job_id: str | None = None
    suite: str | None = None
    array: list[int] | None = None
    dependency: str | None = None
    submitted_at: str | None = None


@dataclass
class SuitePlan:
    """The runs one suite's jobs produce: a config hash per shard, and the merged run's."""

    shard_hashes: list[str]
    merged_hash: str


@dataclass
class Submission:
    submission_id: str
    path: Path
    created_at: str
    model: str  # as the user gave it
    eval_model: str  # what the evaluation tasks run: openai:<served name> behind a server
    shards: int
    suites: dict[str, SuitePlan]
    results_dir: str
    workdir: str
    run_args: list[str]
    slurm: dict[str, Any]  # partition, account, time, gpus_per_node, nodes, cpus_per_task
    server: dict[str, Any] | None = None  # preset, nodes, gpus_per_node, port, endpoint_file
    jobs: list[Job] = field(default_factory=list)
    dry_run: bool = False
    schema_version: int = SCHEMA_VERSION

    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"

    @property
    def site_dir(self) -> Path:
        return self.path / "site"

    def latest(self, kind: str, suite: str | None = None) -> Job | None:
        jobs = [j for j in self.jobs if j.kind == kind and j.suite == suite and j.job_id]
        return jobs[-1] if jobs else None

    def shard_jobs(self, suite: str) -> dict[int, tuple[Job, str]]:
        """Shard index -> (the eval job that last ran it, its Slurm task id `<job>_<i>`)."""
        out: dict[int, tuple[Job, str]] = {}
        for job in self.jobs:
            if job.kind == "eval" and job.suite == suite and job.job_id:
                for i in job.array or ():
                    out[i] = (job, f"{job.job_id}_{i}")
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d

    def save(self, where: Path | None = None) -> None:
        """Write the state into its folder (or `where`, a staging folder renamed into place)."""
        write_json_atomic((where or self.path) / SUBMISSION_FILE, self.to_dict())

    @classmethod
    def load(cls, where: str, results_dir: str | None = None) -> Submission:
        """From a submission folder, or an id under `<results-dir>/slurm/`."""
        path = Path(where).expanduser()
        if not (path / SUBMISSION_FILE).is_file():
            path = results_root(results_dir) / "slurm" / where
        file = path / SUBMISSION_FILE
        if not file.is_file():
            raise EvalkitError(f"no Slurm submission {where!r} (no {SUBMISSION_FILE} there)")
        try:
            d = json.loads(file.read_text(encoding="utf-8"))
            d["path"] = path.resolve()
            d["suites"] = {k: SuitePlan(**v) for k, v in d["suites"].items()}
            d["jobs"] = [Job(**j) for j in d["jobs"]]
            return cls(**d)
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise EvalkitError(f"{file}: not a valid submission file ({exc})") from None

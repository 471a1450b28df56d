"""`evalkit slurm status`, `resume` and `cancel`: Slurm's view of a submission's jobs beside
the results store's view of its shards.

Job states come from squeue/scontrol (and sacct when accounting exists); without accounting
Slurm forgets a job MinJobAge after it ends, so what is done is decided by the store (a shard is
done when its run has run.json), never by job states alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from evalkit.errors import EvalkitError
from evalkit.slurm import scheduler
from evalkit.slurm.scheduler import JobState
from evalkit.slurm.shards import ShardProgress, merged_run, shard_progress
from evalkit.slurm.submission import Job, Submission
from evalkit.slurm.submit import submit_jobs


@dataclass(frozen=True)
class JobRow:
    kind: str
    name: str
    key: str  # Slurm id: `<id>` or `<array id>_<task>`
    state: str
    reason: str
    log: str
    suite: str | None = None
    shard: int | None = None

    @property
    def slurm(self) -> JobState:
        return JobState(self.key, self.state, self.reason)


def _log_path(sub: Submission, job: Job, key: str) -> str:
    return str(sub.logs_dir / f"{job.name}-{key}.out")


def job_rows(sub: Submission) -> list[JobRow]:
    states = scheduler.job_states(j.job_id for j in sub.jobs if j.job_id)
    rows = []
    for job in sub.jobs:
        if not job.job_id:
            continue
        keys = [(f"{job.job_id}_{i}", i) for i in job.array] if job.array else [(job.job_id, None)]
        for key, shard in keys:
            st = states.get(key) or states.get(job.job_id)  # the latter: squeue failed
            st = st or JobState(key, "UNKNOWN", "no longer known to Slurm")
            rows.append(
                JobRow(
                    job.kind,
                    job.name,
                    key,
                    st.state,
                    st.reason,
                    _log_path(sub, job, key),
                    job.suite,
                    shard,
                )
            )
    return rows


def cancel_orphans(rows: list[JobRow]) -> list[str]:
    """Cancel jobs pending on a dependency that can never be satisfied (Slurm does this itself
    with kill_invalid_depend / --kill-on-invalid-dep; this covers clusters that ignore it)."""
    keys = [r.key for r in rows if r.slurm.never_runs]
    scheduler.cancel(keys)
    return keys


def collect(sub: Submission) -> dict[str, Any]:
    """Everything `status` shows, as plain data (`--json`)."""
    rows = job_rows(sub) if sub.jobs else []
    cancelled = cancel_orphans(rows)
    if cancelled:
        rows = job_rows(sub)
    progress = shard_progress(sub)
    merged = {s: (r.run_id if (r := merged_run(sub, s)) else None) for s in sub.suites}
    site = sub.site_dir / "index.html"
    return {
        "submission": sub.submission_id,
        "path": str(sub.path),
        "model": sub.model,
        "dry_run": sub.dry_run,
        "jobs": [asdict(r) for r in rows],
        "shards": [asdict(p) for p in progress],
        "shards_done": sum(p.finished for p in progress),
        "shards_total": len(progress),
        "merged": merged,
        "site": str(site) if site.is_file() else None,
        "logs": str(sub.logs_dir),
        "cancelled": cancelled,
    }


def format_status(status: dict[str, Any]) -> str:
    lines = [f"submission {status['submission']}  ({status['path']})", f"  model {status['model']}"]
    if status["dry_run"]:
        lines.append("  dry run: nothing was submitted")
    shard_of = {(p["suite"], p["index"]): p for p in status["shards"]}
    for r in status["jobs"]:
        reason = f" ({r['reason']})" if r["reason"] and r["reason"] != "None" else ""
        extra = ""
        if r["shard"] is not None:
            p = shard_of[(r["suite"], r["shard"])]
            run = "done" if p["finished"] else f"{p['samples']} samples saved"
            extra = f"  shard {r['shard']}: {run}"
        lines.append(f"  {r['name']:24s} {r['key']:12s} {r['state']}{reason}{extra}")
    remaining = [f"{p['suite']}/{p['index']}" for p in status["shards"] if not p["finished"]]
    lines.append(
        f"  shards done {status['shards_done']}/{status['shards_total']}"
        + (f"; remaining: {', '.join(remaining)}" if remaining else "")
    )
    for suite, run_id in status["merged"].items():
        lines.append(f"  merged {suite}: {run_id or 'not yet'}")
    lines.append(f"  report: {status['site'] or 'not yet'}")
    lines.append(f"  logs: {status['logs']}")
    if status["cancelled"]:
        lines.append(
            f"  cancelled dependants that could never run: {', '.join(status['cancelled'])}"
        )
    return "\n".join(lines)


def resume(sub: Submission) -> list[Job]:
    """Resubmit the shards whose runs are not finished and whose tasks are no longer active
    (they resume from their saved samples), then the merges and the report they feed; keep
    whatever is still running. Returns the new jobs ([] when everything is done)."""
    if sub.dry_run:
        raise EvalkitError(f"submission {sub.submission_id} is a dry run: submit it for real")
    rows = job_rows(sub)
    if cancel_orphans(rows):
        rows = job_rows(sub)
    unknown = [r.reason for r in rows if r.reason.startswith("squeue failed")]
    if unknown:  # resubmitting blind could run a shard twice
        raise EvalkitError(f"cannot read the jobs' states: {unknown[0]}")
    active = {r.key for r in rows if r.slurm.active}
    progress: list[ShardProgress] = shard_progress(sub)

    todo: dict[str, list[int]] = {s: [] for s in sub.suites}
    wait_evals: dict[str, list[str]] = {s: [] for s in sub.suites}
    for p in progress:
        if p.finished:
            continue
        last = sub.shard_jobs(p.suite).get(p.index)
        if last and last[1] in active:
            wait_evals[p.suite].append(last[1])
        else:
            todo[p.suite].append(p.index)

    supersede: list[str] = []  # active downstream jobs that would miss the new shards
    merges: set[str] = set()
    wait_merges: list[str] = []
    for suite in sub.suites:
        job = sub.latest("merge", suite)
        if merged_run(sub, suite) is not None:
            continue
        if job and job.job_id in active and not todo[suite]:
            wait_merges.append(job.job_id)
        else:
            merges.add(suite)
            if job and job.job_id in active:
                supersede.append(job.job_id)
    report_job = sub.latest("report")
    report_active = bool(report_job and report_job.job_id in active)
    report = bool(merges) or (not report_active and not (sub.site_dir / "index.html").is_file())
    if report and report_active and report_job and report_job.job_id:
        supersede.append(report_job.job_id)

    server_id = None
    if sub.server is not None and any(todo.values()):
        server = sub.latest("server")
        if server and server.job_id in active:
            server_id = server.job_id
            stop = sub.latest("server-stop")
            if stop and stop.job_id in active:
                supersede.append(stop.job_id)  # a new one waits on the new tasks too
    if not any(todo.values()) and not merges and not report:
        return []
    scheduler.cancel(supersede)
    new = submit_jobs(
        sub,
        {s: i for s, i in todo.items() if i},
        merges,
        report,
        wait_evals={s: k for s, k in wait_evals.items() if k},
        wait_merges=wait_merges,
        server_id=server_id,
    )
    sub.save()
    return new


def cancel(sub: Submission) -> list[str]:
    """Cancel every job of the submission that is still pending or running."""
    keys = sorted({r.key.split("_")[0] for r in job_rows(sub) if r.slurm.active})
    scheduler.cancel(keys)
    return keys

"""What the results store says about a submission: which shard runs are finished, how far the
unfinished ones got, whether a suite is merged; and the merge step its merge jobs run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evalkit.errors import EvalkitError
from evalkit.slurm.submission import Submission
from evalkit.store import Run, Store


@dataclass(frozen=True)
class ShardProgress:
    suite: str
    index: int
    run_id: str | None  # None: not started
    finished: bool
    samples: int  # saved so far


def _runs_by_hash(store: Store) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = {}
    for run in store.runs():  # sorted by start time, so the latest run comes last
        out.setdefault(run.config().get("config_hash", ""), []).append(run)
    return out


def _pick(runs: list[Run]) -> Run | None:
    """The latest finished run of a config, else the unfinished one the runner would resume."""
    finished = [r for r in runs if r.finished]
    return (finished or runs or [None])[-1]


def shard_progress(sub: Submission) -> list[ShardProgress]:
    by_hash = _runs_by_hash(Store(Path(sub.results_dir)))
    out = []
    for suite, plan in sub.suites.items():
        for i, h in enumerate(plan.shard_hashes):
            run = _pick(by_hash.get(h, []))
            out.append(
                ShardProgress(
                    suite=suite,
                    index=i,
                    run_id=run.run_id if run else None,
                    finished=bool(run and run.finished),
                    samples=len(run.samples()) if run else 0,
                )
            )
    return out


def merged_run(sub: Submission, suite: str, store: Store | None = None) -> Run | None:
    """The finished run that merges this suite's shard runs, if one was made."""
    store = store or Store(Path(sub.results_dir))
    plan = sub.suites[suite]
    for run in reversed(list(store.runs())):
        config = run.config()
        if (
            run.finished
            and config.get("config_hash") == plan.merged_hash
            and config.get("merged_from")
        ):
            return run
    return None


def merge_suite(sub: Submission, suite: str) -> tuple[Run, bool]:
    """Merge the suite's finished shard runs; (run, False) if it was merged before, so that a
    requeued merge job does not make a second copy. Refuses an incomplete set of shards."""
    from evalkit.merge import merge_runs

    if suite not in sub.suites:
        raise EvalkitError(f"suite {suite!r} is not part of submission {sub.submission_id}")
    store = Store(Path(sub.results_dir))
    existing = merged_run(sub, suite, store)
    if existing is not None:
        return existing, False
    shards = [p for p in shard_progress(sub) if p.suite == suite]
    missing = [str(p.index) for p in shards if not p.finished]
    if missing:
        raise EvalkitError(
            f"{suite}: shards {', '.join(missing)} of {sub.shards} are not finished; "
            f"run `evalkit slurm resume {sub.path}`"
        )
    return merge_runs(store, [p.run_id for p in shards if p.run_id]), True

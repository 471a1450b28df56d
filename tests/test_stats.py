"""Statistics against known values."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest

from evalkit import stats
from evalkit.records import SampleRecord


def rec(pid: str, index: int, correct: bool) -> SampleRecord:
    return SampleRecord(
        id=pid,
        sample_index=index,
        prompt="",
        response="",
        extracted=None,
        correct=correct,
        target="",
        finish_reason="stop",
        prompt_tokens=0,
        completion_tokens=0,
        latency_s=0.0,
        attempts=1,
        error=None,
        metadata={},
        details={},
    )


@pytest.mark.parametrize(
    ("n", "c", "k"),
    [(10, 0, 1), (10, 3, 1), (10, 3, 5), (20, 19, 10), (5, 5, 5), (100, 1, 10), (7, 2, 6)],
)
def test_pass_at_k_matches_closed_form(n: int, c: int, k: int) -> None:
    expected = 1.0 - comb(n - c, k) / comb(n, k)
    assert stats.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_clustered_mean_weights_problems_not_samples() -> None:
    # problem a: 4/4 correct, problem b: 0/2 -> mean over problems 0.5 (not 4/6)
    records = [rec("a", i, True) for i in range(4)] + [rec("b", i, False) for i in range(2)]
    m = stats.clustered_mean(records)
    assert m["mean"] == 0.5 and m["n"] == 2 and m["n_samples"] == 6


def test_stderr_is_the_binomial_standard_error() -> None:
    records = [rec(str(i), 0, i < 30) for i in range(100)]
    m = stats.clustered_mean(records)
    assert m["mean"] == pytest.approx(0.3)
    assert m["stderr"] == pytest.approx(np.sqrt(0.3 * 0.7 / 99), rel=1e-9)
    lo, hi = m["ci95"]
    assert lo < 0.3 < hi and hi - lo == pytest.approx(2 * 1.96 * m["stderr"], rel=0.15)


def test_bootstrap_interval_covers_the_truth_about_95_percent() -> None:
    rng = np.random.default_rng(7)
    p, n, trials, covered = 0.62, 200, 300, 0
    for _ in range(trials):
        outcomes = rng.random(n) < p
        m = stats.summarize(outcomes.astype(float))
        covered += m["ci95"][0] <= p <= m["ci95"][1]
    assert 0.90 <= covered / trials <= 0.99


def test_interval_does_not_depend_on_record_order() -> None:
    rng = np.random.default_rng(3)
    records = [rec(str(i), j, bool(rng.random() < 0.4)) for i in range(50) for j in range(3)]
    a = stats.clustered_mean(records)
    b = stats.clustered_mean(list(reversed(records)))
    assert a == b

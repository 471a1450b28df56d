"""Statistics against known values."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest
from sample_records import scored

from evalkit import stats


@pytest.mark.parametrize(
    ("n", "c", "k"),
    [(10, 0, 1), (10, 3, 1), (10, 3, 5), (20, 19, 10), (5, 5, 5), (100, 1, 10), (7, 2, 6)],
)
def test_pass_at_k_matches_closed_form(n: int, c: int, k: int) -> None:
    expected = 1.0 - comb(n - c, k) / comb(n, k)
    assert stats.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_clustered_mean_weights_problems_not_samples() -> None:
    # problem a: 4/4 correct, problem b: 0/2 -> mean over problems 0.5 (not 4/6)
    records = [scored("a", i, True) for i in range(4)] + [scored("b", i, False) for i in range(2)]
    m = stats.clustered_mean(records)
    assert m["mean"] == 0.5 and m["n"] == 2 and m["n_samples"] == 6


def test_stderr_is_the_binomial_standard_error() -> None:
    records = [scored(str(i), 0, i < 30) for i in range(100)]
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
    records = [scored(str(i), j, bool(rng.random() < 0.4)) for i in range(50) for j in range(3)]
    a = stats.clustered_mean(records)
    b = stats.clustered_mean(list(reversed(records)))
    assert a == b


def test_stratified_interval_keeps_each_stratum_whole() -> None:
    """Half the weight on an all-wrong stratum, half on an all-right one: every stratified
    resample is exactly 0.5 (a pooled bootstrap would spread); with spread inside the strata,
    the standard error is sqrt(sum w^2 var_s / n_s) and the interval covers the mean."""
    flat = stats.stratified_summarize({"a": [0.0] * 40, "b": [1.0] * 10}, {"a": 0.5, "b": 0.5})
    assert flat["mean"] == 0.5 and flat["ci95"] == [0.5, 0.5] and flat["stderr"] == 0.0
    assert flat["n"] == 50 and flat["weights"] == {"a": 0.5, "b": 0.5}
    rng = np.random.default_rng(11)
    a, b = (rng.random(300) < 0.3).astype(float), rng.random(100)  # 0/1 and many-valued
    m = stats.stratified_summarize({"a": a, "b": b, "unweighted": [1.0]}, {"a": 0.25, "b": 0.75})
    assert m["mean"] == pytest.approx(0.25 * a.mean() + 0.75 * b.mean())
    expected = np.sqrt(0.25**2 * a.var(ddof=1) / 300 + 0.75**2 * b.var(ddof=1) / 100)
    assert m["stderr"] == pytest.approx(expected)
    lo, hi = m["ci95"]
    assert lo < m["mean"] < hi and hi - lo == pytest.approx(2 * 1.96 * expected, rel=0.1)
    assert m["n"] == 400

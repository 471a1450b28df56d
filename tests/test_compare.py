"""Paired comparison: the tests against hand-computed values, their behaviour on simulated data,
and `evalkit compare` on gold-replay runs of GSM8K (real data, the real pipeline)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evalkit import stats
from evalkit.compare import compare_runs
from evalkit.data import DataLocation
from evalkit.errors import EvalkitError
from evalkit.registry import get_suite
from evalkit.runner import RunConfig, execute
from evalkit.store import Run, RunWriter, Store

REPO = Path(__file__).resolve().parent.parent


# -- the tests themselves -------------------------------------------------------------------
def test_mcnemar_exact_by_hand() -> None:
    # b = 3, c = 10 discordant pairs: under H0 b ~ Binomial(13, 1/2).
    # P(b <= 3) = (C(13,0) + C(13,1) + C(13,2) + C(13,3)) / 2**13 = (1 + 13 + 78 + 286) / 8192
    #           = 378 / 8192 = 0.046142578125; two-sided: 2 * 378 / 8192 = 0.092285156250.
    assert stats.mcnemar_exact(3, 10) == pytest.approx(756 / 8192, rel=1e-12)
    assert stats.mcnemar_exact(10, 3) == pytest.approx(756 / 8192, rel=1e-12)
    # b = 0, c = 6: 2 * (1/2)**6 = 0.03125, significant at 0.05; b = 0, c = 5: 0.0625, not.
    assert stats.mcnemar_exact(0, 6) == pytest.approx(0.03125, rel=1e-12)
    assert stats.mcnemar_exact(0, 5) == pytest.approx(0.0625, rel=1e-12)
    assert stats.mcnemar_exact(0, 0) == 1.0
    assert stats.mcnemar_exact(7, 7) == 1.0


def test_permutation_test_by_hand() -> None:
    # 3 problems, each 1 point better in b: of the 2**3 = 8 sign flips only all-plus and
    # all-minus reach |mean| >= 1, so the exact two-sided p is 2/8.
    assert stats.paired_permutation_test([0, 0, 0], [1, 1, 1]) == pytest.approx(0.25)
    # Differences (1, 1, 1, 1, 0.5): flipping any one sign lowers |sum| below 4.5, so 2/32.
    a = [0.0, 0.0, 0.0, 0.0, 0.0]
    assert stats.paired_permutation_test(a, [1, 1, 1, 1, 0.5]) == pytest.approx(2 / 32)
    assert stats.paired_permutation_test([0.2, 0.4, 1.0], [0.2, 0.4, 1.0]) == 1.0


def test_paired_bootstrap_interval_covers_the_true_difference() -> None:
    # 200 simulated pairs of runs, n = 200 problems, correct with p = 0.7 in a and 0.75 in b;
    # the nominal 95% interval should cover the true 0.05 in about 95% of them (sd 1.5%).
    rng = np.random.default_rng(11)
    trials, n, covered = 200, 200, 0
    for _ in range(trials):
        a = (rng.random(n) < 0.70).astype(float)
        b = (rng.random(n) < 0.75).astype(float)
        lo, hi = stats.paired_bootstrap(a, b)["ci95"]
        covered += lo <= 0.05 <= hi
    assert 0.92 <= covered / trials <= 0.98


def test_mcnemar_holds_its_level_and_has_power() -> None:
    # Correlated 0/1 outcomes of two equally good models (70%, agreeing on 80% of problems):
    # the exact test may reject at most 5% of the time. A 10-point gap is found nearly always.
    rng = np.random.default_rng(5)

    def rejections(p_b: float) -> float:
        hits = 0
        for _ in range(300):
            a = rng.random(300) < 0.7
            b = np.where(rng.random(300) < 0.8, a, rng.random(300) < 0.7)
            b |= rng.random(300) < (p_b - 0.7) / 0.3  # raises P(b) from 0.7 to p_b
            hits += stats.mcnemar_exact(int(np.sum(a & ~b)), int(np.sum(~a & b))) < 0.05
        return hits / 300

    assert rejections(0.7) <= 0.05
    assert rejections(0.8) >= 0.9


# -- gold-replay runs of GSM8K through the runner --------------------------------------------
def gsm8k_gold(record: dict[str, Any]) -> str:
    return record["answer"].split("####")[-1].strip().replace(",", "")


def gold(record: dict[str, Any]) -> str:
    return f"The final answer is {gsm8k_gold(record)}"


def wrong(record: dict[str, Any]) -> str:
    return f"The final answer is {float(gsm8k_gold(record)) + 1:g}"


def broken(i: int) -> bool:
    """30% of the problems, by position: 396 of GSM8K's 1319 (0, 1, 2, 10, 11, 12, ...)."""
    return i % 10 < 3


def replay_run(
    tmp: Path,
    name: str,
    data_dir: Path,
    respond: Callable[[int, dict[str, Any]], list[str]],
    **config: Any,
) -> Run:
    suite = get_suite("gsm8k")
    records = suite.load_records(DataLocation(data_dir))
    path = tmp / f"{name}.jsonl"
    with path.open("w") as fh:
        for i, record in enumerate(records):
            for text in respond(i, record):
                fh.write(json.dumps({"id": suite.sample_id(i, record), "response": text}) + "\n")
    return execute(
        RunConfig(
            suite="gsm8k",
            model=f"replay:{path}",
            data_dir=str(data_dir),
            results_dir=str(tmp / "results"),
            progress=False,
            cache=False,
            **config,
        )
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Run]:
    tmp = tmp_path_factory.mktemp("compare")
    out = {
        "gold": replay_run(tmp, "gold", data_dir, lambda i, r: [gold(r)]),
        "broken": replay_run(
            tmp, "broken", data_dir, lambda i, r: [wrong(r) if broken(i) else gold(r)]
        ),
        # Two samples per problem (the permutation-test path), first 200 problems.
        "gold2": replay_run(
            tmp, "gold2", data_dir, lambda i, r: [gold(r)] * 2, samples=2, limit=200
        ),
        "half2": replay_run(
            tmp,
            "half2",
            data_dir,
            lambda i, r: [gold(r), wrong(r) if broken(i) else gold(r)],
            samples=2,
            limit=200,
        ),
        "protocol": replay_run(
            tmp, "protocol", data_dir, lambda i, r: [gold(r)], protocol="moonshot", limit=100
        ),
        "base": replay_run(tmp, "base", data_dir, lambda i, r: [gold(r)], mode="base", limit=100),
    }
    # The same problems with one question edited: another dataset fingerprint.
    edited = tmp / "edited-data"
    (edited / "gsm8k").mkdir(parents=True)
    lines = (data_dir / "gsm8k" / "test.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    lines[0] = json.dumps({**first, "question": first["question"] + " (edited)"})
    (edited / "gsm8k" / "test.jsonl").write_text("\n".join(lines) + "\n")
    out["edited"] = replay_run(
        tmp, "edited", edited, lambda i, r: [gold(r)], allow_data_mismatch=True, limit=100
    )
    return out


def test_broken_run_differs_by_exactly_the_broken_fraction(runs: dict[str, Run]) -> None:
    c = compare_runs(runs["gold"], runs["broken"])
    n_broken = sum(broken(i) for i in range(1319))
    assert n_broken == 396
    assert c.n_problems == 1319 and c.suite == "gsm8k" and c.metric == "accuracy"
    assert c.mean_a == 1.0 and c.mean_b == pytest.approx(923 / 1319, abs=1e-12)
    assert c.diff == pytest.approx(-396 / 1319, abs=1e-12)
    assert c.ci95[0] < c.diff < c.ci95[1] < 0  # significant: the interval excludes 0
    assert c.test == "mcnemar-exact" and c.discordant == (396, 0)
    assert c.p_value == pytest.approx(2 * 0.5**396, rel=1e-9)  # exact McNemar, b=396, c=0
    assert c.warnings == ()
    swapped = compare_runs(runs["broken"], runs["gold"])
    assert swapped.diff == pytest.approx(396 / 1319) and swapped.discordant == (0, 396)
    assert swapped.p_value == c.p_value


def test_a_run_against_itself_is_zero_with_p_one(runs: dict[str, Run]) -> None:
    for name in ("broken", "half2"):
        c = compare_runs(runs[name], runs[name])
        assert c.diff == 0.0 and c.ci95 == (0.0, 0.0) and c.p_value == 1.0


def test_several_samples_per_problem_use_the_permutation_test(runs: dict[str, Run]) -> None:
    c = compare_runs(runs["gold2"], runs["half2"])
    # 60 of the first 200 problems have one of their two samples wrong: 0.5 each.
    assert c.n_problems == 200 and c.test == "paired-permutation" and c.discordant is None
    assert c.diff == pytest.approx(-0.5 * 60 / 200, abs=1e-12)
    assert c.ci95[1] < 0 and c.p_value < 1e-3


@pytest.mark.parametrize(
    ("other", "reason"),
    [
        ("edited", "different dataset fingerprint"),
        ("protocol", "different protocol (None vs moonshot)"),
        ("base", "different mode (chat vs base)"),
    ],
)
def test_incomparable_runs_are_refused_unless_forced(
    runs: dict[str, Run], other: str, reason: str
) -> None:
    with pytest.raises(EvalkitError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        compare_runs(runs["gold"], runs[other])
    c = compare_runs(runs["gold"], runs[other], force=True)
    assert any(w.startswith(f"forced: {reason}") for w in c.warnings)
    # Only the problems both runs answered count; the rest are named in the warnings.
    assert c.n_problems == 100
    assert f"1219 problems of {runs['gold'].run_id} are not in the other run" in c.warnings


def test_different_suites_are_refused(runs: dict[str, Run], data_dir: Path, tmp_path: Path) -> None:
    suite = get_suite("math500")
    records = suite.load_records(DataLocation(data_dir))[:20]
    path = tmp_path / "m.jsonl"
    path.write_text(
        "".join(
            json.dumps({"id": suite.sample_id(i, r), "response": "42"}) + "\n"
            for i, r in enumerate(records)
        )
    )
    math_run = execute(
        RunConfig(
            suite="math500",
            model=f"replay:{path}",
            limit=20,
            data_dir=str(data_dir),
            results_dir=str(tmp_path / "results"),
            progress=False,
        )
    )
    with pytest.raises(EvalkitError, match=r"different suite \(gsm8k vs math500\)"):
        compare_runs(runs["gold"], math_run)
    with pytest.raises(EvalkitError, match="no problem in common"):
        compare_runs(runs["gold"], math_run, force=True)


def test_unfinished_runs_are_refused_unless_forced(runs: dict[str, Run], tmp_path: Path) -> None:
    gold = runs["gold"]
    store = Store(tmp_path / "results")
    partial = store.create("20260101T000000Z-gsm8k-partial", gold.config())
    writer = RunWriter(partial)
    writer.append(gold.samples()[:50])
    writer.close()
    with pytest.raises(EvalkitError, match=f"run {partial.run_id} is unfinished"):
        compare_runs(gold, partial)
    c = compare_runs(gold, partial, force=True)
    assert c.n_problems == 50 and c.diff == 0.0 and c.p_value == 1.0


def evalkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "evalkit", *args], capture_output=True, text=True, cwd=REPO
    )


def test_cli_compare(runs: dict[str, Run]) -> None:
    results = str(runs["gold"].path.parent)
    a, b = runs["gold"].run_id, runs["broken"].run_id
    text = evalkit("compare", a, b, "--results-dir", results)
    assert text.returncode == 0, text.stderr
    assert "B − A -30.02 points" in text.stdout
    assert "396 A right/B wrong, 0 A wrong/B right" in text.stdout

    as_json = evalkit("compare", a, b, "--results-dir", results, "--json")
    d = json.loads(as_json.stdout)
    assert d["diff"] == pytest.approx(-396 / 1319) and d["discordant"] == [396, 0]

    refused = evalkit("compare", a, runs["base"].run_id, "--results-dir", results)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "different mode (chat vs base)" in refused.stderr
    forced = evalkit("compare", a, runs["base"].run_id, "--results-dir", results, "--force")
    assert forced.returncode == 0 and "warning: forced: different mode" in forced.stdout

    missing = evalkit("compare", a, "no-such-run", "--results-dir", results)
    assert missing.returncode == 2 and "no run 'no-such-run'" in missing.stderr

"""The claims registry traces to the published reference, and verdicts come out right on runs
built in a store from real suites' ids and metrics."""

from __future__ import annotations

import csv
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sample_records import scored

from evalkit import stats
from evalkit.claims import Claim, evaluate_claims, load_claims, registry_path, run_model
from evalkit.data import DataLocation
from evalkit.errors import EvalkitError
from evalkit.records import SampleRecord
from evalkit.registry import get_suite
from evalkit.runner import summarize_records
from evalkit.store import Run, RunWriter, Store

REPO = Path(__file__).resolve().parent.parent
# Benchmarks of ../shared/reference/claims.csv that evalkit's suites measure.
MEASURABLE = {
    "MATH-500",
    "MATH",
    "GSM8k",
    "gsm8k",
    "HumanEval",
    "Tau2 retail",
    "Tau2 airline",
    "Tau2 telecom",
    "tau2-bench retail",
    "tau2-bench airline",
    "tau2-bench telecom",
    "Tau2-Bench (micro-average over retail/airline/telecom)",
}


def reference_rows() -> dict[int, dict[str, str]]:
    """claims.csv by line number (header = line 1; no field spans lines)."""
    path = REPO.parent / "shared" / "reference" / "claims.csv"
    if not path.is_file():
        raise RuntimeError(f"published claims not found at {path}")
    with path.open(newline="", encoding="utf-8") as fh:
        return {i: row for i, row in enumerate(csv.DictReader(fh), start=2)}


def registry_rows() -> list[dict[str, str]]:
    with registry_path().open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_registry_loads() -> None:
    claims = load_claims()
    assert len(claims) == len(registry_rows()) == 77
    assert len({c.id for c in claims}) == len(claims)
    assert all(c.kind in ("numeric", "comparative") for c in claims)
    numeric = [c for c in claims if c.kind == "numeric"]
    assert all(c.value is not None and 0 < c.value < 1 for c in numeric)
    by_id = {c.id: c for c in claims}
    k2 = by_id["math500-kimi-k2-instruct-accuracy-k2-readme"]
    assert (k2.model, k2.suite, k2.metric, k2.value) == (
        "kimi-k2-instruct",
        "math500",
        "accuracy",
        0.974,
    )
    assert k2.protocol == "moonshot" and k2.date == "2025-07-31" and k2.ref_lines == (102,)


def test_every_claim_traces_to_the_published_rows() -> None:
    ref = reference_rows()
    for row in registry_rows():
        lines = [int(n) for n in row["ref_lines"].split(";") if n]
        fields = ("ref_model", "ref_benchmark", "ref_metric", "ref_value")
        cited = [row[f].split(";") if lines else [] for f in fields]
        for k, n in enumerate(lines):
            published = ref[n]
            assert [published[f.removeprefix("ref_")] for f in fields] == [c[k] for c in cited]
        if row["kind"] == "numeric":
            (n,) = lines
            assert row["source"] == ref[n]["source"] and row["setting"] == ref[n]["setting"]
            assert Decimal(row["value"]) == Decimal(ref[n]["value"]) / 100  # % -> fraction
        elif len(lines) == 2:  # a comparison both of whose numbers are published
            a, b = (Decimal(ref[n]["value"]) for n in lines)
            assert Decimal(row["value"]) == (a - b) / 100
        else:  # a press claim no pair of published numbers backs
            assert row["value"] == "" and "NO PUBLISHED NUMBER BACKS IT" in row["notes"]


def test_every_measurable_published_number_is_registered() -> None:
    registered = {int(n) for row in registry_rows() for n in row["ref_lines"].split(";") if n}
    measurable = {n for n, row in reference_rows().items() if row["benchmark"] in MEASURABLE}
    assert measurable <= registered
    kimi_gpt = {
        (c.suite, c.model)
        for c in load_claims()
        if c.kind == "numeric" and c.model in ("kimi-k2-instruct", "gpt-4.1")
    }
    assert {("math500", "kimi-k2-instruct"), ("math500", "gpt-4.1"), ("humaneval", "gpt-4.1")} <= (
        kimi_gpt
    )
    for domain in ("retail", "airline", "telecom"):
        assert {(f"tau2-{domain}", "kimi-k2-instruct"), (f"tau2-{domain}", "gpt-4.1")} <= kimi_gpt


def test_press_claims_are_tied_to_comparisons() -> None:
    press = {c.suite: c for c in load_claims() if c.kind == "comparative" and "press" in c.source}
    assert set(press) == {"humaneval", "math", "gsm8k"}
    for c in press.values():
        assert (c.model, c.other_model, c.value) == ("kimi-k2-instruct", "gpt-4.1", None)
    assert "no HumanEval figure for Kimi-K2-Instruct" in press["humaneval"].notes
    assert "no GSM8K figure for Kimi-K2-Instruct" in press["gsm8k"].notes


def test_malformed_registry_is_one_error_naming_the_line(tmp_path: Path) -> None:
    rows = registry_rows()
    bad = tmp_path / "claims.csv"
    with bad.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows([rows[0], {**rows[1], "value": "97.4"}])
    with pytest.raises(EvalkitError, match=r"claims.csv:3: numeric claim .* value in \[0, 1\]"):
        load_claims(bad)
    with pytest.raises(EvalkitError, match="claims registry not found"):
        load_claims(tmp_path / "missing.csv")


# -- runs built in a store ------------------------------------------------------------------
class Builder:
    """Finished runs in a real store: a real suite's ids, identity and metrics, with the 0/1
    outcomes a test chooses (what an API run of that model would have written)."""

    def __init__(self, root: Path, data_dir: Path) -> None:
        self.store = Store(root)
        self.data_dir = data_dir
        self.count = 0
        self._ids: dict[str, list[str]] = {}

    def ids(self, suite_name: str) -> list[str]:
        if suite_name not in self._ids:
            suite = get_suite(suite_name)
            records = suite.load_records(DataLocation(self.data_dir))
            self._ids[suite_name] = [suite.sample_id(i, r) for i, r in enumerate(records)]
        return self._ids[suite_name]

    def run(
        self,
        suite_name: str,
        model: str,
        correct: list[bool],
        *,
        protocol: str | None = None,
        finished_at: str = "2026-01-01T00:00:00+00:00",
    ) -> Run:
        suite = get_suite(suite_name)
        ids = self.ids(suite_name)[: len(correct)]
        identity: dict[str, Any] = {
            "suite": suite_name,
            "mode": suite.default_mode,
            "model": model,
            "samples_per_item": 1,
            "limit": None,
            "shard": None,
            "dataset_fingerprint": suite.expected_fingerprint,
            "prompt_template_hash": suite.template_hash(suite.default_mode),
        }
        if protocol:
            identity["protocol"] = {"name": protocol, "overrides": {}}
        self.count += 1
        run = self.store.create(
            f"20260101T00000{self.count}Z-{suite_name}-built",
            {"config_hash": f"built-{self.count}", "identity": identity},
        )
        records = [scored(pid, 0, ok) for pid, ok in zip(ids, correct, strict=True)]
        writer = RunWriter(run)
        writer.append(records)
        summary = summarize_records(suite, records, 1)
        writer.finish({**summary, "config": identity, "timings": {"finished_at": finished_at}})
        return run


@pytest.fixture()
def builder(tmp_path: Path, data_dir: Path) -> Builder:
    return Builder(tmp_path / "results", data_dir)


def outcomes(n: int, n_correct: int) -> list[bool]:
    return [i < n_correct for i in range(n)]


@pytest.mark.parametrize(
    ("spec", "preset"),
    [
        ("gpt-4.1", "gpt-4.1"),
        ("openai:gpt-4.1-2025-04-14", "gpt-4.1"),
        ("kimi-k2-instruct@vllm", "kimi-k2-instruct"),
        ("kimi-k2", "kimi-k2-instruct"),
        ("openai:kimi-k2-0711-preview", "kimi-k2-instruct"),
        ("openai:moonshotai/Kimi-K2-Instruct", "kimi-k2-instruct"),
        ("hf:moonshotai/Kimi-K2-Base", "kimi-k2-base"),
        ("vllm:moonshotai/Kimi-K2-Base", "kimi-k2-base"),
        ("openai:kimi-k2-base", "kimi-k2-base"),
        ("local", None),
        ("replay:/tmp/gpt-4.1.jsonl", None),
        ("openai:gpt-4o", None),
    ],
)
def test_run_model(builder: Builder, spec: str, preset: str | None) -> None:
    assert run_model(builder.run("gsm8k", spec, [True])) == preset


def test_numeric_verdicts(builder: Builder) -> None:
    by_id = {c.id: c for c in load_claims()}
    claims = [
        by_id["math500-gpt-4.1-accuracy-k2-readme"],  # 92.4
        by_id["math500-kimi-k2-instruct-accuracy-k2-readme"],  # 97.4
        by_id["humaneval-gpt-4.1-pass-1-simple-evals"],  # 94.5
        by_id["gsm8k-kimi-k2-base-accuracy-k2-readme"],  # 92.1, no run
        by_id["evalplus-kimi-k2-base-pass-1-k2-readme"],  # no suite
    ]
    old = builder.run("math500", "gpt-4.1", outcomes(500, 300), finished_at="2025-12-01T00:00:00")
    gpt = builder.run("math500", "openai:gpt-4.1-2025-04-14", outcomes(500, 462))  # the latest
    kimi = builder.run("math500", "kimi-k2-instruct", outcomes(500, 440), protocol="moonshot")
    he = builder.run("humaneval", "gpt-4.1", outcomes(164, 163), protocol="simple-evals")
    builder.run("gsm8k", "local", outcomes(1319, 1200))  # no preset: never a claim's run
    v = {x.claim.id: x for x in evaluate_claims([old, gpt, kimi, he], claims)}

    reproduced = v["math500-gpt-4.1-accuracy-k2-readme"]
    assert reproduced.verdict == "reproduced" and reproduced.run_ids == (gpt.run_id,)
    assert reproduced.measured == pytest.approx(0.924) and reproduced.gap == pytest.approx(0)
    assert reproduced.ci95[0] < 0.924 < reproduced.ci95[1]
    assert "used protocol None, the claim moonshot" in reproduced.note

    lower = v["math500-kimi-k2-instruct-accuracy-k2-readme"]
    assert lower.verdict == "lower" and lower.gap == pytest.approx(0.88 - 0.974)
    assert lower.ci95[1] < 0.974 and "protocol" not in lower.note

    higher = v["humaneval-gpt-4.1-pass-1-simple-evals"]
    assert higher.verdict == "higher" and higher.measured == pytest.approx(163 / 164)
    assert higher.ci95[0] > 0.945 and higher.gap == pytest.approx(163 / 164 - 0.945)

    for cid in ("gsm8k-kimi-k2-base-accuracy-k2-readme", "evalplus-kimi-k2-base-pass-1-k2-readme"):
        assert v[cid].verdict == "not measured" and v[cid].measured is None
    assert (
        "no finished run of kimi-k2-base on gsm8k"
        in v["gsm8k-kimi-k2-base-accuracy-k2-readme"].note
    )
    assert v["math500-gpt-4.1-accuracy-k2-readme"].to_dict()["claim"]["ref_lines"] == [107]


def press(suite: str) -> Claim:
    return next(
        c
        for c in load_claims()
        if c.kind == "comparative" and c.suite == suite and "press" in c.source
    )


def test_comparative_verdicts(builder: Builder) -> None:
    runs = [
        # gsm8k: Kimi right on 40 problems GPT-4.1 missed -> confirmed.
        builder.run("gsm8k", "gpt-4.1", outcomes(1319, 1100)),
        builder.run("gsm8k", "kimi-k2-instruct", outcomes(1319, 1140)),
        # humaneval: the same outcomes -> diff 0, p = 1 -> inconclusive.
        builder.run("humaneval", "gpt-4.1", outcomes(164, 150)),
        builder.run("humaneval", "kimi-k2-instruct@vllm", outcomes(164, 150)),
        # math500 (the claim under the moonshot protocol): Kimi 22 fewer -> contradicted.
        builder.run("math500", "gpt-4.1", outcomes(500, 462), protocol="moonshot"),
        builder.run("math500", "kimi-k2-instruct", outcomes(500, 440), protocol="moonshot"),
        # math: different protocols -> not paired-comparable -> inconclusive, numbers kept.
        builder.run("math", "gpt-4.1", outcomes(1000, 800), protocol="simple-evals"),
        builder.run("math", "kimi-k2-instruct", outcomes(1000, 900), protocol="moonshot"),
    ]
    math500 = next(c for c in load_claims() if c.kind == "comparative" and c.suite == "math500")
    claims = [press("gsm8k"), press("humaneval"), math500, press("math")]
    v = {x.claim.suite: x for x in evaluate_claims(runs, claims)}

    assert v["gsm8k"].verdict == "confirmed"
    assert v["gsm8k"].measured == pytest.approx(40 / 1319)
    assert v["gsm8k"].comparison.discordant == (0, 40)
    assert v["gsm8k"].comparison.p_value == pytest.approx(2 * 0.5**40)
    assert v["gsm8k"].run_ids == (runs[0].run_id, runs[1].run_id) and v["gsm8k"].gap is None

    assert v["humaneval"].verdict == "inconclusive" and v["humaneval"].measured == 0.0
    assert v["humaneval"].comparison.p_value == 1.0

    assert v["math500"].verdict == "contradicted"
    assert v["math500"].measured == pytest.approx(-22 / 500)
    assert v["math500"].gap == pytest.approx(-22 / 500 - 0.05)  # claimed gap: 97.4 - 92.4

    assert v["math"].verdict == "inconclusive"
    assert "not paired-comparable (different protocol (simple-evals vs moonshot))" in v["math"].note
    assert v["math"].measured == pytest.approx(0.1) and v["math"].comparison is not None


def test_comparative_not_measured_without_both_runs(builder: Builder) -> None:
    runs = [builder.run("gsm8k", "gpt-4.1", outcomes(1319, 1100))]
    (v,) = evaluate_claims(runs, [press("gsm8k")])
    assert v.verdict == "not measured" and v.run_ids == (runs[0].run_id,)
    assert "no finished run of kimi-k2-instruct on gsm8k" in v.note


def test_every_registry_claim_gets_a_verdict_without_runs() -> None:
    verdicts = evaluate_claims([])
    assert len(verdicts) == 77 and {v.verdict for v in verdicts} == {"not measured"}


def test_tau2_domain_claims_read_an_all_domain_run(builder: Builder) -> None:
    """τ² claims are pass^k per domain; an all-domain run (suite tau2, 4 trials per task)
    measures them through its per-domain breakdown, built here with evalkit.stats as the
    tau2 suite builds it."""

    def trials(domain: str, task: int, ok: bool) -> list[SampleRecord]:
        return [scored(f"{domain}/{task}", i, ok, {"domain": domain}) for i in range(4)]

    # retail: 84 of 114 tasks pass all 4 trials, 30 none, so pass^k = 84/114 = 0.737 for every
    # k; telecom: 0 of 114.
    records = [r for t in range(114) for r in trials("retail", t, t < 84)]
    records += [r for t in range(114) for r in trials("telecom", t, False)]

    def pass_hat(rs: list[SampleRecord]) -> dict[str, Any]:
        return {f"pass^{k}": stats.pass_hat_k_metric(rs, k) for k in range(1, 5)}

    identity = {"suite": "tau2", "mode": "chat", "model": "gpt-4.1", "limit": None, "shard": None}
    run = builder.store.create("20260101T000000Z-tau2-gpt-4.1", {"identity": identity})
    writer = RunWriter(run)
    writer.append(records)
    writer.finish(
        {
            "metrics": pass_hat(records),
            "breakdowns": {"domain": stats.breakdown(records, "domain", pass_hat)},
            "timings": {"finished_at": "2026-01-01T00:00:00+00:00"},
        }
    )
    v = {x.claim.id: x for x in evaluate_claims([run])}
    retail1 = v["tau2-retail-gpt-4.1-pass-1-tau2-leaderboard"]  # 74.0
    assert retail1.verdict == "reproduced" and retail1.measured == pytest.approx(84 / 114)
    assert "(its retail domain)" in retail1.note and retail1.run_ids == (run.run_id,)
    assert v["tau2-retail-gpt-4.1-pass-1-k2-readme"].verdict == "reproduced"  # 74.8
    assert v["tau2-retail-gpt-4.1-pass-4-tau2-leaderboard"].verdict == "higher"  # 52.3
    assert v["tau2-telecom-gpt-4.1-pass-2-tau2-leaderboard"].verdict == "lower"  # 27.6
    airline = v["tau2-airline-gpt-4.1-pass-1-tau2-leaderboard"]
    assert airline.verdict == "not measured" and "reports no pass^1" in airline.note
    # The all-domain claim (Moonshot's micro-average) is Kimi's: no Kimi run, not measured.
    assert v["tau2-kimi-k2-instruct-pass-1-k2-report"].verdict == "not measured"

"""Which finished runs a report shows, and their numbers as pandas frames.

By default the latest finished run of each (model, suite, mode, protocol, subset) group; a run
on the first 50 items (`--limit`) or on one shard is a different measurement from a full run, so
its subset is part of the group and of the leaderboard column. The frames keep run.json's
numbers exactly (fractions, full precision); percentages are for display only.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

import pandas as pd

from evalkit.errors import EvalkitError
from evalkit.store import Run, Store

if TYPE_CHECKING:
    from evalkit.claims import Verdict
    from evalkit.compare import Comparison

COMPARISON_COLUMNS = (
    "suite",
    "metric",
    "model_a",
    "model_b",
    "n_problems",
    "mean_a",
    "mean_b",
    "diff",
    "ci95_low",
    "ci95_high",
    "p_value",
    "test",
    "discordant",
    "run_a",
    "run_b",
    "warnings",
)


@dataclass(frozen=True)
class RunEntry:
    """A finished run with its run.json; `label` is the model's name on the report."""

    run: Run
    summary: dict[str, Any]
    label: str

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def config(self) -> dict[str, Any]:
        return self.summary["config"]

    @property
    def model(self) -> str:
        return self.config["model"]

    @property
    def suite(self) -> str:
        return self.config["suite"]

    @property
    def mode(self) -> str:
        return self.config["mode"]

    @property
    def protocol(self) -> str | None:
        proto = self.config.get("protocol")
        return proto.get("name") if isinstance(proto, dict) else proto

    @property
    def subset(self) -> str | None:
        """None for the whole suite, else which part of it the run measured."""
        parts = []
        if self.config.get("limit"):
            parts.append(f"first {self.config['limit']}")
        if self.config.get("shard"):
            i, n = self.config["shard"]
            parts.append(f"shard {i}/{n}")
        return ", ".join(parts) or None

    @property
    def column(self) -> str:
        """The leaderboard column: runs in one column measure the same thing."""
        return " · ".join(
            p for p in (self.suite, self.mode, self.protocol, self.subset) if p is not None
        )

    @property
    def metric_name(self) -> str:
        """The headline metric: the suite's first (accuracy, pass@1, ...)."""
        return next(iter(self.summary["metrics"]))

    @property
    def metric(self) -> dict[str, Any]:
        return self.summary["metrics"][self.metric_name]


def model_label(spec: str) -> str:
    """A model spec without this machine's directories (`replay:/tmp/x/gold.jsonl` ->
    `replay:gold.jsonl`), as run ids name them."""
    kind, sep, target = spec.rpartition(":")
    if sep and PurePath(target).is_absolute():
        return f"{kind}:{PurePath(target).name}"
    return spec


def select_runs(store: Store, run_ids: Sequence[str] | None = None) -> list[RunEntry]:
    """The pinned runs, else the latest finished run of each group; sorted for stable output."""
    if run_ids:
        runs = []
        for run_id in dict.fromkeys(run_ids):
            run = store.get(run_id)
            if not run.finished:
                raise EvalkitError(f"run {run_id} is unfinished: a report shows finished runs only")
            runs.append(run)
    else:
        runs = [run for run in store.runs() if run.finished]
    if not runs:
        raise EvalkitError(f"no finished runs in {store.root}")
    summaries = [run.summary() for run in runs]
    labels = {s["config"]["model"]: model_label(s["config"]["model"]) for s in summaries}
    clashes = Counter(labels.values())
    entries = [
        RunEntry(
            run=run,
            summary=s,
            label=labels[s["config"]["model"]]
            if clashes[labels[s["config"]["model"]]] == 1
            else s["config"]["model"],
        )
        for run, s in zip(runs, summaries, strict=True)
    ]
    if not run_ids:
        latest: dict[tuple[Any, ...], RunEntry] = {}
        for e in sorted(entries, key=lambda e: e.run_id):  # run ids sort by start time
            latest[(e.model, e.column)] = e
        entries = list(latest.values())
    return sorted(entries, key=lambda e: (e.column, e.label, e.run_id))


def _metric_fields(m: dict[str, Any]) -> dict[str, Any]:
    ci = m.get("ci95") or [None, None]
    return {
        "mean": m.get("mean"),
        "stderr": m.get("stderr"),
        "ci95_low": ci[0],
        "ci95_high": ci[1],
        "n": m.get("n"),
    }


def leaderboard_frame(entries: Iterable[RunEntry]) -> pd.DataFrame:
    """One row per run and metric, the headline metric first."""
    rows = [
        {
            "model": e.label,
            "suite": e.suite,
            "mode": e.mode,
            "protocol": e.protocol,
            "subset": e.subset,
            "column": e.column,
            "metric": name,
            **_metric_fields(m),
            "headline": name == e.metric_name,
            "run_id": e.run_id,
        }
        for e in entries
        for name, m in e.summary["metrics"].items()
    ]
    return pd.DataFrame(rows)


def leaderboard_wide(entries: Sequence[RunEntry]) -> pd.DataFrame:
    """Models x leaderboard columns, the headline metric's mean (NaN where no run)."""
    frame = pd.DataFrame(
        [{"model": e.label, "column": e.column, "mean": e.metric["mean"]} for e in entries],
        columns=["model", "column", "mean"],
    )
    wide = frame.pivot(index="model", columns="column", values="mean")
    wide.columns.name = None
    return wide.reindex(columns=sorted({e.column for e in entries})).sort_index()


def runs_frame(entries: Iterable[RunEntry]) -> pd.DataFrame:
    """The runs a report was built from, with their headline number and identity hash."""
    return pd.DataFrame(
        [
            {
                "run_id": e.run_id,
                "model": e.label,
                "model_spec": e.model,
                "suite": e.suite,
                "mode": e.mode,
                "protocol": e.protocol,
                "subset": e.subset,
                "metric": e.metric_name,
                "mean": e.metric["mean"],
                "samples": e.summary["counts"]["samples"],
                "finished_at": e.summary["timings"]["finished_at"],
                "config_hash": e.summary["config_hash"],
            }
            for e in entries
        ]
    )


def breakdown_frame(entries: Iterable[RunEntry]) -> pd.DataFrame:
    """Every breakdown of every run (MATH subject/level, BFCL category, tau2 domain, ...): any
    `run.json["breakdowns"][key][value]` that is a metric (has a mean), or that holds several
    metrics (tau2's pass^1..pass^k per domain), of which the run's headline (first) metric."""
    rows = [
        {
            "column": e.column,
            "suite": e.suite,
            "key": key,
            "value": value,
            "model": e.label,
            **_metric_fields(metric),
            "run_id": e.run_id,
        }
        for e in entries
        for key, values in (e.summary.get("breakdowns") or {}).items()
        if isinstance(values, dict)
        for value, m in values.items()
        if (metric := _breakdown_metric(m, e.summary.get("metrics") or {})) is not None
    ]
    columns = ["column", "suite", "key", "value", "model", "mean", "stderr", "ci95_low"]
    return pd.DataFrame(rows, columns=[*columns, "ci95_high", "n", "run_id"])


def _breakdown_metric(m: Any, metrics: dict[str, Any]) -> dict[str, Any] | None:
    if not isinstance(m, dict):
        return None
    if "mean" in m:
        return m
    headline = next(iter(metrics), None)
    inner = m.get(headline) if headline is not None else None
    return inner if isinstance(inner, dict) and "mean" in inner else None


def claims_frame(verdicts: Sequence[Verdict]) -> pd.DataFrame:
    """One row per claim: what was published, what evalkit measured, the verdict."""
    rows = []
    for v in verdicts:
        c = v.claim
        ci = v.ci95 or (None, None)
        rows.append(
            {
                "claim": c.id,
                "kind": c.kind,
                "model": c.model,
                "other_model": c.other_model,
                "suite": c.suite,
                "metric": c.metric,
                "claimed": c.value,
                "measured": v.measured,
                "ci95_low": ci[0],
                "ci95_high": ci[1],
                "gap": v.gap,
                "verdict": v.verdict,
                "run_ids": " ".join(v.run_ids),
                "statement": c.statement,
                "source": c.source,
                "date": c.date,
                "note": v.note,
            }
        )
    return pd.DataFrame(rows)


def comparison_frame(comparisons: Sequence[Comparison], labels: dict[str, str]) -> pd.DataFrame:
    """One row per paired comparison; `labels` names each run's model (run id -> label)."""
    rows = []
    for c in comparisons:
        lo, hi = c.ci95 or (None, None)
        rows.append(
            {
                "suite": c.suite,
                "metric": c.metric,
                "model_a": labels.get(c.run_a, c.model_a),
                "model_b": labels.get(c.run_b, c.model_b),
                "n_problems": c.n_problems,
                "mean_a": c.mean_a,
                "mean_b": c.mean_b,
                "diff": c.diff,
                "ci95_low": lo,
                "ci95_high": hi,
                "p_value": c.p_value,
                "test": c.test,
                "discordant": c.discordant,
                "run_a": c.run_a,
                "run_b": c.run_b,
                "warnings": "; ".join(c.warnings),
            }
        )
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))


def pair_runs(
    entries: Sequence[RunEntry], pinned: Sequence[tuple[RunEntry, RunEntry]] = ()
) -> list[tuple[RunEntry, RunEntry]]:
    """The pinned pairs, else every two models in one leaderboard column (same suite, mode,
    protocol and subset: the only runs a paired test can align)."""
    if pinned:
        return list(pinned)
    pairs = []
    for _, group in itertools.groupby(entries, key=lambda e: e.column):
        pairs.extend(itertools.combinations(list(group), 2))
    return pairs


def compare_pairs(
    pairs: Sequence[tuple[RunEntry, RunEntry]], *, strict: bool, force: bool = False
) -> tuple[list[Comparison], list[str]]:
    """Paired comparisons; a pair evalkit.compare refuses is an error when the user pinned it
    (`strict`) unless `force`d (its warnings then say what differs), else a note on the report
    saying why it was left out."""
    from evalkit.compare import compare_runs

    done, skipped = [], []
    for a, b in pairs:
        try:
            done.append(compare_runs(a.run, b.run, force=force))
        except EvalkitError as exc:
            if strict:
                raise
            skipped.append(f"{a.run_id} vs {b.run_id}: {exc}")
    return done, skipped


@dataclass(frozen=True)
class ReportData:
    """Everything a report shows, before it is written anywhere."""

    entries: list[RunEntry]
    verdicts: list[Verdict]
    comparisons: list[Comparison]
    skipped: list[str]  # default pairs evalkit.compare refused, with its reason

    @property
    def by_id(self) -> dict[str, RunEntry]:
        return {e.run_id: e for e in self.entries}


def gather(
    store: Store,
    run_ids: Sequence[str] | None = None,
    compare: Sequence[tuple[str, str]] = (),
    *,
    force: bool = False,
) -> ReportData:
    """The runs (pinned or latest per group, plus any run a pinned comparison names), the
    claims' verdicts on them and the paired comparisons."""
    from evalkit.claims import evaluate_claims

    entries = select_runs(store, run_ids)
    wanted = [rid for pair in compare for rid in pair]
    if any(rid not in {e.run_id for e in entries} for rid in wanted):
        entries = select_runs(store, [*(e.run_id for e in entries), *wanted])
    by_id = {e.run_id: e for e in entries}
    pairs = pair_runs(entries, [(by_id[a], by_id[b]) for a, b in compare])
    comparisons, skipped = compare_pairs(pairs, strict=bool(compare), force=force)
    verdicts = evaluate_claims([e.run for e in entries])
    return ReportData(entries, verdicts, comparisons, skipped)

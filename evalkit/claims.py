"""The claims registry (`suites/claims/claims.csv`) and a reproduction verdict for each claim.

A numeric claim is `reproduced` when the published value lies inside the measured 95% interval,
else `lower` / `higher` (the measurement is below / above it, `gap` = measured − claimed), and
`not measured` without a run of that model on that suite. A comparative claim ("model beats
other_model on suite") is `confirmed` / `contradicted` when the paired test between the two
models' runs rejects equality at alpha = 0.05 with the difference in / against the claimed
direction, else `inconclusive`; also `inconclusive` when the two runs are not paired-comparable
(different data, prompt, protocol: see evalkit.compare), with the reason in `note`.

Metric names: a claim's metric is a key of run.json "metrics". accuracy, pass@1 and pass^1 are
one estimator (each problem's fraction of correct samples, averaged over problems), so a claim
in one of them is matched by a run reporting another; other names (pass@5, pass^2, ...) must
match exactly. A τ² domain claim (suite `tau2-<domain>`) with no run of that suite is matched by
an all-domain `tau2` run's "domain" breakdown.
"""

from __future__ import annotations

import csv
import importlib.resources
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from evalkit.compare import SUCCESS_RATE_METRICS, Comparison, compare_runs, differences
from evalkit.errors import EvalkitError
from evalkit.store import Run

ALPHA = 0.05
VERDICTS = (
    "reproduced",
    "lower",
    "higher",
    "not measured",
    "confirmed",
    "contradicted",
    "inconclusive",
)
KINDS = ("numeric", "comparative")
# The Moonshot API preset serves Kimi K2 Instruct: its claims are kimi-k2-instruct's.
PRESET_ALIASES = {"kimi-k2": "kimi-k2-instruct"}


@dataclass(frozen=True)
class Claim:
    """One published number, or one comparison a publication or the press made."""

    id: str
    kind: str  # numeric | comparative
    model: str  # evalkit preset (kimi-k2-instruct, kimi-k2-base, gpt-4.1) or the source's name
    suite: str | None  # evalkit suite, None when evalkit has none for the benchmark
    metric: str  # key in run.json "metrics"
    value: float | None  # fraction in [0, 1]; comparative: claimed gap model − other_model
    other_model: str | None
    statement: str
    source: str
    date: str
    protocol: str | None
    notes: str
    # Traceability to ../shared/reference/claims.csv: the published setting, verbatim, and
    # the lines (header = line 1) the claim rests on; empty for a claim no row backs.
    setting: str = ""
    ref_lines: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ref_lines"] = list(self.ref_lines)
        return d


@dataclass(frozen=True)
class Verdict:
    claim: Claim
    verdict: str  # one of VERDICTS
    measured: float | None  # numeric: the run's metric; comparative: the paired difference
    ci95: tuple[float, float] | None
    gap: float | None  # measured − claimed
    run_ids: tuple[str, ...]
    comparison: Comparison | None
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "claim": self.claim.to_dict(),
            "verdict": self.verdict,
            "measured": self.measured,
            "ci95": list(self.ci95) if self.ci95 is not None else None,
            "gap": self.gap,
            "run_ids": list(self.run_ids),
            "comparison": self.comparison.to_dict() if self.comparison else None,
            "note": self.note,
        }


def registry_path() -> Path:
    return Path(str(importlib.resources.files("suites") / "claims" / "claims.csv"))


def load_claims(path: str | Path | None = None) -> list[Claim]:
    """The registry's claims, validated: a malformed row is an EvalkitError naming its line."""
    path = Path(path) if path is not None else registry_path()
    if not path.is_file():
        raise EvalkitError(f"claims registry not found: {path}")
    claims: list[Claim] = []
    with path.open(newline="", encoding="utf-8") as fh:
        for lineno, row in enumerate(csv.DictReader(fh), start=2):
            try:
                claims.append(_claim(row))
            except (KeyError, ValueError) as exc:
                raise EvalkitError(f"{path}:{lineno}: {exc}") from None
    seen: set[str] = set()
    for c in claims:
        if c.id in seen:
            raise EvalkitError(f"{path}: duplicate claim id {c.id!r}")
        seen.add(c.id)
    return claims


def _claim(row: dict[str, str]) -> Claim:
    kind = row["kind"]
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    value = float(row["value"]) if row["value"] else None
    if kind == "numeric" and (value is None or not 0.0 <= value <= 1.0):
        raise ValueError(f"numeric claim {row['id']!r} needs a value in [0, 1]")
    if kind == "comparative" and not row["other_model"]:
        raise ValueError(f"comparative claim {row['id']!r} needs other_model")
    if not row["id"] or not row["metric"]:
        raise ValueError("id and metric are required")
    return Claim(
        id=row["id"],
        kind=kind,
        model=row["model"],
        suite=row["suite"] or None,
        metric=row["metric"],
        value=value,
        other_model=row["other_model"] or None,
        statement=row["statement"],
        source=row["source"],
        date=row["date"],
        protocol=row["protocol"] or None,
        notes=row["notes"],
        setting=row["setting"],
        ref_lines=tuple(int(n) for n in row["ref_lines"].split(";") if n),
    )


def run_model(run: Run) -> str | None:
    """The preset a run measured, from its model spec: `<preset>[@route]`, `openai:<the API
    model of a preset's route, or its name, or its hub repo>` (a vLLM server names the model by
    its repo), `vllm:`/`hf:<a preset's hub repo>`; None for anything else (local, replay, ...)."""
    from evalkit.models import PRESETS, preset_for_repo, resolve_preset

    spec = run.config()["identity"]["model"]
    resolved = resolve_preset(spec)
    if resolved is not None:
        name = resolved[0].name
    else:
        kind, _, target = spec.partition(":")
        by_repo = preset_for_repo(target.rstrip("/"))
        name = by_repo.name if by_repo else None
        if name is None and kind == "openai":
            name = next(
                (
                    p.name
                    for p in PRESETS.values()
                    if target == p.name or target in {r.model for r in p.routes.values()}
                ),
                None,
            )
    if name in (None, "local"):
        return None
    return PRESET_ALIASES.get(name, name)


def evaluate_claims(runs: Sequence[Run], claims: Sequence[Claim] | None = None) -> list[Verdict]:
    """A verdict per claim from `runs` (pass the pinned runs to pin them). Per (model, suite)
    the run used is, among the finished ones, the latest of those run under the claim's
    protocol on the full suite, falling back to any (the note then says what differs)."""
    claims = load_claims() if claims is None else claims
    by_key: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        if not run.finished:
            continue
        model = run_model(run)
        if model is not None:
            by_key.setdefault((model, run.config()["identity"]["suite"]), []).append(run)
    return [_numeric(c, by_key) if c.kind == "numeric" else _comparative(c, by_key) for c in claims]


def _rank(run: Run, protocol: str | None) -> tuple[bool, bool, str, str]:
    """Preference among runs of one model on one suite: the claim's protocol, the full suite,
    then the latest."""
    ident = run.config()["identity"]
    same_protocol = (ident.get("protocol") or {}).get("name") == protocol
    full = ident.get("limit") is None and ident.get("shard") is None
    finished_at = run.summary().get("timings", {}).get("finished_at", "")
    return same_protocol, full, finished_at, run.run_id


def _candidates(
    by_key: dict[tuple[str, str], list[Run]], model: str, suite: str, protocol: str | None
) -> list[Run]:
    return sorted(by_key.get((model, suite), []), key=lambda r: _rank(r, protocol), reverse=True)


def _pick(
    by_key: dict[tuple[str, str], list[Run]], model: str, suite: str, protocol: str | None
) -> Run | None:
    return next(iter(_candidates(by_key, model, suite, protocol)), None)


def _caveats(claim: Claim, run: Run) -> list[str]:
    """What makes `run` a looser test of `claim` than it could be."""
    ident = run.config()["identity"]
    out = []
    run_protocol = (ident.get("protocol") or {}).get("name")
    if claim.protocol and run_protocol != claim.protocol:
        out.append(f"run {run.run_id} used protocol {run_protocol}, the claim {claim.protocol}")
    if ident.get("limit") is not None or ident.get("shard") is not None:
        counts = run.summary()["counts"]
        out.append(f"run {run.run_id} covers {counts['items']} items only (--limit/--shard)")
    return out


def _metric(metrics: dict[str, Any], metric: str) -> dict[str, Any] | None:
    """`metric` from a run.json "metrics" mapping (or a breakdown entry of the same shape)."""
    if metric in metrics:
        return metrics[metric]
    if metric in SUCCESS_RATE_METRICS:
        return next((metrics[m] for m in SUCCESS_RATE_METRICS if m in metrics), None)
    return None


def _not_measured(claim: Claim, note: str, run_ids: tuple[str, ...] = ()) -> Verdict:
    return Verdict(claim, "not measured", None, None, None, run_ids, None, note)


def _numeric(claim: Claim, by_key: dict[tuple[str, str], list[Run]]) -> Verdict:
    if claim.suite is None:
        return _not_measured(claim, "evalkit has no suite for this benchmark")
    run = _pick(by_key, claim.model, claim.suite, claim.protocol)
    where = ""
    m = None
    if run is not None:
        m = _metric(run.summary().get("metrics", {}), claim.metric)
    elif claim.suite.startswith("tau2-"):
        # A τ² domain claim measured by an all-domain run: its per-domain breakdown.
        run = _pick(by_key, claim.model, "tau2", claim.protocol)
        domain = claim.suite.removeprefix("tau2-")
        if run is not None:
            per_domain = run.summary().get("breakdowns", {}).get("domain", {})
            m = _metric(per_domain.get(domain, {}), claim.metric)
        where = f" (its {domain} domain)"
    if run is None:
        return _not_measured(claim, f"no finished run of {claim.model} on {claim.suite}")
    if m is None or m.get("mean") is None or not m.get("ci95"):
        return _not_measured(
            claim, f"run {run.run_id}{where} reports no {claim.metric}", (run.run_id,)
        )
    assert claim.value is not None  # load_claims guarantees it for numeric claims
    measured, (lo, hi) = float(m["mean"]), (float(m["ci95"][0]), float(m["ci95"][1]))
    verdict = "reproduced" if lo <= claim.value <= hi else "lower" if hi < claim.value else "higher"
    note = "; ".join(
        [
            f"{claim.metric} {100 * measured:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] in run "
            f"{run.run_id}{where} vs {100 * claim.value:.1f}% claimed",
            *_caveats(claim, run),
        ]
    )
    return Verdict(
        claim, verdict, measured, (lo, hi), measured - claim.value, (run.run_id,), None, note
    )


def _comparative(claim: Claim, by_key: dict[tuple[str, str], list[Run]]) -> Verdict:
    assert claim.other_model is not None  # load_claims guarantees it
    if claim.suite is None:
        return _not_measured(claim, "evalkit has no suite for this benchmark")
    others = _candidates(by_key, claim.other_model, claim.suite, claim.protocol)
    ours = _candidates(by_key, claim.model, claim.suite, claim.protocol)
    if not others or not ours:
        missing = [m for m, rs in ((claim.other_model, others), (claim.model, ours)) if not rs]
        return _not_measured(
            claim,
            f"no finished run of {' or '.join(missing)} on {claim.suite}",
            tuple(rs[0].run_id for rs in (others, ours) if rs),
        )
    # The most preferred pair of runs that measure the same thing, else the top two.
    a, b = next(
        ((a, b) for b in ours for a in others if not differences(a, b)), (others[0], ours[0])
    )
    run_ids = (a.run_id, b.run_id)
    not_paired = differences(a, b)
    try:
        # Not comparable: the forced numbers are shown, but they decide nothing.
        comparison = compare_runs(a, b, force=bool(not_paired))
    except EvalkitError as exc:
        return Verdict(claim, "inconclusive", None, None, None, run_ids, None, str(exc))
    gap = comparison.diff - claim.value if claim.value is not None else None
    summary = (
        f"{claim.model} − {claim.other_model} = {100 * comparison.diff:+.1f} points "
        f"[{100 * comparison.ci95[0]:+.1f}, {100 * comparison.ci95[1]:+.1f}] on "
        f"{comparison.n_problems} problems, p = {comparison.p_value:.3g} ({comparison.test})"
    )
    if not_paired:
        verdict = "inconclusive"
        note = f"runs not paired-comparable ({'; '.join(not_paired)}): {summary}"
    elif comparison.p_value < ALPHA:
        verdict = "confirmed" if comparison.diff > 0 else "contradicted"
        note = summary
    else:
        verdict = "inconclusive"
        note = f"no significant difference at alpha {ALPHA}: {summary}"
    return Verdict(claim, verdict, comparison.diff, comparison.ci95, gap, run_ids, comparison, note)

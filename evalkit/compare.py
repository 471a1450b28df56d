"""Paired comparison of two runs on the same suite: the difference b − a with its interval and
a p-value, from the problems both runs answered.

Pairing matters: two models are scored on the same problems, so the per-problem differences
carry far less noise than two independent accuracies (lm-eval's comparison script treats them
as unpaired). The unit is the problem: a problem's value is the mean of its samples' 0/1
outcomes, which is accuracy, pass@1 and pass^1 alike. The test is the exact McNemar test when
every aligned problem has one sample in each run (0/1 outcomes), else a paired sign-flip
permutation test of the mean difference (see evalkit.stats).

Runs measured on different data, suites, modes, prompts, protocols or simulated users do not
measure the same thing: comparing them is refused unless forced, and a forced comparison says
what differs in its `warnings`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from evalkit import stats
from evalkit.errors import EvalkitError
from evalkit.store import Run

# Run-level metric names that all mean "per-problem mean of the samples' outcomes", the
# quantity compared here; the first one in a run's run.json names the comparison.
SUCCESS_RATE_METRICS = ("accuracy", "pass@1", "pass^1")

# Identity fields that must agree (label, getter) for two runs to measure the same thing.
_SAME_MEASUREMENT = (
    ("suite", lambda i: i.get("suite")),
    ("dataset fingerprint", lambda i: i.get("dataset_fingerprint")),
    ("mode", lambda i: i.get("mode")),
    ("prompt template hash", lambda i: i.get("prompt_template_hash")),
    ("protocol", lambda i: (i.get("protocol") or {}).get("name")),
    ("system prompt", lambda i: i.get("system_prompt")),
    ("simulated user", lambda i: (i.get("agent") or {}).get("user_model")),
)


@dataclass(frozen=True)
class Comparison:
    """Run b against run a on their common problems; `diff` is mean_b − mean_a."""

    suite: str
    metric: str
    run_a: str
    run_b: str
    model_a: str
    model_b: str
    n_problems: int
    mean_a: float
    mean_b: float
    diff: float
    ci95: tuple[float, float]
    p_value: float
    test: str  # "mcnemar-exact" | "paired-permutation"
    discordant: tuple[int, int] | None  # (a right b wrong, a wrong b right), 0/1 outcomes only
    warnings: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci95"] = list(self.ci95)
        d["discordant"] = list(self.discordant) if self.discordant is not None else None
        d["warnings"] = list(self.warnings)
        return d


def differences(a: Run, b: Run) -> list[str]:
    """Why runs a and b do not measure the same thing (empty when they do)."""
    ia, ib = a.config()["identity"], b.config()["identity"]
    out = [
        f"different {label} ({_short(get(ia))} vs {_short(get(ib))})"
        for label, get in _SAME_MEASUREMENT
        if get(ia) != get(ib)
    ]
    out += [f"run {r.run_id} is unfinished" for r in (a, b) if not r.finished]
    return out


def _short(value: Any) -> Any:
    """A hash cut to 12 hex digits: enough to tell two apart on one line."""
    return value[:19] if isinstance(value, str) and value.startswith("sha256:") else value


def compare_runs(a: Run, b: Run, *, force: bool = False) -> Comparison:
    """Paired comparison of run b with run a (diff = b − a) on the problems both answered.

    Raises EvalkitError when the runs differ in what they measure (see `differences`) unless
    `force`, or when they share no problem."""
    differ = differences(a, b)
    if differ and not force:
        raise EvalkitError(
            f"runs {a.run_id} and {b.run_id} are not comparable: {'; '.join(differ)} "
            "(--force to compare anyway)"
        )
    warnings = [f"forced: {d}" for d in differ]
    ga, gb = stats.per_problem(a.samples()), stats.per_problem(b.samples())
    ids = sorted(ga.keys() & gb.keys())
    if not ids:
        raise EvalkitError(f"runs {a.run_id} and {b.run_id} have no problem in common")
    for run, groups in ((a, ga), (b, gb)):
        left_out = len(groups) - len(ids)
        if left_out:
            warnings.append(f"{left_out} problems of {run.run_id} are not in the other run")

    va = [sum(ga[i]) / len(ga[i]) for i in ids]
    vb = [sum(gb[i]) / len(gb[i]) for i in ids]
    boot = stats.paired_bootstrap(va, vb)
    binary = all(len(ga[i]) == 1 and len(gb[i]) == 1 for i in ids)
    if binary:
        a_only = sum(ga[i][0] and not gb[i][0] for i in ids)
        b_only = sum(gb[i][0] and not ga[i][0] for i in ids)
        discordant: tuple[int, int] | None = (a_only, b_only)
        p_value, test = stats.mcnemar_exact(a_only, b_only), "mcnemar-exact"
    else:
        discordant = None
        p_value, test = stats.paired_permutation_test(va, vb), "paired-permutation"

    metric = _metric_name(a)
    for run, groups in ((a, ga), (b, gb)):
        warnings.extend(_metric_check(run, metric, groups))
    ia, ib = a.config()["identity"], b.config()["identity"]
    mean_a, mean_b = sum(va) / len(ids), sum(vb) / len(ids)
    return Comparison(
        suite=ia["suite"],
        metric=metric,
        run_a=a.run_id,
        run_b=b.run_id,
        model_a=ia["model"],
        model_b=ib["model"],
        n_problems=len(ids),
        mean_a=mean_a,
        mean_b=mean_b,
        diff=mean_b - mean_a,
        ci95=(boot["ci95"][0], boot["ci95"][1]),
        p_value=p_value,
        test=test,
        discordant=discordant,
        warnings=tuple(warnings),
    )


def _metric_name(run: Run) -> str:
    if run.finished:
        metrics = run.summary().get("metrics", {})
        for name in SUCCESS_RATE_METRICS:
            if name in metrics:
                return name
    return SUCCESS_RATE_METRICS[0]


def _metric_check(run: Run, metric: str, groups: dict[str, list[bool]]) -> list[str]:
    """A warning when run.json's number under `metric` is not the per-problem success rate
    compared here (e.g. a suite whose headline averages categories instead of problems)."""
    if not run.finished:
        return []
    stored = run.summary().get("metrics", {}).get(metric, {}).get("mean")
    if stored is None:
        return [f"run {run.run_id} reports no {metric}; compared its per-problem success rate"]
    own = sum(sum(v) / len(v) for v in groups.values()) / len(groups)
    if abs(stored - own) > 1e-9:
        return [
            f"run {run.run_id}: run.json {metric} {stored:.4f} is not its per-problem success "
            f"rate {own:.4f}, which is what is compared"
        ]
    return []


def format_comparison(c: Comparison) -> str:
    """Plain text for the terminal (`evalkit compare`)."""
    lo, hi = c.ci95
    lines = [
        f"{c.suite} {c.metric}: B − A on {c.n_problems} problems in both runs",
        f"  A {c.run_a}  {c.model_a}  {100 * c.mean_a:.2f}%",
        f"  B {c.run_b}  {c.model_b}  {100 * c.mean_b:.2f}%",
        f"  B − A {100 * c.diff:+.2f} points  95% CI [{100 * lo:+.2f}, {100 * hi:+.2f}] "
        "(paired bootstrap over problems)",
    ]
    if c.discordant is not None:
        test = (
            f"exact McNemar: {c.discordant[0]} A right/B wrong, {c.discordant[1]} A wrong/B right"
        )
    else:
        test = "paired sign-flip permutation test of the mean difference"
    lines.append(f"  p = {c.p_value:.3g}  ({test})")
    lines += [f"  warning: {w}" for w in c.warnings]
    return "\n".join(lines)

"""Evaluation protocols: the published settings behind a claim, selectable as one name.

A protocol sets defaults (mode per suite, system prompt, temperature, top_p, max_tokens,
samples per item); explicit CLI flags override them, and each override that changes a value
is recorded. The protocol name and its overrides enter the run's config identity (so they
change the config hash) and its provenance (with the protocol's sources and notes), because a
number measured under a different protocol is a different measurement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from evalkit.errors import EvalkitError

# evalkit's own defaults when neither a protocol nor a flag sets a value.
BUILTIN_DEFAULTS: dict[str, Any] = {
    "temperature": 0.0,
    "top_p": None,
    "max_tokens": 2048,
    "samples": 1,
    "system_prompt": None,
}
SETTINGS = ("mode", *BUILTIN_DEFAULTS)


@dataclass(frozen=True)
class SuiteDefaults:
    """Per-suite settings of a protocol; None leaves the protocol-wide or builtin value."""

    mode: str | None = None
    samples: int | None = None
    max_tokens: int | None = None
    note: str = ""
    temperature: float | None = None  # where a benchmark's published temperature differs


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    source: str
    notes: str
    system_prompt: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    suites: dict[str, SuiteDefaults] = field(default_factory=dict)

    def defaults(self, suite: str) -> dict[str, Any]:
        """The values this protocol sets for `suite` (settings it leaves open are absent)."""
        per = self.suites.get(suite, SuiteDefaults())
        values = {
            "mode": per.mode,
            "samples": per.samples,
            "max_tokens": per.max_tokens if per.max_tokens is not None else self.max_tokens,
            "temperature": per.temperature if per.temperature is not None else self.temperature,
            "top_p": self.top_p,
            "system_prompt": self.system_prompt,
        }
        return {k: v for k, v in values.items() if v is not None}

    def defaults_table(self) -> dict[str, str]:
        """One line per registered suite (for `evalkit list protocols`)."""
        from evalkit.registry import all_suites

        rows = {}
        for suite in all_suites():
            d = self.defaults(suite)
            rows[suite] = " ".join(f"{k}={d[k]!r}" for k in SETTINGS if k in d)
        return rows

    def describe(self) -> dict[str, Any]:
        """For provenance: everything the protocol says, including where it comes from."""
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "notes": self.notes,
            "system_prompt": self.system_prompt,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "suites": {
                name: {k: v for k, v in vars(s).items() if v not in (None, "")}
                for name, s in sorted(self.suites.items())
            },
        }


@dataclass(frozen=True)
class Resolved:
    """Settings for one run after protocol defaults and explicit flags are combined."""

    protocol: str | None
    mode: str | None
    samples: int
    temperature: float
    top_p: float | None
    max_tokens: int
    system_prompt: str | None
    # setting -> {"protocol": its value, "used": the flag's value}, only where they differ.
    overrides: dict[str, dict[str, Any]]

    def identity(self) -> dict[str, Any] | None:
        """What enters the config identity; None without a protocol (keeps old hashes)."""
        if self.protocol is None:
            return None
        return {"name": self.protocol, "overrides": self.overrides}


MOONSHOT = Protocol(
    name="moonshot",
    description="Kimi K2 tech report: non-thinking mode, max output 8192 tokens",
    source=(
        "arXiv:2507.20534v2 (Kimi K2 report, Appendix C) and github.com/MoonshotAI/Kimi-K2 "
        "README (main@c6157be); see ../shared/reference/claims.csv `setting`"
    ),
    notes=(
        "Published: non-thinking mode; max output 8192 tokens (16384 only for SWE-bench "
        "Agentless); temperature 0.0 only for the tool-use benchmarks (Tau2, ACEBench). "
        "UNPUBLISHED: the sampling temperature and top-p of the other benchmarks (the report "
        "says only 'unified temperature and top-p settings') and the system prompt. evalkit "
        "uses temperature 0.6, Moonshot's recommended temperature for K2 (model card; also "
        "the temperature of its K2 Vendor Verifier), and leaves top-p and the system prompt "
        "unset: that is a choice, not a published setting. Avg@k: the report publishes Avg@k "
        "only for suites evalkit does not have (AIME 2024/2025 Avg@64, HMMT Avg@32, CNMO "
        "Avg@16, GPQA-Diamond Avg@8, PolyMath Avg@4, Tau2 Avg@4); MATH-500 is reported as "
        "plain accuracy (one sample), and GSM8K, MATH and HumanEval have no K2-Instruct number, "
        "so those suites run one sample per item; the tau2 suites run Avg@4 at temperature 0, "
        "as published."
    ),
    temperature=0.6,
    max_tokens=8192,
    suites={
        "math500": SuiteDefaults(mode="chat", samples=1, note="report: MATH-500 Acc 97.4"),
        "math": SuiteDefaults(mode="chat", samples=1, note="no K2-Instruct MATH number"),
        "gsm8k": SuiteDefaults(mode="chat", samples=1, note="no K2-Instruct GSM8K number"),
        "humaneval": SuiteDefaults(mode="chat", samples=1, note="no K2-Instruct number"),
        **{
            name: SuiteDefaults(
                mode="chat",
                samples=4,
                temperature=0.0,
                note=f"report: Tau2 {claim} Avg@4 at temperature 0",
            )
            for name, claim in (
                ("tau2-retail", "retail 70.6"),
                ("tau2-airline", "airline 56.5"),
                ("tau2-telecom", "telecom 65.8"),
                ("tau2", "task-weighted 66.1"),
            )
        },
    },
)

SIMPLE_EVALS = Protocol(
    name="simple-evals",
    description="OpenAI simple-evals (GPT-4.1 published numbers): zero-shot CoT",
    source=(
        "github.com/openai/simple-evals README (GPT-4.1 row added in 7c68bb2) and its "
        "ChatCompletionSampler defaults"
    ),
    notes=(
        "Zero-shot chain-of-thought, system prompt 'You are a helpful assistant.', "
        "temperature 0.5 (sampler default), max_tokens 2048. HumanEval: 5 samples per task, "
        "unbiased pass@k. MATH: simple_evals.py builds MathEval with n_repeats=10 on the full "
        "MATH test split, while the README footnote says newer models were scored on "
        "MATH-500; which produced GPT-4.1's 82.1 is ambiguous, so both math suites use 10 "
        "samples. simple-evals publishes no GSM8K number (MGSM only). evalkit's chat "
        "templates are used, not simple-evals' exact query templates."
    ),
    system_prompt="You are a helpful assistant.",
    temperature=0.5,
    max_tokens=2048,
    suites={
        "humaneval": SuiteDefaults(mode="chat", samples=5),
        "math": SuiteDefaults(mode="chat", samples=10),
        "math500": SuiteDefaults(mode="chat", samples=10),
        "gsm8k": SuiteDefaults(mode="chat", samples=1, note="no published GSM8K number"),
    },
)

BASE_FEWSHOT = Protocol(
    name="base-fewshot",
    description="Base-model few-shot (Kimi K2 report Table 4): GSM8K 8-shot, MATH 4-shot",
    source="arXiv:2507.20534v2 Table 4 and the Kimi-K2 README base-model table",
    notes=(
        "Published: GSM8K 8-shot and MATH 4-shot, generation-based, in Moonshot's internal "
        "framework derived from lm-evaluation-harness; EvalPlus (HumanEval among them) with "
        "no shot count. evalkit's base modes: GSM8K 8-shot CoT of Wei et al. (stop at 'Q:'), "
        "MATH 4-shot Minerva prompt; HumanEval completion mode. UNPUBLISHED: decoding "
        "settings and output length; evalkit uses greedy decoding (temperature 0) and its "
        "default max_tokens. No system prompt: these are raw completion requests."
    ),
    temperature=0.0,
    suites={
        "gsm8k": SuiteDefaults(mode="base", samples=1, note="report: 8-shot"),
        "math": SuiteDefaults(mode="base", samples=1, note="report: 4-shot"),
        "math500": SuiteDefaults(mode="base", samples=1, note="4-shot Minerva, as math"),
        "humaneval": SuiteDefaults(mode="completion", samples=1, note="EvalPlus: shots n/a"),
    },
)

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (MOONSHOT, SIMPLE_EVALS, BASE_FEWSHOT)}


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        known = ", ".join(PROTOCOLS)
        raise EvalkitError(f"unknown protocol {name!r}: use one of {known}") from None


def resolve(
    protocol: str | None,
    suite: str,
    explicit: dict[str, Any],
    suite_defaults: dict[str, Any] | None = None,
) -> Resolved:
    """Combine flags given on the command line (`explicit`, None = not given) with the
    protocol's defaults for `suite`, then the suite's own (e.g. tau2's 4 trials), then
    evalkit's builtin defaults."""
    unknown = set(explicit) - set(SETTINGS)
    if unknown:
        raise EvalkitError(f"not protocol settings: {', '.join(sorted(unknown))}")
    given = {k: v for k, v in explicit.items() if v is not None}
    from_protocol = get_protocol(protocol).defaults(suite) if protocol else {}
    values = {**BUILTIN_DEFAULTS, "mode": None, **(suite_defaults or {}), **from_protocol, **given}
    overrides = {
        k: {"protocol": from_protocol[k], "used": given[k]}
        for k in sorted(given)
        if k in from_protocol and from_protocol[k] != given[k]
    }
    return Resolved(protocol=protocol, overrides=overrides, **values)


def describe_run(protocol: str | None, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Provenance entry for a run: the full protocol (or None) and the flags that overrode it."""
    if protocol is None:
        return {"name": None}
    return {**get_protocol(protocol).describe(), "overrides": overrides}

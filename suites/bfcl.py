"""BFCL v4, the Berkeley Function Calling Leaderboard (Patil et al.), on native tool calls, with
the data, possible answers, checkers and executable backends of the `bfcl-eval==2026.3.23`
wheel (see evalkit.bfcl_bridge; the data comes from the wheel, not from --data-dir).

Suites: `bfcl` (every included category), the groups `bfcl-non-live`, `bfcl-live`,
`bfcl-multi-turn`, and one per category: `bfcl-` + BFCL's category name with "-" for "_",
except that simple_python/simple_java/simple_javascript are `bfcl-simple`/`-java`/`-javascript`.
Left out: web search, memory (they need the network or embedding models) and
format_sensitivity (not scored by BFCL).
Sample ids: BFCL's own ids (`simple_python_0`, `live_simple_3-2-1`, `multi_turn_base_12`).
Mode `fc`: BFCL's OpenAI function-calling setup: the entry's messages as they are (no system
prompt added), its function docs as OpenAI tools the way BFCL's OpenAI handler converts them.
Multi-turn: the user turns of the data, one agent turn each (evalkit.agent.run_turn), held-out
functions offered at their turn with BFCL's prompt, at most 20 tool-call steps per turn (BFCL's
limit; more force-quits the episode). Where evalkit's one agent loop differs from BFCL's: a
malformed call gets an error result and the turn goes on (BFCL ends the turn; both checkers see
only well-formed calls), and evalkit's guards (a wall-time limit, --episode-timeout, 1800 s by
default; repeated identical replies; a reply cut at --max-tokens; --max-steps and --max-errors
only where given, as BFCL has no such limits: see BfclSuite.default_budget) can end an
episode early, which fails it as BFCL's force-quit does.
Scoring: BFCL's checkers: AST checker (non-live, live), relevance/irrelevance rules, multi-turn
state and execution-result checks. Seven entries' possible answers, which BFCL's checker cannot
match with any answer, are corrected (bridge.ERRATA, recorded in the run's provenance); the
`accuracy_bfcl_checker` metric keeps BFCL's verdicts. Metrics: per-category accuracy, BFCL's
summary scores (its leaderboard aggregation) and `overall`, see `metrics`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from evalkit import agent, stats
from evalkit import bfcl_bridge as bridge
from evalkit.data import DataLocation, HubSource
from evalkit.records import (
    AgentBudget,
    GenerationParams,
    Request,
    Response,
    Sample,
    SampleRecord,
    Score,
)
from evalkit.registry import register_suite
from evalkit.suite import SolveContext, Suite

LEFT_OUT = "web search and memory (need the network or embedding models), format_sensitivity"

# BFCL v4's score tree (bfcl_eval.eval_checker.eval_runner_helper.generate_leaderboard_csv):
# "mean" averages its children unweighted, "pooled" weights them by their number of entries.
Node = str | tuple[str, tuple["Node", ...]]
SUMMARIES: dict[str, Node] = {
    "non_live": (
        "mean",
        (
            ("mean", ("simple_python", "simple_java", "simple_javascript")),
            "multiple",
            "parallel",
            "parallel_multiple",
        ),
    ),
    "live": (
        "pooled",
        ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple"),
    ),
    "irrelevance": ("mean", ("irrelevance", "live_irrelevance")),
    "relevance": ("mean", ("live_relevance",)),
    "multi_turn": ("mean", bridge.MULTI_TURN),
}
# BFCL v4 overall = 10% non-live + 10% live + 10% irrelevance + 30% multi-turn + 40% agentic
# (web search, memory). Agentic is left out here, so `overall` renormalises the other 60%.
OVERALL_WEIGHTS = {"non_live": 10, "live": 10, "irrelevance": 10, "multi_turn": 30}
OVERALL_NOTE = " without agentic: (10 non_live + 10 live + 10 irrelevance + 30 multi_turn) / 60"


def coefficients(node: Node, counts: Counter[str]) -> dict[str, float] | None:
    """Weight of each category's accuracy in `node`; None if a category has no records."""
    if isinstance(node, str):
        return {node: 1.0} if counts.get(node) else None
    how, children = node
    parts = [coefficients(child, counts) for child in children]
    if any(p is None for p in parts):
        return None
    if how == "pooled":
        total = sum(counts[c] for c in children)  # pooled children are categories
        return {c: counts[c] / total for c in children}
    return {c: w / len(parts) for p in parts for c, w in p.items()}  # type: ignore[union-attr]


def weighted_accuracy(records: Sequence[SampleRecord], weights: dict[str, float]) -> dict[str, Any]:
    """sum_c weight_c * accuracy_c over the weighted categories, its interval stratified by
    category (evalkit.stats.stratified_summarize)."""
    category_of = {r.id: r.metadata["category"] for r in records}
    per_category: dict[str, list[float]] = defaultdict(list)
    samples = 0
    for pid, outcomes in stats.per_problem(records).items():
        category = category_of[pid]
        if category in weights:
            per_category[category].append(sum(outcomes) / len(outcomes))
            samples += len(outcomes)
    return stats.stratified_summarize(per_category, weights, n_samples=samples)


class BfclSuite(Suite):
    modes = ("fc",)
    default_mode = "fc"
    id_doc = "BFCL's test-entry id, e.g. simple_python_0, live_simple_3-2-1, multi_turn_base_12"
    data_relpath = f"bfcl_eval/data (PyPI wheel bfcl-eval=={bridge.BFCL_VERSION})"
    hub = HubSource(f"pypi:bfcl-eval=={bridge.BFCL_VERSION}", (), "bfcl_eval/data")
    fingerprint_fields = (
        "category",
        "question",
        "function",
        "ground_truth",
        "initial_config",
        "involved_classes",
        "missed_function",
    )
    breakdown_keys = ("category",)
    categories: tuple[str, ...]
    # The BFCL score `accuracy` reports for a multi-category suite (see `metrics`).
    headline: str = "overall"
    # BFCL's multi-turn protocol has no message or tool-error limit per episode, only its
    # step limit per turn (max_steps_per_turn, see solve_multi_turn), so none here. The wall
    # time limit is evalkit's guard against a hanging episode, not BFCL's.
    default_budget = AgentBudget(max_steps=None, max_errors=None, max_time_s=1800.0)

    def load_records(self, location: DataLocation) -> list[dict[str, Any]]:
        return [r for c in self.categories for r in bridge.load_category(c)]

    def describe_data(self, location: DataLocation) -> dict[str, Any]:
        # The data ships inside the bfcl-eval wheel, whatever --data-dir says.
        return {
            "source": "package",
            "package": f"bfcl-eval=={bridge.BFCL_VERSION}",
            "path": "bfcl_eval/data",
            "categories": list(self.categories),
        }

    def sample_id(self, index: int, record: dict[str, Any]) -> str:
        return record["id"]

    def to_sample(self, index: int, record: dict[str, Any]) -> Sample:
        category = record["category"]
        if bridge.is_relevance(category):
            target = "a function call" if category == "live_relevance" else "no function call"
        else:
            target = bridge.json_text(record["ground_truth"])
        group = next(g for g, cats in GROUPS.items() if category in cats)
        return Sample(
            id=record["id"],
            data={"record": record},
            target=target,
            metadata={"category": category, "group": group},
        )

    def templates(self, mode: str) -> dict[str, Any]:
        return {
            "bfcl_eval": bridge.BFCL_VERSION,
            "tools": "bfcl convert_to_tool(GORILLA_TO_OPENAPI, ModelStyle.OPENAI_COMPLETIONS)",
            "additional_function_prompt": bridge.bfcl().additional_function_prompt,
            "max_steps_per_turn": bridge.bfcl().max_steps_per_turn,
        }

    def build_request(
        self, sample: Sample, mode: str, params: GenerationParams, sample_index: int
    ) -> Request:
        record = sample.data["record"]
        return Request(
            sample.id,
            sample_index,
            params,
            messages=[dict(m) for m in record["question"][0]],
            tools=bridge.to_tools(record["function"]) or None,
        )

    async def solve(
        self,
        sample: Sample,
        mode: str,
        params: GenerationParams,
        sample_index: int,
        ctx: SolveContext,
    ) -> tuple[Request, Response]:
        record = sample.data["record"]
        if not bridge.is_multi_turn(record["category"]):
            return await super().solve(sample, mode, params, sample_index, ctx)
        return await solve_multi_turn(record, params, sample_index, ctx)

    def score_batch(self, items: Sequence[tuple[Sample, Response]], mode: str) -> list[Score]:
        scores = []
        for sample, response in items:
            record = sample.data["record"]
            if response.error is not None:
                scores.append(Score(None, False, {"reason": "error"}))
                continue
            if bridge.is_multi_turn(record["category"]):
                turns = response.outcome.get("turns", [])
                verdict = bridge.check_multi_turn(record, turns)
                extracted = bridge.json_text(turns)
                details = {"termination": response.outcome.get("termination")}
            else:
                verdict = bridge.check_single_turn(record, response.tool_calls)
                extracted = bridge.render_decoded(verdict.pop("decoded", None))
                details = {k: verdict[k] for k in ("erratum", "official_valid") if k in verdict}
            if not verdict["valid"]:
                details["error"] = verdict.get("error")
                details["error_type"] = verdict.get("error_type")
            scores.append(Score(extracted, verdict["valid"], details))
        return scores

    def metrics(self, records: Sequence[SampleRecord], samples_per_item: int) -> dict[str, Any]:
        """`accuracy`, the headline: the category's accuracy for a one-category suite, else
        BFCL's own score for the suite (`headline`: its overall without agentic, or a group's
        summary) when every category it needs is in the run, else the mean over entries
        (`definition` says which). Beside it, each of BFCL's summary scores whose categories
        are all present, and `entries`, the plain mean over entries. When the run holds entries
        with an erratum (bridge.ERRATA), `accuracy_bfcl_checker` is the headline as BFCL's own
        checker scores it, those entries failed: the number to set beside BFCL's leaderboard."""
        out = self._scores(records)
        if any(r.id in bridge.ERRATA for r in records):
            official = [
                dataclasses.replace(r, correct=bool(r.details.get("official_valid", r.correct)))
                for r in records
            ]
            errata = sorted(r.id for r in records if r.id in bridge.ERRATA)
            out["accuracy_bfcl_checker"] = {
                **self._scores(official)["accuracy"],
                "definition": "accuracy as bfcl-eval's checker scores it, without evalkit's "
                f"errata of {', '.join(errata)}",
            }
        return out

    def _scores(self, records: Sequence[SampleRecord]) -> dict[str, Any]:
        category = {r.id: r.metadata["category"] for r in records}
        counts = Counter(category.values())
        if len(self.categories) == 1:
            return {"accuracy": stats.clustered_mean(records)}
        summaries = {
            name: weights
            for name, node in SUMMARIES.items()
            if (weights := coefficients(node, counts)) is not None
        }
        if all(name in summaries for name in OVERALL_WEIGHTS):
            total = sum(OVERALL_WEIGHTS.values())
            overall: dict[str, float] = {}
            for name, share in OVERALL_WEIGHTS.items():
                for c, w in summaries[name].items():
                    overall[c] = overall.get(c, 0.0) + w * share / total
            summaries["overall"] = overall
        out = {name: weighted_accuracy(records, weights) for name, weights in summaries.items()}
        out["entries"] = stats.clustered_mean(records)
        if self.headline in out:
            note = OVERALL_NOTE if self.headline == "overall" else ""
            definition = f"BFCL v4 {self.headline}{note}"
            out["accuracy"] = {**out[self.headline], "definition": definition}
        else:
            missing = f"the run lacks categories BFCL's {self.headline} needs"
            out["accuracy"] = {**out["entries"], "definition": f"mean over entries ({missing})"}
        return out

    def provenance(self) -> dict[str, Any]:
        return {
            "bfcl_eval": bridge.installed_version(),
            "data": f"bfcl_eval/data of the bfcl-eval=={bridge.BFCL_VERSION} wheel",
            "categories": list(self.categories),
            "left_out": LEFT_OUT,
            "max_steps_per_turn": bridge.bfcl().max_steps_per_turn,
            "errata": {
                entry: erratum.reason
                for entry, erratum in bridge.ERRATA.items()
                if entry.rsplit("_", 1)[0] in self.categories  # ids are category_number
            },
        }


class _StepLimit:
    """BFCL force-quits a multi-turn episode when one turn takes more than its step limit of
    tool-call replies: the model is asked at most limit + 1 times per turn."""

    def __init__(self, ctx: SolveContext, limit: int) -> None:
        self.ctx = ctx
        self.limit = limit
        self.asked = 0
        self.hit = False

    def new_turn(self) -> None:
        self.asked = 0

    async def __call__(self, request: Request) -> Response:
        self.asked += 1
        if self.asked > self.limit + 1:
            self.hit = True
            return Response(text="", error=f"BFCL step limit: over {self.limit} steps in a turn")
        return await self.ctx.generate(request)


async def solve_multi_turn(
    record: dict[str, Any], params: GenerationParams, sample_index: int, ctx: SolveContext
) -> tuple[Request, Response]:
    """One BFCL multi-turn episode: the data's user turns, one agent turn each; the outcome
    holds, per turn, the calls of each step rendered for BFCL's checker."""
    b = bridge.bfcl()
    env = bridge.BfclEnv(record)
    state = agent.BudgetState(ctx.budget)
    limiter = _StepLimit(ctx, b.max_steps_per_turn)
    messages: list[dict[str, Any]] = []
    first: Request | None = None
    turns: list[list[list[str]]] = []
    termination = agent.USER_STOP
    held_out = record.get("missed_function") or {}
    if ctx.system_prompt:  # --system-prompt, as Request.with_system_prompt adds it elsewhere
        state.add(messages, {"role": "system", "content": ctx.system_prompt})
    for index, turn_messages in enumerate(record["question"]):
        if reason := state.exhausted():
            termination = reason
            break
        if str(index) in held_out:
            env.offer(held_out[str(index)])
            turn_messages = [{"role": "user", "content": b.additional_function_prompt}]
        for message in turn_messages:
            state.add(messages, dict(message))
        if first is None:
            first = Request(
                record["id"], sample_index, params, messages=list(messages), tools=env.tools()
            )
        state.turn += 1
        start = len(state.responses)
        limiter.new_turn()
        reason = await agent.run_turn(
            ctx, messages, env, params, record["id"], sample_index, state, generate=limiter
        )
        if limiter.hit:
            state.responses.pop()  # the refusal, not a model reply
            reason = agent.MAX_STEPS
        steps = [env.renderable(r.tool_calls) for r in state.responses[start:]]
        turns.append([s for s in steps if s])
        if reason != agent.REPLIED:
            termination = reason
            break
    episode = agent.Episode(
        messages=messages,
        termination=termination,
        responses=state.responses,
        tool_calls=state.tool_calls,
        error=state.responses[-1].error if termination == agent.MODEL_ERROR else None,
        transcript=state.transcript,
        steps=state.steps,
        tool_errors=state.errors,
        elapsed_s=state.elapsed(),
    )
    assert first is not None  # every task has at least one turn
    return first, episode.to_response({"turns": turns})


# The groups of BFCL's leaderboard; suite names of the simple categories.
GROUPS = {
    "non_live": bridge.NON_LIVE,
    "live": bridge.LIVE,
    "multi_turn": bridge.MULTI_TURN,
}
SHORT_NAMES = {"simple_python": "simple", "simple_java": "java", "simple_javascript": "javascript"}
# sha256 of each suite's records (evalkit.data.fingerprint) in bfcl-eval 2026.3.23.
FINGERPRINTS = {
    "bfcl": "sha256:d026227f1ca89e0a695e2ab2d8204f1673a3f1a6dd01d2517695f19d469c8717",
    "bfcl-non-live": "sha256:42a3814ad3f2f73ad78d93586aaa8efa03a24f4d57cb58b671505362da296ac8",
    "bfcl-live": "sha256:f7bd669f98b583b1f8dab1533ad63ffb5833e91b696082328658eb61854af8b9",
    "bfcl-multi-turn": "sha256:2cfea69dcad2a952823add5fd10ea6bda3007f2d243d2c2858a7b9562bb3ee80",
    "bfcl-irrelevance": "sha256:4590bee281d7cea885acf5a1a0a065d434b8de804bb4ada670cf1a5bc1dab899",
    "bfcl-java": "sha256:30c3f9c085a45896bf338a784030839c3328b5ea85fa50fadbc5c233279656a0",
    "bfcl-javascript": "sha256:d339c40622effc9ccef024c9bce015c7dacbadbe3ea62ea967a54453577bf5a8",
    "bfcl-live-irrelevance": (
        "sha256:b749761fa00b65f40f42290df6867892952e6e21dc1d5aef90c287601a11363d"
    ),
    "bfcl-live-multiple": "sha256:57e66a2c1bd99a0e1c4237cfc564a9baa1f17c865cc4524fc05278140ea443ee",
    "bfcl-live-parallel": "sha256:59c3db0346d3f160ac2336fc4bbe3b30ecced0ee164811b6c2ad015a8e83bb8e",
    "bfcl-live-parallel-multiple": (
        "sha256:3c666654474cddc4b6eced288acfc6b29f6e460b3876e8017d93370d7bbe584b"
    ),
    "bfcl-live-relevance": (
        "sha256:aa66bb02cd1c3591507ba089e05f9e37a8f2235d14cc144feeaa10fa5f9f3039"
    ),
    "bfcl-live-simple": "sha256:361214af48567135ea43bd7086353f318e7429f1de3864e599b68a1492294b22",
    "bfcl-multi-turn-base": (
        "sha256:af4a8f4e947875214a3c668675998ffb1d8871e45d292c35d24b39d2388e2d01"
    ),
    "bfcl-multi-turn-long-context": (
        "sha256:fb980aebcca4a10f4f245cba2ee1e74c821869d2c08f7191d461a9485527c146"
    ),
    "bfcl-multi-turn-miss-func": (
        "sha256:5c194404c54b1f76a5ad25808793c4ed45fd4201113b43942df74c44092a02f8"
    ),
    "bfcl-multi-turn-miss-param": (
        "sha256:fafdbd6952c3b212c396c52c3a1ac967c21cbaff4cb72a32ac7572e19ec2e20e"
    ),
    "bfcl-multiple": "sha256:b5a342753e772da7252c2b8dbac599b7d06291a0d6460a16f8fdd52895c0e3ae",
    "bfcl-parallel": "sha256:676de8fd9c5ad1c0c7d1a9fe72e9028a8467ebae6c2653e303b59ff1c1fdd903",
    "bfcl-parallel-multiple": (
        "sha256:b7549dc070c0e997bcee31f384e032422f23efad218438f6a4b36bac7ca75e3e"
    ),
    "bfcl-simple": "sha256:d89ad9d36e2dc15791ef983baa2572f401412c15286cd7c09d2aecffd9ca7142",
}


def _register(
    name: str, categories: tuple[str, ...], description: str, headline: str = "overall"
) -> None:
    attrs = {
        "name": name,
        "headline": headline,
        "description": f"{description}; BFCL's checkers (bfcl-eval {bridge.BFCL_VERSION})",
        "categories": categories,
        "expected_fingerprint": FINGERPRINTS[name],
        "agentic": any(bridge.is_multi_turn(c) for c in categories),
    }
    cls = type(f"Bfcl_{name.replace('-', '_')}", (BfclSuite,), attrs)
    register_suite(cls())


_register(
    "bfcl",
    bridge.CATEGORIES,
    f"BFCL v4 non-live, live and multi-turn ({len(bridge.CATEGORIES)} categories; left out: "
    f"{LEFT_OUT}); overall = BFCL's weighting without agentic",
)
for _group, _categories in GROUPS.items():
    _register(
        f"bfcl-{_group.replace('_', '-')}",
        _categories,
        f"BFCL v4 {_group} categories; accuracy = BFCL's {_group} score",
        headline=_group,
    )
for _category in bridge.CATEGORIES:
    _short = SHORT_NAMES.get(_category, _category)
    _register(f"bfcl-{_short.replace('_', '-')}", (_category,), f"BFCL v4 {_category}")

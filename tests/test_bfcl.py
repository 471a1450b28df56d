"""BFCL v4 through evalkit's pipeline, on the wheel's real data and checkers: every gold answer
(the possible answers as native tool calls; for multi-turn the ground-truth calls of each turn)
scores 100% in every category (the 7 entries whose correct answer BFCL's own checker rejects
are corrected by evalkit's errata, pinned below); a wrong argument or a missing call scores 0;
multi-turn episodes follow BFCL's protocol (held-out functions, step limit); model text that
tries code injection never reaches BFCL's `eval`."""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from evalkit import bfcl_bridge as bridge
from evalkit.backends.base import Backend
from evalkit.backends.replay import ReplayBackend
from evalkit.data import DataLocation
from evalkit.errors import EvalkitError
from evalkit.records import GenerationParams, Request, Response, Score, ToolCall
from evalkit.registry import get_suite
from evalkit.runner import RunConfig, execute
from evalkit.suite import SolveContext
from suites.bfcl import SUMMARIES, coefficients

# A model: (task, turn index, replies already given in that turn) -> its tool calls; no call
# means a text reply, which ends the turn.
Answer = Callable[[dict[str, Any], int, int], list[ToolCall]]


# -- gold answers --------------------------------------------------------------------------


def chosen(possible: list[Any], required: bool = False) -> tuple[bool, Any]:
    """BFCL lists the acceptable values of a parameter, "" marking "may be left out": leave an
    optional one out when allowed, else take the first value (nested dicts hold choice lists
    too)."""
    values = [v for v in possible if v != ""]
    if "" in possible and not required:
        return False, None
    if not values:
        return bool(possible), ""  # required, and only "" accepted: send it empty
    return True, materialize(values[0])


def materialize(value: Any) -> Any:
    if isinstance(value, dict) and all(isinstance(v, list) for v in value.values()):
        out = {}
        for key, possible in value.items():
            present, item = chosen(possible)
            if present:
                out[key] = item
        return out
    if isinstance(value, list):
        return [materialize(v) if isinstance(v, dict) else v for v in value]
    return value


def java_element(value: Any, nested: str | None) -> str:
    if nested == "String":
        return f'"{value}"'
    if nested not in (None, "any"):
        return java_literal(value, nested)
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else str(value)


def java_literal(value: Any, kind: str, nested: str | None = None) -> str:
    """A value as Java source in the form bfcl's java_type_converter parses back."""
    if isinstance(value, str):
        return value  # Java source already (a variable, an expression)
    if kind == "boolean":
        return "true" if value else "false"
    if kind == "long":
        return f"{value}L"
    if kind == "float":
        return f"{value}f"
    if kind == "Array":
        return "new " + (nested or "Object") + "[]{" + ", ".join(str(v) for v in value) + "}"
    if kind == "ArrayList":
        items = ", ".join(java_element(v, nested) for v in value)
        return f"new ArrayList<>(Arrays.asList({items}))"
    if kind == "HashMap":
        puts = " ".join(f'put("{k}", {java_element(v, None)});' for k, v in value.items())
        return f"new HashMap<String, Object>() {{{{ {puts} }}}}"
    return str(value)


def js_literal(value: Any, kind: str) -> str:
    """A value as JavaScript source in the form bfcl's js_type_converter parses back."""
    if isinstance(value, str):
        return value  # JavaScript source already (a variable, an expression)
    if kind == "Boolean":
        return "true" if value else "false"
    if kind == "Bigint":
        return f"{value}n"
    if kind == "array":
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    if kind == "dict":
        return "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in value.items()) + "}"
    return str(value)


def gold_arguments(record: dict[str, Any], name: str, possible: dict[str, list]) -> dict:
    doc = next(f for f in record["checker_function"] if f["name"] == name)
    properties = doc["parameters"]["properties"]
    args = {}
    required = doc["parameters"].get("required", [])
    for param, choices in possible.items():
        present, value = chosen(choices, param in required)
        if not present:
            continue
        if record["category"] == "simple_java":
            kind = properties[param]["type"]
            nested = properties[param].get("items", {}).get("type")
            value = java_literal(value, kind, nested)
        elif record["category"] == "simple_javascript":
            value = js_literal(value, properties[param]["type"])
        args[param] = value
    return args


def parse_gt_call(record: dict[str, Any], text: str) -> ToolCall:
    """A ground-truth call string of the data (trusted) as the ToolCall a model would send;
    positional arguments are named from the backend method's signature."""
    call = ast.parse(text, mode="eval").body
    assert isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
    name = call.func.id
    method = next(
        getattr(bridge._backend_class(c), name)
        for c in record["involved_classes"]
        if hasattr(bridge._backend_class(c), name)
    )
    params = [p for p in inspect.signature(method).parameters if p != "self"]
    args = {params[i]: ast.literal_eval(a) for i, a in enumerate(call.args)}
    args.update({k.arg: ast.literal_eval(k.value) for k in call.keywords})
    args = json.loads(json.dumps(args))  # as it arrives from a model: JSON
    return ToolCall(id="", name=name, arguments=args, raw=json.dumps(args))


def current_turn(messages: list[dict[str, Any]]) -> tuple[int, int]:
    """(turn index, replies already given in this turn) of a multi-turn conversation."""
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    replies = sum(m["role"] == "assistant" for m in messages[users[-1] :])
    return len(users) - 1, replies


def gold_answer(record: dict[str, Any], turn: int, replies: int) -> list[ToolCall]:
    category = record["category"]
    if bridge.is_multi_turn(category):
        if replies:
            return []
        return [parse_gt_call(record, text) for text in record["ground_truth"][turn]]
    if category == "live_relevance":
        return [ToolCall("c0", record["function"][0]["name"].replace(".", "_"), {})]
    if bridge.is_relevance(category):
        return []
    return calls_from(record, bridge.corrected_ground_truth(record))


def calls_from(record: dict[str, Any], truth: list[dict[str, Any]]) -> list[ToolCall]:
    """A possible answer's first accepted values as native tool calls."""
    calls = []
    for i, call in enumerate(truth):
        ((name, possible),) = call.items()
        args = gold_arguments(record, name, possible)
        calls.append(ToolCall(f"c{i}", name.replace(".", "_"), args, json.dumps(args)))
    return calls


def perturbed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 7
    if isinstance(value, str):
        return "zzz_wrong"  # also for Java/JS source text, whose parsers ignore what surrounds
    if isinstance(value, list):
        return [*value, "zzz"]
    return {**value, "zzz": 1}


def wrong_argument(record: dict[str, Any], turn: int, replies: int) -> list[ToolCall]:
    """Gold, with the first argument of the first call changed (or one added, if no call has
    any); for irrelevance, a call made; for relevance, none."""
    if bridge.is_relevance(record["category"]):
        if record["category"] == "live_relevance":
            return []
        names = [f["name"].replace(".", "_") for f in record["function"]] or ["get_weather"]
        return [ToolCall("c0", names[0], {})]
    calls = gold_answer(record, turn, replies)
    for i, call in enumerate(calls):
        if call.arguments:
            key = next(iter(call.arguments))
            args = {**call.arguments, key: perturbed(call.arguments[key])}
            calls[i] = ToolCall(call.id, call.name, args, json.dumps(args))
            break
    else:
        if calls:  # calls without arguments: an argument the function does not have
            calls[0] = ToolCall(calls[0].id, calls[0].name, {"zzz": 1}, '{"zzz": 1}')
    return calls


def missing_call(record: dict[str, Any], turn: int, replies: int) -> list[ToolCall]:
    """Gold without the first call of the first turn that has one."""
    calls = gold_answer(record, turn, replies)
    if bridge.is_multi_turn(record["category"]):
        first = next(i for i, t in enumerate(record["ground_truth"]) if t)
        return calls[1:] if turn == first and not replies else calls
    return calls[1:]


class AnswerBackend(Backend):
    """Answers every request of a sample (each step of an episode) with `answer`'s calls, for
    in-process episodes that watch what the model is sent."""

    cacheable = False

    def __init__(self, records: Sequence[dict[str, Any]], answer: Answer) -> None:
        self.records = {r["id"]: r for r in records}
        self.answer = answer

    async def generate(self, request: Request) -> Response:
        assert request.messages is not None
        calls = self.answer(self.records[request.sample_id], *current_turn(request.messages))
        return Response(
            text="" if calls else "Done.",
            finish_reason="tool_calls" if calls else "stop",
            tool_calls=tuple(calls),
            tool_call_source="native" if calls else None,
        )

    def describe(self) -> dict[str, Any]:
        return {"backend": "test-answers", "model_id": "bfcl-gold"}


def reply(calls: list[ToolCall]) -> dict[str, Any]:
    return {
        "response": "" if calls else "Done.",
        "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls],
    }


def replay_line(record: dict[str, Any], answer: Answer) -> dict[str, Any]:
    """The answers to one task as a line of a replay file (evalkit.backends.replay): one reply
    for a single-turn task, an episode's replies ("steps") for a multi-turn one."""
    if not bridge.is_multi_turn(record["category"]):
        return {"id": record["id"], **reply(answer(record, 0, 0))}
    steps = []
    for turn in range(len(record["question"])):
        replies = 0
        while calls := answer(record, turn, replies):
            steps.append(reply(calls))
            replies += 1
        steps.append(reply([]))
    return {"id": record["id"], "steps": steps}


def run_suite(suite_name: str, answer: Answer, tmp_path: Path) -> tuple[Any, dict[str, Any]]:
    """The answers through the whole pipeline: replay file -> runner -> scorer -> store."""
    records = get_suite(suite_name).load_records(DataLocation(None))
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "answers.jsonl"
    with path.open("w") as fh:
        for record in records:
            fh.write(json.dumps(replay_line(record, answer)) + "\n")
    run = execute(
        RunConfig(
            suite=suite_name,
            model=f"replay:{path}",
            results_dir=str(tmp_path / "results"),
            progress=False,
        )
    )
    summary = run.summary()
    assert summary["counts"]["items"] == len(records)
    assert summary["counts"]["errors"] == 0
    return run, summary


# -- tests ---------------------------------------------------------------------------------


# Entries whose correct answer fails bfcl-eval 2026.3.23's own checker (defects of its data,
# corrected by evalkit's errata): how that checker rejects the gold answer.
OFFICIAL_FAILURES = {
    # ArrayList parameters with items of type "any" always parse to strings, and the
    # possible answer holds the int 42 / the boolean true.
    "simple_java_36": "value_error",
    "simple_java_65": "value_error",
    # The possible answer of a HashMap entry is a plain string where the checker expects a list
    # of choices, so it compares the value with the string's single characters.
    "simple_java_64": "value_error:dict_value",
    # Required parameters whose list of possible answers is empty: nothing is accepted.
    "live_simple_106-63-0": "simple_function_checker:missing_required",
    "live_simple_112-68-0": "simple_function_checker:missing_required",
    # The answer needs a parameter the function does not have.
    "live_multiple_862-181-3": "simple_function_checker:unexpected_param",
    # The function requires a parameter the answer does not allow.
    "live_multiple_964-207-0": "simple_function_checker:missing_required",
}


def test_errata_are_exactly_the_entries_bfcls_checker_rejects_with_their_own_answer() -> None:
    """Each erratum's entry: the data's own answer, sent as calls, fails BFCL's checker for the
    reason pinned above; the corrected answer passes, and BFCL's verdict on it is kept."""
    assert set(bridge.ERRATA) == set(OFFICIAL_FAILURES)
    seen = set()
    for category in ("simple_java", "live_simple", "live_multiple"):
        for record in bridge.load_category(category):
            if record["id"] not in bridge.ERRATA:
                continue
            seen.add(record["id"])
            official = bridge.check_single_turn(
                {**record, "id": "no erratum"}, calls_from(record, record["ground_truth"])
            )
            assert not official["valid"], record["id"]
            assert official["error_type"].startswith(OFFICIAL_FAILURES[record["id"]])
            verdict = bridge.check_single_turn(record, gold_answer(record, 0, 0))
            assert verdict["valid"] and verdict["official_valid"] is False, record["id"]
            assert verdict["erratum"] == bridge.ERRATA[record["id"]].reason
    assert seen == set(bridge.ERRATA)


def failures(run: Any) -> list[str]:
    return [r.id for r in run.samples() if not r.correct]


def test_every_gold_answer_scores_100_in_every_category(tmp_path: Path) -> None:
    run, summary = run_suite("bfcl", gold_answer, tmp_path)
    assert summary["counts"]["items"] == 4441
    assert failures(run) == []
    by_category = summary["breakdowns"]["category"]
    assert set(by_category) == set(bridge.CATEGORIES)
    for category, metric in by_category.items():
        assert metric["mean"] == 1.0, category
    assert by_category["multi_turn_long_context"]["n"] == 200
    metrics = summary["metrics"]
    for name in ("accuracy", "overall", "non_live", "live", "irrelevance", "relevance"):
        assert metrics[name]["mean"] == pytest.approx(1.0), name
        assert metrics[name]["ci95"] == pytest.approx([1.0, 1.0])  # stratified: no spread
    assert (metrics["relevance"]["n"], metrics["multi_turn"]["n"]) == (16, 800)
    assert metrics["entries"]["mean"] == 1.0
    headline = metrics["accuracy"]
    assert headline["definition"].startswith("BFCL v4 overall without agentic")
    weights = headline["weights"]
    assert sum(weights.values()) == pytest.approx(1.0)
    assert "live_relevance" not in weights  # BFCL's overall leaves relevance out
    assert weights["multi_turn_base"] == pytest.approx(30 / 60 / 4)
    # As BFCL's own checker scores the same answers: the errata's entries fail.
    official = {r.id: r.details.get("official_valid", r.correct) for r in run.samples()}
    assert {i for i, ok in official.items() if not ok} == set(bridge.ERRATA)
    counts = {c: m["n"] for c, m in by_category.items()}
    lost = {c: sum(i.rsplit("_", 1)[0] == c for i in bridge.ERRATA) for c in counts}
    expected = sum(w * (1 - lost[c] / counts[c]) for c, w in weights.items())
    checker = metrics["accuracy_bfcl_checker"]
    assert checker["mean"] == pytest.approx(expected) and checker["mean"] < 1.0
    assert "simple_java_36" in checker["definition"]
    provenance = summary["provenance"]["suite"]
    assert provenance["bfcl_eval"] == bridge.BFCL_VERSION
    assert set(provenance["errata"]) == set(bridge.ERRATA)
    assert summary["provenance"]["agent"]["user_model"] is None


# Multi-turn entries where the wrong argument changes nothing the checker sees:
# add_to_watchlist('ZETA') when ZETA is already on the watchlist, and an invalid symbol instead.
NO_OP_PERTURBATION = {"multi_turn_base_139"}


@pytest.mark.parametrize("answer", [wrong_argument, missing_call])
def test_wrong_argument_or_missing_call_scores_0(answer: Answer, tmp_path: Path) -> None:
    # Every single-turn entry and every multi-turn base entry. (No call is the gold answer of
    # the irrelevance categories: a missing call is no error there.)
    for suite_name in ("bfcl-non-live", "bfcl-live", "bfcl-multi-turn-base"):
        run, _ = run_suite(suite_name, answer, tmp_path / suite_name)
        passed = {r.id for r in run.samples() if r.correct}
        if answer is wrong_argument:
            assert passed <= NO_OP_PERTURBATION
        else:
            irrelevance = {
                r.id
                for r in run.samples()
                if bridge.is_relevance(r.metadata["category"])
                and r.metadata["category"] != "live_relevance"
            }
            assert passed == irrelevance


def test_weighting_follows_bfcl_v4() -> None:
    suite = get_suite("bfcl")
    counts = {c: 10 for c in bridge.CATEGORIES} | {"live_simple": 30}
    non_live = coefficients(SUMMARIES["non_live"], counts)
    assert non_live == pytest.approx(
        {"simple_python": 1 / 12, "simple_java": 1 / 12, "simple_javascript": 1 / 12}
        | {"multiple": 1 / 4, "parallel": 1 / 4, "parallel_multiple": 1 / 4}
    )
    live = coefficients(SUMMARIES["live"], counts)
    assert live == pytest.approx(
        {"live_simple": 0.5, "live_multiple": 1 / 6}
        | {"live_parallel": 1 / 6, "live_parallel_multiple": 1 / 6}
    )
    assert coefficients(SUMMARIES["live"], counts | {"live_parallel": 0}) is None
    assert suite.agentic and not get_suite("bfcl-live").agentic


def solve_one(suite_name: str, index: int, answer: Answer) -> tuple[Response, Score]:
    """One sample through the suite's solve and score, in-process."""
    suite = get_suite(suite_name)
    records = suite.load_records(DataLocation(None))
    sample = suite.to_sample(index, records[index])
    ctx = SolveContext(backend=AnswerBackend(records, answer), slot=asyncio.Semaphore(1))
    _, response = asyncio.run(suite.solve(sample, "fc", GenerationParams(), 0, ctx))
    (score,) = suite.score_batch([(sample, response)], "fc")
    return response, score


def test_held_out_functions_are_offered_at_their_turn() -> None:
    offered: list[tuple[int, set[str]]] = []

    class Recording(AnswerBackend):
        async def generate(self, request: Request) -> Response:
            assert request.tools is not None and request.messages is not None
            names = {t["function"]["name"] for t in request.tools}
            offered.append((current_turn(request.messages)[0], names))
            return await super().generate(request)

    suite = get_suite("bfcl-multi-turn-miss-func")
    record = suite.load_records(DataLocation(None))[0]
    ((turn, (missed,)),) = record["missed_function"].items()
    sample = suite.to_sample(0, record)
    ctx = SolveContext(backend=Recording([record], gold_answer), slot=asyncio.Semaphore(1))
    _, response = asyncio.run(suite.solve(sample, "fc", GenerationParams(), 0, ctx))
    assert all((missed["name"] in names) == (t >= int(turn)) for t, names in offered)
    users = [m for m in response.transcript if m["role"] == "user"]
    assert users[int(turn)]["content"] == bridge.bfcl().additional_function_prompt
    assert suite.score_batch([(sample, response)], "fc")[0].correct


def test_more_than_20_steps_in_a_turn_force_quits() -> None:
    def endless(record: dict[str, Any], turn: int, step: int) -> list[ToolCall]:
        return [ToolCall(f"s{step}", "ls", {"a": step % 2 == 0})]  # never the same twice

    response, score = solve_one("bfcl-multi-turn-base", 0, endless)
    assert response.outcome["termination"] == "max_steps"
    assert len(response.outcome["turns"]) == 1 and len(response.outcome["turns"][0]) == 20 + 1
    assert response.outcome["model_calls"] == 21 and response.error is None
    assert score.correct is False and score.details["error_type"] == "multi_turn:force_terminated"


# -- code injection ------------------------------------------------------------------------

INJECTED = [
    ToolCall("x1", "__import__('os').system('touch {marker}')", {}),
    ToolCall("x2", "cd", {"folder='.'),__import__('os').system('touch {marker}'),print(": 1}),
    ToolCall("x3", "cd", {"folder": "'); __import__('os').system('touch {marker}'); ('"}),
    ToolCall(
        "x4",
        "cd",
        None,
        raw="{\"folder\": __import__('os').system('touch {marker}')}",
        error="invalid JSON",
    ),
    ToolCall("x5", "eval", {"source": "__import__('os').system('touch {marker}')"}),
]


def injected_calls(marker: Path) -> list[ToolCall]:
    out = []
    for call in INJECTED:
        text = json.dumps([call.name, call.arguments, call.raw]).replace("{marker}", str(marker))
        name, arguments, raw = json.loads(text)
        out.append(ToolCall(call.id, name, arguments, raw, call.error))
    return out


def test_injected_code_is_never_evaluated(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    calls = injected_calls(marker)
    suite = get_suite("bfcl-multi-turn-base")
    records = suite.load_records(DataLocation(None))
    record = records[0]
    allowed = bridge.callable_names(record)
    for call in calls[:2] + calls[3:]:
        with pytest.raises(bridge.UnsafeCall):
            bridge.render_call(call, allowed)
    # A string argument is rendered as a literal: evaluated, it is only a string.
    rendered = bridge.render_call(calls[2], allowed)
    assert ast.literal_eval(rendered[len("cd(folder=") : -1]) == calls[2].arguments["folder"]

    # Through the suite: the model sends every injection each turn, then gives up.
    def attack(rec: dict[str, Any], turn: int, replies: int) -> list[ToolCall]:
        return calls if replies == 0 else []

    response, score = solve_one("bfcl-multi-turn-base", 0, attack)
    assert not marker.exists()
    assert score.correct is False
    assert score.extracted is not None
    executed = [s for turn in json.loads(score.extracted) for step in turn for s in step]
    assert executed and set(executed) == {rendered}
    tool_results = [m for m in response.transcript if m["role"] == "tool"]
    assert sum(m["error"] for m in tool_results) == 4 * len(executed)

    # Single-turn: names are looked up, never executed; the AST checker just says no.
    simple = get_suite("bfcl-simple")
    s_record = simple.load_records(DataLocation(None))[0]
    verdict = bridge.check_single_turn(s_record, calls)
    assert verdict["valid"] is False and not marker.exists()


# -- replaying recorded tool calls -----------------------------------------------------------


def test_replay_lines_carry_tool_calls_and_episode_steps(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    lines = [
        {"id": "a", "response": "", "tool_calls": [{"name": "f", "arguments": {"x": 1}}]},
        {"id": "b", "steps": [{"response": "", "tool_calls": [{"name": "g"}]}, {"response": "ok"}]},
        {"id": "c", "response": "plain text"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    backend = ReplayBackend(str(path))

    def ask(sample_id: str) -> Response:
        request = Request(sample_id, 0, GenerationParams(), messages=[])
        return asyncio.run(backend.generate(request))

    assert ask("a").tool_calls == (ToolCall("call_0", "f", {"x": 1}, raw='{"x": 1}'),)
    first, second, third = (ask("b") for _ in range(3))
    assert first.tool_calls[0].name == "g" and (second.text, second.tool_calls) == ("ok", ())
    assert third.error == "no recorded step #2 for id b"
    assert ask("c").text == ask("c").text == "plain text"  # a plain line answers every request

    path.write_text('{"id": "a", "response": "", "tool_calls": [{"name": "f", "arguments": 1}]}\n')
    with pytest.raises(EvalkitError, match=r"r.jsonl:1: tool call 0: 'arguments' must be"):
        ReplayBackend(str(path))

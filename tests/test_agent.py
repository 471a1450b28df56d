"""The agent loop (evalkit.agent) on a small real tool environment, driven by scripted backends:
each driver, the transcript it keeps, and every way a model can misbehave (malformed calls,
unknown tools, loops, floods, hangs, backend errors) ending as a recorded termination."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evalkit.agent import (
    AGENT_STOP,
    MAX_ERRORS,
    MAX_STEPS,
    MODEL_ERROR,
    REPEATED_CALLS,
    REPLIED,
    TIMEOUT,
    TRUNCATED,
    USER_ERROR,
    USER_STOP,
    BudgetState,
    Episode,
    ModelUser,
    ScriptedUser,
    ToolEnv,
    ToolResult,
    run_episode,
    run_turn,
)
from evalkit.backends.base import Backend
from evalkit.cli import build_parser, run_config
from evalkit.records import AgentBudget, GenerationParams, Request, Response, ToolCall, Usage
from evalkit.registry import get_suite
from evalkit.runner import RunConfig, plan
from evalkit.suite import SolveContext


class Bank(ToolEnv):
    """Accounts with balances: a read tool and a write tool, with argument checking."""

    def __init__(self, **balances: int) -> None:
        self.balances = dict(balances)

    def tools(self) -> list[dict[str, Any]]:
        account = {"type": "string"}
        return [
            {
                "type": "function",
                "function": {
                    "name": "get_balance",
                    "description": "Balance of an account.",
                    "parameters": {"type": "object", "properties": {"account": account}},
                },
            },
            {
                "type": "function",
                "function": {
                    "name": "deposit",
                    "description": "Add an amount to an account.",
                    "parameters": {
                        "type": "object",
                        "properties": {"account": account, "amount": {"type": "integer"}},
                    },
                },
            },
        ]

    def call(self, call: ToolCall) -> ToolResult:
        args = call.arguments or {}
        account = args.get("account")
        if account not in self.balances:
            return ToolResult(f"Error: no account {account!r}", error=True)
        if call.name == "get_balance":
            return ToolResult(json.dumps({"balance": self.balances[account]}))
        if call.name == "deposit":
            if not isinstance(args.get("amount"), int):
                return ToolResult("Error: amount must be an integer", error=True)
            self.balances[account] += args["amount"]
            return ToolResult(json.dumps({"balance": self.balances[account]}))
        return ToolResult(f"Error: unknown tool {call.name!r}", error=True)

    def snapshot(self) -> dict[str, Any]:
        return dict(self.balances)


class Scripted(Backend):
    """Answers each request with `policy(request, n)` (n: requests so far) and keeps them."""

    def __init__(self, policy: Callable[[Request, int], Response]) -> None:
        self.policy = policy
        self.requests: list[Request] = []

    async def generate(self, request: Request) -> Response:
        self.requests.append(request)
        return self.policy(request, len(self.requests) - 1)

    def describe(self) -> dict[str, Any]:
        return {"backend": "scripted"}


def call(name: str, call_id: str = "", **arguments: Any) -> ToolCall:
    return ToolCall(call_id, name, arguments, raw=json.dumps(arguments))


def reply(text: str = "", *calls: ToolCall, finish: str | None = None) -> Response:
    return Response(
        text=text,
        finish_reason=finish or ("tool_calls" if calls else "stop"),
        usage=Usage(10, 5),
        latency_s=0.01,
        tool_calls=calls,
    )


def episode(
    backend: Backend,
    env: ToolEnv,
    budget: AgentBudget | None = None,
    user_backend: Backend | None = None,
    make_user: Callable[[SolveContext], Any] | None = None,
    **kwargs: Any,
) -> Episode:
    async def go() -> Episode:
        ctx = SolveContext(
            backend, asyncio.Semaphore(2), budget=budget or AgentBudget(), user_backend=user_backend
        )
        if make_user is not None:
            kwargs["user"] = make_user(ctx)
        messages = [
            {"role": "system", "content": "You are a bank agent."},
            {"role": "user", "content": "Deposit 5 into acct A."},
        ]
        return await run_episode(ctx, messages, env, GenerationParams(), "s1", 3, **kwargs)

    return asyncio.run(go())


def test_single_turn_executes_calls_and_keeps_the_transcript():
    def policy(request: Request, n: int) -> Response:
        if n == 0:
            return reply("", call("deposit", "c1", account="A", amount=5))
        return reply("Deposited; the balance is 15.")

    bank, backend = Bank(A=10), Scripted(policy)
    ep = episode(backend, bank)
    assert ep.termination == AGENT_STOP and not ep.failed and ep.error is None
    assert bank.balances == {"A": 15}
    assert [r.sample_index for r in backend.requests] == [3, 3]  # the trial index, every call
    assert backend.requests[0].tools == bank.tools()
    roles = [m["role"] for m in ep.transcript]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    assert ep.transcript[2]["tool_calls"][0]["function"] == {
        "name": "deposit",
        "arguments": '{"account": "A", "amount": 5}',
    }
    assert ep.transcript[3] == {
        "role": "tool",
        "tool_call_id": "c1",
        "content": '{"balance": 15}',
        "turn": 1,
        "name": "deposit",
        "error": False,
    }
    # The model saw the tool result in its second request; metadata never reaches it.
    assert backend.requests[1].messages[-1] == {
        "role": "tool",
        "tool_call_id": "c1",
        "content": '{"balance": 15}',
    }
    response = ep.to_response({"extra": 1})
    assert response.text == "Deposited; the balance is 15."
    assert response.usage == Usage(20, 10) and response.attempts == 2
    assert [c.name for c in response.tool_calls] == ["deposit"]
    assert response.outcome["termination"] == AGENT_STOP and response.outcome["extra"] == 1
    assert response.outcome["model_calls"] == 2 and response.outcome["tool_errors"] == 0


def test_scripted_turns_run_one_agent_turn_each():
    bank = Bank(A=0)
    backend = Scripted(lambda r, n: reply(f"turn {n}"))
    ep = episode(backend, bank, user_turns=["and B?", "thanks"])
    assert ep.termination == USER_STOP
    users = [m["content"] for m in ep.transcript if m["role"] == "user"]
    assert users == ["Deposit 5 into acct A.", "and B?", "thanks"]
    assert [m["content"] for m in ep.messages if m["role"] == "assistant"] == [
        "turn 0",
        "turn 1",
        "turn 2",
    ]


def test_simulated_user_acts_with_its_own_tools_unseen_by_the_agent():
    """A ModelUser over its own backend: its tool calls go to its env and the transcript, its
    words to the agent, its stop token ends the episode."""
    agent_bank, phone = Bank(A=0), Bank(P=1)

    def user_policy(request: Request, n: int) -> Response:
        assert request.messages[0] == {"role": "system", "content": "You are a customer."}
        if n == 0:
            assert request.messages[-1] == {"role": "user", "content": "How can I help?"}
            return reply("", call("get_balance", "u1", account="P"))
        if n == 1:
            return reply("My phone shows 1.")
        return reply("Thanks ###STOP###")

    def agent_policy(request: Request, n: int) -> Response:
        assert all(m.get("tool_call_id") != "u1" for m in request.messages)
        return reply("Anything else?")

    agent, user = Scripted(agent_policy), Scripted(user_policy)

    async def go() -> Episode:
        ctx = SolveContext(agent, asyncio.Semaphore(1), user_backend=user)
        sim = ModelUser(
            ctx, "You are a customer.", GenerationParams(), "s1", 0, env=phone,
            stop_tokens=("###STOP###",),
        )  # fmt: skip
        messages = [
            {"role": "system", "content": "You are a bank agent."},
            {"role": "assistant", "content": "How can I help?"},
        ]
        return await run_episode(ctx, messages, agent_bank, GenerationParams(), "s1", 0, user=sim)

    ep = asyncio.run(go())
    assert ep.termination == USER_STOP
    hidden = [m for m in ep.transcript if m.get("visible_to_agent") is False]
    assert [m["role"] for m in hidden] == ["user", "tool", "user"]
    assert hidden[0]["tool_calls"][0]["function"]["name"] == "get_balance"
    assert hidden[1]["content"] == '{"balance": 1}' and hidden[1]["requestor"] == "user"
    assert hidden[2]["content"] == "Thanks ###STOP###" and hidden[2]["stop"] is True
    said = [m["content"] for m in ep.messages if m["role"] == "user"]
    assert said == ["My phone shows 1."]
    assert len(user.requests) == 3 and len(agent.requests) == 1


def test_malformed_calls_count_as_errors_until_the_budget_ends_the_episode():
    bad = ToolCall("", "deposit", None, raw='{"account": "A", "amount": ', error="not JSON")
    backend = Scripted(lambda r, n: reply("", bad))
    ep = episode(backend, Bank(A=0), AgentBudget(max_errors=3))
    assert ep.termination == MAX_ERRORS and ep.failed and ep.tool_errors == 3
    tool_msgs = [m for m in ep.transcript if m["role"] == "tool"]
    assert all(m["error"] and "malformed" in m["content"] for m in tool_msgs)
    # The malformed call is kept as written, with a unique id its error result answers.
    first = next(m for m in ep.transcript if m.get("tool_calls"))
    assert first["tool_calls"][0]["function"]["arguments"] == bad.raw
    assert first["call_errors"] == ["not JSON"]
    assert tool_msgs[0]["tool_call_id"] == first["tool_calls"][0]["id"] != ""


def test_unknown_tools_and_bad_arguments_are_errors_the_model_sees():
    calls = [call("launch_rockets", "x", n=1), call("deposit", "y", account="A", amount="5")]
    backend = Scripted(lambda r, n: reply("", *calls))
    ep = episode(backend, Bank(A=0), AgentBudget(max_errors=4))
    assert ep.termination == MAX_ERRORS
    results = [m["content"] for m in ep.messages if m["role"] == "tool"]
    assert results[:2] == ["Error: no account None", "Error: amount must be an integer"]


def test_identical_calls_forever_are_a_loop_and_varying_ones_hit_max_steps():
    same = Scripted(lambda r, n: reply("", call("get_balance", "c", account="A")))
    ep = episode(same, Bank(A=0))
    assert ep.termination == REPEATED_CALLS and ep.failed
    assert len(same.requests) == 4

    varying = Scripted(lambda r, n: reply("", call("deposit", f"c{n}", account="A", amount=n)))
    ep = episode(varying, Bank(A=0), AgentBudget(max_steps=12))
    assert ep.termination == MAX_STEPS and ep.steps >= 12
    assert len(varying.requests) == 6  # each step adds an assistant and a tool message


def test_a_reply_cut_at_max_tokens_is_an_output_flood():
    flood = Scripted(lambda r, n: reply("ha" * 5000, finish="length"))
    ep = episode(flood, Bank(A=0))
    assert ep.termination == TRUNCATED and ep.failed
    assert ep.to_response({}).finish_reason == "length"


def test_a_hanging_model_is_stopped_by_the_episode_timeout():
    class Hangs(Backend):
        async def generate(self, request: Request) -> Response:
            await asyncio.sleep(30)
            return reply("late")

        def describe(self) -> dict[str, Any]:
            return {}

    ep = episode(Hangs(), Bank(A=0), AgentBudget(max_time_s=0.2))
    assert ep.termination == TIMEOUT and ep.failed and ep.elapsed_s < 5


def test_a_limit_of_none_is_no_limit():
    """BFCL's protocol has no message or tool-error limit: None must never end an episode."""
    state = BudgetState(AgentBudget(max_steps=None, max_errors=None, max_time_s=None))
    state.steps = state.errors = 10**6
    state.started -= 10**6
    assert state.remaining_s() is None and state.exhausted() is None
    # Each limit on its own, the others None.
    state = BudgetState(AgentBudget(max_steps=None, max_errors=2, max_time_s=None))
    state.steps = 10**6
    assert state.exhausted() is None
    state.errors = 2
    assert state.exhausted() == MAX_ERRORS
    state = BudgetState(AgentBudget(max_steps=5, max_errors=None, max_time_s=None))
    state.errors, state.steps = 10**6, 5
    assert state.exhausted() == MAX_STEPS
    state = BudgetState(AgentBudget(max_steps=None, max_errors=None, max_time_s=10.0))
    assert 0 < (state.remaining_s() or 0) <= 10.0 and state.exhausted() is None
    state.started -= 11
    assert state.exhausted() == TIMEOUT


def test_an_episode_without_limits_goes_on_past_taus_error_limit():
    """30 failing calls: tau2's default budget ends the episode, a budget of None does not."""

    def policy(request: Request, n: int) -> Response:
        if n < 30:
            return reply("", call("deposit", f"c{n}", account="A", amount=str(n)))
        return reply("Done.")

    ep = episode(Scripted(policy), Bank(A=0), AgentBudget())
    assert ep.termination == MAX_ERRORS and ep.tool_errors == 10
    unlimited = AgentBudget(max_steps=None, max_errors=None, max_time_s=None)
    ep = episode(Scripted(policy), Bank(A=0), unlimited)
    assert ep.termination == AGENT_STOP and not ep.failed
    assert ep.tool_errors == 30 and ep.steps > 60


def test_time_queued_for_a_concurrency_slot_is_not_the_episodes():
    """In a big run most episodes wait for one of few slots; that wait must not expire them."""
    backend = Scripted(lambda r, n: reply("Hello."))

    async def go() -> Episode:
        ctx = SolveContext(backend, asyncio.Semaphore(1), budget=AgentBudget(max_time_s=0.3))
        messages = [{"role": "user", "content": "Hi"}]
        async with ctx.slot:  # another episode holds the only slot for longer than the budget
            task = asyncio.create_task(
                run_episode(ctx, messages, Bank(A=0), GenerationParams(), "s1", 0)
            )
            await asyncio.sleep(0.6)
        return await task

    ep = asyncio.run(go())
    assert ep.termination == AGENT_STOP and ep.elapsed_s < 0.3


def test_run_turn_can_hand_requests_to_a_wrapper():
    """A suite may wrap the model call (e.g. a per-turn step limit over ctx.generate)."""
    backend = Scripted(lambda r, n: reply("", call("get_balance", f"c{n}", account="A")))
    seen: list[int] = []

    async def limited(request: Request) -> Response:
        seen.append(len(request.messages or []))
        if len(seen) > 2:
            return reply("Enough.")
        return await ctx.generate(request)

    ctx = SolveContext(backend, asyncio.Semaphore(1))
    state = BudgetState(ctx.budget)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Balance?"}]
    reason = asyncio.run(
        run_turn(ctx, messages, Bank(A=7), GenerationParams(), "s", 0, state, generate=limited)
    )
    assert reason == REPLIED and seen == [1, 3, 5] and len(backend.requests) == 2
    assert messages[-1] == {"role": "assistant", "content": "Enough."}


def test_a_fatal_backend_error_is_passed_on_for_the_runner():
    backend = Scripted(lambda r, n: Response(text="", error="HTTP 401: bad key"))
    ep = episode(backend, Bank(A=0))
    assert ep.termination == MODEL_ERROR and ep.error == "HTTP 401: bad key"
    response = ep.to_response({})
    assert response.error == "HTTP 401: bad key" and response.outcome["failed"] is True


def test_a_failing_user_model_ends_the_episode_with_its_error():
    agent = Scripted(lambda r, n: reply("How can I help?"))
    broken = Scripted(lambda r, n: Response(text="", error="HTTP 500: user model down"))

    def make_user(ctx: SolveContext) -> ModelUser:
        return ModelUser(ctx, "You are a customer.", GenerationParams(), "s1", 0)

    ep = episode(agent, Bank(A=0), user_backend=broken, make_user=make_user)
    assert ep.termination == USER_ERROR and ep.error == "HTTP 500: user model down"
    # A user model that floods is a recorded ending, not a backend error to retry.
    flooding = Scripted(lambda r, n: reply("la" * 100, finish="length"))
    ep = episode(agent, Bank(A=0), user_backend=flooding, make_user=make_user)
    assert ep.termination == USER_ERROR and ep.error is None and ep.failed
    assert ep.transcript[-1]["error"] == "user simulator stopped: truncated"


def test_scripted_user_replays_its_turns_then_ends():
    agent = Scripted(lambda r, n: reply(f"ok {n}"))
    ep = episode(agent, Bank(A=0), user=ScriptedUser(["first", "second"]))
    # The conversation already ends with a user message: the agent answers it first.
    said = [m["content"] for m in ep.messages if m["role"] == "user"]
    assert said == ["Deposit 5 into acct A.", "first", "second"]
    assert ep.termination == USER_STOP and len(agent.requests) == 3


# -- a run's budget: its suite's, with only the limits given as flags replaced ---------------


def run_budget(suite: str, *flags: str) -> AgentBudget | None:
    args = build_parser().parse_args(["run", "--suite", suite, "--model", "local", *flags])
    return run_config(args).budget


def test_a_run_takes_its_suites_budget_and_only_the_limits_given():
    # BFCL multi-turn has no message or tool-error limit (only its per-turn step limit).
    assert run_budget("bfcl-multi-turn-base") == AgentBudget(None, None, 1800.0)
    assert run_budget("tau2-retail") == AgentBudget(200, 10, 1800.0)  # tau2-bench's
    assert run_budget("bfcl-multi-turn-base", "--max-errors", "3") == AgentBudget(None, 3, 1800.0)
    assert run_budget("bfcl-multi-turn-base", "--episode-timeout", "60") == AgentBudget(
        None, None, 60.0
    )
    assert run_budget("tau2-retail", "--max-steps", "50") == AgentBudget(50, 10, 1800.0)
    assert run_budget("tau2-retail", "--max-errors", "4", "--max-steps", "30") == AgentBudget(
        30, 4, 1800.0
    )


def test_a_run_config_without_a_budget_runs_and_records_its_suites(tmp_path: Path):
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"id": "multi_turn_base_0", "response": "Done."}) + "\n")
    config = RunConfig(
        suite="bfcl-multi-turn-base",
        model=f"replay:{answers}",
        limit=1,
        results_dir=str(tmp_path / "results"),
        progress=False,
        cache=False,
    )
    assert config.budget is None
    p = plan(config)
    assert p.budget == get_suite("bfcl-multi-turn-base").default_budget
    recorded = json.loads(json.dumps(p.identity))["agent"]["budget"]
    assert recorded == {"max_steps": None, "max_errors": None, "max_time_s": 1800.0}
    given = AgentBudget(max_errors=5)
    assert plan(dataclasses.replace(config, budget=given)).budget == given

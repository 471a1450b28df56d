"""The one tool-use engine: a tool environment interface, one agent loop over the backends'
native tool calls, and its drivers (single-turn, scripted multi-turn, simulated user).

Every agentic suite (τ²-bench, BFCL) runs its episodes through `run_episode`, so budgets,
failure handling and the transcript format are the same everywhere. A model that misbehaves
(malformed or unknown calls, endless loops, output floods) ends its episode with a recorded
termination reason; nothing it does can raise out of the loop.
"""

from __future__ import annotations

import asyncio
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from evalkit.backends.base import Backend
from evalkit.records import (
    AgentBudget,
    GenerationParams,
    Request,
    Response,
    ToolCall,
    Usage,
)
from evalkit.suite import SolveContext

# Why a turn or an episode ended. REPLIED ends a turn, not an episode: the agent answered
# without tool calls and the conversation goes on (or ends, for a single-turn driver).
REPLIED = "agent_reply"
AGENT_STOP = "agent_stop"
USER_STOP = "user_stop"
MAX_STEPS = "max_steps"
MAX_ERRORS = "max_errors"
TIMEOUT = "timeout"
MODEL_ERROR = "model_error"
USER_ERROR = "user_error"
TRUNCATED = "truncated"  # a reply cut at max_tokens: an output flood, its calls unusable
REPEATED_CALLS = "repeated_calls"  # the same calls again and again: a loop
# Endings that are the agent's failure whatever the environment's state says.
FAILURES = frozenset(
    {MAX_STEPS, MAX_ERRORS, TIMEOUT, MODEL_ERROR, USER_ERROR, TRUNCATED, REPEATED_CALLS}
)
Generate = Callable[[Request], Awaitable[Response]]
# Consecutive identical tool-call replies that count as a loop (a legitimate agent re-reads
# state once or twice; four identical requests in a row never make progress).
MAX_IDENTICAL_REPLIES = 4


@dataclass(frozen=True)
class ToolResult:
    content: str  # what the model sees (JSON text or plain text)
    error: bool = False  # the call failed (unknown tool, bad arguments, tool raised)


class ToolEnv(ABC):
    """Tools as OpenAI JSON schemas, executed against the environment's state."""

    @abstractmethod
    def tools(self) -> list[dict[str, Any]]: ...

    @abstractmethod
    def call(self, call: ToolCall) -> ToolResult:
        """Execute one well-formed call; never raises for a bad call (returns error=True)."""

    @abstractmethod
    def snapshot(self) -> dict[str, Any]:
        """JSON-able state for scoring and the record."""


class User(ABC):
    """The other side of the conversation."""

    @abstractmethod
    async def reply(self, messages: list[dict[str, Any]]) -> str | None:
        """The user's next message given the agent's view of the conversation; None ends it."""

    def side_messages(self) -> list[dict[str, Any]]:
        """Messages the user produced since the last call that the agent does not see (its own
        tool calls and their results, e.g. on its phone), for the transcript. Drained."""
        return []

    @property
    def waited_s(self) -> float:
        """Seconds spent so far waiting for a concurrency slot (not the episode's time)."""
        return 0.0


class UserError(Exception):
    """The simulated user could not answer; ends the episode. `backend` marks a failure of
    its backend (passed on as the episode's error, so the runner can stop or retry), as
    opposed to a user model that misbehaved (a recorded ending like any other)."""

    def __init__(self, message: str, backend: bool = False) -> None:
        super().__init__(message)
        self.backend = backend


@dataclass
class BudgetState:
    """Counters of one episode against its budget, and everything it produced so far."""

    budget: AgentBudget
    started: float = field(default_factory=time.monotonic)
    # Time queued for a concurrency slot: the run's doing, not the episode's, so the time
    # budget does not count it (episodes of a big run would otherwise expire in the queue).
    waited: float = 0.0
    steps: int = 0  # messages added to the conversation (agent, user, tool), as tau2 counts
    errors: int = 0  # tool calls that returned an error
    turn: int = 0  # agent turns started (one per user message)
    responses: list[Response] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    # Every message with its metadata (turn, latency, error, who saw it): never sent anywhere.
    transcript: list[dict[str, Any]] = field(default_factory=list)

    def elapsed(self) -> float:
        return time.monotonic() - self.started - self.waited

    def remaining_s(self) -> float | None:
        """Seconds left of the time budget; None without a time limit (asyncio.wait_for's
        timeout=None: wait as long as it takes)."""
        if self.budget.max_time_s is None:
            return None
        return self.budget.max_time_s - self.elapsed()

    def exhausted(self) -> str | None:
        """The limit the episode has reached, if any; a limit that is None never is."""
        remaining = self.remaining_s()
        if remaining is not None and remaining <= 0:
            return TIMEOUT
        if self.budget.max_steps is not None and self.steps >= self.budget.max_steps:
            return MAX_STEPS
        if self.budget.max_errors is not None and self.errors >= self.budget.max_errors:
            return MAX_ERRORS
        return None

    def add(self, messages: list[dict[str, Any]], message: dict[str, Any], **meta: Any) -> None:
        """Append to the conversation the agent sees, and to the transcript."""
        messages.append(message)
        self.record(message, **meta)

    def record(self, message: dict[str, Any], **meta: Any) -> None:
        """Append to the transcript only (messages the agent does not see)."""
        self.steps += message.get("role") != "system"
        self.transcript.append({**message, "turn": self.turn, **meta})


@dataclass
class Episode:
    messages: list[dict[str, Any]]
    termination: str
    responses: list[Response]
    tool_calls: list[ToolCall]
    error: str | None = None
    transcript: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    tool_errors: int = 0
    elapsed_s: float = 0.0

    @property
    def failed(self) -> bool:
        return self.termination in FAILURES

    def last_text(self) -> str:
        return next((r.text for r in reversed(self.responses) if r.text), "")

    def to_response(self, outcome: dict[str, Any]) -> Response:
        """The final Response for the runner: summed usage, every call, the whole transcript;
        `outcome` (what the suite's scorer needs) gets the episode's own facts added."""
        last = self.responses[-1] if self.responses else None
        return Response(
            text=self.last_text(),
            finish_reason=last.finish_reason if last else None,
            usage=Usage(
                prompt_tokens=sum(r.usage.prompt_tokens for r in self.responses),
                completion_tokens=sum(r.usage.completion_tokens for r in self.responses),
            ),
            latency_s=sum(r.latency_s for r in self.responses),
            attempts=sum(r.attempts for r in self.responses),
            model=last.model if last else None,
            error=self.error,
            tool_calls=tuple(self.tool_calls),
            tool_call_source=next(
                (r.tool_call_source for r in self.responses if r.tool_call_source), None
            ),
            cached=bool(self.responses) and all(r.cached for r in self.responses),
            transcript=tuple(self.transcript),
            outcome={
                "termination": self.termination,
                "failed": self.failed,
                "steps": self.steps,
                "tool_errors": self.tool_errors,
                "model_calls": len(self.responses),
                "elapsed_s": round(self.elapsed_s, 3),
                **outcome,
            },
        )


def assistant_message(response: Response, calls: Sequence[ToolCall]) -> dict[str, Any]:
    """The model's reply in OpenAI chat format; a malformed call keeps what the model wrote."""
    # OpenAI accepts a null content only beside tool calls.
    message: dict[str, Any] = {"role": "assistant", "content": response.text or None}
    if not calls:
        message["content"] = response.text
    if calls:
        message["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {
                    "name": c.name,
                    "arguments": c.raw if c.arguments is None else json.dumps(c.arguments),
                },
            }
            for c in calls
        ]
    return message


def _with_ids(calls: Sequence[ToolCall], step: int) -> list[ToolCall]:
    """Tool results must answer a call id: give calls without one (some parsers) a unique id."""
    return [c if c.id else replace(c, id=f"call_{step}_{i}") for i, c in enumerate(calls)]


def _signature(response: Response) -> str:
    return json.dumps(
        [response.text, [(c.name, c.arguments, c.raw) for c in response.tool_calls]],
        sort_keys=True,
        default=str,
    )


def execute_call(env: ToolEnv, call: ToolCall) -> ToolResult:
    """One call against `env`; a malformed call or an env that breaks its contract (raises)
    becomes an error result the model sees, never an exception."""
    if call.error is not None or call.arguments is None:
        return ToolResult(f"Error: malformed tool call: {call.error or 'no arguments'}", True)
    try:
        return env.call(call)
    except Exception as exc:  # the env's contract says never raise; a bug there must not crash
        return ToolResult(f"Error: {type(exc).__name__}: {exc}", True)


async def run_turn(
    ctx: SolveContext,
    messages: list[dict[str, Any]],
    env: ToolEnv,
    params: GenerationParams,
    sample_id: str,
    sample_index: int,
    state: BudgetState,
    backend: Backend | None = None,
    generate: Generate | None = None,
) -> str:
    """The model replies; its tool calls are executed against `env` and the results appended;
    repeat until it answers without tool calls (REPLIED) or a budget ends the episode.
    `backend` replaces the model under test (e.g. a simulated user's); each call holds one of
    the run's concurrency slots (`ctx.slot`), as `ctx.generate` does, and the time queued for
    it is not the episode's. `generate` instead hands each request to a callable that takes
    the slot itself (e.g. a wrapper of `ctx.generate`): its queueing time then counts."""
    backend = backend or ctx.backend

    async def ask(request: Request) -> Response:
        if generate is not None:
            return await asyncio.wait_for(generate(request), timeout=state.remaining_s())
        queued = time.monotonic()
        async with ctx.slot:
            state.waited += time.monotonic() - queued
            return await asyncio.wait_for(backend.generate(request), timeout=state.remaining_s())

    tools = env.tools()
    identical = 0
    previous: str | None = None
    while True:
        if reason := state.exhausted():
            return reason
        request = Request(
            sample_id, sample_index, params, messages=list(messages), tools=tools or None
        )
        try:
            response = await ask(request)
        except TimeoutError:
            return TIMEOUT
        state.responses.append(response)
        if response.error is not None:
            state.record(
                {"role": "assistant", "content": None}, error=response.error, model_error=True
            )
            return MODEL_ERROR
        calls = _with_ids(response.tool_calls, state.steps)
        state.tool_calls.extend(calls)
        state.add(
            messages,
            assistant_message(response, calls),
            latency_s=round(response.latency_s, 4),
            finish_reason=response.finish_reason,
            usage={
                "prompt_tokens": response.usage.prompt_tokens,
                "completion_tokens": response.usage.completion_tokens,
            },
            # Per call, aligned with "tool_calls": why it is malformed, or None.
            **({"call_errors": [c.error for c in calls]} if calls else {}),
        )
        if response.finish_reason == "length":
            return TRUNCATED
        if not calls:
            return REPLIED
        signature = _signature(response)
        identical = identical + 1 if signature == previous else 1
        previous = signature
        for call in calls:
            result = execute_call(env, call)
            state.errors += result.error
            state.add(
                messages,
                {"role": "tool", "tool_call_id": call.id, "content": result.content},
                name=call.name,
                error=result.error,
            )
        if identical >= MAX_IDENTICAL_REPLIES:
            return REPEATED_CALLS


async def run_episode(
    ctx: SolveContext,
    messages: list[dict[str, Any]],
    env: ToolEnv,
    params: GenerationParams,
    sample_id: str,
    sample_index: int,
    user: User | None = None,
    user_turns: Sequence[str] | None = None,
    stop_token: str | None = None,
) -> Episode:
    """Drive one conversation. Drivers: single-turn (no user, no turns: one run_turn on
    `messages`), scripted multi-turn (`user_turns` from the data, one run_turn after each, and
    first one for a user message that ends `messages`) and simulated user (`user.reply` after
    each agent turn until it returns None). `stop_token` in
    an agent reply ends the episode (tau2-bench's ###STOP###)."""
    state = BudgetState(ctx.budget)
    for m in messages:
        state.record(m)
    termination = await _drive(
        ctx, messages, env, params, sample_id, sample_index, state, user, user_turns, stop_token
    )
    error = None
    if termination == MODEL_ERROR:
        error = state.responses[-1].error
    elif termination == USER_ERROR and state.transcript[-1].get("backend_error"):
        error = state.transcript[-1].get("error")
    return Episode(
        messages=messages,
        termination=termination,
        responses=state.responses,
        tool_calls=state.tool_calls,
        error=error,
        transcript=state.transcript,
        steps=state.steps,
        tool_errors=state.errors,
        elapsed_s=state.elapsed(),
    )


async def _drive(
    ctx: SolveContext,
    messages: list[dict[str, Any]],
    env: ToolEnv,
    params: GenerationParams,
    sample_id: str,
    sample_index: int,
    state: BudgetState,
    user: User | None,
    user_turns: Sequence[str] | None,
    stop_token: str | None,
) -> str:
    async def agent_turn() -> str:
        state.turn += 1
        reason = await run_turn(ctx, messages, env, params, sample_id, sample_index, state)
        if reason == REPLIED and stop_token and stop_token in (messages[-1].get("content") or ""):
            return AGENT_STOP
        return reason

    if user is None and user_turns is None:
        reason = await agent_turn()
        return AGENT_STOP if reason == REPLIED else reason
    if user_turns is not None:
        if messages and messages[-1].get("role") == "user":  # answer the opening first
            reason = await agent_turn()
            if reason != REPLIED:
                return reason
        for text in user_turns:
            if reason := state.exhausted():
                return reason
            state.add(messages, {"role": "user", "content": text})
            reason = await agent_turn()
            if reason != REPLIED:
                return reason
        return USER_STOP
    assert user is not None
    while True:
        if not messages or messages[-1].get("role") != "user":
            if reason := state.exhausted():
                return reason
            # No wait_for here: a simulated user's calls queue for slots like the agent's, and
            # its own budget and its backend's request timeout bound it.
            waited = user.waited_s
            try:
                text = await user.reply(messages)
            except UserError as exc:
                for m in user.side_messages():  # what it did before failing, then the failure
                    state.record(m, visible_to_agent=False)
                state.record(
                    {"role": "user", "content": None},
                    error=str(exc),
                    user_error=True,
                    backend_error=exc.backend,
                )
                return USER_ERROR
            finally:
                state.waited += user.waited_s - waited
                for m in user.side_messages():
                    state.record(m, visible_to_agent=False)
            if text is None:
                return USER_STOP
            state.add(messages, {"role": "user", "content": text})
        reason = await agent_turn()
        if reason != REPLIED:
            return reason


class ScriptedUser(User):
    """Replays a fixed list of user messages, whatever the agent says, then ends."""

    def __init__(self, turns: Sequence[str]) -> None:
        self.turns = list(turns)
        self.position = 0

    async def reply(self, messages: list[dict[str, Any]]) -> str | None:
        if self.position >= len(self.turns):
            return None
        self.position += 1
        return self.turns[self.position - 1]


class ModelUser(User):
    """A simulated user: another model, with its own instructions, that sees the agent's
    messages as the user side of its conversation and answers as the customer. With `env`
    (the user's own tools, e.g. a phone) it may call tools before answering; those calls and
    results reach the transcript through `side_messages`, never the agent. A reply containing
    one of `stop_tokens` ends the conversation."""

    def __init__(
        self,
        ctx: SolveContext,
        system_prompt: str,
        params: GenerationParams,
        sample_id: str,
        sample_index: int,
        env: ToolEnv | None = None,
        stop_tokens: Sequence[str] = (),
    ) -> None:
        if ctx.user_backend is None:
            raise ValueError("ModelUser needs ctx.user_backend")
        self.ctx = ctx
        self.backend = ctx.user_backend
        self.params = params
        self.sample_id = sample_id
        self.sample_index = sample_index
        self.env = env or _NoTools()
        self.stop_tokens = tuple(stop_tokens)
        self.view: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}]
        self.seen = 0  # agent-view messages already mirrored into `view`
        self.state = BudgetState(ctx.budget)
        self._pending: list[dict[str, Any]] = []

    @property
    def waited_s(self) -> float:
        return self.state.waited

    async def reply(self, messages: list[dict[str, Any]]) -> str | None:
        for m in messages[self.seen :]:
            # The agent's words are what the user hears; its tool traffic is invisible.
            if m.get("role") == "assistant" and m.get("content"):
                self.view.append({"role": "user", "content": m["content"]})
        self.seen = len(messages)
        start = len(self.view)
        recorded = len(self.state.transcript)  # the same messages, with their metadata
        self.state.turn += 1
        reason = await run_turn(
            self.ctx,
            self.view,
            self.env,
            self.params,
            self.sample_id,
            self.sample_index,
            self.state,
            backend=self.backend,
        )
        produced = self.view[start:]
        own = self.state.transcript[recorded:]
        for m in own[:-1] if reason == REPLIED else own:
            self._pending.append(_as_user_side(m))
        if reason == MODEL_ERROR:
            raise UserError(self.state.responses[-1].error or "user model failed", backend=True)
        if reason != REPLIED:
            raise UserError(f"user simulator stopped: {reason}")
        text = produced[-1].get("content") or ""
        if any(token in text for token in self.stop_tokens):
            self._pending.append({"role": "user", "content": text, "stop": True})
            return None
        return text

    def side_messages(self) -> list[dict[str, Any]]:
        out, self._pending = self._pending, []
        return out


def _as_user_side(message: dict[str, Any]) -> dict[str, Any]:
    """A message of the user's own conversation as it appears in the episode's transcript."""
    if message.get("role") == "assistant":
        return {**message, "role": "user", "requestor": "user"}
    return {**message, "requestor": "user"}


class _NoTools(ToolEnv):
    def tools(self) -> list[dict[str, Any]]:
        return []

    def call(self, call: ToolCall) -> ToolResult:
        return ToolResult(f"Error: no tool named {call.name!r}", error=True)

    def snapshot(self) -> dict[str, Any]:
        return {}

"""Records that cross module boundaries: suite -> runner -> backend -> store.

Plain frozen dataclasses so that every field that reaches `samples.jsonl` is explicit and typed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Sample:
    """One benchmark item. `id` is the suite's stable id (see each suite's docstring)."""

    id: str
    data: dict[str, Any]
    target: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerationParams:
    """Decoding settings; part of a run's identity and provenance."""

    temperature: float = 0.0
    top_p: float | None = None
    max_tokens: int = 2048
    seed: int = 1234

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Request:
    """What a backend must answer: a chat conversation or a raw completion prompt."""

    sample_id: str
    sample_index: int
    params: GenerationParams
    # OpenAI chat format; assistant turns may carry "tool_calls", tool turns "tool_call_id".
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    stop: tuple[str, ...] = ()
    # OpenAI-style tool schemas ({"type": "function", "function": {name, description, parameters}}).
    tools: list[dict[str, Any]] | None = None

    @property
    def kind(self) -> str:
        return "chat" if self.messages is not None else "completion"

    def with_system_prompt(self, system_prompt: str | None) -> Request:
        """This request with `system_prompt` as its first message (chat only: a raw completion
        prompt has no roles)."""
        if not system_prompt or self.messages is None:
            return self
        return replace(
            self, messages=[{"role": "system", "content": system_prompt}, *self.messages]
        )

    def sampling(self) -> dict[str, Any]:
        """Decoding parameters in the vocabulary the OpenAI API and vLLM share."""
        out: dict[str, Any] = {
            "max_tokens": self.params.max_tokens,
            "temperature": self.params.temperature,
            "seed": self.seed,
        }
        if self.params.top_p is not None:
            out["top_p"] = self.params.top_p
        if self.stop:
            out["stop"] = list(self.stop)
        return out

    @property
    def seed(self) -> int:
        """Per-request seed: distinct samples of one problem must differ, re-runs must not."""
        return (self.params.seed + 1_000_003 * self.sample_index) % (2**31)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class ToolCall:
    """A tool call the model made. A malformed one is kept, with `error` set, never dropped:
    `arguments` is then None and `raw` holds what the model wrote."""

    id: str
    name: str
    arguments: dict[str, Any] | None
    raw: str = ""
    error: str | None = None


@dataclass(frozen=True)
class Response:
    """A backend's answer. `error` is set, and `text` empty, when no answer could be had."""

    text: str
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    attempts: int = 1
    model: str | None = None
    error: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    # Where `tool_calls` came from: "native" (the server's `message.tool_calls`),
    # "parsed:<family>" (markup in the text, see evalkit.tool_parsers), or None (no calls).
    tool_call_source: str | None = None
    # Answered from the response cache (evalkit.cache): no request was made, `attempts` is 0.
    cached: bool = False
    # Multi-step episodes (agentic suites, see Suite.solve): the whole conversation in OpenAI
    # chat format, tool calls and tool results included, kept in the sample's record; and what
    # the episode's environment reported at its end (termination reason, final state, reward
    # inputs), which the suite's scorer reads.
    transcript: tuple[dict[str, Any], ...] = ()
    outcome: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentBudget:
    """Limits on one agentic episode; hitting one ends the episode, recorded, as a failure.
    None: no such limit. The defaults are tau2-bench's; a suite whose benchmark counts
    differently sets its own (Suite.default_budget)."""

    max_steps: int | None = 200  # messages in the episode (agent, user, tool), tau2-bench's
    max_errors: int | None = 10  # tool calls that returned an error (tau2-bench's default)
    max_time_s: float | None = 1800.0  # wall time of the episode

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Score:
    """A suite's verdict on one response."""

    extracted: str | None
    correct: bool
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SampleRecord:
    """One line of `samples.jsonl`."""

    id: str
    sample_index: int
    prompt: Any
    response: str
    extracted: str | None
    correct: bool
    target: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    attempts: int
    error: str | None
    metadata: dict[str, Any]
    details: dict[str, Any]
    # Parsed tool calls of the response (ToolCall as dicts) and, for agentic episodes, the
    # transcript (Response.transcript); None when there were none. Defaults keep old files readable.
    tool_calls: list[dict[str, Any]] | None = None
    transcript: list[dict[str, Any]] | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.id, self.sample_index)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SampleRecord:
        return cls(**d)

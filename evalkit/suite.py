"""What a benchmark is: a dataset, a prompt per mode and a scorer (inspect_ai's separation).

A suite module under `suites/` subclasses `Suite`, fills in the class attributes and the
few methods below, and registers an instance with `evalkit.registry.register_suite`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from evalkit import data, stats
from evalkit.records import (
    AgentBudget,
    GenerationParams,
    Request,
    Response,
    Sample,
    SampleRecord,
    Score,
)

if TYPE_CHECKING:
    from evalkit.backends.base import Backend


@dataclass
class SolveContext:
    """What the runner lends a suite to answer one sample: the model under test (every call
    through `generate`, which holds a concurrency slot), and for agentic suites the user
    simulator and the episode budget."""

    backend: Backend
    slot: asyncio.Semaphore
    system_prompt: str | None = None
    budget: AgentBudget = field(default_factory=AgentBudget)
    # The --user-model spec as given (or the suite's default), and its started backend; None
    # for specs the suite handles itself (e.g. "scripted").
    user_model: str | None = None
    user_backend: Backend | None = None

    async def generate(self, request: Request) -> Response:
        async with self.slot:
            return await self.backend.generate(request)


class Suite(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    modes: ClassVar[tuple[str, ...]]
    default_mode: ClassVar[str]
    # How sample ids are formed; shown by `evalkit list suites` and in the README.
    id_doc: ClassVar[str]
    # Where the data lives and which fields define it.
    data_relpath: ClassVar[str]
    hub: ClassVar[data.HubSource]
    fingerprint_fields: ClassVar[tuple[str, ...]]
    # sha256 of the official records (see evalkit.data.fingerprint); a mismatch is refused.
    expected_fingerprint: ClassVar[str]
    # Metadata keys to break results down by (e.g. subject, level).
    breakdown_keys: ClassVar[tuple[str, ...]] = ()
    # Samples (trials) per item when neither a flag nor a protocol sets it.
    default_samples: ClassVar[int] = 1
    # Agentic suites run multi-step episodes in `solve`: their budget and user model enter
    # the run's identity. `default_user_model` is the simulated user's spec (None: no user).
    agentic: ClassVar[bool] = False
    default_user_model: ClassVar[str | None] = None
    # The episode budget when no --max-steps/--max-errors/--episode-timeout is given (each
    # flag replaces its field only). AgentBudget()'s limits are tau2-bench's own defaults
    # (200 messages, 10 tool errors), so τ² runs follow its protocol; a suite whose benchmark
    # has other (or no) limits sets its own, since a limit the benchmark lacks would end
    # episodes it continues.
    default_budget: ClassVar[AgentBudget] = AgentBudget()
    # User-model specs the suite implements itself, without a backend (e.g. "scripted").
    builtin_user_models: ClassVar[tuple[str, ...]] = ()

    # -- data -----------------------------------------------------------------------------
    def load_records(self, location: data.DataLocation) -> list[dict[str, Any]]:
        return data.load_records(location, self.data_relpath, self.hub)

    @abstractmethod
    def sample_id(self, index: int, record: dict[str, Any]) -> str: ...

    @abstractmethod
    def to_sample(self, index: int, record: dict[str, Any]) -> Sample: ...

    def describe_data(self, location: data.DataLocation) -> dict[str, Any]:
        """Where the records came from, for provenance (suites whose data ships inside a
        package override this)."""
        return location.describe(self.data_relpath, self.hub)

    def fingerprint(self, records: Sequence[dict[str, Any]]) -> str:
        return data.fingerprint(records, self.sample_id, self.fingerprint_fields)

    # -- prompting ------------------------------------------------------------------------
    @abstractmethod
    def templates(self, mode: str) -> dict[str, Any]:
        """Every fixed text that shapes the prompt in this mode (hashed into provenance)."""

    def template_hash(self, mode: str) -> str:
        body = json.dumps(self.templates(mode), sort_keys=True, ensure_ascii=False)
        return "sha256:" + hashlib.sha256(body.encode()).hexdigest()

    @abstractmethod
    def build_request(
        self, sample: Sample, mode: str, params: GenerationParams, sample_index: int
    ) -> Request: ...

    async def solve(
        self,
        sample: Sample,
        mode: str,
        params: GenerationParams,
        sample_index: int,
        ctx: SolveContext,
    ) -> tuple[Request, Response]:
        """Answer one sample: one request by default; agentic suites override this with an
        episode (see evalkit.agent) and return its first request and final response."""
        request = self.build_request(sample, mode, params, sample_index)
        request = request.with_system_prompt(ctx.system_prompt)
        return request, await ctx.generate(request)

    # -- scoring --------------------------------------------------------------------------
    @abstractmethod
    def score_batch(self, items: Sequence[tuple[Sample, Response]], mode: str) -> list[Score]:
        """Score finished responses; batched so that expensive graders can run in parallel."""

    def metrics(self, records: Sequence[SampleRecord], samples_per_item: int) -> dict[str, Any]:
        return {"accuracy": stats.clustered_mean(records)}

    def breakdowns(self, records: Sequence[SampleRecord]) -> dict[str, Any]:
        return {key: stats.breakdown(records, key) for key in self.breakdown_keys}

    def provenance(self) -> dict[str, Any]:
        """Extra facts a suite's scores depend on (e.g. the sandbox's isolation layers)."""
        return {}

"""Schedules one run: validate everything, then generate concurrently, score in batches and
append each finished sample to the store, so a crash loses at most the batch in flight.

Everything that can be wrong with the input (suite, mode, model, data, replay file) is checked
before the run directory is created: bad input never leaves anything under `results/`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from evalkit import cache, data, protocols, provenance
from evalkit.backends.base import Backend
from evalkit.errors import EvalkitError
from evalkit.models import ModelOptions, build_backend, parse_spec
from evalkit.records import (
    SCHEMA_VERSION,
    AgentBudget,
    GenerationParams,
    Request,
    Response,
    Sample,
    SampleRecord,
)
from evalkit.registry import get_suite
from evalkit.store import Run, RunWriter, Store, new_run_id, results_root
from evalkit.suite import SolveContext, Suite

SCORE_BATCH = 256
FATAL_ERRORS = ("HTTP 401", "HTTP 403", "HTTP 404")


@dataclass(frozen=True)
class RunConfig:
    suite: str
    model: str
    mode: str | None = None
    params: GenerationParams = field(default_factory=GenerationParams)
    samples: int = 1
    limit: int | None = None
    shard: tuple[int, int] | None = None
    data_dir: str | None = None
    results_dir: str | None = None
    allow_data_mismatch: bool = False
    model_options: ModelOptions = field(default_factory=ModelOptions)
    progress: bool = True
    # Protocol (evalkit.protocols) the settings came from, and the flags that overrode it
    # (setting -> {"protocol", "used"}); both enter the config identity.
    protocol: str | None = None
    protocol_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Sent as a system message first in every chat request, so suites need not know of it.
    system_prompt: str | None = None
    # Response cache (evalkit.cache): on unless --no-cache; None means $EVALKIT_CACHE_DIR.
    cache: bool = True
    cache_dir: str | None = None
    # Agentic suites only (Suite.agentic): the simulated user (None: the suite's default) and
    # the per-episode budget (None: the suite's Suite.default_budget); both, as used, enter
    # the identity of such runs.
    user_model: str | None = None
    budget: AgentBudget | None = None


@dataclass
class Plan:
    """A validated run, ready to execute."""

    suite: Suite
    mode: str
    samples: list[Sample]
    identity: dict[str, Any]
    config_hash: str
    dataset: dict[str, Any]
    backend: Backend
    user_model: str | None = None
    user_backend: Backend | None = None
    # The episode budget used: RunConfig.budget, or the suite's default.
    budget: AgentBudget = field(default_factory=AgentBudget)


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise EvalkitError(f"bad --shard {text!r}: expected i/n, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise EvalkitError(f"bad --shard {text!r}: need 0 <= i < n")
    return i, n


def select_shard(samples: Sequence[Sample], shard: tuple[int, int] | None) -> list[Sample]:
    """Round-robin over the suite's order: deterministic, balanced, and the shards' union is
    exactly the unsharded list."""
    if shard is None:
        return list(samples)
    i, n = shard
    return list(samples[i::n])


def config_hash(identity: dict[str, Any]) -> str:
    """What makes two runs the same measurement (and so resumable into one another)."""
    body = json.dumps(identity, sort_keys=True).encode()
    return "sha256:" + hashlib.sha256(body).hexdigest()


def plan(config: RunConfig) -> Plan:
    suite = get_suite(config.suite)
    mode = config.mode or suite.default_mode
    if mode not in suite.modes:
        raise EvalkitError(f"suite {suite.name} has no mode {mode!r}: {', '.join(suite.modes)}")
    if config.limit is not None and config.limit < 1:
        raise EvalkitError(f"bad --limit {config.limit}: must be a positive integer")
    if config.samples < 1:
        raise EvalkitError(f"bad --samples {config.samples}: must be a positive integer")
    parse_spec(config.model)  # fail on an unknown model before loading any data
    if config.protocol is not None:
        protocols.get_protocol(config.protocol)

    location = data.DataLocation.resolve(config.data_dir)
    records = suite.load_records(location)
    fp = suite.fingerprint(records)
    mismatch = fp != suite.expected_fingerprint
    if mismatch and not config.allow_data_mismatch:
        where = suite.describe_data(location)
        raise EvalkitError(
            f"dataset fingerprint mismatch for {suite.name} ({where.get('path') or where}): "
            f"expected {suite.expected_fingerprint}, got {fp}; "
            "pass --allow-data-mismatch to run anyway (recorded in the run)"
        )
    samples = [suite.to_sample(i, r) for i, r in enumerate(records)]
    if config.limit is not None:
        samples = samples[: config.limit]
    samples = select_shard(samples, config.shard)

    backend = build_backend(config.model, config.model_options)
    backend = cache.wrap(backend, config.cache, config.cache_dir)
    backend.validate([s.id for s in samples])
    user_model, user_backend = _user_model(suite, config)
    dataset = {
        **suite.describe_data(location),
        "fingerprint": fp,
        "expected_fingerprint": suite.expected_fingerprint,
        "mismatch_allowed": mismatch,
        "records": len(records),
    }
    identity = {
        "suite": suite.name,
        "mode": mode,
        "model": config.model,
        "generation": config.params.to_dict(),
        "samples_per_item": config.samples,
        "limit": config.limit,
        "shard": list(config.shard) if config.shard else None,
        "dataset_fingerprint": fp,
        "prompt_template_hash": suite.template_hash(mode),
    }
    # Only when set, so that runs without them keep their config hash (and stay resumable).
    if config.protocol is not None:
        identity["protocol"] = {"name": config.protocol, "overrides": config.protocol_overrides}
    if config.system_prompt:
        identity["system_prompt"] = config.system_prompt
    # Engine settings that change the numbers (not the layout, which should not).
    opts = config.model_options
    engine = {
        k: v
        for k, v in (("dtype", opts.dtype), ("revision", opts.revision))
        if v not in (None, "auto")
    }
    if engine:
        identity["engine"] = engine
    budget = config.budget if config.budget is not None else suite.default_budget
    if suite.agentic:
        identity["agent"] = {"budget": budget.to_dict(), "user_model": user_model}
    return Plan(
        suite=suite,
        mode=mode,
        samples=samples,
        identity=identity,
        config_hash=config_hash(identity),
        dataset=dataset,
        backend=backend,
        user_model=user_model,
        user_backend=user_backend,
        budget=budget,
    )


def _user_model(suite: Suite, config: RunConfig) -> tuple[str | None, Backend | None]:
    """The simulated user's spec and, unless the suite implements it, its backend."""
    if not suite.agentic:
        if config.user_model is not None:
            raise EvalkitError(f"suite {suite.name} has no simulated user: drop --user-model")
        return None, None
    spec = config.user_model or suite.default_user_model
    if spec is None or spec in suite.builtin_user_models:
        return spec, None
    parse_spec(spec)
    # The user simulator shares the client settings but never the engine flags of the model
    # under test; its answers are cached like any deterministic request.
    opts = config.model_options
    user_options = ModelOptions(
        base_url=None,
        api_key_env=None,
        timeout_s=opts.timeout_s,
        max_attempts=opts.max_attempts,
        concurrency=opts.concurrency,
    )
    try:
        backend = build_backend(spec, user_options)
    except EvalkitError as exc:
        # Name the simulated user: "no API key for gpt-4.1" alone reads as the model under test.
        builtin = ", ".join(f"'{b}'" for b in suite.builtin_user_models)
        offline = f" (or {builtin}, no model)" if builtin else ""
        raise EvalkitError(
            f"simulated user {spec!r}: {exc}; choose another with --user-model{offline}"
        ) from None
    return spec, cache.wrap(backend, config.cache, config.cache_dir)


def execute(config: RunConfig) -> Run:
    p = plan(config)
    store = Store(results_root(config.results_dir))
    run = store.find_unfinished(p.config_hash)
    resumed = run is not None
    if run is None:
        run = store.create(
            new_run_id(p.suite.name, config.model),
            {
                "config_hash": p.config_hash,
                "identity": p.identity,
                "created_at": _now(),
                "dataset": p.dataset,
            },
        )
    writer = RunWriter(run)
    try:
        done = {r.key for r in run.samples() if r.error is None}
        todo = [(s, i) for s in p.samples for i in range(config.samples) if (s.id, i) not in done]
        if resumed:
            _log(f"resuming {run.run_id}: {len(done)} samples done, {len(todo)} to go")
        else:
            _log(f"run {run.run_id}: {len(todo)} samples")
        started = time.time()
        # Work for the end of the run (numpy for the statistics, git for provenance) is done
        # while requests are in flight, when this process is mostly waiting.
        threading.Thread(target=_prefetch, name="evalkit-prefetch", daemon=True).start()
        try:
            asyncio.run(_generate_and_score(p, config, todo, writer))
        except EvalkitError:
            if not resumed and not run.samples():
                writer.close()
                shutil.rmtree(run.path)  # nothing was measured: leave nothing behind
            raise
        records = _complete_records(run, p, config.samples)
        writer.finish(_summary(run, p, config, records, resumed, started))
    finally:
        writer.close()
    return run


async def _generate_and_score(
    p: Plan, config: RunConfig, todo: list[tuple[Sample, int]], writer: RunWriter
) -> None:
    from tqdm import tqdm

    queue: asyncio.Queue[tuple[Sample, int, Request, Response] | None] = asyncio.Queue()
    sem = asyncio.Semaphore(max(1, config.model_options.concurrency))
    bar = tqdm(
        total=len(todo),
        desc=f"{p.suite.name}",
        unit="sample",
        disable=not config.progress,
        file=sys.stderr,
        mininterval=0.5 if sys.stderr.isatty() else 30.0,
        dynamic_ncols=True,
    )

    ctx = SolveContext(
        backend=p.backend,
        slot=sem,
        system_prompt=config.system_prompt,
        budget=p.budget,
        user_model=p.user_model,
        user_backend=p.user_backend,
    )

    async def one(sample: Sample, index: int) -> None:
        request, response = await p.suite.solve(sample, p.mode, config.params, index, ctx)
        if response.error and response.error.startswith(FATAL_ERRORS):
            # A wrong key or an unknown model fails every sample alike: stop, don't record.
            raise EvalkitError(f"{config.model}: {response.error}")
        await queue.put((sample, index, request, response))

    async def scorer() -> None:
        while True:
            item = await queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < SCORE_BATCH and not queue.empty():
                nxt = queue.get_nowait()
                if nxt is None:
                    await queue.put(None)
                    break
                batch.append(nxt)
            # Scoring and the fsynced append both run off the event loop: a blocking fsync
            # (milliseconds) on the loop would stall every request in flight.
            await asyncio.to_thread(_score_and_append, p, batch, writer)
            bar.update(len(batch))

    try:
        await p.backend.start()
        if p.user_backend is not None:
            await p.user_backend.start()
        scoring = asyncio.create_task(scorer())
        tasks = [asyncio.create_task(one(s, i)) for s, i in todo]
        try:
            for t in asyncio.as_completed(tasks):
                await t
                if scoring.done():
                    scoring.result()  # surface a scorer failure at once
        finally:
            for t in tasks:
                t.cancel()
            await queue.put(None)
        await scoring
    finally:
        bar.close()
        await p.backend.close()
        if p.user_backend is not None:
            await p.user_backend.close()


def _score_and_append(
    p: Plan, batch: list[tuple[Sample, int, Request, Response]], writer: RunWriter
) -> None:
    scores = p.suite.score_batch([(s, r) for s, _, _, r in batch], p.mode)
    writer.append(
        [_record(s, i, req, resp, sc) for (s, i, req, resp), sc in zip(batch, scores, strict=True)]
    )


def _prefetch() -> None:
    import numpy  # noqa: F401

    provenance.git_state()  # cached


def _record(
    sample: Sample, index: int, request: Request, response: Response, score: Any
) -> SampleRecord:
    return SampleRecord(
        id=sample.id,
        sample_index=index,
        prompt=request.messages if request.messages is not None else request.prompt,
        response=response.text,
        extracted=score.extracted,
        correct=bool(score.correct) and response.error is None,
        target=sample.target,
        finish_reason=response.finish_reason,
        prompt_tokens=response.usage.prompt_tokens,
        completion_tokens=response.usage.completion_tokens,
        latency_s=round(response.latency_s, 4),
        attempts=response.attempts,
        error=response.error,
        metadata=sample.metadata,
        details={**score.details, "cached": True} if response.cached else score.details,
        tool_calls=[dataclasses.asdict(c) for c in response.tool_calls] or None,
        transcript=list(response.transcript) or None,
    )


def _complete_records(run: Run, p: Plan, n: int) -> list[SampleRecord]:
    by_key = {r.key: r for r in run.samples()}
    missing = [(s.id, i) for s in p.samples for i in range(n) if (s.id, i) not in by_key]
    if missing:
        raise EvalkitError(f"run {run.run_id} is missing {len(missing)} samples; re-run to resume")
    return [by_key[(s.id, i)] for s in p.samples for i in range(n)]


def summarize_records(
    suite: Suite, records: Sequence[SampleRecord], samples_per_item: int
) -> dict[str, Any]:
    """Metrics, breakdowns, counts and usage: everything in run.json computed from samples."""
    return {
        "metrics": suite.metrics(records, samples_per_item),
        "breakdowns": suite.breakdowns(records),
        "counts": {
            "items": len({r.id for r in records}),
            "samples": len(records),
            "correct": sum(r.correct for r in records),
            "errors": sum(r.error is not None for r in records),
            "truncated": sum(r.finish_reason == "length" for r in records),
        },
        "usage": {
            "prompt_tokens": sum(r.prompt_tokens for r in records),
            "completion_tokens": sum(r.completion_tokens for r in records),
            "attempts": sum(r.attempts for r in records),
        },
    }


def _summary(
    run: Run,
    p: Plan,
    config: RunConfig,
    records: list[SampleRecord],
    resumed: bool,
    started: float,
) -> dict[str, Any]:
    created = run.config()["created_at"]
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run.run_id,
        "status": "complete",
        "config_hash": p.config_hash,
        "config": {
            **p.identity,
            "concurrency": config.model_options.concurrency,
            "max_attempts": config.model_options.max_attempts,
            "request_timeout_s": config.model_options.timeout_s,
        },
        **summarize_records(p.suite, records, config.samples),
        "timings": {
            "created_at": created,
            "finished_at": _now(),
            "last_session_wall_s": round(time.time() - started, 3),
            "resumed": resumed,
            "sum_request_latency_s": round(sum(r.latency_s for r in records), 3),
        },
        "cache": cache.stats_of(p.backend, config.cache),  # this session's requests
        "provenance": {
            **provenance.collect(),
            "dataset": p.dataset,
            "prompt_template_hash": p.identity["prompt_template_hash"],
            "generation": p.identity["generation"],
            "model": p.backend.describe(),
            "protocol": protocols.describe_run(config.protocol, config.protocol_overrides),
            "system_prompt": config.system_prompt or None,
            "suite": p.suite.provenance(),
            "agent": (
                {
                    "budget": p.budget.to_dict(),
                    "user_model": p.user_model,
                    "user_backend": p.user_backend.describe() if p.user_backend else None,
                }
                if p.suite.agentic
                else None
            ),
        },
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _log(message: str) -> None:
    print(f"evalkit: {message}", file=sys.stderr)

"""Merge the finished shard runs of one configuration into one run.

The merged run has the unsharded configuration (same config hash as an unsharded run would
have) and, since metrics are computed from the samples alone, the same metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from evalkit.errors import EvalkitError
from evalkit.records import SCHEMA_VERSION
from evalkit.registry import get_suite
from evalkit.runner import config_hash, summarize_records
from evalkit.store import Run, RunWriter, Store, new_run_id


def merge_runs(store: Store, run_ids: Sequence[str]) -> Run:
    runs = [store.get(rid) for rid in dict.fromkeys(run_ids)]
    unfinished = [r.run_id for r in runs if not r.finished]
    if unfinished:
        raise EvalkitError(f"cannot merge unfinished runs: {', '.join(unfinished)}")
    identities = [r.config()["identity"] for r in runs]
    shards = [ident.get("shard") for ident in identities]
    if any(s is None for s in shards):
        raise EvalkitError("every run to merge must be a shard (run with --shard i/n)")
    base = {**identities[0], "shard": None}
    for run, ident in zip(runs, identities, strict=True):
        if {**ident, "shard": None} != base:
            raise EvalkitError(f"run {run.run_id} has a different configuration from the others")
    n = shards[0][1]
    indices = sorted(s[0] for s in shards)
    if any(s[1] != n for s in shards) or indices != list(range(n)):
        raise EvalkitError(f"shards do not cover 0..{n - 1} exactly once: got {indices} of {n}")

    suite = get_suite(base["suite"])
    records = [rec for run in runs for rec in run.samples()]
    summaries = [r.summary() for r in runs]
    first = summaries[0]
    merged_hash = config_hash(base)
    run = store.create(
        new_run_id(base["suite"], base["model"]),
        {
            "config_hash": merged_hash,
            "identity": base,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "dataset": runs[0].config()["dataset"],
            "merged_from": [r.run_id for r in runs],
        },
    )
    writer = RunWriter(run)
    try:
        writer.append(records)
        summary: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "run_id": run.run_id,
            "status": "complete",
            "config_hash": merged_hash,
            "config": {**first["config"], "shard": None},
            **summarize_records(suite, records, base["samples_per_item"]),
            "timings": {
                "created_at": min(s["timings"]["created_at"] for s in summaries),
                "finished_at": max(s["timings"]["finished_at"] for s in summaries),
                "sum_request_latency_s": round(
                    sum(s["timings"]["sum_request_latency_s"] for s in summaries), 3
                ),
            },
            "provenance": {
                **first["provenance"],
                "merged_from": [
                    {
                        "run_id": s["run_id"],
                        "shard": s["config"]["shard"],
                        "host": s["provenance"]["host"],
                    }
                    for s in summaries
                ],
            },
        }
        writer.finish(summary)
    finally:
        writer.close()
    return run

"""Scored samples that carry nothing but a verdict: what statistics, claims and verdicts read."""

from __future__ import annotations

from typing import Any

from evalkit.records import SampleRecord


def scored(
    pid: str, index: int, correct: bool, metadata: dict[str, Any] | None = None
) -> SampleRecord:
    return SampleRecord(
        id=pid,
        sample_index=index,
        prompt="",
        response="",
        extracted=None,
        correct=correct,
        target="",
        finish_reason="stop",
        prompt_tokens=0,
        completion_tokens=0,
        latency_s=0.0,
        attempts=1,
        error=None,
        metadata=metadata or {},
        details={},
    )

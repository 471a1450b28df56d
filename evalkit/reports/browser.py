"""The sample browser of a run page: what each sample's row shows and what it can be filtered by.

Rows are rendered server-side (the page must work from file://, where Chromium refuses
fetch()), so a 5000-sample run is one page; a few-shot prefix that every prompt shares is shown
once instead of 5000 times.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from evalkit.records import SampleRecord

SHARED_PREFIX_MIN_CHARS = 200  # shorter common prefixes are left in each prompt
FILTER_MAX_VALUES = 60  # metadata keys with more distinct values (ids, names) are not filters


@dataclass(frozen=True)
class SampleFilter:
    """A metadata key offered as a filter; `attr` is its data attribute on each row."""

    key: str
    attr: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class SampleRow:
    number: int
    record: SampleRecord
    verdict: str  # correct | incorrect | error
    prompt: str  # without the shared prefix
    attrs: dict[str, str]  # filter attribute -> value


@dataclass(frozen=True)
class SampleBrowser:
    rows: list[SampleRow]
    shared_prefix: str
    filters: list[SampleFilter]

    @property
    def counts(self) -> dict[str, int]:
        out = {"correct": 0, "incorrect": 0, "error": 0}
        for row in self.rows:
            out[row.verdict] += 1
        return out


def natural_key(record: SampleRecord) -> tuple[Any, ...]:
    """Suite order for numbered ids: `HumanEval/2` before `HumanEval/10`."""
    parts = re.split(r"(\d+)", record.id)
    return (*(int(p) if i % 2 else p for i, p in enumerate(parts)), record.sample_index)


def prompt_text(prompt: Any) -> str:
    """A chat prompt as `[role]` blocks, a completion prompt as it is."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        blocks = []
        for message in prompt:
            if not isinstance(message, dict):
                blocks.append(json.dumps(message, ensure_ascii=False))
                continue
            content = message.get("content")
            if not isinstance(content, str):
                content = json.dumps(content, ensure_ascii=False, indent=2)
            blocks.append(f"[{message.get('role', '?')}]\n{content}")
        return "\n\n".join(blocks)
    return json.dumps(prompt, ensure_ascii=False, indent=2)


def verdict(record: SampleRecord) -> str:
    if record.error is not None:
        return "error"
    return "correct" if record.correct else "incorrect"


def _shared_prefix(texts: Sequence[str]) -> str:
    if len(texts) < 2:
        return ""
    prefix = os.path.commonprefix(list(texts))  # noqa: RUF071 (characters, not paths)
    prefix = prefix[: prefix.rfind("\n") + 1]  # whole lines only
    return prefix if len(prefix) >= SHARED_PREFIX_MIN_CHARS else ""


def _filters(records: Sequence[SampleRecord]) -> list[SampleFilter]:
    values: dict[str, set[str]] = defaultdict(set)
    for r in records:
        for key, value in r.metadata.items():
            if isinstance(value, str | int | float | bool):
                values[key].add(str(value))
    out = []
    for key in sorted(values):
        if 1 < len(values[key]) <= FILTER_MAX_VALUES:
            attr = "data-m-" + (re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-") or "key")
            out.append(SampleFilter(key, attr, tuple(sorted(values[key]))))
    return out


def build_browser(records: Sequence[SampleRecord]) -> SampleBrowser:
    records = sorted(records, key=natural_key)
    texts = [prompt_text(r.prompt) for r in records]
    prefix = _shared_prefix(texts)
    filters = _filters(records)
    rows = [
        SampleRow(
            number=i + 1,
            record=r,
            verdict=verdict(r),
            prompt=text[len(prefix) :],
            attrs={f.attr: str(r.metadata[f.key]) for f in filters if f.key in r.metadata},
        )
        for i, (r, text) in enumerate(zip(records, texts, strict=True))
    ]
    return SampleBrowser(rows=rows, shared_prefix=prefix, filters=filters)

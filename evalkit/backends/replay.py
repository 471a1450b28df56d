"""Recorded responses: re-score saved generations and check gold answers.

File format: one JSON object per line, `{"id": <sample id>, "response": <text>}`; several lines
for one id are that problem's samples 0, 1, … in file order (for pass@k).
Tool calls: a line may add `"tool_calls": [{"name": ..., "arguments": {...}}, …]` (the reply's
native calls; `"response"` may then be ""), or hold `"steps": [{"response": ..., "tool_calls":
[…]}, …]` instead of `"response"`: an agentic episode's successive model replies, answered in
order to that sample's successive requests.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evalkit.backends.base import Backend
from evalkit.errors import EvalkitError
from evalkit.records import Request, Response, ToolCall

# One recorded model reply: its text and its tool calls.
Reply = tuple[str, tuple[ToolCall, ...]]
# One sample: a reply (given to every request, as before steps existed) or an episode's steps.
Recorded = Reply | list[Reply]


def _reply(row: Any, where: str) -> Reply:
    if not isinstance(row, dict) or not isinstance(row.get("response"), str):
        raise EvalkitError(f'{where}: expected {{"id": ..., "response": "<text>"}}')
    calls = row.get("tool_calls") or []
    if not isinstance(calls, list):
        raise EvalkitError(f"{where}: 'tool_calls' must be a list")
    parsed = []
    for i, call in enumerate(calls):
        args = call.get("arguments", {}) if isinstance(call, dict) else None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise EvalkitError(f"{where}: tool call {i} needs a 'name'")
        if not isinstance(args, dict):
            raise EvalkitError(f"{where}: tool call {i}: 'arguments' must be a JSON object")
        call_id = str(call.get("id") or f"call_{i}")
        parsed.append(ToolCall(call_id, call["name"], args, raw=json.dumps(args)))
    return row["response"], tuple(parsed)


def load_replay(path: Path) -> dict[str, list[Recorded]]:
    """Per sample id, its samples in file order."""
    if not path.is_file():
        raise EvalkitError(f"replay file not found: {path}")
    responses: dict[str, list[Recorded]] = defaultdict(list)
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvalkitError(f"{where}: not valid JSON ({exc.msg})") from None
            if isinstance(row, dict) and "steps" in row and "response" not in row:
                if not isinstance(row["steps"], list) or not row["steps"]:
                    raise EvalkitError(f"{where}: 'steps' must be a non-empty list")
                recorded: Recorded = [
                    _reply(step, f"{where} step {i}") for i, step in enumerate(row["steps"])
                ]
            else:
                recorded = _reply(row, where)
            if not isinstance(row.get("id"), str | int):
                raise EvalkitError(f"{where}: missing or invalid 'id'")
            responses[str(row["id"])].append(recorded)
    if not responses:
        raise EvalkitError(f"replay file is empty: {path}")
    return dict(responses)


class ReplayBackend(Backend):
    cacheable = False  # its answers are already recorded: the response cache is bypassed

    def __init__(self, path: str) -> None:
        self.path = Path(path).expanduser().resolve()
        self.responses = load_replay(self.path)
        self.sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()
        # Replies already given per (sample id, sample index): an episode asks several times.
        self.served: dict[tuple[str, int], int] = defaultdict(int)

    def validate(self, sample_ids: Sequence[str]) -> None:
        if not set(self.responses) & set(sample_ids):
            example = next(iter(self.responses))
            raise EvalkitError(
                f"replay file {self.path.name} answers none of the selected samples "
                f"(its ids look like {example!r}, the suite's like {sample_ids[0]!r})"
            )

    async def generate(self, request: Request) -> Response:
        samples = self.responses.get(request.sample_id, [])
        if request.sample_index >= len(samples):
            return Response(
                text="",
                error=f"no recorded response #{request.sample_index} for id {request.sample_id}",
            )
        recorded = samples[request.sample_index]
        if isinstance(recorded, list):
            key = (request.sample_id, request.sample_index)
            step = self.served[key]
            if step >= len(recorded):
                return Response(
                    text="", error=f"no recorded step #{step} for id {request.sample_id}"
                )
            self.served[key] += 1
            recorded = recorded[step]
        text, calls = recorded
        return Response(
            text=text,
            finish_reason="tool_calls" if calls else "stop",
            model="replay",
            tool_calls=calls,
            tool_call_source="native" if calls else None,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "replay",
            "model_id": f"replay:{self.path.name}",
            "path": str(self.path),
            "revision": f"sha256:{self.sha256}",
        }

"""Recorded responses: re-score saved generations and check gold answers.

File format: one JSON object per line, `{"id": <sample id>, "response": <text>}`; several lines
for one id are that problem's samples 0, 1, … in file order (for pass@k).
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
from evalkit.records import Request, Response


def load_replay(path: Path) -> dict[str, list[str]]:
    if not path.is_file():
        raise EvalkitError(f"replay file not found: {path}")
    responses: dict[str, list[str]] = defaultdict(list)
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvalkitError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("response"), str):
                raise EvalkitError(f'{path}:{lineno}: expected {{"id": ..., "response": "<text>"}}')
            if not isinstance(row.get("id"), str | int):
                raise EvalkitError(f"{path}:{lineno}: missing or invalid 'id'")
            responses[str(row["id"])].append(row["response"])
    if not responses:
        raise EvalkitError(f"replay file is empty: {path}")
    return dict(responses)


class ReplayBackend(Backend):
    cacheable = False  # its answers are already recorded: the response cache is bypassed

    def __init__(self, path: str) -> None:
        self.path = Path(path).expanduser().resolve()
        self.responses = load_replay(self.path)
        self.sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()

    def validate(self, sample_ids: Sequence[str]) -> None:
        if not set(self.responses) & set(sample_ids):
            example = next(iter(self.responses))
            raise EvalkitError(
                f"replay file {self.path.name} answers none of the selected samples "
                f"(its ids look like {example!r}, the suite's like {sample_ids[0]!r})"
            )

    async def generate(self, request: Request) -> Response:
        answers = self.responses.get(request.sample_id, [])
        if request.sample_index >= len(answers):
            return Response(
                text="",
                error=f"no recorded response #{request.sample_index} for id {request.sample_id}",
            )
        return Response(text=answers[request.sample_index], finish_reason="stop", model="replay")

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "replay",
            "model_id": f"replay:{self.path.name}",
            "path": str(self.path),
            "revision": f"sha256:{self.sha256}",
        }

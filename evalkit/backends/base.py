"""The backend contract the runner relies on."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from evalkit.records import Request, Response


class Backend(ABC):
    """Async request -> response. `generate` never raises for a failed request: it returns a
    Response with `error` set, so one bad sample cannot take a run down."""

    def validate(self, sample_ids: Sequence[str]) -> None:  # noqa: B027 (optional hook)
        """Reject, before anything is written, input that cannot answer these samples."""

    async def start(self) -> None:  # noqa: B027 (optional hook)
        """Acquire resources (start a server, open clients) before the first request."""

    @abstractmethod
    async def generate(self, request: Request) -> Response: ...

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Release resources; called once, also after a failure."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Model identity for provenance: backend, model id, revision, endpoint (never a key)."""

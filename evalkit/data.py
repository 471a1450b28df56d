"""Dataset loading from a local folder or the Hugging Face hub, and record fingerprints.

The fingerprint hashes each record's canonical form (selected fields, normalised types, sorted
keys) together with its sample id, so the hub copy and a local copy of the same records agree
even though their files differ byte for byte, while any change of content or id does not.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalkit.errors import EvalkitError

DATA_DIR_ENV = "EVALKIT_DATA_DIR"


@dataclass(frozen=True)
class HubSource:
    """Where the official copy lives on the hub; several configs are concatenated in order."""

    repo: str
    configs: tuple[str | None, ...]
    split: str


@dataclass(frozen=True)
class DataLocation:
    data_dir: Path | None

    @classmethod
    def resolve(cls, data_dir: str | os.PathLike[str] | None) -> DataLocation:
        chosen = data_dir or os.environ.get(DATA_DIR_ENV)
        if not chosen:
            return cls(None)
        path = Path(chosen).expanduser().resolve()
        if not path.is_dir():
            raise EvalkitError(f"data directory not found: {path}")
        return cls(path)

    def describe(self, relpath: str, hub: HubSource) -> dict[str, Any]:
        if self.data_dir is not None:
            return {"source": "local", "path": str(self.data_dir / relpath)}
        return {"source": "hub", "repo": hub.repo, "configs": list(hub.configs), "split": hub.split}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise EvalkitError(f"dataset file not found: {path}")
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise EvalkitError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    return rows


def load_hub(hub: HubSource) -> list[dict[str, Any]]:
    """Load the official split through `datasets` (imported lazily: it is slow to import)."""
    import datasets

    rows: list[dict[str, Any]] = []
    for config in hub.configs:
        try:
            ds = datasets.load_dataset(hub.repo, config, split=hub.split)
        except Exception as exc:
            raise EvalkitError(
                f"could not load {hub.repo} ({config or 'default'}) from the Hugging Face hub: "
                f"{type(exc).__name__}; pass --data-dir or set {DATA_DIR_ENV} for a local copy"
            ) from None
        rows.extend(dict(r) for r in ds)
    return rows


def load_records(location: DataLocation, relpath: str, hub: HubSource) -> list[dict[str, Any]]:
    if location.data_dir is not None:
        return read_jsonl(location.data_dir / relpath)
    return load_hub(hub)


def _canonical_value(value: Any) -> Any:
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, dict):
        return {str(k): _canonical_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical_value(v) for v in value]
    return value


def fingerprint(
    records: Iterable[dict[str, Any]],
    sample_id: Callable[[int, dict[str, Any]], str],
    fields: Sequence[str],
) -> str:
    """sha256 over (id, canonical record) pairs, ordered by id so file order does not matter."""
    lines = []
    for index, record in enumerate(records):
        canonical = {f: _canonical_value(record.get(f)) for f in fields}
        body = json.dumps(canonical, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        lines.append(f"{sample_id(index, record)}\t{hashlib.sha256(body.encode()).hexdigest()}")
    lines.sort()
    return "sha256:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()

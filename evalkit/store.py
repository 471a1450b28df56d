"""The versioned results store: one directory per run under `results/`.

Layout of `results/<run_id>/`:
  config.json    written once, atomically, when the run starts (identity + config hash)
  samples.jsonl  one line per finished sample, appended and fsynced as work completes
  run.json       written once, atomically, when the run is complete; its presence means
                 "finished", and a finished run is never rewritten (files become read-only)
  .lock          flock held by the one process writing this run

A run without run.json is unfinished: re-running the same command (same config hash) resumes it.
Run ids sort by start time: `YYYYmmddTHHMMSSZ-<suite>-<model>-<random>`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from evalkit.errors import EvalkitError
from evalkit.records import SCHEMA_VERSION, SampleRecord

RESULTS_DIR_ENV = "EVALKIT_RESULTS_DIR"
CONFIG_FILE = "config.json"
SAMPLES_FILE = "samples.jsonl"
RUN_FILE = "run.json"
LOCK_FILE = ".lock"


def results_root(path: str | os.PathLike[str] | None) -> Path:
    return Path(path or os.environ.get(RESULTS_DIR_ENV) or "results").expanduser().resolve()


def new_run_id(suite: str, model: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    kind, sep, target = model.rpartition(":")
    # A path or repo id is named by its last part: ids stay short and hold no home directories.
    name = f"{kind}{sep}{target.rstrip('/').rsplit('/', 1)[-1]}"
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-")[:48] or "model"
    return f"{stamp}-{suite}-{slug}-{secrets.token_hex(3)}"


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temp file in the same directory, fsync, then rename: never a torn file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2, sort_keys=True, ensure_ascii=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_samples(path: Path) -> list[SampleRecord]:
    """Read samples.jsonl; a torn last line (killed mid-write) is ignored, later lines win."""
    latest: dict[tuple[str, int], SampleRecord] = {}
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break  # torn final line from a killed writer
            try:
                rec = SampleRecord.from_dict(json.loads(line))
            except (json.JSONDecodeError, TypeError):
                continue
            latest[rec.key] = rec
    return list(latest.values())


@dataclass
class Run:
    """A run directory; only the process holding its lock appends to it."""

    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def finished(self) -> bool:
        return (self.path / RUN_FILE).exists()

    def config(self) -> dict[str, Any]:
        return json.loads((self.path / CONFIG_FILE).read_text(encoding="utf-8"))

    def summary(self) -> dict[str, Any]:
        return json.loads((self.path / RUN_FILE).read_text(encoding="utf-8"))

    def samples(self) -> list[SampleRecord]:
        return read_samples(self.path / SAMPLES_FILE)


class RunWriter:
    """Appends samples and finalises a run; holds the run's lock for its lifetime."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self._lock: IO[str] = open(run.path / LOCK_FILE, "a")  # noqa: SIM115 (held open)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise EvalkitError(f"run {run.run_id} is being written by another process") from None
        self._repair_torn_tail()
        self._fh = open(run.path / SAMPLES_FILE, "a", encoding="utf-8")  # noqa: SIM115

    def _repair_torn_tail(self) -> None:
        path = self.run.path / SAMPLES_FILE
        if not path.exists():
            return
        with path.open("rb+") as fh:
            content = fh.read()
            if content and not content.endswith(b"\n"):
                fh.truncate(content.rfind(b"\n") + 1)

    def append(self, records: list[SampleRecord]) -> None:
        for rec in records:
            self._fh.write(json.dumps(rec.to_dict(), ensure_ascii=False, sort_keys=True) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def finish(self, summary: dict[str, Any]) -> None:
        if self.run.finished:
            raise EvalkitError(f"run {self.run.run_id} is already finished")
        self._fh.close()
        write_json_atomic(self.run.path / RUN_FILE, summary)
        for name in (CONFIG_FILE, SAMPLES_FILE, RUN_FILE):
            p = self.run.path / name
            p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        self.close()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        if not self._lock.closed:
            with contextlib.suppress(FileNotFoundError):
                (self.run.path / LOCK_FILE).unlink()
            self._lock.close()


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root

    def runs(self) -> Iterator[Run]:
        if not self.root.is_dir():
            return
        for p in sorted(self.root.iterdir()):
            if p.is_dir() and (p / CONFIG_FILE).exists():
                yield Run(p)

    def get(self, run_id: str) -> Run:
        path = self.root / run_id
        if not (path / CONFIG_FILE).exists():
            raise EvalkitError(f"no run {run_id!r} in {self.root}")
        return Run(path)

    def find_unfinished(self, config_hash: str) -> Run | None:
        for run in reversed(list(self.runs())):
            if not run.finished and run.config().get("config_hash") == config_hash:
                return run
        return None

    def create(self, run_id: str, config: dict[str, Any]) -> Run:
        """Create the run directory with its config in one rename, so it appears complete."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{run_id}."))
        try:
            write_json_atomic(staging / CONFIG_FILE, {"schema_version": SCHEMA_VERSION, **config})
            os.rename(staging, self.root / run_id)
        except BaseException:
            for child in staging.iterdir():
                child.unlink()
            staging.rmdir()
            raise
        return Run(self.root / run_id)

"""Response cache: a repeated deterministic request is answered from disk, never paid twice.

Keyed by sha256 over the full request as the backend would send it: backend identity (backend,
model id, endpoint without credentials, weights revision), chat messages or prompt, tools, stop
sequences, every generation parameter and the per-request seed. The API key is never part of a
key or of anything stored. Only deterministic decoding (temperature 0) is cached: a sampled
request asks for a fresh draw, so answering it from disk would change what is measured. Error
responses are never stored, so a failure is retried by the next run.

Storage is one sqlite3 file in WAL mode (`$EVALKIT_CACHE_DIR` or `~/.cache/evalkit`), safe for
several processes on one machine (readers never block; writers wait on a busy timeout). WAL needs
shared memory between the processes, which network file systems (NFS, Lustre) do not provide:
Slurm shards on several nodes should each point `EVALKIT_CACHE_DIR` at a node-local disk (or a
per-shard directory on the shared one). A cache that cannot be opened or written degrades to no
cache with a warning: the run itself never fails because of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from evalkit.backends.base import Backend
from evalkit.records import Request, Response, ToolCall, Usage

CACHE_DIR_ENV = "EVALKIT_CACHE_DIR"
DB_FILE = "responses.sqlite3"
KEY_VERSION = 1  # bump when the key's canonical form changes: old entries then simply miss
BUSY_TIMEOUT_MS = 60_000
# describe() fields that identify what answers; the rest (retry settings, served names) do not.
IDENTITY_FIELDS = ("backend", "model_id", "base_url", "revision", "weights")


def cache_dir(path: str | os.PathLike[str] | None = None) -> Path:
    chosen = path or os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "evalkit"
    return Path(chosen).expanduser().resolve()


def backend_identity(backend: Backend) -> dict[str, Any]:
    """What decides the answers. The local backend's loopback port changes on every start, so
    its endpoint is left out; its weights' sha256 (`revision`) identifies it instead."""
    described = backend.describe()
    identity = {k: described[k] for k in IDENTITY_FIELDS if described.get(k) is not None}
    if identity.get("backend") == "local":
        identity.pop("base_url", None)
    return identity


def cacheable(request: Request) -> bool:
    return request.params.temperature == 0


def request_key(identity: dict[str, Any], request: Request) -> str:
    """sha256 of the request's canonical JSON: every Request field (so a field added later is
    keyed too) but the sample's id and index, which the backend never sends; the index enters
    through the per-request seed. Two suites that send the same request share the answer."""
    fields = dataclasses.asdict(request)
    del fields["sample_id"], fields["sample_index"]
    body = {"v": KEY_VERSION, "backend": identity, "seed": request.seed, **fields}
    text = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def encode_response(response: Response) -> str:
    body = dataclasses.asdict(response)
    for k in ("latency_s", "attempts", "error", "cached"):
        body.pop(k, None)
    return json.dumps(body, ensure_ascii=False, sort_keys=True)


def decode_response(text: str) -> Response:
    """Every stored Response field comes back (fields added later default when absent)."""
    body = json.loads(text)
    known = {f.name for f in dataclasses.fields(Response)}
    body = {k: v for k, v in body.items() if k in known}
    body["usage"] = Usage(**(body.get("usage") or {}))
    body["tool_calls"] = tuple(ToolCall(**t) for t in body.get("tool_calls") or ())
    body["transcript"] = tuple(body.get("transcript") or ())
    # No request was made: no attempts, no latency beyond the lookup.
    return Response(**{**body, "attempts": 0, "latency_s": 0.0, "error": None, "cached": True})


class ResponseCache:
    """The sqlite store. Blocking calls: the wrapper runs them on its own single thread."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / DB_FILE
        self._db = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False, isolation_level=None
        )
        self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        # WAL: readers never block the writer and the writer never blocks readers.
        # synchronous=NORMAL: a power cut may lose the last entries, never corrupt the file.
        self._enter_wal()
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses ("
            " key TEXT PRIMARY KEY, response TEXT NOT NULL, backend TEXT NOT NULL,"
            " created_at REAL NOT NULL)"
        )

    def _enter_wal(self) -> None:
        """Switch a new file to WAL. The switch needs the file to itself, and sqlite answers
        "database is locked" at once, without waiting on busy_timeout, while another process
        opens the same new file: retried until the busy timeout (the mode then persists)."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def get(self, key: str) -> Response | None:
        row = self._db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return decode_response(row[0]) if row else None

    def put_many(self, rows: Sequence[tuple[str, str, str]]) -> None:
        """(key, encoded response, backend json) rows in one transaction; the first answer for
        a key wins, so concurrent writers of the same request agree."""
        now = time.time()
        self._db.execute("BEGIN IMMEDIATE")  # take the write lock now (waits on busy_timeout)
        try:
            self._db.executemany(
                "INSERT OR IGNORE INTO responses (key, response, backend, created_at)"
                " VALUES (?, ?, ?, ?)",
                [(k, r, b, now) for k, r, b in rows],
            )
            self._db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        self._db.close()


class CachedBackend(Backend):
    """Wraps a backend: looks each cacheable request up first, stores each good answer after.
    Counts hits, misses and uncacheable requests for run.json."""

    def __init__(self, inner: Backend, directory: Path) -> None:
        self.inner = inner
        self.directory = directory
        self.hits = 0
        self.misses = 0
        self.uncacheable = 0
        self.write_errors = 0
        self.disabled_reason: str | None = None
        self._cache: ResponseCache | None = None
        self._identity: dict[str, Any] | None = None
        self._identity_json = ""
        self._pool: ThreadPoolExecutor | None = None

    def validate(self, sample_ids: Sequence[str]) -> None:
        self.inner.validate(sample_ids)

    async def start(self) -> None:
        await self.inner.start()
        # After start: the local backend knows its weights' revision only then.
        self._identity = backend_identity(self.inner)
        self._identity_json = json.dumps(self._identity, sort_keys=True)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evalkit-cache")
        try:
            self._cache = await self._run(ResponseCache, self.directory)
        except (sqlite3.Error, OSError) as exc:
            self._disable(f"cannot open {self.directory / DB_FILE}: {exc}")

    async def close(self) -> None:
        try:
            if self._cache is not None:
                await self._run(self._cache.close)
                self._cache = None
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            await self.inner.close()

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def stats(self) -> dict[str, Any]:
        """The cache's part of run.json (this session's requests)."""
        out: dict[str, Any] = {
            "enabled": self.disabled_reason is None,
            "path": str(self.directory / DB_FILE),
            "hits": self.hits,
            "misses": self.misses,
            "uncacheable": self.uncacheable,
        }
        if self.write_errors:
            out["write_errors"] = self.write_errors
        if self.disabled_reason:
            out["disabled_reason"] = self.disabled_reason
        return out

    async def generate(self, request: Request) -> Response:
        if self._cache is None or not cacheable(request):
            self.uncacheable += 1
            return await self.inner.generate(request)
        assert self._identity is not None
        key = request_key(self._identity, request)
        try:
            cached = await self._run(self._cache.get, key)
        except (sqlite3.Error, ValueError, TypeError, KeyError) as exc:
            _warn(f"cache read failed, treated as a miss: {exc}")
            cached = None
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        response = await self.inner.generate(request)
        if response.error is None:
            try:
                row = (key, encode_response(response), self._identity_json)
                await self._run(self._cache.put_many, [row])
            except sqlite3.Error as exc:
                self.write_errors += 1
                if self.write_errors == 1:
                    _warn(f"cache write failed (the run goes on uncached): {exc}")
        return response

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _disable(self, reason: str) -> None:
        self.disabled_reason = reason
        _warn(f"response cache disabled: {reason}")


def wrap(backend: Backend, enabled: bool, directory: str | None = None) -> Backend:
    """The backend the runner should call. Backends that say `cacheable = False` (replay: its
    answers are already on disk) are returned as they are."""
    if not enabled or not getattr(backend, "cacheable", True):
        return backend
    return CachedBackend(backend, cache_dir(directory))


def stats_of(backend: Backend, enabled: bool) -> dict[str, Any]:
    if isinstance(backend, CachedBackend):
        return backend.stats()
    reason = "--no-cache" if not enabled else "backend answers from recorded responses"
    return {"enabled": False, "reason": reason, "hits": 0, "misses": 0}


def _warn(message: str) -> None:
    with contextlib.suppress(OSError):
        print(f"evalkit: warning: {message}", file=sys.stderr)

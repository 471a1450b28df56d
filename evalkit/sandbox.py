"""Run untrusted, model-generated Python programs and return a verdict for each.

Programs are never forked from the calling process (it has asyncio and worker threads); a
dedicated single-threaded zygote (:mod:`evalkit.sandbox_worker`) is started per
:func:`run_programs` call and forks one confined child per program: its own PID namespace,
a network namespace without a usable interface, uid ``nobody`` when we are root, a
whitelisted environment, rlimits, and a private temporary directory. A program passes only
if the harness code that ran it sees ``exec`` of the whole program return normally, so
exiting early with status 0 does not count as passing. (That guards against early exits, not
against a program built to dig the completion nonce out of its own interpreter's memory.)
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["ExecResult", "SandboxLimits", "isolation_report", "run_program", "run_programs"]

STATUSES = ("passed", "failed", "timeout", "memory", "output_limit", "crashed")
_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_worker.py")
# How long the zygote may stay silent beyond the wall limit before we call it hung.
_WATCHDOG_GRACE_S = 60.0
_START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ExecResult:
    """Verdict for one program; ``detail`` says why in one line, ``output_tail`` helps debug."""

    status: str  # one of STATUSES
    detail: str  # one-line reason, e.g. "AssertionError", "wall time 3s exceeded"
    duration_s: float
    output_tail: str  # last <= 2000 chars of the program's stdout+stderr

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class SandboxLimits:
    """Per-program limits. CPU and wall are separate because sleeping or blocked programs burn
    no CPU, and busy ones in a loaded machine may get less wall time than they need."""

    wall_s: float = 10.0
    cpu_s: float = 10.0  # RLIMIT_CPU has whole-second granularity: rounded up
    memory_mb: int = 1024  # address space (RLIMIT_AS) per process
    output_bytes: int = 1_000_000  # stdout+stderr together
    max_processes: int = 64  # RLIMIT_NPROC inside the sandbox

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not value > 0:
                raise ValueError(f"SandboxLimits.{name} must be positive, got {value!r}")


_isolation_lock = threading.Lock()
_isolation: dict[str, Any] | None = None


def isolation_report() -> dict[str, Any]:
    """Which isolation layers are active on this machine, for run provenance.

    Keys: ``netns``, ``pidns``, ``userns`` (per-program user namespace, which makes
    RLIMIT_NPROC per program), ``dropped_uid`` (65534 or None), ``no_new_privs``, ``rlimits``,
    ``nproc_enforced``, ``network`` ("netns" or "socket-patched"), ``kill_scope``
    ("pid-namespace" or "process-group"), ``env`` and ``notes`` (what degraded and why).
    Probed by starting a zygote once per process; later runs refresh it.
    """
    with _isolation_lock:
        cached = _isolation
    if cached is None:
        _Zygote().close()
        with _isolation_lock:
            cached = _isolation
    assert cached is not None
    return json.loads(json.dumps(cached))


def run_program(program: str, limits: SandboxLimits = SandboxLimits()) -> ExecResult:
    """Convenience for one program; starts a zygote per call, so batch with run_programs."""
    return run_programs([program], limits, workers=1)[0]


def run_programs(
    programs: Sequence[str],
    limits: SandboxLimits = SandboxLimits(),
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[ExecResult]:
    """Run each program in its own sandbox, ``workers`` at a time; results in input order.

    ``progress(i)`` is called on the calling thread as program ``i`` finishes. Safe to call
    from any thread, concurrently too: each call gets its own zygote, and when this returns
    the zygote, every sandboxed process and every temporary directory are gone.

    If the zygote itself dies (nothing a program can do should achieve that, but the OOM
    killer can), the programs that were in flight are re-run one at a time in a fresh
    zygote; one that takes the zygote down even alone is reported as "crashed".
    """
    for p in programs:
        if not isinstance(p, str):
            raise TypeError(f"programs must be str, got {type(p).__name__}")
    n = len(programs)
    if n == 0:
        return []
    workers = max(1, min(workers or os.cpu_count() or 1, n))
    job_limits = asdict(limits)
    watchdog_s = limits.wall_s + _WATCHDOG_GRACE_S
    results: list[ExecResult | None] = [None] * n
    pending = deque(range(n))
    suspects: deque[int] = deque()  # in flight when a zygote died: re-run alone
    in_flight: dict[int, tuple[float, bool]] = {}  # index -> (sent at, sent alone)
    deaths = 0

    def finish(i: int, result: ExecResult) -> None:
        results[i] = result
        if progress is not None:
            progress(i)

    zygote = _Zygote()
    try:
        while pending or suspects or in_flight:
            try:
                if suspects:
                    if not in_flight:
                        i = suspects.popleft()
                        in_flight[i] = (time.monotonic(), True)
                        zygote.send({"id": i, "program": programs[i], "limits": job_limits})
                else:
                    while pending and len(in_flight) < workers:
                        i = pending.popleft()
                        in_flight[i] = (time.monotonic(), False)
                        zygote.send({"id": i, "program": programs[i], "limits": job_limits})
                msg = zygote.recv(watchdog_s)
            except _ZygoteDied:
                zygote.close()
                deaths += 1
                if deaths > 2 * n + 10:
                    raise RuntimeError("sandbox worker keeps dying; giving up") from None
                for i, (sent, alone) in sorted(in_flight.items()):
                    if alone:
                        took = time.monotonic() - sent
                        finish(i, ExecResult("crashed", "killed the sandbox worker", took, ""))
                    else:
                        suspects.append(i)
                in_flight.clear()
                zygote = _Zygote()
                continue
            i = int(msg["id"])
            if i not in in_flight:
                continue
            del in_flight[i]
            finish(
                i,
                ExecResult(
                    status=str(msg["status"]),
                    detail=str(msg["detail"]),
                    duration_s=float(msg["duration_s"]),
                    output_tail=str(msg["output_tail"]),
                ),
            )
    finally:
        zygote.close()
    return [r for r in results if r is not None]


class _ZygoteDied(Exception):
    pass


def _zygote_env() -> dict[str, str]:
    """A whitelist, so that API keys and tokens never reach the zygote or its children."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        # Fixed so that set iteration order, and with it any order-dependent verdict, is the
        # same from run to run; children inherit the zygote's hash secret.
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if "HOME" in os.environ:  # only locates the user site-packages; children get their own
        env["HOME"] = os.environ["HOME"]
    return env


class _Zygote:
    """Parent-side handle: starts the worker, sends jobs, reads results with a watchdog."""

    def __init__(self) -> None:
        global _isolation
        self.base = tempfile.mkdtemp(prefix="evalkit-sandbox-")
        os.chmod(self.base, 0o711)  # programs running as nobody must reach their own dirs
        self.buf = b""
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-P", "-B", _WORKER, self.base, str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=_zygote_env(),
                cwd="/",
                start_new_session=True,
            )
        except BaseException:
            shutil.rmtree(self.base, ignore_errors=True)
            raise
        try:
            hello = self.recv(_START_TIMEOUT_S)
        except _ZygoteDied:
            self.close()
            raise RuntimeError("sandbox worker failed to start (see stderr)") from None
        with _isolation_lock:
            _isolation = hello["hello"]

    def send(self, msg: dict[str, Any]) -> None:
        data = json.dumps(msg).encode() + b"\n"
        fd = self.proc.stdin.fileno()  # type: ignore[union-attr]
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except (BrokenPipeError, OSError):
            raise _ZygoteDied from None

    def recv(self, timeout: float) -> dict[str, Any]:
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        poller = select.poll()  # not select.select: the caller may hold fds above 1024
        poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:  # hung: treat like a death so in-flight programs get re-run
                self.proc.kill()
                raise _ZygoteDied
            if not poller.poll(left * 1000 + 1):
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise _ZygoteDied
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            self.proc.kill()
            raise _ZygoteDied from None

    def close(self) -> None:
        """EOF tells the zygote to kill whatever is left and exit; wait for that to finish."""
        proc = self.proc if hasattr(self, "proc") else None
        if proc is not None:
            for stream in (proc.stdin, proc.stdout):
                with contextlib.suppress(OSError):
                    stream.close()  # type: ignore[union-attr]
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.base, ignore_errors=True)

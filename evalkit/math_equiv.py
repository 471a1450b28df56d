"""Equivalence of a predicted MATH answer with the gold answer, through math-verify.

math-verify (the field's grader) decides equivalence. This module adds three things around it:

* a hard per-item time bound that works from any thread. math-verify's own timeout uses
  ``signal.alarm``, which only works in the main thread, has whole-second resolution, replaces
  the host's SIGALRM handler, and cannot stop a single long operation inside C code (handlers run
  between bytecodes). So every comparison runs in a small pool of persistent worker *processes*;
  a worker that overruns is killed and replaced, and the item scores False.
* normalisation for the few gold/prediction forms where math-verify is measurably wrong on the
  official data (each is commented at its fix and covered by tests).
* batch scoring across cores (:func:`math_equal_many`).

Workers are plain ``subprocess`` children speaking JSON lines, not ``multiprocessing``: that
avoids forking a multi-threaded runner (deadlock-prone), re-importing the caller's ``__main__``
(spawn), and the all-or-nothing breakage of ``ProcessPoolExecutor`` when one worker is killed.
The pool size follows the CPUs this process may use; ``EVALKIT_MATH_WORKERS`` overrides it.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from evalkit.answers import strip_math_delimiters

__all__ = ["close_pool", "math_equal", "math_equal_many"]

DEFAULT_TIMEOUT_S = 5.0
# Share of the budget the worker gets before it abandons the item itself (cheap: the worker
# survives). The parent kills it only at the full budget, when it is stuck where a signal cannot
# reach (C code) or ignores the interruption.
_SOFT_SHARE = 0.8
_READY_TIMEOUT_S = 120.0

# --------------------------------------------------------------------------------------------
# Normalisation (pure string work; runs in the workers)
# --------------------------------------------------------------------------------------------

# math-verify's unit removal only knows "\text{", so "\text { square inches}" (MATH idx 1991)
# became a symbol "squareinches" multiplying the gold itself.
_TEXT_CMD = re.compile(r"\\(?:text|textrm|textnormal|mbox)\s*\{")
# "5,\!525" inside \frac (MATH idx 1598): math-verify leaves the gold unparsed and then compares
# strings, so no prediction could match. ",\!" and "{,}" before three digits are unambiguous
# thousands separators in LaTeX.
_LATEX_THOUSANDS = re.compile(r"(?<=\d)(?:,\\!\s*|\{,\})(?=\d{3}(?!\d))")
# A plain "70,110" is ambiguous: math-verify reads it as 70110, but in MATH idx 4791 it is the
# list of solutions 70 and 110. Both readings are tried (see _readings).
_AMBIGUOUS_COMMAS = re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?![\d.,])")


def _prepare(answer: str) -> str:
    """Presentation-only cleanup applied to both sides before math-verify sees them."""
    answer = strip_math_delimiters(answer)
    answer = _TEXT_CMD.sub(r"\\text{", answer)
    answer = answer.replace("\u00b0", "^\\circ").replace("\u2212", "-")
    return _LATEX_THOUSANDS.sub("", answer)


def _readings(answer: str) -> list[str]:
    """The answer, plus its list reading when it contains an ambiguous "a,bcd" number."""
    if _AMBIGUOUS_COMMAS.search(answer):
        spaced = _AMBIGUOUS_COMMAS.sub(lambda m: m.group(0).replace(",", ", "), answer)
        return [answer, spaced]
    return [answer]


# Units written as plain words ("81 teachers", "440 cm^2", "18 ways") are not removed by
# math-verify, which then multiplies the number by symbols t*e*a*c*h*e*r*s. Only words of three
# or more letters, or common short unit abbreviations, so that "2 ab" keeps its variables.
_SHORT_UNITS = "cm|mm|km|m|ft|in|yd|mi|kg|g|mg|lb|oz|ml|l|s|h|hr|am|pm|a\\.m\\.|p\\.m\\."
_UNIT_WORDS = re.compile(
    rf"(?:\s*\\text\{{[^{{}}]*\}}|\s+(?:[A-Za-z]{{3,}}|{_SHORT_UNITS})\b\.?)+"
    r"(?:\s*\^\s*\{?[23]\}?)?\s*$"
)
_NUMERIC_CORE = re.compile(r"[\d\s.,+\-/^{}()\\a-z]*\d[\d\s.,+\-/^{}()\\a-z]*")


def _strip_units(answer: str) -> str | None:
    """The numeric part of "<number> <unit words>", or None when there is nothing to strip."""
    m = _UNIT_WORDS.search(answer)
    if m is None or m.start() == 0:
        return None
    core = answer[: m.start()].rstrip()
    # Only a number-like core ("440", "\frac{68}{3}", "8\sqrt{3}", "99\pi"), never "x + y".
    if not _NUMERIC_CORE.fullmatch(core) or re.search(r"(?<!\\)\b[a-z]\b", core):
        return None
    return core


_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf|operatorname)\{([^{}]*)\}")


def _text_answer(answer: str) -> tuple[str, ...] | None:
    """Canonical form of a word answer ("\\text{1:03 PM}", "\\text{A, D}"), or None if math.

    math-verify turns prose into products of symbols, so "1:03 PM" and "9 a.m." do not parse and
    "\\text{A,D}" is not a set. Word answers are compared as case-, space- and dot-insensitive
    strings; comma-separated choices as unordered collections, parenthesised tuples in order.
    """
    text = _TEXT_WRAPPER.sub(r"\1", answer)
    if "\\" in text or not re.search(r"[A-Za-z]", text):
        return None
    if not re.fullmatch(r"[A-Za-z0-9\s,.:;'()\-]+", text):
        return None
    text = text.strip()
    ordered = text.startswith("(") and text.endswith(")") and "," in text  # a tuple: (A, C)
    items = []
    for item in re.split(r",|\band\b", text):
        item = re.sub(r"[\s.()]", "", item).lower()
        if item:
            items.append(item)
    if not items:
        return None
    return tuple(items) if ordered else tuple(sorted(items))


# --------------------------------------------------------------------------------------------
# Judgement through math-verify (runs in the workers)
# --------------------------------------------------------------------------------------------

# math-verify strips a trailing unit even when it is glued to the number, and its unit list has
# single letters and "ab"/"bc": MATH idx 4101 ("Simplify 3t+4-6t+7t-4", gold "4t") then accepted
# "4", and "2ab" equalled "2". A letter glued to a number is a variable, so such answers are
# parsed with unit removal off; "3 m" (with a space) still loses its unit.
_GLUED_VARIABLE = re.compile(r"[\d}](?:[A-Za-z]|ab|bc)$")

_MV = None


def _mv() -> tuple[Any, list[Any], list[Any]]:
    """math-verify and its two extraction configurations, imported once per worker."""
    global _MV
    if _MV is None:
        import logging
        from dataclasses import replace

        import math_verify

        # Timeouts are disabled inside math-verify (they would reset our own timer); silence
        # its warning about that and its per-item parse chatter.
        for name in ("math_verify", "latex2sympy2_extended"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        latex = math_verify.LatexExtractionConfig(boxed_match_priority=0)
        no_units = replace(
            latex, normalization_config=replace(latex.normalization_config, units=False)
        )
        expr = math_verify.ExprExtractionConfig()
        _MV = (math_verify, [latex, expr], [no_units, expr])
    return _MV


@lru_cache(maxsize=8192)
def _parse(answer: str) -> tuple[Any, ...]:
    """math-verify's parse of a bare answer; cached because each gold recurs for every sample.

    The answer is wrapped in ``\\boxed{}`` so that LaTeX extraction takes it whole (a bare
    "1/2" or "\\frac12" without delimiters is otherwise matched piecemeal).
    """
    math_verify, config, config_no_units = _mv()
    if _GLUED_VARIABLE.search(answer):
        config = config_no_units
    return tuple(
        math_verify.parse(f"\\boxed{{{answer}}}", extraction_config=config, parsing_timeout=None)
    )


def _verify(pred: str, gold: str) -> bool:
    math_verify = _mv()[0]
    gold_parsed, pred_parsed = _parse(gold), _parse(pred)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(math_verify.verify(list(gold_parsed), list(pred_parsed), timeout_seconds=None))


def _judge(pred: str, gold: str) -> bool:
    """Whether a careful human grader would accept ``pred`` for ``gold`` (no time bound)."""
    pred, gold = _prepare(pred), _prepare(gold)
    if not pred:
        return False
    if pred.replace(" ", "") == gold.replace(" ", ""):
        return True
    if _verify(pred, gold):
        return True
    # Fallbacks only for the forms math-verify is known to get wrong (see their comments).
    for g in _readings(gold):
        for p in _readings(pred):
            if (g, p) != (gold, pred) and _verify(p, g):
                return True
    pred_core, gold_core = _strip_units(pred), _strip_units(gold)
    if (pred_core is not None or gold_core is not None) and _verify(
        pred_core or pred, gold_core or gold
    ):
        return True
    pred_text, gold_text = _text_answer(pred), _text_answer(gold)
    return pred_text is not None and pred_text == gold_text


# --------------------------------------------------------------------------------------------
# Worker process
# --------------------------------------------------------------------------------------------


class _ItemTimeout(BaseException):
    """Raised by the worker's timer; a BaseException so math-verify's ``except Exception``
    handlers cannot swallow it and carry on."""


def _serve() -> None:
    """Worker main loop: one JSON request per line on stdin, one verdict per line on stdout."""
    import signal

    # The protocol owns the real stdout; anything printed by libraries goes to stderr.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    try:  # a runaway expansion should fail in the worker, not exhaust the host's memory
        import resource

        limit = 4 << 30
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass

    def on_alarm(signum: int, frame: object) -> None:
        raise _ItemTimeout

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the runner; we leave on EOF
    _judge("\\frac{1}{2}", "0.5")  # warm imports and regex caches before reporting ready
    out.write("ready\n")
    for line in sys.stdin:
        pred, gold, soft_s = json.loads(line)
        try:
            try:
                signal.setitimer(signal.ITIMER_REAL, soft_s)
                verdict = _judge(pred, gold)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except (_ItemTimeout, Exception):  # timeout, parse failure, MemoryError, RecursionError
            verdict = False
        out.write("1\n" if verdict else "0\n")


# --------------------------------------------------------------------------------------------
# Process pool (parent side)
# --------------------------------------------------------------------------------------------


class _Worker:
    def __init__(self) -> None:
        # -P: do not put evalkit/ itself on sys.path, where a module could shadow the stdlib.
        self.proc = subprocess.Popen(
            [sys.executable, "-P", os.path.abspath(__file__), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            close_fds=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.fd_in = self.proc.stdin.fileno()
        self.fd_out = self.proc.stdout.fileno()
        self.buffer = b""
        self.ready = False
        self.dead = False
        self.started = time.monotonic()

    def fileno(self) -> int:
        return self.fd_out

    def send(self, pred: str, gold: str, soft_s: float) -> None:
        if self.dead:
            raise BrokenPipeError("math-verify worker was stopped")
        data = (json.dumps([pred, gold, soft_s]) + "\n").encode()
        while data:
            data = data[os.write(self.fd_in, data) :]

    def read_lines(self) -> list[str]:
        """Lines available now (call after select reported the pipe readable)."""
        chunk = os.read(self.fd_out, 65536)
        if not chunk:
            raise EOFError("math-verify worker exited")
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [line.decode() for line in lines]

    def kill(self) -> None:
        if self.dead:
            return
        # Never touch the descriptors again: their numbers get reused by the next pipes.
        self.dead = True
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()

    def close(self) -> None:
        if not self.dead and self.proc.stdin is not None:
            try:
                self.proc.stdin.close()  # EOF: the worker leaves its loop
                self.proc.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()


class _Pool:
    def __init__(self, size: int) -> None:
        self.size = size
        self.pid = os.getpid()
        self.idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self.closed = False
        for _ in range(size):
            self.idle.put(_Worker())

    def checkout(self, wanted: int) -> list[_Worker]:
        """At least one worker (waiting for it), and up to ``wanted`` that are free now."""
        workers = [self.idle.get()]
        while len(workers) < wanted:
            try:
                workers.append(self.idle.get_nowait())
            except queue.Empty:
                break
        return workers

    def checkin(self, workers: list[_Worker]) -> None:
        for worker in workers:
            if self.closed:
                worker.close()
            else:
                self.idle.put(worker)

    def run(self, items: list[tuple[str, str]], timeout_s: float) -> list[bool]:
        """Verdicts for ``items``; each item gets ``timeout_s`` of one worker's time."""
        results = [False] * len(items)
        workers = self.checkout(len(items))
        soft_s = max(timeout_s * _SOFT_SHARE, 0.001)
        next_item = 0
        busy: dict[_Worker, tuple[int, float]] = {}  # worker -> (item, deadline)
        start_failures = 0

        def replace(worker: _Worker) -> None:
            # A fresh worker starts unready; the loop dispatches to it once it says so, so its
            # start-up never counts against any item's budget.
            busy.pop(worker, None)
            worker.kill()
            workers[workers.index(worker)] = _Worker()

        try:
            while next_item < len(items) or busy:
                for worker in list(workers):
                    if worker.ready and worker not in busy and next_item < len(items):
                        pred, gold = items[next_item]
                        try:
                            worker.send(pred, gold, soft_s)
                        except OSError:  # died while idle (killed from outside): replace, retry
                            replace(worker)
                            continue
                        busy[worker] = (next_item, time.monotonic() + timeout_s)
                        next_item += 1
                starting = [w for w in workers if not w.ready]
                now = time.monotonic()
                if busy:
                    wait_s = max(0.0, min(deadline for _, deadline in busy.values()) - now)
                else:
                    wait_s = max(0.0, min(w.started for w in starting) + _READY_TIMEOUT_S - now)
                readable = select.select([*busy, *starting], [], [], wait_s)[0]
                for worker in readable:
                    try:
                        lines = worker.read_lines()
                    except EOFError:  # crashed (e.g. memory limit): the item is not proven
                        if not worker.ready:
                            # Killed before it was ready (it may have been idle and unready
                            # since an earlier call): replace it, but not without end.
                            start_failures += 1
                            if start_failures > 2 * len(workers):
                                raise RuntimeError(
                                    "math-verify workers keep dying at start"
                                ) from None
                            replace(worker)
                            continue
                        results[busy[worker][0]] = False
                        replace(worker)
                        continue
                    if not worker.ready:
                        worker.ready = "ready" in lines
                    elif lines and worker in busy:
                        results[busy.pop(worker)[0]] = lines[0] == "1"
                now = time.monotonic()
                for worker, (index, deadline) in list(busy.items()):
                    if now >= deadline:
                        # Stuck past the budget (C-level arithmetic, a swallowed timer).
                        results[index] = False
                        replace(worker)
                stalled = [w for w in workers if not w.ready and now - w.started > _READY_TIMEOUT_S]
                if not busy and len(stalled) == len(workers):
                    raise RuntimeError("math-verify workers did not start")
        except BaseException:
            for worker in list(busy):  # a late answer would desynchronise the protocol
                replace(worker)
            raise
        finally:
            self.checkin(workers)
        return results

    def close(self) -> None:
        self.closed = True
        while True:
            try:
                self.idle.get_nowait().close()
            except queue.Empty:
                break


_POOL: _Pool | None = None
_POOL_LOCK = threading.Lock()


def _pool_size() -> int:
    configured = os.environ.get("EVALKIT_MATH_WORKERS")
    if configured:
        return max(1, int(configured))
    try:
        return max(1, len(os.sched_getaffinity(0)))  # respects Slurm/cgroup CPU binding
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _get_pool() -> _Pool:
    global _POOL
    with _POOL_LOCK:
        # A forked child must not share its parent's worker pipes: it starts its own pool.
        if _POOL is None or _POOL.closed or _POOL.pid != os.getpid():
            _POOL = _Pool(_pool_size())
        return _POOL


def close_pool() -> None:
    """Stop the worker processes (also done at interpreter exit); the next call restarts them."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None and pool.pid == os.getpid():
        pool.close()


atexit.register(close_pool)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _trivial(predicted: str | None, gold: str) -> bool | None:
    """Verdict that needs no sympy: no answer is wrong, an identical answer is right."""
    if predicted is None or not predicted.strip():
        return False
    if _prepare(predicted).replace(" ", "") == _prepare(gold).replace(" ", ""):
        return True
    return None


def math_equal(predicted: str | None, gold: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether ``predicted`` is mathematically the gold answer, as a careful grader would judge.

    Safe from any thread. ``timeout_s`` bounds the comparison itself (not the wait for a free
    worker when other threads are scoring); past it the item is False.
    """
    return math_equal_many([(predicted, gold)], timeout_s)[0]


def math_equal_many(
    pairs: Sequence[tuple[str | None, str]], timeout_s: float = DEFAULT_TIMEOUT_S
) -> list[bool]:
    """:func:`math_equal` for many ``(predicted, gold)`` pairs, spread over all workers.

    Repeated pairs (many samples giving the same answer) are judged once.
    """
    verdicts: list[bool | None] = [_trivial(pred, gold) for pred, gold in pairs]
    todo: dict[tuple[str, str], list[int]] = {}
    for index, (verdict, (pred, gold)) in enumerate(zip(verdicts, pairs, strict=True)):
        if verdict is None:
            assert pred is not None
            todo.setdefault((pred, gold), []).append(index)
    if todo:
        keys = list(todo)
        for key, verdict in zip(keys, _get_pool().run(keys, timeout_s), strict=True):
            for index in todo[key]:
                verdicts[index] = verdict
    return [bool(v) for v in verdicts]


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    _serve()

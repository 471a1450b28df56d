"""MATH answer equivalence: grader judgements, the official gold answers, and the time bound."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from evalkit import math_equiv
from evalkit.answers import extract_math, gold_from_math_solution
from evalkit.math_equiv import math_equal, math_equal_many

MINERVA = "Final Answer: The final answer is ${}$. I hope it is correct."


def _records(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def math_golds(data_dir: Path) -> list[str]:
    return [
        gold_from_math_solution(r["solution"]) for r in _records(data_dir / "math" / "test.jsonl")
    ]


# --------------------------------------------------------------------------------------------
# Judgements
# --------------------------------------------------------------------------------------------

# Symmetric equivalences: checked with each side as the gold.
EQUIVALENT = [
    ("\\frac12", "0.5"),
    ("\\frac12", "\\dfrac{1}{2}"),
    ("\\frac12", "1/2"),
    ("\\frac{1}{2}", "\\tfrac12"),
    ("3", "x=3"),
    ("3", "x = 3"),
    ("5", "5\\text{ cm}"),
    ("5", "5 \\mbox{ cm}"),
    ("10", "10^\\circ"),
    ("10", "10^{\\circ}"),
    ("30^\\circ", "30\u00b0"),
    ("5", "\\$5"),
    ("\\{1,2\\}", "\\{2,1\\}"),
    ("1, 2", "2, 1"),
    ("\\{1,2\\}", "1,2"),
    ("-5, -2, 7", "7, -2, \\text{ and } -5"),
    ("(1,2]", "(1, 2]"),
    ("(-\\infty, 0) \\cup (1, \\infty)", "(-\\infty,0)\\cup(1,\\infty)"),
    ("[1,2)", "x \\in [1, 2)"),
    ("\\frac{\\sqrt2}{2}", "\\sqrt{2}/2"),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt2}"),
    ("2\\sqrt{2}", "\\sqrt8"),
    ("1000", "1,000"),
    ("1000", "1{,}000"),
    ("16386.16", "\\$16,\\!386.16"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\pi/2)"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
    (
        "\\begin{pmatrix} 1/5 & 0 \\\\ 0 & 1 \\end{pmatrix}",
        "\\begin{pmatrix}0.2&0\\\\0&1\\end{pmatrix}",
    ),
    ("50", "50\\%"),
    ("50", "50%"),
    ("\\infty", "\\infty"),
    ("-\\infty", "-\\infty"),
    ("\\text{(C)}", "C"),
    ("\\text{(C)}", "(C)"),
    ("\\text{(C)}", "\\textbf{(C)}"),
    ("\\text{Monday}", "Monday"),
    ("\\text{Monday}", "monday"),
    ("\\text{even}", "Even"),
    ("y=2x+3", "y = 3 + 2x"),
    ("(x+2)(x+5)", "x^2+7x+10"),
    ("3", "3.0"),
    ("\\frac14", "0.25"),
    ("\\pm 2", "-2, 2"),
    # units written as words: math-verify alone turns them into symbol products
    ("81\\text{ teachers}", "81 teachers"),
    ("81\\text{ teachers}", "81"),
    ("440\\text{ cm}^2", "440 cm^2"),
    ("9\\text{ a.m.}", "9 a.m."),
    ("8\\sqrt{3} \\text { square inches}", "8\\sqrt3"),
    # word answers
    ("\\text{1:03 PM}", "1:03 p.m."),
    ("\\text{A,D}", "D, A"),
    ("\\text{B, E, G}", "\\text{G,E,B}"),
    ("\\text{June 20}", "June 20"),
    # thousands separators inside LaTeX and a trailing full stop in the gold
    ("\\frac{12}{5,\\!525}", "\\frac{12}{5525}"),
    ("\\frac{7}{5} + \\frac{1}{5} i.", "\\frac{7+i}{5}"),
    # "70,110" is both a number and a two-element list; either reading is accepted
    ("70,110", "110, 70"),
    ("70,110", "70110"),
    ("4t", "4 t"),
]

# Near misses a careful grader marks wrong: checked with each side as the gold.
DIFFERENT = [
    ("\\frac13", "0.33"),
    ("\\frac13", "0.3"),
    ("-3", "3"),
    ("[1,2]", "(1,2)"),
    ("(1,2]", "[1,2]"),
    ("(1,2]", "(1,2)"),
    ("[1,2)", "[1,2]"),
    ("x", "2x"),
    ("\\frac{1}{2}", "\\frac{1}{3}"),
    ("\\infty", "-\\infty"),
    ("\\pi", "3.14"),
    ("\\sqrt2", "1.41"),
    ("\\text{(C)}", "B"),
    ("\\text{Monday}", "Tuesday"),
    ("\\text{Monday}", "\\text{Mondays}"),
    ("\\text{odd}", "\\text{even}"),
    ("1,2,3", "1,2"),
    ("3,4", "x=3"),
    ("y=2x+1", "y=2x"),
    ("(x+2)(x+5)", "x^2+7x+11"),
    ("\\text{A,D}", "A"),
    ("\\text{A,D}", "A, C"),
    ("\\text{1:03 PM}", "1:04 PM"),
    ("81\\text{ teachers}", "82 teachers"),
    ("8\\sqrt{3} \\text { square inches}", "8"),
    ("70,110", "70"),
    ("70,110", "70, 111"),
    ("\\frac{12}{5,\\!525}", "\\frac{12}{5526}"),
    ("\\frac{7}{5} + \\frac{1}{5} i.", "\\frac{7}{5}"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}2\\\\1\\end{pmatrix}"),
    ("30^\\circ", "60"),
    # a letter glued to a number is a variable, not a unit (MATH idx 4101: gold "4t")
    ("4t", "4"),
    ("2", "2ab"),
    ("2", "2c"),
]

# Only wrong with this side as the gold: an ordered pair in the wrong order.
ORDERED = [
    ("(1,2)", "(2,1)"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(\\frac{\\pi}{2},3)"),
    ("(46,2004)", "(2004,46)"),
    ("(A, C)", "(C, A)"),
]


@pytest.mark.parametrize(("a", "b"), EQUIVALENT)
def test_equivalent_both_directions(a: str, b: str) -> None:
    assert math_equal(b, a), f"{b!r} should equal gold {a!r}"
    assert math_equal(a, b), f"{a!r} should equal gold {b!r}"


@pytest.mark.parametrize(("a", "b"), DIFFERENT)
def test_near_misses_both_directions(a: str, b: str) -> None:
    assert not math_equal(b, a), f"{b!r} should differ from gold {a!r}"
    assert not math_equal(a, b), f"{a!r} should differ from gold {b!r}"


@pytest.mark.parametrize(("gold", "pred"), ORDERED)
def test_ordered_pair_order_matters(gold: str, pred: str) -> None:
    assert math_equal(gold, gold)
    assert not math_equal(pred, gold)


@pytest.mark.parametrize("pred", [None, "", "   "])
def test_no_answer_is_wrong(pred: str | None) -> None:
    assert not math_equal(pred, "5")


def test_math_equal_many_keeps_order_and_repeats() -> None:
    pairs = [("0.5", "\\frac12"), (None, "1"), ("3", "-3"), ("0.5", "\\frac12"), ("x=3", "3")]
    assert math_equal_many(pairs) == [True, False, False, True, True]
    assert math_equal_many([]) == []


# --------------------------------------------------------------------------------------------
# Official gold answers
# --------------------------------------------------------------------------------------------


def test_math_gold_self_consistency(math_golds: list[str]) -> None:
    """All 5000 golds score correct through extraction, in chat and Minerva form; a rewritten
    but equal form goes through math-verify itself and must score correct too."""
    assert len(math_golds) == 5000
    chat = [
        (extract_math(f"... so the answer is $\\boxed{{{g}}}$.", "chat"), g) for g in math_golds
    ]
    base = [(extract_math(MINERVA.format(g), "base"), g) for g in math_golds]
    # \displaystyle is presentation only; the prefix defeats the identical-string shortcut.
    rewritten = [("\\displaystyle " + re.sub(r"\\frac\b", r"\\dfrac", g), g) for g in math_golds]
    started = time.monotonic()
    verdicts = math_equal_many(chat + base)
    shortcut = time.monotonic() - started
    verdicts += math_equal_many(rewritten)
    elapsed = time.monotonic() - started
    failed = [
        (i % 5000, pairs)
        for i, (ok, pairs) in enumerate(zip(verdicts, chat + base + rewritten, strict=True))
        if not ok
    ]
    assert not failed, failed[:10]
    print(f"\nMATH golds: 10000 identical {shortcut:.1f}s, +5000 via math-verify {elapsed:.1f}s")
    assert elapsed < 120


# Neighbouring MATH golds that are genuinely equal although written differently.
EQUAL_NEIGHBOURS = {1660, 3596, 4159}  # \frac34 ~ \frac{3}{4}, 120 ~ 120^\circ, 7 ~ 7\%


def test_math_other_golds_are_wrong(math_golds: list[str]) -> None:
    """5000 realistic wrong answers: each problem's gold against the next problem's gold."""
    n = len(math_golds)
    pairs = [(math_golds[(i + 1) % n], gold) for i, gold in enumerate(math_golds)]
    verdicts = math_equal_many(pairs)
    same = {
        i for i, (pred, gold) in enumerate(pairs) if pred.replace(" ", "") == gold.replace(" ", "")
    }
    accepted = {i for i, ok in enumerate(verdicts) if ok}
    assert accepted - same == EQUAL_NEIGHBOURS, sorted(accepted - same)
    integers = [(g, str(int(g) + 1)) for g in math_golds if re.fullmatch(r"-?\d+", g)]
    integers += [(g, str(-int(g))) for g, _ in integers if g not in ("0",)]
    assert not any(math_equal_many([(pred, gold) for gold, pred in integers]))


def test_math500_answers(data_dir: Path) -> None:
    records = _records(data_dir / "math500" / "test.jsonl")
    pairs = []
    for r in records:
        gold = r["answer"]
        assert math_equal(gold_from_math_solution(r["solution"]), gold), r["unique_id"]
        pairs.append((extract_math(f"Thus $\\boxed{{{gold}}}$.", "chat"), gold))
        pairs.append((extract_math(MINERVA.format(gold), "base"), gold))
    assert all(math_equal_many(pairs))


@pytest.mark.parametrize(
    ("idx", "pred", "expected"),
    [
        (1598, "\\frac{12}{5525}", True),  # gold \frac{12}{5,\!525}: unparsed by math-verify
        (2269, "\\frac75 + \\frac15 i", True),  # gold ends in "i.": math-verify read 1/5
        (2269, "\\frac15", False),
        (4791, "70, 110", True),  # gold "70,110" is a list; math-verify read 70110
        (4791, "110,70", True),
        (1991, "8\\sqrt{3}", True),  # gold "\text { square inches}" became a symbol
        (4101, "4t", True),  # gold "4t": math-verify dropped "t" as a unit
        (4101, "4", False),
        (1253, "371043400", True),  # gold 371,\!043,\!400
        (3300, "90909909", False),
        (3300, "90900909", True),  # gold 90{,}900{,}909
    ],
)
def test_special_gold_items(math_golds: list[str], idx: int, pred: str, expected: bool) -> None:
    assert math_equal(pred, math_golds[idx]) is expected


# --------------------------------------------------------------------------------------------
# Time bound
# --------------------------------------------------------------------------------------------

PATHOLOGICAL = [
    ("10^{10^{10^{10}}}", "5"),
    ("2^{3^{20}}", "5"),
    ("(10^{10^{8}})!", "3"),
    ("\\frac{x^{9999999}}{x^{9999998}+1}", "x"),
]


@pytest.mark.parametrize(("pred", "gold"), PATHOLOGICAL)
def test_pathological_input_is_false_within_bound(pred: str, gold: str) -> None:
    started = time.monotonic()
    assert not math_equal(pred, gold, timeout_s=1.0)
    assert time.monotonic() - started < 1.5


def test_time_bound_holds_in_worker_threads() -> None:
    results: dict[int, tuple[bool, float]] = {}

    def score(slot: int, pred: str, gold: str) -> None:
        started = time.monotonic()
        results[slot] = (math_equal(pred, gold, timeout_s=1.0), time.monotonic() - started)

    jobs = [("10^{10^{10^{10}}}", "5"), ("\\frac12", "0.5")]
    threads = [threading.Thread(target=score, args=(i, *job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results[0][0] is False and results[0][1] < 1.5
    assert results[1][0] is True


def test_math_equal_many_from_thread_with_a_hanging_item() -> None:
    out: list[list[bool]] = []
    pairs = [("0.5", "\\frac12"), ("10^{10^{10^{10}}}", "5"), ("(1,2]", "(1,2]"), ("2x", "x")]
    thread = threading.Thread(target=lambda: out.append(math_equal_many(pairs, timeout_s=1.0)))
    thread.start()
    thread.join(timeout=30)
    assert out == [[True, False, True, False]]


def test_stuck_worker_is_killed_and_replaced() -> None:
    """A worker no signal can reach (here: stopped) is killed at the bound; scoring goes on."""
    pool = math_equiv._get_pool()
    math_equal_many([(str(i), f"{i}.0") for i in range(4 * pool.size)])  # all workers ready
    workers = pool.checkout(pool.size)
    assert all(worker.ready for worker in workers)
    for worker in workers:
        os.kill(worker.proc.pid, signal.SIGSTOP)
    pool.checkin(workers)
    started = time.monotonic()
    pairs = [("0.5", "\\frac12"), ("1/4", "0.25")][: pool.size]
    assert math_equal_many(pairs, timeout_s=1.0) == [False] * len(pairs)
    assert time.monotonic() - started < 2.0
    assert all(w.proc.poll() is not None for w in workers)  # stopped workers were killed
    assert math_equal("0.5", "\\frac12")


def test_worker_that_died_while_idle_is_replaced() -> None:
    pool = math_equiv._get_pool()
    math_equal_many([(str(i), f"{i}.0") for i in range(4 * pool.size)])  # all workers ready
    workers = pool.checkout(pool.size)
    for worker in workers:  # as the kernel's OOM killer would
        os.kill(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait()
    pool.checkin(workers)
    assert math_equal_many([("0.5", "\\frac12"), ("3", "-3")]) == [True, False]

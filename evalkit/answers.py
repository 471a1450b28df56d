"""Extraction of final answers from model responses.

Pure string work: no sympy here, so extraction is fast, deterministic and cannot hang. Whether an
extracted MATH answer is *equivalent* to the gold one is decided in :mod:`evalkit.math_equiv`.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = [
    "extract_gsm8k",
    "extract_math",
    "gold_from_math_solution",
    "gsm8k_correct",
    "gsm8k_gold",
    "last_boxed",
    "response_truncated",
    "strip_think",
]

# --------------------------------------------------------------------------------------------
# Reasoning traces
# --------------------------------------------------------------------------------------------

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)


def strip_think(text: str) -> str:
    """Drop reasoning traces so that numbers tried while thinking are never taken as the answer.

    Closed ``<think>…</think>`` blocks are removed. A stray ``</think>`` (chat templates that open
    the block inside the prompt) drops everything before it. An unclosed ``<think>`` drops
    everything after it: a response that only thinks and never answers has no answer.
    """
    text = _THINK_BLOCK.sub("", text)
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:
        text = text[closes[-1].end() :]
    opened = _THINK_OPEN.search(text)
    if opened:
        text = text[: opened.start()]
    return text.strip()


# --------------------------------------------------------------------------------------------
# \boxed{...}
# --------------------------------------------------------------------------------------------

_BOX_CMD = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _balanced_group(text: str, start: int) -> str | None:
    """Content of the brace group opening at ``text[start] == '{'``; None if it never closes.

    Escaped braces (``\\{``, ``\\}``) are literal set braces in LaTeX and do not nest, so
    ``\\boxed{\\left\\{ 1 \\right.}`` still closes where LaTeX would close it.
    """
    depth = 0
    i = start
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2  # skip the escaped character (\{, \}, \\)
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
        i += 1
    return None


def _box_content(text: str, cmd_end: int) -> str | None:
    """Content of the box whose command ends at ``cmd_end``; None if it never closes."""
    i = cmd_end
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        content = _balanced_group(text, i)
        return None if content is None else content.strip()
    token = re.match(r"[^\s$]+", text[i:])
    if i == cmd_end or token is None:  # "\boxed" glued to nothing usable
        return None
    return token.group(0).rstrip(".,;")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{…}`` / ``\\fbox{…}`` (braces nest), stripped.

    Also accepts the brace-less ``\\boxed 5`` form (one token). None if there is no box, or if
    the last box never closes (a truncated response has not committed to that answer).
    """
    matches = list(_BOX_CMD.finditer(text))
    return _box_content(text, matches[-1].end()) if matches else None


def gold_from_math_solution(solution: str) -> str:
    """Gold answer of a MATH record: the last boxed expression of its reference solution."""
    answer = last_boxed(solution)
    if answer is None:
        raise ValueError("MATH solution has no complete \\boxed{...} answer")
    return answer


# --------------------------------------------------------------------------------------------
# GSM8K
# --------------------------------------------------------------------------------------------


def gsm8k_gold(answer_field: str) -> str:
    """Gold number of a GSM8K record: what follows ``####``, thousands separators removed."""
    if "####" not in answer_field:
        raise ValueError("GSM8K answer field has no '####' line")
    return answer_field.rsplit("####", 1)[1].strip().replace(",", "")


# A sign counts only where it cannot be a binary minus: not glued to a word or closing bracket
# ("COVID-19", "a-3") and not after an operand and a space ("5 - 3" is 2, not -3).
_SIGN = r"(?<![\w)\]}])(?<![\d)\]}]\s)-"
# A number as written in prose or LaTeX, after _clean_numeric_text: optional sign, thousands
# groups of exactly three digits (so "1, 2, 3" stays three numbers), optional decimal part.
_NUMBER = re.compile(rf"(?:{_SIGN})?(?:\d{{1,3}}(?:,\d{{3}})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)")

# "The answer is", "Final answer:", "**Answer:**", "Answer =", "#### Final Answer\n" ...
_MARKER = re.compile(
    r"\b(?:final\s+answer|answer)\b(?:\s*\*\*)?\s*(?:\bis\b|:|=)"
    r"|\bfinal\s+answer\b(?:\s*\*\*)?[ \t]*(?=\n)",
    re.IGNORECASE,
)
_NEXT_QUESTION = re.compile(r"\n\s*(?:Q|Question)\s*:")
_HASHES = re.compile(r"####\s*([^\n]*)")
_SENTENCE_END = re.compile(r"\.(?=\s|$)|\n")
_LEADING_BOX = re.compile(r"(?:\s|\$|\\\[|\\\()*\\(?:boxed|fbox)(?![A-Za-z])")


def _clean_numeric_text(text: str) -> str:
    """Remove notation that only decorates a number: currency, LaTeX spacing, unicode minus."""
    text = text.replace("\u2212", "-").replace("\u2013", "-")  # unicode minus, en dash
    text = text.replace("{,}", ",")  # LaTeX thousands separator 1{,}234
    text = re.sub(r"(?<=\d)\\[,!;: ](?=\d{3}\b)", "", text)  # 1\,234
    text = re.sub(r"\\[,!;: ]", " ", text)
    text = text.replace("\\$", " ").replace("$", " ")
    text = re.sub(r"\\(?:text|textbf|mathrm|mbox)\s*\{", " ", text)
    text = text.replace("**", " ")
    # A sign separated from its digits by currency: "-$5", "$-5" both read -5.
    return re.sub(rf"({_SIGN})\s+(?=\d)", "-", text)


def _canonical_number(raw: str) -> str | None:
    """Canonical decimal string: no thousands separators, no trailing zeros (18.00 -> 18)."""
    raw = raw.replace(",", "").replace(" ", "")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == 0:
        return "0"
    text = format(value.normalize(), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _first_number(fragment: str) -> str | None:
    """Number stated by an answer fragment ("18 dollars", "$1,234.50", "3 * 6 = 18")."""
    boxed = last_boxed(fragment)
    if boxed is not None:
        fragment = boxed
    fragment = _clean_numeric_text(fragment)
    # "3 * 6 = 18": the stated answer is the result, not the first operand.
    if "=" in fragment:
        tail = fragment.rsplit("=", 1)[1]
        if _NUMBER.search(tail):
            fragment = tail
    m = _NUMBER.search(fragment)
    return None if m is None else _canonical_number(m.group(0))


def _marked_answer(text: str) -> str | None:
    """Number after the last answer marker that states one."""
    for m in reversed(list(_MARKER.finditer(text))):
        rest = text[m.end() :].lstrip(" \t*:\n")
        # The answer is the first sentence after the marker; "18.00" is not a sentence end.
        end = _SENTENCE_END.search(rest)
        number = _first_number(rest if end is None else rest[: end.start()])
        if number is None:
            # "**Final Answer**\n\\[\n\\boxed{18}\n\\]": a display box on the next lines.
            box = _LEADING_BOX.match(rest)
            content = _box_content(rest, box.end()) if box else None
            number = _first_number(content) if content else None
        if number is not None:
            return number
    return None


def extract_gsm8k(response: str) -> str | None:
    """Canonical number a GSM8K response commits to, or None.

    Priority: the last explicitly marked answer ("The answer is …", "Final answer: …",
    "**Answer:** …"), then the last ``\\boxed{}``, then the last ``#### N``, then the last number
    in the text. Markers beat the last number because chat models often add a check or a unit
    conversion after stating the answer.
    """
    text = strip_think(response)
    # A few-shot base model may run on into a new exemplar ("\n\nQ: ...") with its own answer;
    # only what precedes it answers this question (unless nothing numeric does).
    head = _NEXT_QUESTION.split(text, maxsplit=1)[0]
    if head != text and _NUMBER.search(_clean_numeric_text(head)):
        text = head
    if not text:
        return None
    marked = _marked_answer(text)
    if marked is not None:
        return marked
    boxed = last_boxed(text)
    if boxed is not None:
        number = _first_number(boxed)
        if number is not None:
            return number
    hashes = _HASHES.findall(text)
    if hashes:
        number = _first_number(hashes[-1])
        if number is not None:
            return number
    numbers = _NUMBER.findall(_clean_numeric_text(text))
    return _canonical_number(numbers[-1]) if numbers else None


def gsm8k_correct(predicted: str | None, gold: str) -> bool:
    """Numeric equality (18 == 18.0 == 18.00 == 1,8 never), so formatting never costs a point."""
    if predicted is None:
        return False
    pred = _canonical_number(predicted.strip())
    ref = _canonical_number(gold.strip())
    return pred is not None and ref is not None and Decimal(pred) == Decimal(ref)


# --------------------------------------------------------------------------------------------
# MATH
# --------------------------------------------------------------------------------------------

# Minerva 4-shot format (Lewkowycz et al. 2022): "Final Answer: The final answer is X. I hope it
# is correct." X may itself contain dots ("$3.5$"), hence the lazy match up to "I hope".
_MINERVA = re.compile(
    r"final answer is\s*(.*?)\s*\.?\s*I hope it is correct", re.IGNORECASE | re.DOTALL
)
_FINAL_IS = re.compile(
    r"final\s+answer(?:\s*\*\*)?\s*(?:\bis\b\s*:?|:)(?:\s*\*\*)?[ \t]*([^\n]*)", re.IGNORECASE
)
# Few-shot base models keep writing new exemplars after answering; those are not this answer.
_NEXT_PROBLEM = re.compile(r"\n\s*Problem:")


def strip_math_delimiters(answer: str) -> str:
    """``$x$``, ``\\(x\\)``, ``\\[x\\]`` and trailing sentence punctuation are presentation,
    not answer (a trailing "." made math-verify read MATH idx 2269 "\\frac{1}{5} i." as 1/5)."""
    answer = answer.strip()
    changed = True
    while changed and answer:
        changed = False
        for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if answer.startswith(left) and answer.endswith(right) and len(answer) >= 2 * len(left):
                answer = answer[len(left) : len(answer) - len(right)].strip()
                changed = True
        stripped = re.sub(r"(?:[.,;]|\\[,;:!]|\\quad|\s)+$", "", answer)
        if stripped != answer:
            answer, changed = stripped, True
    return answer


def _final_answer_phrase(text: str, first: bool) -> str | None:
    """X from "final answer is X" (Minerva phrasing, with or without "I hope it is correct")."""
    minerva = list(_MINERVA.finditer(text))
    if minerva:
        raw = (minerva[0] if first else minerva[-1]).group(1)
    else:
        loose = list(_FINAL_IS.finditer(text))
        if not loose:
            return None
        raw = (loose[0] if first else loose[-1]).group(1).strip()
        # Without the Minerva closing phrase, X ends with its math span or its sentence.
        span = re.match(r"\$[^$]+\$|\\\(.+?\\\)|\\\[.+?\\\]", raw)
        raw = span.group(0) if span else re.split(r"\.(?:\s|$)", raw, maxsplit=1)[0]
    boxed = last_boxed(raw)
    answer = strip_math_delimiters(boxed if boxed is not None else raw)
    return answer or None


def extract_math(response: str, mode: str) -> str | None:
    """LaTeX answer a MATH response commits to (unnormalised; equivalence is math_equiv's job).

    ``mode="chat"``: the last ``\\boxed{}`` after removing reasoning traces, else the
    "final answer is X" phrase. ``mode="base"`` (Minerva 4-shot): the first
    "Final Answer: The final answer is X. I hope it is correct." before any hallucinated next
    "Problem:", else the last ``\\boxed{}``.
    """
    if mode == "chat":
        text = strip_think(response)
        boxed = last_boxed(text)
        if boxed:
            return boxed
        return _final_answer_phrase(text, first=False)
    if mode == "base":
        text = _NEXT_PROBLEM.split(response, maxsplit=1)[0]
        answer = _final_answer_phrase(text, first=True)
        if answer:
            return answer
        return last_boxed(text) or None
    raise ValueError(f"unknown MATH prompt mode {mode!r} (expected 'chat' or 'base')")


def response_truncated(finish_reason: str | None) -> bool:
    """Whether generation hit the token limit.

    A truncated response has not finished its reasoning, so suites score it wrong even when a
    box or number happens to be present: otherwise a longer limit could only lower scores, and
    an intermediate value would be credited as an answer.
    """
    return finish_reason == "length"

"""Answer extraction: realistic response forms, and round trips over the official gold answers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from evalkit.answers import (
    extract_gsm8k,
    extract_math,
    gold_from_math_solution,
    gsm8k_correct,
    gsm8k_gold,
    last_boxed,
    response_truncated,
    strip_think,
)


def _records(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------------------------------------
# strip_think / last_boxed
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>try 20</think>The answer is 18.", "The answer is 18."),
        ("<think>a</think>x<think>b</think>y", "xy"),
        ("Sure. <think>\nlong\n</think>\n\nAnswer: 3", "Sure. \n\nAnswer: 3"),
        # template opened the block in the prompt: only the close tag is in the response
        ("reasoning 20 ...</think>Answer: 18", "Answer: 18"),
        # never closes: the model only thought, there is no answer
        ("<think>maybe \\boxed{3}", ""),
        ("Answer: 4 <think>second thoughts", "Answer: 4"),
        ("no tags at all", "no tags at all"),
    ],
)
def test_strip_think(text: str, expected: str) -> None:
    assert strip_think(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so $\\boxed{5}$.", "5"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\frac{\\sqrt{3}}{2}} and later \\boxed{ 7 }", "7"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        ("\\boxed{\\left\\{ -1 \\right.}", "\\left\\{ -1 \\right."),  # escaped braces do not nest
        ("\\fbox{C}", "C"),
        ("$\\boxed 5$", "5"),
        ("\\boxed 12.", "12"),
        ("\\boxed{}", ""),
        ("\\boxed{3", None),  # truncated inside the box
        ("\\boxed{1} then \\boxed{2", None),  # the last box is the committed one
        ("no box here", None),
        ("\\boxedx{4}", None),
    ],
)
def test_last_boxed(text: str, expected: str | None) -> None:
    assert last_boxed(text) == expected


def test_gold_from_math_solution_requires_a_box() -> None:
    assert gold_from_math_solution("Thus $\\boxed{\\dfrac{3}{4}}.$") == "\\dfrac{3}{4}"
    with pytest.raises(ValueError):
        gold_from_math_solution("The answer is 3.")


def test_response_truncated() -> None:
    assert response_truncated("length")
    assert not response_truncated("stop")
    assert not response_truncated(None)


# --------------------------------------------------------------------------------------------
# GSM8K
# --------------------------------------------------------------------------------------------

GSM8K_RESPONSES = [
    # (response, canonical number the response commits to)
    ("She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18", "18"),
    ("**Answer:** 18", "18"),
    ("**Answer**: $18", "18"),
    ("**Final Answer:** **18**", "18"),
    ("The answer is $1,234.", "1234"),
    ("The answer is 1,000,000.", "1000000"),
    ("The answer is 18 dollars.", "18"),
    ("18.00", "18"),
    ("The answer is $18.00.", "18"),
    ("The answer is \\$18.", "18"),
    ("The answer is $1,234.50.", "1234.5"),
    ("#### 18", "18"),
    ("####  1,600", "1600"),
    ("The total is \\boxed{18}.", "18"),
    ("$\\boxed{1{,}234}$", "1234"),
    ("The final answer is $\\boxed{\\$18}$", "18"),
    ("**Final Answer**\n\\[\n\\boxed{18}\n\\]", "18"),
    ("**Final Answer**\n\n18", "18"),
    ("<think>Maybe 5*4=20? No: 16-7=9, 9*2=18.</think>The answer is 18.", "18"),
    ("<think>The answer is 20.</think>\n\nShe earns **$18** a day.", "18"),
    ("<think>I think the answer is 20", None),
    ("reasoning 20...</think> Answer: 18", "18"),
    # a marked answer beats the last number in the text
    ("She earns 18 dollars. The answer is 18. Check: 16 - 3 - 4 = 9 eggs.", "18"),
    ("The answer is 18.\n\nQ: A farmer has 5 cows", "18"),
    ("Answer: 5 apples", "5"),
    ("It takes 3 hours.\n\nAnswer: 3", "3"),
    ("So the answer is: 3 * 6 = 18", "18"),
    ("Final answer: 0.5", "0.5"),
    ("The answer is .5", "0.5"),
    ("The temperature fell to -3 degrees. The answer is -3.", "-3"),
    ("The answer is \u22127.", "-7"),
    ("He lost -$5 on the deal.", "-5"),
    ("He has 5 - 8 = -3 left", "-3"),
    ("costs 10 - 3", "3"),  # a binary minus is not a sign
    ("The discount is 25%. The answer is 25%.", "25"),
    ("The final answer is 18. I hope it is correct.", "18"),
    ("Q: 1\nA: 2, 3, 4. The answer is 4.", "4"),
    # a base model running on into the next 8-shot exemplar
    (
        "9 * 2 = 18. The answer is 18.\n\nQ: Tom has 3 pens, buys 4.\nA: 3+4=7. The answer is 7",
        "18",
    ),
    ("Q: restating: 16 eggs, 3 eaten.\nShe sells 9 eggs for $18. The answer is 18.", "18"),
    ("COVID-19", "19"),
    ("nothing numeric here", None),
    ("", None),
]


@pytest.mark.parametrize(("response", "expected"), GSM8K_RESPONSES)
def test_extract_gsm8k(response: str, expected: str | None) -> None:
    assert extract_gsm8k(response) == expected


@pytest.mark.parametrize(
    ("response", "gold", "correct"),
    [
        ("The answer is 18 dollars.", "18", True),
        ("The answer is 18.00", "18", True),
        ("#### 1,600", "1600", True),
        ("The answer is -3.", "-3", True),
        ("The answer is 3.", "-3", False),
        ("She sold 18 eggs, so the answer is 17.", "18", False),  # marked answer, not the last 18
        ("The answer is 18. Later she buys 20 more.", "20", False),
        ("<think>The answer is 18.</think>The answer is 20.", "18", False),
        ("The answer is 0.5", "5", False),
        ("The answer is 180", "18", False),
        ("I cannot tell.", "18", False),
    ],
)
def test_gsm8k_scoring(response: str, gold: str, correct: bool) -> None:
    assert gsm8k_correct(extract_gsm8k(response), gold) is correct


@pytest.mark.parametrize(
    ("predicted", "gold", "expected"),
    [
        ("18", "18", True),
        ("18.0", "18", True),
        ("18.00", "18", True),
        ("1,234", "1234", True),
        ("-3", "-3", True),
        ("3", "-3", False),
        ("0.5", "0.50", True),
        ("17.99", "18", False),
        (None, "18", False),
        ("eighteen", "18", False),
    ],
)
def test_gsm8k_correct(predicted: str | None, gold: str, expected: bool) -> None:
    assert gsm8k_correct(predicted, gold) is expected


def test_gsm8k_gold_round_trip_on_official_data(data_dir: Path) -> None:
    records = _records(data_dir / "gsm8k" / "test.jsonl")
    assert len(records) == 1319
    golds = [gsm8k_gold(r["answer"]) for r in records]
    assert all(re.fullmatch(r"-?\d+", g) for g in golds)
    for i, (record, gold) in enumerate(zip(records, golds, strict=True)):
        as_written = record["answer"].rsplit("####", 1)[1].strip()  # keeps "2,125"
        for response in (
            f"... #### {gold}",
            f"Let me compute.\n\nThe final answer is {gold}.",
            f"... so she pays ${as_written}.\n**Answer:** ${as_written}",
            f"$\\boxed{{{gold}}}$",
        ):
            assert gsm8k_correct(extract_gsm8k(response), gold), (i, response)
        wrong = [str(int(gold) + 1), golds[(i + 1) % len(golds)]]
        for value in wrong:
            if value != gold:
                assert not gsm8k_correct(extract_gsm8k(f"The answer is {value}."), gold), (i, value)


def test_gsm8k_gold_needs_marker() -> None:
    assert gsm8k_gold("blah\n#### 2,125") == "2125"
    with pytest.raises(ValueError):
        gsm8k_gold("no marker 5")


# --------------------------------------------------------------------------------------------
# MATH extraction
# --------------------------------------------------------------------------------------------

MINERVA = "Final Answer: The final answer is ${}$. I hope it is correct."


@pytest.mark.parametrize(
    ("response", "mode", "expected"),
    [
        ("So the answer is $\\boxed{\\frac{1}{2}}$.", "chat", "\\frac{1}{2}"),
        ("We get \\boxed{3} first; correcting, \\boxed{4}.", "chat", "4"),
        ("<think>\\boxed{3}</think> Hence $\\boxed{5}$", "chat", "5"),
        ("<think>\\boxed{3}", "chat", None),  # only thinking, no answer
        ("The final answer is $\\frac{1}{2}$.", "chat", "\\frac{1}{2}"),
        ("the final answer is: 3.5. Done.", "chat", "3.5"),
        ("**Final Answer:** $x=3$", "chat", "x=3"),
        (MINERVA.format("\\frac{1}{2}"), "chat", "\\frac{1}{2}"),
        ("\\boxed{3", "chat", None),
        ("\\boxed{}", "chat", None),
        ("I don't know.", "chat", None),
        (MINERVA.format("\\frac{1}{2}"), "base", "\\frac{1}{2}"),
        (MINERVA.format("3.5"), "base", "3.5"),
        ("Final Answer: The final answer is 3.5. I hope it is correct.", "base", "3.5"),
        ("Final Answer: The final answer is $\\boxed{7}$. I hope it is correct.", "base", "7"),
        # the base model kept writing exemplars: the first answer is the one for this problem
        (
            MINERVA.format("(1,2]")
            + "\n\nProblem:\nWhat is 3+4?\n\nSolution: "
            + MINERVA.format("7"),
            "base",
            "(1,2]",
        ),
        ("... thus $\\boxed{12}$.\n\nProblem:\nnext one \\boxed{9}", "base", "12"),
        ("The answer is 5.", "base", None),
    ],
)
def test_extract_math(response: str, mode: str, expected: str | None) -> None:
    assert extract_math(response, mode) == expected


def test_extract_math_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError):
        extract_math("\\boxed{1}", "few-shot")


def test_math_gold_answers_are_boxed_and_round_trip(data_dir: Path) -> None:
    records = _records(data_dir / "math" / "test.jsonl")
    assert len(records) == 5000
    for record in records:
        gold = gold_from_math_solution(record["solution"])
        assert gold, record["idx"]
        chat = f"... so the answer is $\\boxed{{{gold}}}$."
        assert extract_math(chat, "chat") == gold, record["idx"]
        base = extract_math(MINERVA.format(gold), "base")
        assert base is not None and base.rstrip(".") == gold.rstrip("."), record["idx"]


def test_math500_answer_is_last_box_of_solution(data_dir: Path) -> None:
    records = _records(data_dir / "math500" / "test.jsonl")
    assert len(records) == 500
    for record in records:
        assert gold_from_math_solution(record["solution"]) == record["answer"], record["unique_id"]

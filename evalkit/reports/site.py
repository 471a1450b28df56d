"""The static report site: index (leaderboard, claims, comparisons, breakdowns, runs), a page
per run (metrics, provenance, sample browser), tables, plots, CSS/JS and a manifest.

Self-contained: relative links only, no CDN, no fonts, no fetch(), so it works from file://
and any static host. Everything a model wrote goes through Jinja2's autoescaping. The site is
built in a staging folder next to `out` and swapped in whole, so a failed build leaves the
previous site as it was. Rebuilding from the same runs gives the same bytes except
`manifest.json`'s `built_at` (which honours SOURCE_DATE_EPOCH).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import evalkit
from evalkit import provenance
from evalkit.errors import EvalkitError
from evalkit.reports import browser, collect, plots, tables
from evalkit.store import Store, write_json_atomic

GENERATOR = "evalkit report"
MANIFEST = "manifest.json"
PAGE_SIZE = 100  # samples shown per page of the sample browser
STATIC_FILES = ("site.css", "site.js")


@dataclass(frozen=True)
class Report:
    """What a build produced: where, from which runs, and the headline counts."""

    out: Path
    run_ids: tuple[str, ...]
    claims: int
    claims_measured: int
    comparisons: int
    files: int


# -- Jinja2 filters: number formats of the site (fractions shown as percentages) -------------
def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}"


def ci(pair: Sequence[float] | None) -> str:
    return "—" if not pair else f"[{100 * pair[0]:.1f}, {100 * pair[1]:.1f}]"


def points(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:+.2f}"


def ci_points(pair: Sequence[float] | None) -> str:
    return "—" if not pair else f"[{100 * pair[0]:+.1f}, {100 * pair[1]:+.1f}]"


def pvalue(p: float | None) -> str:
    if p is None:
        return "—"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def short_source(source: str) -> str:
    """A source's first part (`github.com/... README.md`), its full text being the title."""
    cut = min((i for i in (source.find(" ("), source.find(" [")) if i > 0), default=len(source))
    return source[:cut]


def tool_call(call: Any) -> str:
    """An OpenAI-format tool call as `name(arguments)`."""
    if isinstance(call, dict) and isinstance(call.get("function"), dict):
        fn = call["function"]
        return f"{fn.get('name')}({fn.get('arguments', '')})"
    return compact(call)


def _environment() -> Any:
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(
        loader=PackageLoader("evalkit.reports", "templates"),
        autoescape=True,  # every template, whatever its name: model text is never markup
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        pct=pct,
        ci=ci,
        points=points,
        ci_points=ci_points,
        pvalue=pvalue,
        pretty=pretty,
        compact=compact,
        tool_call=tool_call,
        short_source=short_source,
        slug=plots.slug,
    )
    return env


# -- building ------------------------------------------------------------------------------
def _prepare_out(out: Path) -> None:
    """Refuse to replace a folder that is not an earlier report (e.g. `--out .`)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise EvalkitError(f"--out {out} exists and is not a folder")
    manifest = out / MANIFEST
    if any(out.iterdir()):
        try:
            ours = json.loads(manifest.read_text(encoding="utf-8")).get("generator") == GENERATOR
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise EvalkitError(
                f"--out {out} is a non-empty folder that is not an evalkit report; "
                "choose a new or empty folder"
            )


def _built_at() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.fromtimestamp(int(epoch), UTC) if epoch else datetime.now(UTC)
    return when.isoformat(timespec="seconds")


def _breakdown_sections(
    entries: Sequence[collect.RunEntry], plot_for: dict[tuple[str, str], plots.Plot]
) -> list[dict[str, Any]]:
    """Per leaderboard column and breakdown key: categories x models, with each cell's run."""
    sections: dict[tuple[str, str], dict[str, Any]] = {}
    for e in entries:
        for key, values in (e.summary.get("breakdowns") or {}).items():
            if not isinstance(values, dict):
                continue
            for value, m in values.items():
                if not (isinstance(m, dict) and "mean" in m):
                    continue
                s = sections.setdefault(
                    (e.column, key),
                    {
                        "column": e.column,
                        "key": key,
                        "stem": plots.slug(f"{e.column}-{key}"),
                        "cells": {},
                        "sizes": {},
                    },
                )
                s["cells"][(e.label, value)] = {"mean": m["mean"], "metric": m, "run_id": e.run_id}
                s["sizes"][value] = max(s["sizes"].get(value, 0), m.get("n") or 0)
    for (column, key), s in sections.items():
        s["models"] = sorted({model for model, _ in s["cells"]})
        s["categories"] = sorted(s["sizes"])
        s["plot"] = plot_for.get((column, key))
    return [sections[k] for k in sorted(sections)]


def _run_breakdowns(summary: dict[str, Any]) -> list[tuple[str, list[tuple[str, Any]]]]:
    return [
        (key, [(v, m) for v, m in sorted(values.items()) if isinstance(m, dict) and "mean" in m])
        for key, values in sorted((summary.get("breakdowns") or {}).items())
        if isinstance(values, dict)
    ]


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def build_site(
    store: Store,
    out: Path,
    *,
    run_ids: Sequence[str] | None = None,
    compare: Sequence[tuple[str, str]] = (),
    force: bool = False,
) -> Report:
    """Build the report of `store` into `out`: the latest finished run of each group, or the
    pinned `run_ids`; `compare` pins the paired comparisons (run id pairs, which join the
    report if not already in it), `force` compares them even where evalkit.compare refuses."""
    out = Path(out).resolve()
    _prepare_out(out)
    data = collect.gather(store, run_ids, compare, force=force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        figures = _write_tables_and_plots(data, staging)
        static = importlib.resources.files("evalkit.reports") / "static"
        (staging / "static").mkdir()
        for name in STATIC_FILES:
            (staging / "static" / name).write_bytes((static / name).read_bytes())
        _render_pages(data, figures, staging)
        files = {
            p.relative_to(staging).as_posix(): _sha256(p)
            for p in sorted(staging.rglob("*"))
            if p.is_file()
        }
        write_json_atomic(
            staging / MANIFEST,
            {
                "generator": GENERATOR,
                "evalkit_version": evalkit.__version__,
                "evalkit_git": provenance.git_state(),
                "built_at": _built_at(),
                "run_ids": [e.run_id for e in data.entries],
                "claims": {"total": len(data.verdicts), "measured": _measured(data.verdicts)},
                "comparisons": [[c.run_a, c.run_b] for c in data.comparisons],
                "files": files,
            },
        )
        _swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Report(
        out=out,
        run_ids=tuple(e.run_id for e in data.entries),
        claims=len(data.verdicts),
        claims_measured=_measured(data.verdicts),
        comparisons=len(data.comparisons),
        files=len(files) + 1,
    )


def _write_tables_and_plots(data: collect.ReportData, staging: Path) -> dict[str, Any]:
    entries = data.entries
    board = collect.leaderboard_frame(entries)
    breakdown = collect.breakdown_frame(entries)
    claims = collect.claims_frame(data.verdicts)
    compared = collect.comparison_frame(data.comparisons, {e.run_id: e.label for e in entries})
    wide = collect.leaderboard_wide(entries)
    tdir = staging / "tables"
    fractions = ("mean", "stderr", "ci95_low", "ci95_high")
    tables.write_table(board, tdir, "leaderboard", percent=fractions)
    tables.write_table(wide, tdir, "leaderboard_wide", percent=wide.columns, index=True)
    tables.write_table(breakdown, tdir, "breakdowns", percent=fractions)
    tables.write_table(
        claims, tdir, "claims", percent=("claimed", "measured", "ci95_low", "ci95_high", "gap")
    )
    tables.write_table(
        compared, tdir, "comparisons", percent=("mean_a", "mean_b", "diff", *fractions[2:])
    )
    tables.write_table(collect.runs_frame(entries), tdir, "runs", percent=("mean",))
    return plots.all_plots(board, breakdown, claims, compared, staging / "plots")


def _render_pages(data: collect.ReportData, figures: dict[str, Any], staging: Path) -> None:
    entries, by_id = data.entries, data.by_id
    site = {"version": evalkit.__version__, "run_ids": [e.run_id for e in entries]}
    env = _environment()
    rows: dict[str, dict[str, collect.RunEntry]] = {}
    for e in entries:
        rows.setdefault(e.label, {})[e.column] = e
    index = env.get_template("index.html.j2").render(
        root="",
        site=site,
        entries=entries,
        leaderboard={
            "columns": sorted({e.column for e in entries}),
            "metrics": {e.column: e.metric_name for e in entries},
            "rows": [{"label": k, "cells": rows[k]} for k in sorted(rows)],
        },
        measured_verdicts=[v for v in data.verdicts if v.verdict != "not measured"],
        unmeasured_verdicts=[v for v in data.verdicts if v.verdict == "not measured"],
        claim_counts=sorted(Counter(v.verdict for v in data.verdicts).items()),
        comparisons=[
            {
                "c": c,
                "label_a": by_id[c.run_a].label,
                "label_b": by_id[c.run_b].label,
                "column": by_id[c.run_a].column,
            }
            for c in data.comparisons
        ],
        skipped=data.skipped,
        breakdowns=_breakdown_sections(entries, figures["breakdowns"]),
        plots=figures,
    )
    (staging / "index.html").write_text(index, encoding="utf-8")
    run_page = env.get_template("run.html.j2")
    (staging / "runs").mkdir()
    for e in entries:
        html = run_page.render(
            root="../",
            site=site,
            e=e,
            breakdowns=_run_breakdowns(e.summary),
            browser=browser.build_browser(e.run.samples()),
            page_size=PAGE_SIZE,
        )
        (staging / "runs" / f"{e.run_id}.html").write_text(html, encoding="utf-8")


def _measured(verdicts: Sequence[Any]) -> int:
    return sum(v.verdict != "not measured" for v in verdicts)


def _swap_in(staging: Path, out: Path) -> None:
    """Replace `out` by the finished staging folder; the old site is removed only after."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old."))
        os.rename(out, old / "site")
    try:
        os.rename(staging, out)
    except BaseException:
        if old is not None:
            os.rename(old / "site", out)
        raise
    finally:
        if old is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(old)
    os.chmod(out, 0o755)  # mkdtemp makes it 0700: a static host must be able to read it

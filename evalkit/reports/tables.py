"""Report tables as files: CSV with run.json's exact numbers, Markdown and HTML for reading
(fractions shown as percentages with the unit in the column name)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

FORMATS = ("csv", "md", "html")


def for_reading(frame: pd.DataFrame, percent: Iterable[str] = ()) -> pd.DataFrame:
    """Fraction columns as percentages rounded to 2 decimals, renamed `<name> (%)`."""
    out = frame.copy()
    renames = {}
    for col in percent:
        if col in out.columns:
            out[col] = (pd.to_numeric(out[col], errors="coerce") * 100).round(2)
            renames[col] = f"{col} (%)"
    return out.rename(columns=renames)


def write_table(
    frame: pd.DataFrame,
    out_dir: Path,
    name: str,
    *,
    percent: Iterable[str] = (),
    index: bool = False,
) -> list[Path]:
    """`<name>.csv`, `.md` and `.html` in `out_dir`; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    readable = for_reading(frame, percent)
    paths = {fmt: out_dir / f"{name}.{fmt}" for fmt in FORMATS}
    frame.to_csv(paths["csv"], index=index, lineterminator="\n")
    paths["md"].write_text(
        (readable.to_markdown(index=index, missingval="—") if len(frame) else "(no rows)") + "\n",
        encoding="utf-8",
    )
    paths["html"].write_text(
        readable.to_html(index=index, na_rep="—", border=0, classes="report-table") + "\n",
        encoding="utf-8",
    )
    return list(paths.values())

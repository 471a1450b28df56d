"""Report figures with matplotlib (Agg), each as SVG and PNG.

Byte-reproducible: a fixed SVG hash salt and no creation date in the files, so that the same
runs give the same site. Figures are sized by their content (rows, categories) so that labels
never overlap; scores are in percent throughout.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

RC = {
    "svg.hashsalt": "evalkit-report",
    "svg.fonttype": "path",
    "text.parse_math": False,  # a "$" in a model or category name is text, not mathtext
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
}
PNG_DPI = 144


@dataclass(frozen=True)
class Plot:
    """A figure written as `<stem>.svg` and `<stem>.png` under the plots folder."""

    stem: str
    title: str
    alt: str


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "plot"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, out_dir: Path, stem: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / f"{stem}.svg", bbox_inches="tight", metadata={"Date": None})
    fig.savefig(out_dir / f"{stem}.png", bbox_inches="tight", dpi=PNG_DPI)
    plt.close(fig)


def _wrap(label: str, width: int = 16) -> str:
    return "\n".join(textwrap.wrap(label, width, break_long_words=True)) or label


def _errors(mean: pd.Series, lo: pd.Series, hi: pd.Series) -> list[list[float]]:
    """Error-bar lengths below and above each point (0 where the run has no interval)."""
    return [
        (mean - lo.fillna(mean)).clip(lower=0).tolist(),
        (hi.fillna(mean) - mean).clip(lower=0).tolist(),
    ]


def scores_plot(board: pd.DataFrame, out_dir: Path) -> Plot | None:
    """Headline score with its 95% CI, one panel per leaderboard column, one row per model."""
    heads = board[board["headline"]].dropna(subset=["mean"])
    if heads.empty:
        return None
    plt = _pyplot()
    columns = sorted(heads["column"].unique())
    heights = [0.9 + 0.32 * (heads["column"] == c).sum() for c in columns]
    with plt.rc_context(RC):
        fig, axes = plt.subplots(
            len(columns),
            1,
            figsize=(7.5, sum(heights) + 0.4),
            gridspec_kw={"height_ratios": heights},
            squeeze=False,
        )
        for ax, column in zip(axes[:, 0], columns, strict=True):
            rows = heads[heads["column"] == column].sort_values("model", ascending=False)
            pct = rows[["mean", "ci95_low", "ci95_high"]] * 100
            y = range(len(rows))
            ax.errorbar(
                pct["mean"],
                list(y),
                xerr=_errors(pct["mean"], pct["ci95_low"], pct["ci95_high"]),
                fmt="o",
                color="#1f5fa8",
                ecolor="#6b8fbf",
                capsize=3,
                clip_on=False,  # a score of 0 or 100 sits on the axis, fully drawn
            )
            ax.set_yticks(list(y), [_wrap(m, 34) for m in rows["model"]])
            ax.set_xlim(0, 100)
            ax.set_ylim(-0.6, len(rows) - 0.4)
            ax.grid(axis="x", color="#dddddd", linewidth=0.6)
            ax.set_title(f"{column} — {rows['metric'].iloc[0]}", loc="left")
            ax.set_xlabel(f"{rows['metric'].iloc[0]} (%), 95% CI")
            for yi, (_, r) in zip(y, pct.iterrows(), strict=True):
                ax.annotate(
                    f"{r['mean']:.1f}%",
                    xy=(1.03, yi),
                    xycoords=("axes fraction", "data"),
                    va="center",
                    fontsize=8,
                )
        fig.suptitle("Scores by suite and model", x=0.01, ha="left", fontweight="bold")
        fig.tight_layout()
        _save(plt, fig, out_dir, "scores")
    return Plot("scores", "Scores by suite and model", "Headline score of each model per suite")


def claims_plot(claims: pd.DataFrame, out_dir: Path) -> Plot | None:
    """Published value against evalkit's measurement (both %), with the y = x line."""
    if claims.empty:
        return None
    numeric = claims[claims["kind"] == "numeric"]
    measured = numeric.dropna(subset=["measured", "claimed"]).copy()
    if measured.empty:
        return None
    values = ["claimed", "measured", "ci95_low", "ci95_high"]
    measured[values] = measured[values].astype(float) * 100
    plt = _pyplot()
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(6.5, 6))
        ax.plot([0, 100], [0, 100], color="#999999", linestyle="--", linewidth=1, label="y = x")
        ax.errorbar(
            measured["claimed"],
            measured["measured"],
            yerr=_errors(measured["measured"], measured["ci95_low"], measured["ci95_high"]),
            fmt="o",
            color="#b4462b",
            capsize=3,
            label="measured, 95% CI",
        )
        for _, r in measured.iterrows():
            # Label on the side of the point that faces the plot's middle: never off the axes.
            right, top = r["claimed"] > 60, r["measured"] > 90
            ax.annotate(
                f"{r['model']} · {r['suite']}",
                xy=(r["claimed"], r["measured"]),
                xytext=(-7 if right else 7, -9 if top else 7),
                textcoords="offset points",
                ha="right" if right else "left",
                fontsize=7,
            )
        ax.set_xlim(-2, 102)
        ax.set_ylim(-2, 102)
        ax.set_aspect("equal")
        ax.grid(color="#eeeeee", linewidth=0.6)
        ax.set_xlabel("published value (%)")
        ax.set_ylabel("measured by evalkit (%)")
        ax.set_title("Claimed vs measured", loc="left")
        ax.legend(loc="upper left", frameon=False)
        fig.tight_layout()
        _save(plt, fig, out_dir, "claims")
    return Plot("claims", "Claimed vs measured", "Published values against measured scores")


def comparisons_plot(comparisons: pd.DataFrame, out_dir: Path) -> Plot | None:
    """Paired difference (B − A, percentage points) with its 95% CI and p-value."""
    if comparisons.empty:
        return None
    plt = _pyplot()
    rows = comparisons.iloc[::-1]
    labels = [
        _wrap(f"{r['model_b']} − {r['model_a']} ({r['suite']})", 48) for _, r in rows.iterrows()
    ]
    pp = rows[["diff", "ci95_low", "ci95_high"]].astype(float) * 100
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(8, 1.2 + 0.42 * len(rows)))
        y = list(range(len(rows)))
        ax.axvline(0, color="#999999", linewidth=1)
        ax.errorbar(
            pp["diff"],
            y,
            xerr=_errors(pp["diff"], pp["ci95_low"], pp["ci95_high"]),
            fmt="s",
            color="#2b7a4b",
            capsize=3,
        )
        ax.set_yticks(y, labels)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        bound = max(5.0, float(pp.abs().max().max()) * 1.1)
        ax.set_xlim(-bound, bound)
        ax.grid(axis="x", color="#dddddd", linewidth=0.6)
        ax.set_xlabel("difference B − A (percentage points), 95% paired-bootstrap CI")
        ax.set_title("Paired comparisons", loc="left")
        for yi, (_, r) in zip(y, rows.iterrows(), strict=True):
            ax.annotate(
                f"p = {r['p_value']:.2g}",
                xy=(1.03, yi),
                xycoords=("axes fraction", "data"),
                va="center",
                fontsize=8,
            )
        fig.tight_layout()
        _save(plt, fig, out_dir, "comparisons")
    return Plot("comparisons", "Paired comparisons", "Paired differences with 95% CIs")


def breakdown_plots(breakdowns: pd.DataFrame, out_dir: Path) -> dict[tuple[str, str], Plot]:
    """A heat map (models x categories, % correct) per leaderboard column and breakdown key."""
    out: dict[tuple[str, str], Plot] = {}
    if breakdowns.empty:
        return out
    plt = _pyplot()
    for (column, key), frame in breakdowns.groupby(["column", "key"], sort=True):
        grid = frame.pivot(index="model", columns="value", values="mean").sort_index() * 100
        grid = grid.reindex(columns=sorted(grid.columns))
        n_rows, n_cols = grid.shape
        with plt.rc_context(RC):
            fig, ax = plt.subplots(figsize=(2.2 + 0.95 * n_cols, 1.6 + 0.42 * n_rows))
            image = ax.imshow(
                grid.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=100, aspect="auto"
            )
            ax.set_xticks(range(n_cols), [_wrap(str(c), 12) for c in grid.columns], fontsize=8)
            ax.set_yticks(range(n_rows), [_wrap(str(m), 30) for m in grid.index], fontsize=8)
            for (i, j), value in pd.DataFrame(grid.to_numpy()).stack().items():
                ax.text(
                    j,
                    i,
                    f"{value:.0f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="black" if value > 60 else "white",
                )
            ax.spines[:].set_visible(False)
            ax.set_xlabel(key)
            ax.set_title(f"{column}: by {key}", loc="left")
            fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02).set_label("score (%)")
            fig.tight_layout()
            stem = f"breakdown-{slug(column)}-{slug(key)}"
            _save(plt, fig, out_dir, stem)
        out[(column, key)] = Plot(
            stem, f"{column}: by {key}", f"Score by {key} for each model, {column}"
        )
    return out


def all_plots(
    board: pd.DataFrame,
    breakdowns: pd.DataFrame,
    claims: pd.DataFrame,
    comparisons: pd.DataFrame,
    out_dir: Path,
) -> dict[str, Any]:
    """Every figure of a report; a figure with nothing to show is not drawn (None)."""
    return {
        "scores": scores_plot(board, out_dir),
        "claims": claims_plot(claims, out_dir),
        "comparisons": comparisons_plot(comparisons, out_dir),
        "breakdowns": breakdown_plots(breakdowns, out_dir),
    }

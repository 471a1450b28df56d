"""Plain-text views of stored runs for the terminal (`evalkit run`, `evalkit results`)."""

from __future__ import annotations

from typing import Any

from evalkit.store import Store


def format_metric(m: dict[str, Any]) -> str:
    if m.get("mean") is None:
        return "n/a"
    lo, hi = m["ci95"]
    return (
        f"{100 * m['mean']:6.2f}%  95% CI [{100 * lo:.2f}, {100 * hi:.2f}]  "
        f"± {100 * m['stderr']:.2f} s.e.  (n={m['n']})"
    )


def results_table(store: Store, suite: str | None = None) -> str:
    rows = [("run id", "suite", "mode", "model", "status", "metric", "score", "95% CI", "n")]
    for run in store.runs():
        cfg = run.config()["identity"]
        if suite and cfg["suite"] != suite:
            continue
        if not run.finished:
            done = len(run.samples())
            rows.append(
                (
                    run.run_id,
                    cfg["suite"],
                    cfg["mode"],
                    cfg["model"],
                    f"unfinished ({done} done)",
                    "",
                    "",
                    "",
                    "",
                )
            )
            continue
        summary = run.summary()
        name, m = next(iter(summary["metrics"].items()))
        ci = f"[{100 * m['ci95'][0]:.1f}, {100 * m['ci95'][1]:.1f}]" if m["ci95"] else ""
        score = f"{100 * m['mean']:.2f}" if m["mean"] is not None else ""
        rows.append(
            (
                run.run_id,
                cfg["suite"],
                cfg["mode"],
                cfg["model"],
                "complete",
                name,
                score,
                ci,
                str(m["n"]),
            )
        )
    if len(rows) == 1:
        return f"no runs in {store.root}"
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )

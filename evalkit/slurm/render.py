"""Rendering the sbatch templates of `slurm/` (Jinja2), so that what an admin reads in the
repository is what runs."""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from evalkit.errors import EvalkitError

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "slurm"


def shell_word(value: Any) -> str:
    """Quote for bash, except a whole `${name}`-bearing word, which is double-quoted so the
    variable still expands (the head node's address is only known inside the job)."""
    text = str(value)
    if "${" in text and '"' not in text:
        return f'"{text}"'
    return shlex.quote(text)


def shell_join(words: Iterable[Any]) -> str:
    return " ".join(shell_word(w) for w in words)


def render(template: str, **context: Any) -> str:
    import jinja2

    if not (TEMPLATES_DIR / template).is_file():
        raise EvalkitError(f"sbatch template {template} not found in {TEMPLATES_DIR}")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # shell scripts, quoted by the `sh` and `shjoin` filters
    )
    env.filters["sh"] = shell_word
    env.filters["shjoin"] = shell_join
    return env.get_template(template).render(**context)

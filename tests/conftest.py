"""Shared fixtures: the official data lives outside the repo (../shared/data), never copied in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    path = Path(os.environ.get("EVALKIT_DATA_DIR") or REPO.parent / "shared" / "data")
    if not (path / "gsm8k" / "test.jsonl").is_file():
        raise RuntimeError(f"official data not found at {path}: set EVALKIT_DATA_DIR")
    return path.resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return shared_data_dir()


@pytest.fixture()
def results_dir(tmp_path: Path) -> Path:
    return tmp_path / "results"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh response cache per test (subprocesses inherit it): the cache is on by default,
    and a test that counts server requests must not be answered from an earlier test's run."""
    path = tmp_path / "evalkit-cache"
    monkeypatch.setenv("EVALKIT_CACHE_DIR", str(path))
    return path

"""Dataset identity: the same records loaded another way give the same fingerprint.

The other way is the hub code path itself (`datasets.load_dataset(repo, config, split)`), pointed
at a local dataset repository laid out as the hub's (parquet shards per config, README configs),
since the hub is unreachable here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evalkit.data import DataLocation, HubSource, fingerprint, read_jsonl
from evalkit.registry import get_suite


def write_hub_repo(root: Path, configs: dict[str | None, list[dict]], split: str) -> None:
    """A dataset repo as the hub stores it: <config>/<split>-00000-of-00001.parquet."""
    lines = ["---", "configs:"]
    for config, rows in configs.items():
        name = config or "default"
        folder = root / name
        folder.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{split}-00000-of-00001.parquet")
        lines += [
            f"- config_name: {name}",
            "  data_files:",
            f"  - split: {split}",
            f"    path: {name}/{split}-*",
        ]
    (root / "README.md").write_text("\n".join([*lines, "---", ""]))


@pytest.mark.parametrize("suite_name", ["gsm8k", "math", "math500"])
def test_hub_path_and_local_file_agree(
    suite_name: str, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite = get_suite(suite_name)
    local = suite.load_records(DataLocation(data_dir))
    assert suite.fingerprint(local) == suite.expected_fingerprint

    # Rebuild the hub layout: different field order, MATH without its `idx` and split by subject.
    if suite_name == "math":
        by_subject: dict[str | None, list[dict]] = {}
        for r in local:
            key = r["type"].lower().replace(" & ", "_and_").replace(" ", "_")
            by_subject.setdefault(key, []).append(
                {k: r[k] for k in ("type", "solution", "problem", "level")}
            )
        assert tuple(by_subject) == suite.hub.configs
        configs = by_subject
    else:
        configs = {suite.hub.configs[0]: [dict(reversed(list(r.items()))) for r in local]}
    repo = tmp_path / "hub" / suite.hub.repo
    write_hub_repo(repo, configs, suite.hub.split)
    monkeypatch.setattr(type(suite), "hub", HubSource(str(repo), suite.hub.configs, "test"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("EVALKIT_DATA_DIR", raising=False)

    from_hub = suite.load_records(DataLocation.resolve(None))
    assert len(from_hub) == len(local)
    assert suite.fingerprint(from_hub) == suite.expected_fingerprint
    assert [suite.to_sample(i, r).id for i, r in enumerate(from_hub)] == [
        suite.to_sample(i, r).id for i, r in enumerate(local)
    ]


def test_fingerprint_sees_content_and_ids_not_file_bytes(data_dir: Path) -> None:
    rows = read_jsonl(data_dir / "math500" / "test.jsonl")
    fields = ("problem", "answer")
    by_uid = fingerprint(rows, lambda i, r: r["unique_id"], fields)
    # order and key order of the file do not matter when ids are content-based
    shuffled = [dict(sorted(r.items())) for r in reversed(rows)]
    assert fingerprint(shuffled, lambda i, r: r["unique_id"], fields) == by_uid
    # a one-character change in one record does
    changed = [dict(r) for r in rows]
    changed[42]["answer"] += " "
    assert fingerprint(changed, lambda i, r: r["unique_id"], fields) != by_uid
    # a json round trip with escaped unicode is the same data
    escaped = [json.loads(json.dumps(r, ensure_ascii=True)) for r in rows]
    assert fingerprint(escaped, lambda i, r: r["unique_id"], fields) == by_uid

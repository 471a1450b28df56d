"""Presets with routes, and protocols: resolution, config identity, and what reaches the server
(a real loopback OpenAI-compatible server, tests/fault_server.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fault_server import MODEL_NAME, FaultServer

from evalkit import protocols
from evalkit.errors import EvalkitError
from evalkit.models import PRESETS, ModelOptions, build_backend, parse_spec, resolve_preset
from evalkit.records import GenerationParams
from evalkit.registry import all_suites
from evalkit.runner import RunConfig, plan

CLI = [sys.executable, "-m", "evalkit"]


# -- presets ------------------------------------------------------------------------------


def test_kimi_presets_carry_routes_and_facts() -> None:
    instruct = PRESETS["kimi-k2-instruct"]
    assert instruct.hf_repo == "moonshotai/Kimi-K2-Instruct"
    assert set(instruct.routes) == {"moonshot", "vllm", "hf"}
    api = instruct.route("moonshot")
    assert (api.backend, api.model, api.base_url, api.api_key_env) == (
        "openai",
        "kimi-k2-0711-preview",
        "https://api.moonshot.ai/v1",
        "MOONSHOT_API_KEY",
    )
    base = PRESETS["kimi-k2-base"]
    assert base.hf_repo == "moonshotai/Kimi-K2-Base" and "moonshot" not in base.routes
    for p in (instruct, base):
        assert p.trust_remote_code and p.serving is not None
        assert p.serving.nodes * p.serving.gpus_per_node == 16
        assert re.fullmatch(r"[0-9a-f]{40}", p.revision or ""), p.revision
        assert p.revision_source and p.checkpoint and p.params_total == 1.04e12
    assert instruct.tool_parser == "kimi_k2" and base.tool_parser is None
    assert PRESETS["gpt-4.1"].model == "gpt-4.1-2025-04-14"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("kimi-k2-instruct", ("openai", "kimi-k2-instruct")),
        ("kimi-k2-instruct@moonshot", ("openai", "kimi-k2-instruct@moonshot")),
        ("kimi-k2-instruct@vllm", ("vllm", "moonshotai/Kimi-K2-Instruct")),
        ("kimi-k2-instruct@hf", ("hf", "moonshotai/Kimi-K2-Instruct")),
        ("kimi-k2-base", ("vllm", "moonshotai/Kimi-K2-Base")),
        ("kimi-k2", ("openai", "kimi-k2")),
        ("gpt-4.1", ("openai", "gpt-4.1")),
        ("local", ("local", "local")),
        ("vllm:/models/my-checkpoint", ("vllm", "/models/my-checkpoint")),
    ],
)
def test_parse_spec_routes(spec: str, expected: tuple[str, str]) -> None:
    assert parse_spec(spec) == expected


def test_unknown_route_and_model_are_refused() -> None:
    with pytest.raises(EvalkitError, match=r"no route 'sglang'.*moonshot, vllm, hf"):
        parse_spec("kimi-k2-instruct@sglang")
    with pytest.raises(EvalkitError, match="unknown model"):
        parse_spec("kimi-k2-instruct@")
    with pytest.raises(EvalkitError, match="unknown model"):
        parse_spec("nope@vllm")
    assert resolve_preset("openai:gpt-4.1") is None


def test_api_route_builds_the_moonshot_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOONSHOT_API_KEY", "sk-test")
    for spec in ("kimi-k2-instruct", "kimi-k2-instruct@moonshot", "kimi-k2"):
        described = build_backend(spec, ModelOptions()).describe()
        assert described["model_id"] == "kimi-k2-0711-preview"
        assert described["base_url"] == "https://api.moonshot.ai/v1"
    assert described["preset"] == "kimi-k2" and described["route"] == "moonshot"
    monkeypatch.delenv("MOONSHOT_API_KEY")
    with pytest.raises(EvalkitError, match="MOONSHOT_API_KEY"):
        build_backend("kimi-k2-instruct", ModelOptions())


def test_list_models_shows_presets_and_routes() -> None:
    out = subprocess.run([*CLI, "list", "models"], capture_output=True, text=True, check=True)
    for text in ("kimi-k2-instruct", "kimi-k2-base", "gpt-4.1", "kimi-k2 ", "local", "@vllm"):
        assert text in out.stdout
    assert "* @moonshot  openai:kimi-k2-0711-preview" in out.stdout


# -- protocol resolution ------------------------------------------------------------------

NOTHING_GIVEN = dict.fromkeys(protocols.SETTINGS)


def test_no_protocol_gives_evalkit_defaults() -> None:
    r = protocols.resolve(None, "gsm8k", NOTHING_GIVEN)
    assert (r.mode, r.samples, r.temperature, r.top_p, r.max_tokens, r.system_prompt) == (
        None,
        1,
        0.0,
        None,
        2048,
        None,
    )
    assert r.overrides == {} and r.identity() is None


def test_simple_evals_humaneval() -> None:
    r = protocols.resolve("simple-evals", "humaneval", NOTHING_GIVEN)
    assert (r.mode, r.samples, r.temperature, r.max_tokens) == ("chat", 5, 0.5, 2048)
    assert r.system_prompt == "You are a helpful assistant."
    assert r.identity() == {"name": "simple-evals", "overrides": {}}


def test_moonshot_and_base_fewshot() -> None:
    r = protocols.resolve("moonshot", "math500", NOTHING_GIVEN)
    assert (r.mode, r.samples, r.temperature, r.max_tokens, r.system_prompt) == (
        "chat",
        1,
        0.6,
        8192,
        None,
    )
    assert "UNPUBLISHED" in protocols.get_protocol("moonshot").notes
    few_shot = ("gsm8k", "math", "math500", "humaneval")  # suites with a base-model protocol
    modes = {s: protocols.resolve("base-fewshot", s, NOTHING_GIVEN).mode for s in few_shot}
    assert modes == {"gsm8k": "base", "math": "base", "math500": "base", "humaneval": "completion"}


def test_every_protocol_names_real_suites_and_modes() -> None:
    suites = all_suites()
    for proto in protocols.PROTOCOLS.values():
        for name, d in proto.suites.items():
            assert name in suites, (proto.name, name)
            assert d.mode is None or d.mode in suites[name].modes, (proto.name, name)


def test_flags_override_and_only_real_changes_are_recorded() -> None:
    given = {**NOTHING_GIVEN, "temperature": 0.0, "max_tokens": 2048, "samples": 10}
    r = protocols.resolve("simple-evals", "humaneval", given)
    assert (r.temperature, r.max_tokens, r.samples) == (0.0, 2048, 10)
    assert r.overrides == {
        "samples": {"protocol": 5, "used": 10},
        "temperature": {"protocol": 0.5, "used": 0.0},
    }  # max_tokens equals the protocol's value: not an override
    r = protocols.resolve("simple-evals", "gsm8k", {**NOTHING_GIVEN, "system_prompt": ""})
    assert r.system_prompt == "" and "system_prompt" in r.overrides


def test_unknown_protocol_is_refused() -> None:
    with pytest.raises(EvalkitError, match="unknown protocol 'helm'"):
        protocols.resolve("helm", "gsm8k", NOTHING_GIVEN)
    out = subprocess.run(
        [*CLI, "run", "--suite", "gsm8k", "--model", "local", "--protocol", "helm"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "unknown protocol 'helm'" in out.stderr


# -- config identity ----------------------------------------------------------------------


def _replay(path: Path) -> Path:
    path.write_text("".join(json.dumps({"id": str(i), "response": "42"}) + "\n" for i in range(3)))
    return path


def _hash(data_dir: Path, replay: Path, **changes: object) -> tuple[str, dict[str, object]]:
    config = RunConfig(
        suite="gsm8k",
        model=f"replay:{replay}",
        params=GenerationParams(temperature=0.5, max_tokens=2048),
        limit=3,
        data_dir=str(data_dir),
        **changes,  # type: ignore[arg-type]
    )
    p = plan(config)
    return p.config_hash, p.identity


def test_protocol_changes_the_config_hash(data_dir: Path, tmp_path: Path) -> None:
    replay = _replay(tmp_path / "r.jsonl")
    plain, identity = _hash(data_dir, replay)
    assert "protocol" not in identity and "system_prompt" not in identity  # old hashes hold
    moonshot, _ = _hash(data_dir, replay, protocol="moonshot")
    simple, identity = _hash(data_dir, replay, protocol="simple-evals")
    assert len({plain, moonshot, simple}) == 3
    assert identity["protocol"] == {"name": "simple-evals", "overrides": {}}
    overridden, _ = _hash(
        data_dir,
        replay,
        protocol="simple-evals",
        protocol_overrides={"temperature": {"protocol": 0.5, "used": 0.0}},
    )
    assert overridden != simple
    with_system, identity = _hash(data_dir, replay, system_prompt="Be brief.")
    assert with_system != plain and identity["system_prompt"] == "Be brief."
    with pytest.raises(EvalkitError, match="unknown protocol"):
        _hash(data_dir, replay, protocol="nope")


# -- end to end: what the server receives, what the run records --------------------------


def _run(srv: FaultServer, data_dir: Path, results: Path, *args: str) -> dict[str, object]:
    out = subprocess.run(
        [
            *CLI,
            "run",
            "--suite",
            "gsm8k",
            "--model",
            f"openai:{MODEL_NAME}",
            "--base-url",
            srv.url,
            "--data-dir",
            str(data_dir),
            "--results-dir",
            str(results),
            "--limit",
            "3",
            "--no-progress",
            "--no-cache",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (run_dir,) = [p for p in results.iterdir() if p.is_dir()]
    return json.loads((run_dir / "run.json").read_text())


def test_simple_evals_system_prompt_reaches_the_server(data_dir: Path, tmp_path: Path) -> None:
    with FaultServer(data_dir / "gsm8k" / "test.jsonl") as srv:
        summary = _run(
            srv, data_dir, tmp_path / "res", "--protocol", "simple-evals", "--temperature", "0"
        )
        bodies = list(srv.bodies)
    assert len(bodies) == 3
    for body in bodies:
        assert body["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
        assert body["messages"][1]["role"] == "user" and len(body["messages"]) == 2
        assert body["temperature"] == 0.0 and body["max_tokens"] == 2048
    assert summary["metrics"]["accuracy"]["mean"] == 1.0  # the server answers correctly
    config = summary["config"]
    assert config["protocol"] == {
        "name": "simple-evals",
        "overrides": {"temperature": {"protocol": 0.5, "used": 0.0}},
    }
    assert config["system_prompt"] == "You are a helpful assistant."
    prov = summary["provenance"]
    assert (
        prov["protocol"]["name"] == "simple-evals" and "n_repeats=10" in prov["protocol"]["notes"]
    )
    assert prov["protocol"]["overrides"] == config["protocol"]["overrides"]


def test_base_fewshot_sends_completions_without_system(data_dir: Path, tmp_path: Path) -> None:
    with FaultServer(data_dir / "gsm8k" / "test.jsonl") as srv:
        summary = _run(srv, data_dir, tmp_path / "res", "--protocol", "base-fewshot")
        bodies = list(srv.bodies)
    assert len(bodies) == 3 and all("prompt" in b and "messages" not in b for b in bodies)
    assert all(b["temperature"] == 0.0 for b in bodies)
    assert summary["config"]["mode"] == "base"
    assert "system_prompt" not in summary["config"]

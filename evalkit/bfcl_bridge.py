"""Glue to the `bfcl-eval` wheel (BFCL v4): its data, tool schemas, checkers and executable
multi-turn backends, used as they are; evalkit only supplies the model's calls.

The wheel is installed with `--no-deps`: as a library, the parts used here need only `filelock`,
`mpmath`, `tenacity`, `tree_sitter` (+ `tree-sitter-java`, `tree-sitter-javascript`). Its
checker modules import `bfcl_eval.constants.model_config`, the registry of every model handler it
ships (Anthropic, Cohere, Gemini, boto3, qwen-agent ... SDKs); the checkers read from it only
whether a model turns "." into "_" in function names, so evalkit puts a one-entry stand-in in its
place instead of installing those SDKs, and maps names back itself before checking.

Security: BFCL's multi-turn checker executes call strings with `eval`. Only strings built here by
`render_call` reach it: the name must be a public method of one of the task's backend classes and
be offered by the task, argument names must be identifiers, values JSON data rendered with `repr`.
"""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.metadata
import inspect
import json
import keyword
import os
import sys
import types
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from evalkit import cache
from evalkit.agent import ToolEnv, ToolResult
from evalkit.errors import EvalkitError
from evalkit.records import ToolCall

BFCL_VERSION = "2026.3.23"
INSTALL_HINT = (
    f"pip install --no-deps bfcl-eval=={BFCL_VERSION} && pip install tree-sitter==0.21.3 "
    "tree-sitter-java==0.21.0 tree-sitter-javascript==0.21.4 tenacity==9.2.1 filelock mpmath"
)
# The model name handed to BFCL's checkers; its stand-in config keeps dotted names as they are.
CHECKER_MODEL = "evalkit"

NON_LIVE = ("simple_python", "simple_java", "simple_javascript", "multiple", "parallel",
            "parallel_multiple", "irrelevance")  # fmt: skip
LIVE = ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple",
        "live_irrelevance", "live_relevance")  # fmt: skip
MULTI_TURN = ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param",
              "multi_turn_long_context")  # fmt: skip
CATEGORIES = NON_LIVE + LIVE + MULTI_TURN


class UnsafeCall(ValueError):
    """A tool call that must not reach BFCL's `eval`: unknown tool, odd argument names or values."""


def _install_model_config_stand_in() -> None:
    name = "bfcl_eval.constants.model_config"
    config = types.SimpleNamespace(underscore_to_dot=False)
    module = sys.modules.get(name)
    if module is None:
        module = types.ModuleType(name)
        module.__doc__ = "evalkit's stand-in: see evalkit.bfcl_bridge"
        module.MODEL_CONFIG_MAPPING = {}  # type: ignore[attr-defined]
        sys.modules[name] = module
    module.MODEL_CONFIG_MAPPING.setdefault(CHECKER_MODEL, config)  # type: ignore[attr-defined]


@functools.cache
def bfcl() -> types.SimpleNamespace:
    """The bfcl_eval functions evalkit uses, imported once (and only when a BFCL suite runs)."""
    # bfcl_eval creates result/score/lock folders at import, by default inside site-packages.
    os.environ.setdefault("BFCL_PROJECT_ROOT", str(cache.cache_dir() / "bfcl"))
    _install_model_config_stand_in()
    try:
        from bfcl_eval.constants import default_prompts, executable_backend_config
        from bfcl_eval.constants.enums import Language, ModelStyle
        from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI
        from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker
        from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_checker as mtc
        from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils
        from bfcl_eval.model_handler.utils import convert_to_function_call, convert_to_tool
        from bfcl_eval.utils import (
            is_empty_output,
            is_function_calling_format_output,
            load_dataset_entry,
            load_ground_truth_entry,
        )
    except ImportError as exc:
        raise EvalkitError(f"the BFCL suites need {exc.name}: {INSTALL_HINT}") from None

    return types.SimpleNamespace(
        Language=Language,
        ModelStyle=ModelStyle,
        GORILLA_TO_OPENAPI=GORILLA_TO_OPENAPI,
        ast_checker=ast_checker,
        multi_turn_checker=mtc.multi_turn_checker,
        multi_turn_utils=multi_turn_utils,
        convert_to_function_call=convert_to_function_call,
        convert_to_tool=convert_to_tool,
        is_empty_output=is_empty_output,
        is_function_calling_format_output=is_function_calling_format_output,
        load_dataset_entry=load_dataset_entry,
        load_ground_truth_entry=load_ground_truth_entry,
        additional_function_prompt=default_prompts.DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC,
        max_steps_per_turn=default_prompts.MAXIMUM_STEP_LIMIT,
        class_modules=executable_backend_config.CLASS_FILE_PATH_MAPPING,
        stateless_classes=tuple(executable_backend_config.STATELESS_CLASSES),
    )


def installed_version() -> str:
    return importlib.metadata.version("bfcl-eval")


def json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def is_relevance(category: str) -> bool:
    return category.endswith("relevance")  # irrelevance, live_irrelevance, live_relevance


def is_multi_turn(category: str) -> bool:
    return category.startswith("multi_turn")


@functools.cache
def load_category(category: str) -> tuple[dict[str, Any], ...]:
    """BFCL's own test entries, as its generation step sees them (function docs with its
    language hints; multi-turn docs filled in from the backends, held-out functions removed),
    each with `ground_truth` (None for relevance categories) and, for the AST checker,
    `checker_function`: the docs without hints, as BFCL's evaluation step loads them."""
    b = bfcl()
    entries = b.load_dataset_entry(category)
    plain = b.load_dataset_entry(category, include_language_specific_hint=False)
    truth = [None] * len(entries) if is_relevance(category) else b.load_ground_truth_entry(category)
    out = []
    # BFCL aligns entries and ground truth by position; the ids agree in every shipped file.
    for entry, doc, gt in zip(entries, plain, truth, strict=True):
        record = {**entry, "category": category, "ground_truth": gt and gt["ground_truth"]}
        if not is_multi_turn(category):
            record["checker_function"] = doc["function"]
        out.append(record)
    return tuple(out)


def to_tools(functions: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI tool schemas, converted as BFCL's OpenAI function-calling handler does
    ("." in names becomes "_", BFCL types mapped to JSON-schema types)."""
    b = bfcl()
    return b.convert_to_tool(list(functions), b.GORILLA_TO_OPENAPI, b.ModelStyle.OPENAI_COMPLETIONS)


def name_map(functions: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Tool name as the model sees it -> BFCL's function name."""
    return {f["name"].replace(".", "_"): f["name"] for f in functions}


def decode(tool_calls: Sequence[ToolCall], names: dict[str, str]) -> list[dict[str, Any]] | None:
    """The calls in BFCL's decoded form `[{name: {arg: value}}]`, or None when one of them is
    malformed (BFCL's decoder then fails on the whole response, as it does here)."""
    decoded = []
    for call in tool_calls:
        if call.error is not None or not isinstance(call.arguments, dict):
            return None
        decoded.append({names.get(call.name, call.name): call.arguments})
    return decoded


# -- errata ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Erratum:
    """A correction of one entry's possible answer, which BFCL's own checker cannot match with
    any answer (so every model fails the entry on BFCL's leaderboard). `answer` replaces the
    possible values of the named parameters of `function`'s answer; None removes a parameter."""

    function: str
    answer: dict[str, list[Any] | None]
    reason: str


# The entries of bfcl-eval 2026.3.23 whose correct answer its checker rejects, found by feeding
# every possible answer through the checker (tests/test_bfcl.py). Scores use the corrected
# answers; `official_valid` in each verdict, and the `*_bfcl_checker` metrics, keep BFCL's.
ERRATA: dict[str, Erratum] = {
    "simple_java_36": Erratum(
        "ObjectMapEntryReplayDecoder.decode",
        {
            "parts": [
                ["userID", 42, "username", "johndoe", "isActive", True],
                ['"userID"', "42", '"username"', '"johndoe"', '"isActive"', "true"],
            ]
        },
        "the checker parses ArrayList elements of type any to their Java source text "
        "('\"userID\"', '42', 'true'), which never equals the answer's values; that "
        "form is accepted too",
    ),
    "simple_java_65": Erratum(
        "RootObjectMapper.doXContent",
        {
            "params": [
                ["include_defaults", True, "TOXCONTENT_SKIP_RUNTIME", True],
                ['"include_defaults"', "true", '"TOXCONTENT_SKIP_RUNTIME"', "true"],
            ]
        },
        "the checker parses ArrayList elements of type any to their Java source text "
        "('\"include_defaults\"', 'true'), which never equals the answer's values; that form "
        "is accepted too",
    ),
    "simple_java_64": Erratum(
        "DateScriptFieldType.createFieldType",
        {"meta": [{"format": ["epoch_millis"]}]},
        "the HashMap entry's value is a bare string where the checker expects a list of "
        "accepted values (it compared against the string's characters)",
    ),
    "live_simple_106-63-0": Erratum(
        "record",
        {"auto_loan_payment_start": [[]], "bank_hours_start": [[]]},
        "required list parameters with no accepted value (the query has none of that intent): "
        "the empty list is accepted",
    ),
    "live_simple_112-68-0": Erratum(
        "record",
        {
            "acc_routing_start": [[]],
            "atm_finder_start": [[]],
            "faq_link_accounts_start": [[]],
            "get_balance_start": [[]],
            "get_transactions_start": [[]],
        },
        "required list parameters with no accepted value (the query has none of that intent): "
        "the empty list is accepted",
    ),
    "live_multiple_862-181-3": Erratum(
        "Trains_1_FindTrains",
        {"journey_start_time": None, "date_of_journey": ["05/15/2023", "2023-05-15"]},
        "the answer needs journey_start_time, which Trains_1_FindTrains does not have; the "
        "date is also accepted in the YYYY-MM-DD form its doc asks for",
    ),
    "live_multiple_964-207-0": Erratum(
        "transfer_to_human_agent",
        {
            "question": None,
            "statement": ["Can you tell me what is the minimum package arrival time?"],
        },
        "the answer names the parameter `question`; the function's required one is `statement`",
    ),
}


def corrected_ground_truth(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The entry's possible answer with its erratum applied (the data's own when it has none)."""
    erratum = ERRATA.get(record["id"])
    truth = record["ground_truth"]
    if erratum is None:
        return truth
    truth = copy.deepcopy(truth)
    calls = [c for c in truth if erratum.function in c]
    if len(calls) != 1:
        raise EvalkitError(f"BFCL erratum for {record['id']} does not fit the data")
    params = calls[0][erratum.function]
    for name, values in erratum.answer.items():
        if values is None:
            params.pop(name)
        else:
            params[name] = copy.deepcopy(values)
    return truth


def check_single_turn(record: dict[str, Any], tool_calls: Sequence[ToolCall]) -> dict[str, Any]:
    """BFCL's verdict on a single-turn answer: `{"valid": bool, "error": ..., "decoded": ...}`.
    Relevance categories follow its relevance/irrelevance rules, the others its AST checker,
    against the corrected possible answer; for an entry with an erratum, `official_valid` is
    the verdict against the data's own answer (always False: see ERRATA)."""
    b = bfcl()
    category = record["category"]
    decoded = decode(tool_calls, name_map(record["function"]))
    has_call = decoded is not None and not b.is_empty_output(decoded)
    if is_relevance(category):
        valid = has_call if category == "live_relevance" else not has_call
        return {"valid": valid, "decoded": decoded}
    if decoded is None:
        return {"valid": False, "error": "malformed tool call", "decoded": None}
    if not b.is_function_calling_format_output(decoded):
        return {"valid": False, "error": "not in function-calling format", "decoded": decoded}
    out = {**_ast_check(record, decoded, corrected_ground_truth(record)), "decoded": decoded}
    if record["id"] in ERRATA:
        out["erratum"] = ERRATA[record["id"]].reason
        out["official_valid"] = _ast_check(record, decoded, record["ground_truth"])["valid"]
    return out


def _ast_check(
    record: dict[str, Any], decoded: list[dict[str, Any]], truth: list[dict[str, Any]]
) -> dict[str, Any]:
    b = bfcl()
    category = record["category"]
    language = {"simple_java": b.Language.JAVA, "simple_javascript": b.Language.JAVASCRIPT}
    try:
        result = b.ast_checker(
            record["checker_function"],
            decoded,
            truth,
            language.get(category, b.Language.PYTHON),
            category,
            CHECKER_MODEL,
        )
    except Exception as exc:  # a model's odd value must not take the run down
        return {"valid": False, "error": f"checker raised {type(exc).__name__}: {exc}"}
    if result["valid"]:
        return {"valid": True}
    return {"valid": False, "error": result.get("error"), "error_type": result.get("error_type")}


def render_decoded(decoded: Sequence[dict[str, Any]] | None) -> str | None:
    """Calls as BFCL prints them, `name(arg=value)`, for the record (never executed)."""
    if not decoded:
        return None
    return "; ".join(bfcl().convert_to_function_call(list(decoded)))


# -- multi-turn ---------------------------------------------------------------------------


@functools.cache
def _backend_class(class_name: str) -> type:
    b = bfcl()
    return getattr(importlib.import_module(b.class_modules[class_name]), class_name)


def _public_methods(class_name: str) -> set[str]:
    return {
        name
        for name, _ in inspect.getmembers(_backend_class(class_name), inspect.isfunction)
        if not name.startswith("_")
    }


def task_functions(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Every function doc of a multi-turn task, held-out ones included."""
    held_out = [f for docs in (record.get("missed_function") or {}).values() for f in docs]
    return [*record["function"], *held_out]


def callable_names(record: dict[str, Any]) -> set[str]:
    """Names a call may have to reach BFCL's `eval`: offered by the task and a public method of
    one of its backend classes (so BFCL prefixes it with that instance, never a builtin)."""
    methods = set().union(*(_public_methods(c) for c in record["involved_classes"]))
    return {f["name"] for f in task_functions(record)} & methods


def _check_json_value(value: Any, depth: int = 0) -> None:
    if depth > 32:
        raise UnsafeCall("argument nested too deeply")
    if value is None or isinstance(value, bool | int | float | str):
        return
    if isinstance(value, list):
        for item in value:
            _check_json_value(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise UnsafeCall("non-string key in an argument")
            _check_json_value(item, depth + 1)
        return
    raise UnsafeCall(f"argument of type {type(value).__name__}")


def render_call(call: ToolCall, allowed: set[str]) -> str:
    """The call string BFCL's executor evaluates, built from a parsed call, never model text."""
    if call.error is not None or not isinstance(call.arguments, dict):
        raise UnsafeCall(f"malformed call to {call.name!r}: {call.error or 'no arguments'}")
    if call.name not in allowed:
        raise UnsafeCall(f"unknown tool {call.name!r}")
    for key, value in call.arguments.items():
        if not isinstance(key, str) or not key.isidentifier() or keyword.iskeyword(key):
            raise UnsafeCall(f"bad argument name {key!r} for {call.name}")
        _check_json_value(value)
    args = ",".join(f"{k}={v!r}" for k, v in call.arguments.items())
    return f"{call.name}({args})"


def format_result(value: Any) -> str:
    """A backend method's return value as BFCL feeds it back to the model."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        try:
            return json.dumps(value)
        except (TypeError, ValueError):
            return str(value)
    return str(value)


@dataclass
class Backends:
    """Fresh instances of a task's executable backend classes, loaded with its initial state
    exactly as BFCL's executor loads them."""

    instances: dict[str, Any]

    @classmethod
    def for_task(cls, record: dict[str, Any]) -> Backends:
        b = bfcl()
        long_context = "long_context" in record["category"]
        instances = {}
        for class_name in record["involved_classes"]:
            instance = _backend_class(class_name)()
            if class_name not in b.stateless_classes:
                config = copy.deepcopy(record["initial_config"].get(class_name, {}))
                instance._load_scenario(config, long_context=long_context)
            instances[class_name] = instance
        return cls(instances)

    def method(self, name: str) -> Any:
        for instance in self.instances.values():
            if name in _public_methods(type(instance).__name__):
                return getattr(instance, name)
        return None

    def state(self) -> dict[str, Any]:
        """Public attributes per class (what BFCL's state checker compares), JSON-safe."""
        return {
            class_name: {
                k: json.loads(json.dumps(v, default=repr))
                for k, v in vars(instance).items()
                if not k.startswith("_")
            }
            for class_name, instance in self.instances.items()
        }


def check_multi_turn(record: dict[str, Any], turns: Sequence[Sequence[Sequence[str]]]) -> dict:
    """BFCL's multi-turn verdict (state and execution-result checks after every turn) on the
    calls of each step of each turn, rendered by `render_call`."""
    b = bfcl()
    gt = record["ground_truth"]
    if len(turns) != len(gt):
        return {
            "valid": False,
            "error": f"episode ended after {len(turns)} of {len(gt)} turns",
            "error_type": "multi_turn:force_terminated",
        }
    # BFCL keeps executor instances in a module-level dict keyed by model name and task id; a
    # fresh name per check keeps checks independent, and they are dropped afterwards.
    model_name = f"{CHECKER_MODEL}_{uuid.uuid4().hex}"
    namespace = vars(b.multi_turn_utils)
    try:
        result = b.multi_turn_checker(
            [[list(step) for step in turn] for turn in turns],
            gt,
            record,
            record["category"],
            model_name,
        )
    except Exception as exc:
        result = {"valid": False, "error_message": f"checker raised {type(exc).__name__}: {exc}"}
    finally:
        for key in [k for k in namespace if k.startswith(model_name)]:
            del namespace[key]
    out = {"valid": bool(result["valid"])}
    if not result["valid"]:
        out["error"] = result.get("error_message")
        out["error_type"] = result.get("error_type")
    return out


class BfclEnv(ToolEnv):
    """A multi-turn task's executable backends as an evalkit tool environment. Calls run as
    direct method calls (no `eval`); results are formatted as BFCL feeds them back. Held-out
    functions (miss_func) join the offered tools when `offer` is called at their turn."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.functions = list(record["function"])
        self.allowed = callable_names(record)
        self.backends = Backends.for_task(record)
        self._tools: list[dict[str, Any]] | None = None

    def offer(self, functions: Sequence[dict[str, Any]]) -> None:
        self.functions.extend(functions)
        self._tools = None

    def tools(self) -> list[dict[str, Any]]:
        if self._tools is None:
            self._tools = to_tools(self.functions)
        return self._tools

    def call(self, call: ToolCall) -> ToolResult:
        try:
            render_call(call, self.allowed)
            method = self.backends.method(call.name)
            if method is None:
                raise UnsafeCall(f"unknown tool {call.name!r}")
            value = method(**(call.arguments or {}))
        except Exception as exc:  # BFCL's executor turns any failure into this text
            return ToolResult(f"Error during execution: {exc}", error=True)
        return ToolResult(format_result(value))

    def renderable(self, calls: Sequence[ToolCall]) -> list[str]:
        """The calls of one step that may reach BFCL's checker, rendered (the others were
        refused when executed, and are left out as BFCL's decoder leaves out what it cannot
        decode)."""
        out = []
        for call in calls:
            try:
                out.append(render_call(call, self.allowed))
            except UnsafeCall:
                continue
        return out

    def snapshot(self) -> dict[str, Any]:
        return self.backends.state()

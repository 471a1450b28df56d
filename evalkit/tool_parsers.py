"""Tool calls written as text in a model's own markup, for servers that return the raw
completion instead of parsing it into `message.tool_calls`.

An evaluation must see every call the model attempted, so a malformed one is returned as a
`ToolCall` with `error` set and `raw` holding exactly what the model wrote, never dropped and
never raised. Each call's `raw` is its markup, well-formed or not. The returned content is the
text with the markup taken out and outer whitespace stripped; text without markup comes back
unchanged.

Families:

- `kimi_k2` (Kimi K2, as vLLM's `kimi_k2` parser reads it)::

    <|tool_calls_section_begin|>
    <|tool_call_begin|>functions.NAME:IDX<|tool_call_argument_begin|>{json}<|tool_call_end|>
    ...
    <|tool_calls_section_end|>

  The singular `<|tool_call_section_begin|>` / `<|tool_call_section_end|>` spellings are
  accepted too. The id is the model's own `functions.NAME:IDX`; the name drops `functions.`.
  A section without its end marker (a cut-off reply) is one malformed call holding the whole
  rest of the text: its calls cannot be trusted to be complete.
- `hermes` (Hermes, Qwen): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, where
  `arguments` may also be a JSON string holding the object, and may be absent (no parameters).
  Ids are `call_<index>`, the format having none.
"""

from __future__ import annotations

import json
import re
from typing import Any

from evalkit.records import ToolCall

KIMI_K2 = "kimi_k2"
HERMES = "hermes"
FAMILIES = (KIMI_K2, HERMES)

KIMI_SECTION_BEGIN = ("<|tool_calls_section_begin|>", "<|tool_call_section_begin|>")
KIMI_SECTION_END = ("<|tool_calls_section_end|>", "<|tool_call_section_end|>")
KIMI_CALL_BEGIN = "<|tool_call_begin|>"
KIMI_CALL_END = "<|tool_call_end|>"
KIMI_ARGS_BEGIN = "<|tool_call_argument_begin|>"
HERMES_BEGIN = "<tool_call>"
HERMES_END = "</tool_call>"

_KIMI_SECTION_BEGIN_RE = re.compile("|".join(re.escape(m) for m in KIMI_SECTION_BEGIN))
_KIMI_SECTION_END_RE = re.compile("|".join(re.escape(m) for m in KIMI_SECTION_END))
_KIMI_ID_RE = re.compile(r"(?:functions\.)?(?P<name>[^\s<]+?):(?P<index>\d+)")


def detect_family(text: str) -> str | None:
    """The family whose opening marker occurs in `text`, or None when there is no markup."""
    if _KIMI_SECTION_BEGIN_RE.search(text):
        return KIMI_K2
    if HERMES_BEGIN in text:
        return HERMES
    return None


def parse_tool_calls(text: str, family: str | None = None) -> tuple[str, tuple[ToolCall, ...]]:
    """(content without the markup, calls in order); `family=None` detects it by markers.

    Raises ValueError only for an unknown family name (a caller's bug, not model output)."""
    if family is None:
        family = detect_family(text)
        if family is None:
            return text, ()
    if family == KIMI_K2:
        return _parse_kimi(text)
    if family == HERMES:
        return _parse_hermes(text)
    raise ValueError(f"unknown tool-call format {family!r}; known: {', '.join(FAMILIES)}")


def _malformed(index: int, raw: str, error: str, name: str = "", call_id: str = "") -> ToolCall:
    return ToolCall(call_id or f"call_{index}", name, None, raw=raw, error=error)


def _json_object(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the decoded JSON object, None) or (None, why not)."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        return None, f"arguments are not valid JSON: {exc}"
    if not isinstance(value, dict):
        return None, f"arguments are not a JSON object but {type(value).__name__}"
    return value, None


# -- Kimi K2 -----------------------------------------------------------------------------------


def _parse_kimi(text: str) -> tuple[str, tuple[ToolCall, ...]]:
    content: list[str] = []
    calls: list[ToolCall] = []
    pos = 0
    found = False
    while begin := _KIMI_SECTION_BEGIN_RE.search(text, pos):
        found = True
        content.append(text[pos : begin.start()])
        end = _KIMI_SECTION_END_RE.search(text, begin.end())
        if end is None:
            raw = text[begin.start() :]
            error = "unterminated tool-call section: no <|tool_calls_section_end|>"
            calls.append(_malformed(len(calls), raw, error))
            pos = len(text)
            break
        body = text[begin.end() : end.start()]
        before = len(calls)
        _parse_kimi_section(body, calls)
        if len(calls) == before:
            raw = text[begin.start() : end.end()]
            calls.append(_malformed(len(calls), raw, "empty tool-call section"))
        pos = end.end()
    if not found:
        return text, ()
    content.append(text[pos:])
    return "".join(content).strip(), tuple(calls)


def _parse_kimi_section(body: str, calls: list[ToolCall]) -> None:
    """Append the calls of one section's body; text between calls other than whitespace is
    reported as a malformed call, since the model wrote it where only calls may stand."""
    pos = 0
    while pos < len(body):
        begin = body.find(KIMI_CALL_BEGIN, pos)
        stray = body[pos : len(body) if begin < 0 else begin]
        if stray.strip():
            error = "unexpected text in tool-call section, outside any tool call"
            calls.append(_malformed(len(calls), stray, error))
        if begin < 0:
            return
        start = begin + len(KIMI_CALL_BEGIN)
        end = body.find(KIMI_CALL_END, start)
        next_begin = body.find(KIMI_CALL_BEGIN, start)
        if end < 0 or 0 <= next_begin < end:
            stop = len(body) if next_begin < 0 else next_begin
            raw = body[begin:stop]
            error = "unterminated tool call: no <|tool_call_end|>"
            calls.append(_kimi_call(len(calls), raw, body[start:stop], error))
            pos = stop
            continue
        raw = body[begin : end + len(KIMI_CALL_END)]
        calls.append(_kimi_call(len(calls), raw, body[start:end]))
        pos = end + len(KIMI_CALL_END)


def _kimi_call(index: int, raw: str, inner: str, error: str | None = None) -> ToolCall:
    """One call from the text between its begin and end markers; `error` forces it malformed
    (its id and name are still recovered when they can be)."""
    header, sep, args = inner.partition(KIMI_ARGS_BEGIN)
    match = _KIMI_ID_RE.fullmatch(header.strip())
    call_id = match.group(0) if match else ""
    name = match.group("name") if match else ""
    if error is not None:
        return _malformed(index, raw, error, name, call_id)
    if not match:
        return _malformed(index, raw, f"malformed tool-call id {header.strip()!r}")
    if not sep:
        return _malformed(index, raw, "no <|tool_call_argument_begin|>", name, call_id)
    arguments, error = _json_object(args.strip())
    if error is not None:
        return _malformed(index, raw, error, name, call_id)
    return ToolCall(call_id, name, arguments, raw=raw)


# -- Hermes / Qwen -----------------------------------------------------------------------------


def _parse_hermes(text: str) -> tuple[str, tuple[ToolCall, ...]]:
    content: list[str] = []
    calls: list[ToolCall] = []
    pos = 0
    while (begin := text.find(HERMES_BEGIN, pos)) >= 0:
        content.append(text[pos:begin])
        start = begin + len(HERMES_BEGIN)
        end = text.find(HERMES_END, start)
        next_begin = text.find(HERMES_BEGIN, start)
        if end < 0 or 0 <= next_begin < end:
            stop = len(text) if next_begin < 0 else next_begin
            raw = text[begin:stop]
            name = _hermes_name(text[start:stop])
            error = "unterminated tool call: no </tool_call>"
            calls.append(_malformed(len(calls), raw, error, name))
            pos = stop
            continue
        raw = text[begin : end + len(HERMES_END)]
        calls.append(_hermes_call(len(calls), raw, text[start:end]))
        pos = end + len(HERMES_END)
    if not calls:
        return text, ()
    content.append(text[pos:])
    return "".join(content).strip(), tuple(calls)


def _hermes_name(inner: str) -> str:
    """The call's name when its JSON is readable, for the report of a call cut short."""
    try:
        value = json.loads(inner)
    except ValueError:
        return ""
    name = value.get("name") if isinstance(value, dict) else None
    return name if isinstance(name, str) else ""


def _hermes_call(index: int, raw: str, inner: str) -> ToolCall:
    try:
        value = json.loads(inner)
    except ValueError as exc:
        return _malformed(index, raw, f"tool call is not valid JSON: {exc}")
    if not isinstance(value, dict):
        return _malformed(index, raw, f"tool call is not a JSON object: {type(value).__name__}")
    name = value.get("name")
    if not isinstance(name, str) or not name:
        return _malformed(index, raw, "tool call has no name")
    arguments = value.get("arguments", {})
    if isinstance(arguments, str):  # some models encode the object as a JSON string
        arguments, error = _json_object(arguments)
        if error is not None:
            return _malformed(index, raw, error, name)
    if not isinstance(arguments, dict):
        error = f"arguments are not a JSON object but {type(arguments).__name__}"
        return _malformed(index, raw, error, name)
    return ToolCall(f"call_{index}", name, arguments, raw=raw)

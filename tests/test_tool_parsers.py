"""parse_tool_calls on exact model outputs: Kimi K2 and Hermes/Qwen markup, well-formed and
malformed. A malformed call must come back with `error` set and `raw` holding exactly what the
model wrote; nothing may raise or vanish."""

from __future__ import annotations

import pytest

from evalkit.records import ToolCall
from evalkit.tool_parsers import detect_family, parse_tool_calls

SB, SE = "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"
CB, CE, AB = "<|tool_call_begin|>", "<|tool_call_end|>", "<|tool_call_argument_begin|>"


def kimi(name: str, index: int, args: str) -> str:
    return f"{CB}functions.{name}:{index}{AB}{args}{CE}"


def hermes(inner: str) -> str:
    return f"<tool_call>{inner}</tool_call>"


def only_error(calls: tuple[ToolCall, ...]) -> ToolCall:
    (call,) = calls
    assert call.error, call
    assert call.arguments is None
    return call


# -- Kimi K2 -----------------------------------------------------------------------------------


def test_kimi_single_call():
    call = kimi("get_weather", 0, '{"city": "Paris"}')
    content, calls = parse_tool_calls(f"{SB}{call}{SE}", "kimi_k2")
    assert content == ""
    assert calls == (
        ToolCall("functions.get_weather:0", "get_weather", {"city": "Paris"}, raw=call),
    )


def test_kimi_several_calls_in_order_with_whitespace_between():
    a = kimi("search", 0, '{"q": "a"}')
    b = kimi("search", 1, '{"q": "b"}')
    c = kimi("fetch", 2, "{}")
    text = f"{SB}\n{a}\n{b}  {c}\n{SE}"
    content, calls = parse_tool_calls(text, "kimi_k2")
    assert content == ""
    assert [(c.id, c.name, c.arguments, c.error) for c in calls] == [
        ("functions.search:0", "search", {"q": "a"}, None),
        ("functions.search:1", "search", {"q": "b"}, None),
        ("functions.fetch:2", "fetch", {}, None),
    ]
    assert [x.raw for x in calls] == [a, b, c]


def test_kimi_surrounding_content_is_kept_without_markup():
    call = kimi("calc", 0, '{"expr": "2+2"}')
    text = f"Let me compute that.\n{SB}{call}{SE}\nDone."
    content, calls = parse_tool_calls(text, "kimi_k2")
    assert content == "Let me compute that.\n\nDone."
    assert calls[0].arguments == {"expr": "2+2"} and calls[0].error is None


def test_kimi_nested_json_and_unicode():
    args = '{"filter": {"tags": ["a", {"b": [1, 2.5, null, true]}]}, "city": "Zürich 東京 🙂"}'
    text = f"Voilà — {SB}{kimi('q', 3, args)}{SE}"
    content, calls = parse_tool_calls(text, "kimi_k2")
    assert content == "Voilà —"
    assert calls[0].arguments == {
        "filter": {"tags": ["a", {"b": [1, 2.5, None, True]}]},
        "city": "Zürich 東京 🙂",
    }
    assert calls[0].id == "functions.q:3"


def test_kimi_whitespace_inside_call_and_id_without_prefix():
    raw = f'{CB} lookup:7 {AB}\n {{"k": 1}} \n{CE}'
    content, calls = parse_tool_calls(f"{SB}{raw}{SE}", "kimi_k2")
    assert content == ""
    assert calls == (ToolCall("lookup:7", "lookup", {"k": 1}, raw=raw),)


def test_kimi_singular_section_spelling():
    call = kimi("f", 0, '{"x": 1}')
    text = f"<|tool_call_section_begin|>{call}<|tool_call_section_end|>"
    assert detect_family(text) == "kimi_k2"
    content, calls = parse_tool_calls(text)
    assert content == ""
    assert calls == (ToolCall("functions.f:0", "f", {"x": 1}, raw=call),)


def test_kimi_bad_json():
    raw = kimi("f", 0, '{"x": 1,,}')
    content, calls = parse_tool_calls(f"ok {SB}{raw}{SE}", "kimi_k2")
    assert content == "ok"
    call = only_error(calls)
    assert call.raw == raw
    assert (call.id, call.name) == ("functions.f:0", "f")  # recovered for the report
    assert call.error.startswith("arguments are not valid JSON")


def test_kimi_arguments_not_an_object():
    raw = kimi("f", 0, "[1, 2]")
    call = only_error(parse_tool_calls(f"{SB}{raw}{SE}", "kimi_k2")[1])
    assert call.raw == raw and call.name == "f"
    assert call.error == "arguments are not a JSON object but list"


def test_kimi_missing_name():
    raw = f'{CB}{AB}{{"x": 1}}{CE}'
    call = only_error(parse_tool_calls(f"{SB}{raw}{SE}", "kimi_k2")[1])
    assert call == ToolCall("call_0", "", None, raw=raw, error="malformed tool-call id ''")


def test_kimi_missing_argument_marker():
    raw = f'{CB}functions.f:0 {{"x": 1}}{CE}'
    call = only_error(parse_tool_calls(f"{SB}{raw}{SE}", "kimi_k2")[1])
    assert call.raw == raw
    assert call.error == "malformed tool-call id 'functions.f:0 {\"x\": 1}'"


def test_kimi_unterminated_section():
    good = kimi("f", 0, '{"x": 1}')
    text = f'Thinking. {SB}{good}{CB}functions.g:1{AB}{{"y": '
    content, calls = parse_tool_calls(text, "kimi_k2")
    assert content == "Thinking."
    call = only_error(calls)
    assert call.raw == text[len("Thinking. ") :]
    assert call.id == "call_0"
    assert call.error == "unterminated tool-call section: no <|tool_calls_section_end|>"


def test_kimi_unterminated_call_inside_a_section():
    cut = f'{CB}functions.f:0{AB}{{"x": 1}}'
    good = kimi("g", 1, "{}")
    content, calls = parse_tool_calls(f"{SB}{cut}{good}{SE}", "kimi_k2")
    assert content == ""
    assert calls[0] == ToolCall(
        "functions.f:0", "f", None, raw=cut, error="unterminated tool call: no <|tool_call_end|>"
    )
    assert calls[1] == ToolCall("functions.g:1", "g", {}, raw=good)


def test_kimi_garbage_between_markers():
    a, b = kimi("f", 0, "{}"), kimi("g", 1, "{}")
    text = f"{SB}I will call f now{a} and g {b}{SE}"
    content, calls = parse_tool_calls(text, "kimi_k2")
    assert content == ""
    assert [(c.name, c.raw, c.error is None) for c in calls] == [
        ("", "I will call f now", False),
        ("f", a, True),
        ("", " and g ", False),
        ("g", b, True),
    ]
    assert [c.id for c in calls] == ["call_0", "functions.f:0", "call_2", "functions.g:1"]
    assert calls[0].error == "unexpected text in tool-call section, outside any tool call"


def test_kimi_empty_section():
    text = f"Nothing to call. {SB}\n{SE}"
    content, calls = parse_tool_calls(text, "kimi_k2")
    assert content == "Nothing to call."
    assert calls == (
        ToolCall("call_0", "", None, raw=f"{SB}\n{SE}", error="empty tool-call section"),
    )


def test_kimi_two_sections():
    a, b = kimi("f", 0, "{}"), kimi("g", 1, '{"z": "w"}')
    content, calls = parse_tool_calls(f"A {SB}{a}{SE} B {SB}{b}{SE} C", "kimi_k2")
    assert content == "A  B  C"
    assert [c.id for c in calls] == ["functions.f:0", "functions.g:1"]


# -- Hermes / Qwen -----------------------------------------------------------------------------


def test_hermes_single_call():
    raw = hermes('{"name": "get_weather", "arguments": {"city": "Paris"}}')
    content, calls = parse_tool_calls(raw, "hermes")
    assert content == ""
    assert calls == (ToolCall("call_0", "get_weather", {"city": "Paris"}, raw=raw),)


def test_hermes_several_calls_with_surrounding_content():
    a = hermes('{"name": "a", "arguments": {"n": 1}}')
    b = hermes('\n{"name": "b", "arguments": {}}\n')
    text = f"I'll check both.\n{a}\n{b}\nThen answer."
    content, calls = parse_tool_calls(text, "hermes")
    assert content == "I'll check both.\n\n\nThen answer."
    assert calls == (
        ToolCall("call_0", "a", {"n": 1}, raw=a),
        ToolCall("call_1", "b", {}, raw=b),
    )


def test_hermes_nested_json_unicode_and_string_arguments():
    nested = hermes(
        '{"name": "q", "arguments": {"where": {"city": "Zürich", "alt": ["東京", {"x": null}]}}}'
    )
    as_string = hermes('{"name": "r", "arguments": "{\\"emoji\\": \\"🙂\\", \\"n\\": [1, 2]}"}')
    content, calls = parse_tool_calls(nested + as_string)
    assert content == ""
    assert calls[0].arguments == {"where": {"city": "Zürich", "alt": ["東京", {"x": None}]}}
    assert calls[1] == ToolCall("call_1", "r", {"emoji": "🙂", "n": [1, 2]}, raw=as_string)


def test_hermes_call_without_arguments_has_empty_arguments():
    raw = hermes('{"name": "now"}')
    assert parse_tool_calls(raw)[1] == (ToolCall("call_0", "now", {}, raw=raw),)


def test_hermes_bad_json():
    raw = hermes('{"name": "f", "arguments": {"x": }}')
    content, calls = parse_tool_calls(f"before {raw} after", "hermes")
    assert content == "before  after"
    call = only_error(calls)
    assert call.raw == raw and call.id == "call_0"
    assert call.error.startswith("tool call is not valid JSON")


def test_hermes_missing_name():
    raw = hermes('{"arguments": {"x": 1}}')
    call = only_error(parse_tool_calls(raw, "hermes")[1])
    assert call == ToolCall("call_0", "", None, raw=raw, error="tool call has no name")


def test_hermes_arguments_not_an_object():
    raw = hermes('{"name": "f", "arguments": [1]}')
    call = only_error(parse_tool_calls(raw, "hermes")[1])
    assert (call.name, call.raw) == ("f", raw)
    assert call.error == "arguments are not a JSON object but list"
    raw = hermes('{"name": "f", "arguments": "not json"}')
    call = only_error(parse_tool_calls(raw, "hermes")[1])
    assert call.raw == raw and call.error.startswith("arguments are not valid JSON")
    raw = hermes('{"name": "f", "arguments": "3"}')
    call = only_error(parse_tool_calls(raw, "hermes")[1])
    assert call.error == "arguments are not a JSON object but int"


def test_hermes_unterminated_tag():
    good = hermes('{"name": "a", "arguments": {}}')
    cut = '<tool_call>{"name": "b", "arguments": {"x": 1}}'
    content, calls = parse_tool_calls(f"Sure. {good}{cut}", "hermes")
    assert content == "Sure."
    assert calls[0] == ToolCall("call_0", "a", {}, raw=good)
    assert calls[1] == ToolCall(
        "call_1", "b", None, raw=cut, error="unterminated tool call: no </tool_call>"
    )


def test_hermes_tag_reopened_before_close():
    cut = '<tool_call>{"name": "a"'
    good = hermes('{"name": "b", "arguments": {}}')
    _, calls = parse_tool_calls(cut + good, "hermes")
    assert calls[0] == ToolCall(
        "call_0", "", None, raw=cut, error="unterminated tool call: no </tool_call>"
    )
    assert calls[1] == ToolCall("call_1", "b", {}, raw=good)


def test_hermes_garbage_in_tag():
    raw = hermes("call get_weather(Paris)")
    call = only_error(parse_tool_calls(raw, "hermes")[1])
    assert call.raw == raw and call.error.startswith("tool call is not valid JSON")
    raw = hermes('"just a string"')
    call = only_error(parse_tool_calls(raw, "hermes")[1])
    assert call.error == "tool call is not a JSON object: str"


def test_hermes_empty_tag():
    raw = hermes("")
    content, calls = parse_tool_calls(f"x{raw}", "hermes")
    assert content == "x"
    call = only_error(calls)
    assert call.raw == raw and call.error.startswith("tool call is not valid JSON")


# -- detection and contract --------------------------------------------------------------------


def test_no_markup_returns_text_unchanged():
    text = "  The answer is 42.\n"
    for family in (None, "kimi_k2", "hermes"):
        assert parse_tool_calls(text, family) == (text, ())
    assert detect_family(text) is None
    # closing markers alone open nothing: they are the model's text, left as written
    for stray in (f"x {SE}", f"x {CE}", "x </tool_call>"):
        assert parse_tool_calls(stray) == (stray, ())


def test_auto_detection():
    k = f"{SB}{kimi('f', 0, '{}')}{SE}"
    h = hermes('{"name": "f", "arguments": {}}')
    assert detect_family(k) == "kimi_k2" and detect_family(h) == "hermes"
    assert parse_tool_calls(k)[1][0].id == "functions.f:0"
    assert parse_tool_calls(h)[1][0].id == "call_0"


def test_unknown_family_is_a_caller_error():
    with pytest.raises(ValueError, match="unknown tool-call format"):
        parse_tool_calls("x", "mistral")


@pytest.mark.parametrize(
    "text",
    [
        SB,
        f"{SB}{CB}",
        f"{SB}{CB}{CE}{SE}",
        f"{SB}{CB}{AB}{CE}{SE}",
        f"{SB}{CB}:{AB}{{}}{CE}{SE}",
        f"{SB}{SB}{SE}{SE}",
        f"{SB}{CE}{CE}{AB}{SE}",
        "<tool_call>",
        "</tool_call><tool_call></tool_call><tool_call>",
        '<tool_call>{"name": 5}</tool_call>',
        '<tool_call>{"name": "f", "arguments": null}</tool_call>',
    ],
)
def test_degenerate_markup_never_raises_and_loses_nothing(text):
    content, calls = parse_tool_calls(text)
    assert calls, text
    assert SB not in content and "<tool_call>" not in content  # every opening was reported
    for call in calls:
        assert (call.error is None) == (call.arguments is not None)
        assert call.raw and call.raw in text

"""Tool calling through OpenAIBackend over real HTTP: against the local fault server
(tests/fault_server.py), which scripts the assistant's tool-call replies and records what it
received, and against a real llama.cpp server (xllamacpp, Jinja chat templates)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fault_server import MODEL_NAME, FaultServer

from evalkit.backends.local import find_gguf, start_llama_server
from evalkit.backends.openai_api import OpenAIBackend
from evalkit.records import GenerationParams, Request, Response, ToolCall

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two integers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
        },
    },
]
USER = {"role": "user", "content": "What's the weather in Zürich, and what is 2 + 3?"}


def native(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def ask(
    url: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = TOOLS,
    max_attempts: int = 3,
    timeout_s: float = 5.0,
    max_tokens: int = 64,
) -> Response:
    backend = OpenAIBackend(
        MODEL_NAME, url, None, timeout_s=timeout_s, max_attempts=max_attempts, backoff_base_s=0.01
    )
    request = Request(
        "t", 0, GenerationParams(max_tokens=max_tokens), messages=messages, tools=tools
    )

    async def go() -> Response:
        await backend.start()
        try:
            return await backend.generate(request)
        finally:
            await backend.close()

    return asyncio.run(go())


def test_tools_are_sent_and_native_calls_parsed():
    calls = [
        native("call_w", "get_weather", '{"city": "Zürich", "unit": "C"}'),
        native("call_a", "add", '{"a": 2, "b": 3}'),
    ]
    with FaultServer(tool_replies=[{"tool_calls": calls}]) as srv:
        response = ask(srv.url, [USER])
        (body,) = srv.bodies
    assert body["tools"] == TOOLS
    assert body["tool_choice"] == "auto"
    assert body["messages"] == [USER]
    assert response.error is None and response.attempts == 1
    assert response.text == ""  # content null beside tool calls is a complete answer
    assert response.finish_reason == "tool_calls"
    assert response.tool_call_source == "native"
    assert response.tool_calls == (
        ToolCall(
            "call_w",
            "get_weather",
            {"city": "Zürich", "unit": "C"},
            raw='{"city": "Zürich", "unit": "C"}',
        ),
        ToolCall("call_a", "add", {"a": 2, "b": 3}, raw='{"a": 2, "b": 3}'),
    )


def test_no_tools_sends_no_tool_fields_and_reads_plain_text():
    with FaultServer(tool_replies=[{"tool_calls": [native("c", "add", "{}")]}]) as srv:
        response = ask(srv.url, [USER], tools=None)
        (body,) = srv.bodies
    assert "tools" not in body and "tool_choice" not in body
    assert response.error is None and response.text.startswith("I do not know")
    assert response.tool_calls == () and response.tool_call_source is None


def test_content_beside_native_calls_is_kept():
    reply = {"content": "Checking.", "tool_calls": [native("c1", "add", '{"a": 1, "b": 1}')]}
    with FaultServer(tool_replies=[reply]) as srv:
        response = ask(srv.url, [USER])
    assert response.text == "Checking."
    assert [c.name for c in response.tool_calls] == ["add"]


def test_malformed_native_arguments_are_reported_not_retried():
    calls = [
        native("c0", "add", '{"a": 2, "b": '),
        native("c1", "add", "[2, 3]"),
        native("c2", "", '{"a": 1}'),
        native("c3", "get_weather", '{"city": "Oslo"}'),
        native("c4", "add", '"{}"'),
    ]
    with FaultServer(tool_replies=[{"tool_calls": calls}]) as srv:
        response = ask(srv.url, [USER])
        assert srv.total_requests == 1
    assert response.error is None and response.attempts == 1
    c0, c1, c2, c3, c4 = response.tool_calls
    assert (c0.id, c0.name, c0.arguments, c0.raw) == ("c0", "add", None, '{"a": 2, "b": ')
    assert c0.error is not None and c0.error.startswith("arguments are not valid JSON")
    assert (c1.arguments, c1.raw) == (None, "[2, 3]")
    assert c1.error == "arguments are not a JSON object but list"
    assert (c2.name, c2.arguments, c2.error) == ("", None, "tool call has no function name")
    assert c3 == ToolCall("c3", "get_weather", {"city": "Oslo"}, raw='{"city": "Oslo"}')
    assert (c4.arguments, c4.raw) == (None, '"{}"')
    assert c4.error == "arguments are not a JSON object but str"


def test_native_arguments_sent_as_an_object_are_accepted():
    """Some servers put the arguments object itself where OpenAI puts its JSON text."""
    call = {"id": "c", "type": "function", "function": {"name": "add", "arguments": {"a": 1}}}
    with FaultServer(tool_replies=[{"tool_calls": [call]}]) as srv:
        response = ask(srv.url, [USER])
    assert response.error is None
    assert response.tool_calls == (ToolCall("c", "add", {"a": 1}, raw='{"a": 1}'),)


def test_a_retried_tool_request_gets_its_calls():
    with FaultServer(
        script=["503"], tool_replies=[{"tool_calls": [native("c", "add", "{}")]}]
    ) as s:
        response = ask(s.url, [USER])
        assert [h.fault for h in s.hits] == ["503", "ok"]
        assert all(b["tools"] == TOOLS for b in s.bodies)
    assert response.attempts == 2 and response.error is None
    assert response.tool_calls == (ToolCall("c", "add", {}, raw="{}"),)


KIMI_CONTENT = (
    "I'll look both up.<|tool_calls_section_begin|>"
    '<|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{"city": "Zürich"}'
    "<|tool_call_end|>"
    '<|tool_call_begin|>functions.add:1<|tool_call_argument_begin|>{"a": 2, "b": 3'
    "<|tool_call_end|><|tool_calls_section_end|>"
)


def test_kimi_markup_in_content_is_parsed_as_a_fallback():
    with FaultServer(tool_replies=[{"content": KIMI_CONTENT}]) as srv:
        response = ask(srv.url, [USER])
    assert response.error is None and response.attempts == 1
    assert response.finish_reason == "stop"
    assert response.tool_call_source == "parsed:kimi_k2"
    assert response.text == "I'll look both up."
    weather, add = response.tool_calls
    assert (weather.id, weather.name, weather.arguments) == (
        "functions.get_weather:0",
        "get_weather",
        {"city": "Zürich"},
    )
    assert weather.error is None
    assert (add.id, add.name, add.arguments) == ("functions.add:1", "add", None)
    assert add.raw.endswith('{"a": 2, "b": 3<|tool_call_end|>')
    assert add.error is not None and add.error.startswith("arguments are not valid JSON")


def test_hermes_markup_in_content_is_parsed_as_a_fallback():
    content = 'Sure.\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
    with FaultServer(tool_replies=[{"content": content}]) as srv:
        response = ask(srv.url, [USER])
    assert response.tool_call_source == "parsed:hermes"
    assert response.text == "Sure."
    assert response.tool_calls == (
        ToolCall("call_0", "add", {"a": 2, "b": 3}, raw=content[len("Sure.\n") :]),
    )


def test_multi_turn_conversation_with_tool_results():
    """Turn 1 calls two tools; turn 2 sends their results back and gets the final answer. The
    server refuses tool turns that answer no call, so acceptance means the history is right."""
    calls = [
        native("call_w", "get_weather", '{"city": "Zürich"}'),
        native("call_a", "add", '{"a": 2, "b": 3}'),
    ]
    replies = [{"tool_calls": calls}, {"content": "It is 12 °C in Zürich, and 2 + 3 = 5."}]
    with FaultServer(tool_replies=replies) as srv:
        first = ask(srv.url, [USER])
        assert first.error is None
        history: list[dict[str, Any]] = [
            USER,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    native(c.id, c.name, json.dumps(c.arguments, ensure_ascii=False))
                    for c in first.tool_calls
                ],
            },
            {"role": "tool", "tool_call_id": "call_w", "content": '{"temp_c": 12}'},
            {"role": "tool", "tool_call_id": "call_a", "content": "5"},
        ]
        second = ask(srv.url, history)
        bad = ask(srv.url, [*history[:2], {"role": "tool", "tool_call_id": "nope", "content": ""}])
        sent = [b["messages"] for b in srv.bodies]
    assert second.error is None and second.attempts == 1
    assert second.text == "It is 12 °C in Zürich, and 2 + 3 = 5."
    assert second.tool_calls == () and second.tool_call_source is None
    assert sent[1] == history  # assistant tool_calls and tool turns passed through unchanged
    assert bad.error is not None and bad.error.startswith("HTTP 400")
    assert "unknown tool_call_id 'nope'" in bad.error


# ------------------------------------------------------------------------------------------
# A real llama.cpp server with Jinja chat templates
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jinja_llama_server() -> Iterator[str]:
    server, url = start_llama_server(find_gguf(), parallel=1, n_ctx_per_slot=4096, jinja=True)
    try:
        yield url
    finally:
        del server


def test_llama_server_accepts_tools_and_tool_turns(jinja_llama_server):
    """SmolLM2-135M's tool use is not the point: the request with tools, and a history with
    an assistant tool call and its result, must be accepted and answered."""
    first = ask(jinja_llama_server, [USER], max_attempts=1, timeout_s=300, max_tokens=32)
    assert first.error is None, first.error
    assert first.text.strip() or first.tool_calls
    history = [
        USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [native("c0", "add", '{"a": 2, "b": 3}')],
        },
        {"role": "tool", "tool_call_id": "c0", "content": "5"},
    ]
    second = ask(jinja_llama_server, history, max_attempts=1, timeout_s=300, max_tokens=32)
    assert second.error is None, second.error
    assert second.text.strip() or second.tool_calls
    assert second.usage.prompt_tokens > first.usage.prompt_tokens  # the tool turns were read

"""Any OpenAI-compatible endpoint: `POST /chat/completions` and `/completions` over aiohttp.

Why not the official `openai` SDK: measured in bench/api_throughput.py on 2 cores, the SDK
costs about 0.5 s to import (pydantic models, httpx, trio through anyio) and about 1.3 ms of
CPU per request (typed-parameter transform, request-option models, httpx request objects,
response models), which held evalkit's request phase at 0.92 of ideal at concurrency 64 and
the SDK alone near 0.87 on a quiet machine. evalkit sends the wire format it already holds
and reads only the fields it records, so the SDK's typing buys nothing here; this module is
the few lines of HTTP that remain, on aiohttp's connection pool.

One bounded retry loop covers 429 with Retry-After, 5xx, timeouts, dropped connections and a
200 whose body is not a well-formed completion, so the bound on attempts is exact.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import json
import math
import random
import time
from datetime import UTC
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from evalkit.backends.base import Backend
from evalkit.records import Request, Response, ToolCall, Usage
from evalkit.tool_parsers import detect_family, parse_tool_calls

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
MAX_RETRY_AFTER_S = 120.0
NO_KEY = "EMPTY"  # local servers need none: no Authorization header is sent


class MalformedResponse(Exception):
    """A 2xx reply that is not a usable completion."""


class StatusError(Exception):
    """A reply with a non-2xx status; `message` is the server's error message, if it gave one."""

    def __init__(self, status: int, message: str, headers: Any) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.headers = headers


def error_message(body: bytes) -> str:
    """The message of an OpenAI-style error body ({"error": {"message": ...}}), else its text."""
    text = body.decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except ValueError:
        return text
    if isinstance(data, dict):
        err = data.get("error", data)
        message = err.get("message") if isinstance(err, dict) else err
        if isinstance(message, str) and message:
            return message
    return text


def public_url(url: str) -> str:
    """Strip credentials and query from an endpoint before it is recorded anywhere."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def retry_after_seconds(headers: Any) -> float | None:
    """Retry-After as seconds (delta or HTTP date), or retry-after-ms; None if absent or
    unusable, so that a garbled header falls back to backoff instead of failing the request."""
    if headers is None:
        return None
    ms = _finite_float(headers.get("retry-after-ms"))
    if ms is not None:
        return max(0.0, ms / 1000.0)
    value = headers.get("retry-after")
    if not value:
        return None
    seconds = _finite_float(value)
    if seconds is not None:
        return max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 5322 "-0000": UTC with no stated source zone, not local time
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


def _finite_float(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


class OpenAIBackend(Backend):
    def __init__(
        self,
        model: str,
        base_url: str,
        api_key: str | None,
        *,
        timeout_s: float = 600.0,
        max_attempts: int = 6,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        backend_name: str = "openai",
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.base_url = base_url
        self._api_key = api_key or NO_KEY
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.backend_name = backend_name
        self.extra = extra or {}
        self.models_seen: set[str] = set()
        self._session: Any = None
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key != NO_KEY:
            self._headers["Authorization"] = f"Bearer {self._api_key}"

    async def start(self) -> None:
        import aiohttp

        from evalkit import __version__

        self._session = aiohttp.ClientSession(
            # Concurrency is bounded by the runner's semaphore, not by the pool.
            connector=aiohttp.TCPConnector(limit=0),
            headers={**self._headers, "User-Agent": f"evalkit/{__version__}"},
            # Each attempt is bounded as a whole in `generate`; per-read limits would let a
            # trickling server hold a request forever.
            timeout=aiohttp.ClientTimeout(total=None, connect=self.timeout_s),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        """POST a JSON body, return the decoded JSON reply; StatusError for a non-2xx status."""
        url = self.base_url.rstrip("/") + path
        data = json.dumps(body).encode()
        async with self._session.post(url, data=data, allow_redirects=False) as reply:
            raw = await reply.read()
            if not 200 <= reply.status < 300:
                raise StatusError(reply.status, error_message(raw), reply.headers)
        return json.loads(raw)  # ValueError (incl. UnicodeDecodeError): a malformed reply

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.backend_name,
            "model_id": self.model,
            "base_url": public_url(self.base_url),
            "served_models": sorted(self.models_seen),
            "transport": "aiohttp (OpenAI REST, wire format)",
            "retries": {
                "max_attempts": self.max_attempts,
                "timeout_s": self.timeout_s,
                "backoff_base_s": self.backoff_base_s,
            },
            **self.extra,
        }

    async def _call(self, request: Request) -> Response:
        common: dict[str, Any] = {"model": self.model, **request.sampling()}
        start = time.perf_counter()
        tool_calls: tuple[ToolCall, ...] = ()
        source: str | None = None
        # Bodies go out in the wire format (assistant turns with "tool_calls" and "tool" turns
        # exactly as given); replies are checked on the fields evalkit reads.
        if request.kind == "chat":
            if request.tools:
                common["tools"] = request.tools
                common["tool_choice"] = "auto"
            out = await self._post("/chat/completions", {"messages": request.messages, **common})
            choice = _first_choice(out)
            message = choice.get("message")
            if not isinstance(message, dict):
                raise MalformedResponse("choice has no message")
            text = message.get("content")
            native = message.get("tool_calls")
            if native:
                if not isinstance(native, list):
                    raise MalformedResponse("tool_calls is not a list")
                tool_calls, source = _native_tool_calls(native), "native"
                text = text or ""  # no content beside tool calls is a complete answer
            elif request.tools and isinstance(text, str) and (family := detect_family(text)):
                # Some servers return the model's raw text without parsing its tool markup.
                text, tool_calls = parse_tool_calls(text, family)
                source = f"parsed:{family}"
        else:
            out = await self._post("/completions", {"prompt": request.prompt, **common})
            choice = _first_choice(out)
            text = choice.get("text")
        if not isinstance(text, str):
            raise MalformedResponse("completion has no text content")
        usage = out.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        model = out.get("model")
        model = model if isinstance(model, str) and model else None
        if model:
            self.models_seen.add(_served_name(model))
        finish = choice.get("finish_reason")
        return Response(
            text=text,
            finish_reason=finish if isinstance(finish, str) else None,
            usage=Usage(
                prompt_tokens=_count(usage.get("prompt_tokens")),
                completion_tokens=_count(usage.get("completion_tokens")),
            ),
            latency_s=time.perf_counter() - start,
            model=model,
            tool_calls=tool_calls,
            tool_call_source=source,
        )

    async def generate(self, request: Request) -> Response:
        import aiohttp

        last_error = "no attempt made"
        for attempt in range(1, self.max_attempts + 1):
            wait: float | None = None
            try:
                response = await asyncio.wait_for(self._call(request), self.timeout_s)
                return dataclasses.replace(response, attempts=attempt)
            except StatusError as exc:
                last_error = f"HTTP {exc.status}: {self._short(exc.message)}"
                if exc.status not in RETRYABLE_STATUS:
                    return Response(text="", error=last_error, attempts=attempt)
                wait = retry_after_seconds(exc.headers)
            except TimeoutError:
                last_error = f"timeout: no complete reply within {self.timeout_s:g} s"
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
                # Refused, reset or dropped (also mid-body): the cause names which.
                cause = _connection_failure(exc) or exc
                last_error = f"connection error ({type(cause).__name__}): {self._short(str(cause))}"
            except (
                MalformedResponse,
                ValueError,  # JSONDecodeError, and UnicodeDecodeError for a binary body
                AttributeError,
                TypeError,
                LookupError,
            ) as exc:
                # A 2xx reply that is not a completion.
                last_error = f"malformed response: {type(exc).__name__}: {self._short(str(exc))}"
            except Exception as exc:  # generate must not raise (see Backend); still bounded
                last_error = f"unexpected {type(exc).__name__}: {self._short(str(exc))}"
            if attempt == self.max_attempts:
                break
            if wait is None:
                wait = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
                wait *= random.uniform(0.5, 1.0)  # jitter spreads retries of parallel requests
            await asyncio.sleep(min(wait, MAX_RETRY_AFTER_S))
        return Response(
            text="",
            error=f"gave up after {self.max_attempts} attempts: {last_error}",
            attempts=self.max_attempts,
        )

    def _short(self, text: str) -> str:
        """Error text fit for a record: one line, bounded, and without the key, which some
        servers quote back (e.g. echoing request headers in an error body)."""
        text = str(text)
        if self._api_key != NO_KEY:
            text = text.replace(self._api_key, "[api key]")
        return _short(text)


def _served_name(model: str) -> str:
    """llama.cpp reports the weights' absolute path as the model: keep the file name only, so
    run.json does not carry this machine's directory layout (home directories, user names)."""
    return PurePosixPath(model).name if model.startswith("/") else model


def _native_tool_calls(items: Any) -> tuple[ToolCall, ...]:
    """The API's `message.tool_calls` as ToolCalls, arguments decoded. What the model wrote
    badly (arguments that are not a JSON object, no name) is its answer, not a transport fault:
    it is reported on the call, and not retried."""
    calls = []
    for index, item in enumerate(items):
        call_id = _field(item, "id") or f"call_{index}"
        function = _field(item, "function")
        name = _field(function, "name") if function is not None else None
        raw = _field(function, "arguments") if function is not None else None
        raw = raw if isinstance(raw, str) else json.dumps(raw)
        name = name if isinstance(name, str) else ""
        error = None
        arguments: Any = None
        if function is None:
            error = f"not a function tool call (type {_field(item, 'type')!r})"
        elif not name:
            error = "tool call has no function name"
        else:
            try:
                arguments = json.loads(raw)
            except ValueError as exc:
                error = f"arguments are not valid JSON: {exc}"
            else:
                if not isinstance(arguments, dict):
                    error = f"arguments are not a JSON object but {type(arguments).__name__}"
        if error is not None:
            arguments = None
        calls.append(ToolCall(str(call_id), name, arguments, raw=raw, error=error))
    return tuple(calls)


def _field(obj: Any, key: str) -> Any:
    """A field of a decoded JSON object; None for anything else (a malformed reply)."""
    return obj.get(key) if isinstance(obj, dict) else None


def _connection_failure(exc: BaseException) -> BaseException | None:
    """The OS-level refused/reset connection behind an aiohttp error, if any, so the record
    names the cause (ConnectionRefusedError) rather than aiohttp's wrapper."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionError):
            return current
        if isinstance(getattr(current, "os_error", None), ConnectionError):
            return current.os_error  # type: ignore[attr-defined, no-any-return]
        current = current.__cause__ or current.__context__
    return None


def _first_choice(out: Any) -> dict[str, Any]:
    if not isinstance(out, dict):
        raise MalformedResponse(f"response is a JSON {type(out).__name__}, not an object")
    choices = out.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedResponse("response has no choices")
    return choices[0]


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"

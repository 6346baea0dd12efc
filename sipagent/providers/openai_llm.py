"""LanguageModel over the OpenAI chat-completions streaming API (or any server that speaks it).

`base_url` points it at Ollama, llama.cpp's server, vLLM, LM Studio... (`OPENAI_BASE_URL` when
not given). Text deltas are yielded the moment they arrive so speech synthesis can start on the
first clause; tool calls are only usable whole, so they are reassembled from their deltas and
handed over once, with the finish reason, in the last chunk.

Timeouts are enforced here rather than left to the HTTP client: a caller on the phone needs a
bounded wait for the *first token* (the model may legitimately think for a while before it, but
not forever) and then a much shorter bound *between* chunks (a stream that goes quiet mid-reply
is dead). httpx-style read timeouts can express neither: they restart on every byte, including
keep-alive comments, and apply the same bound to both phases.

Two things keep the request off the caller's clock. The request goes through the SDK's generic
`client.post` (its documented route for raw requests: same auth, base URL, error types and SSE
parsing; chunks as parsed JSON rather than models, see `_post_stream`) rather than
`chat.completions.create`, because `create` first walks
every message and tool schema through the SDK's TypedDict transform, which cost 3-8 ms per turn
on a 2-vCPU machine (growing with the history) for JSON that is already in wire format. And the
HTTP connection is opened before it is needed (`warm_up`, at the start of each call, with a
real one-token completion: it also makes a local server load its model while the greeting
plays) and kept for `keepalive_seconds` rather than httpx's 5 s: a caller's turn plus our reply
is often longer than 5 s, and a new TLS connection to the API costs one to three round trips on
every turn.

Errors say what the service said (status, code, message) and carry what the conversation needs
to decide: `retry_after` from a 429, and `heals=False` for failures that asking again cannot fix
within a call (a bad key, a model that does not exist, a quota used up).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
from openai import AsyncOpenAI, AsyncStream

from sipagent.providers.base import LlmChunk, ProviderError, ToolCall

_log = logging.getLogger(__name__)

DEFAULT_MODEL = "gpt-4o-mini"
# Idle connections are kept this long (httpcore drops one the server has closed before reusing
# it); under the 60 s idle timeout common on load balancers, which may drop them silently.
DEFAULT_KEEPALIVE_SECONDS = 55.0
# Local OpenAI-compatible servers ignore the key, but the SDK refuses to start without one.
_PLACEHOLDER_KEY = "sk-no-key-required"
_WARM_UP_MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": "Hello"}]
# A warm-up may wait this long for a local server to load its model (it runs beside the call).
_WARM_UP_SECONDS = 60.0
# First-token bounds: the cloud answers in well under a second, so 2 s means trouble; a local
# server (a base URL is set) may be loading its model or reading a long prompt on a CPU.
CLOUD_FIRST_TOKEN_TIMEOUT = 2.0
LOCAL_FIRST_TOKEN_TIMEOUT = 8.0
# Answers that asking again during the call cannot change.
_UNHEALING_STATUSES = frozenset({401, 402, 403, 404})
_UNHEALING_CODES = frozenset({"insufficient_quota", "model_not_found", "invalid_api_key"})


@dataclass(slots=True)
class _PartialToolCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class OpenAILanguageModel:
    """`LanguageModel` using `openai.AsyncOpenAI` with `stream=True`.

    One client (and so one HTTP connection pool) per instance: keep the instance for the life of
    the process and call `aclose()` at shutdown.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        model: str = DEFAULT_MODEL,
        base_url: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        first_token_timeout: float = 10.0,
        idle_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        keepalive_seconds: float = DEFAULT_KEEPALIVE_SECONDS,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        key = api_key or os.environ.get("OPENAI_API_KEY") or ""
        if not key:
            if base_url is None:
                raise ProviderError("OpenAI: no API key (pass api_key or set OPENAI_API_KEY)")
            key = _PLACEHOLDER_KEY
        self._api_key = key
        self.model = model
        self.base_url = base_url
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.first_token_timeout = first_token_timeout
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.extra_body = dict(extra_body or {})
        # The SDK's own client class (on httpx2, httpx's fork) and its pool sizes; only the
        # keep-alive differs.
        http_client = openai.DefaultAsyncHttpxClient(
            limits=httpx2.Limits(
                max_connections=1000,
                max_keepalive_connections=100,
                keepalive_expiry=keepalive_seconds,
            )
        )
        self._client = AsyncOpenAI(
            api_key=key,
            base_url=base_url,
            # Retrying would multiply the caller's silence; the conversation layer decides
            # what to say instead, so a failure must surface at once.
            max_retries=0,
            # Only a backstop: the real bounds are first_token_timeout / idle_timeout below.
            timeout=max(first_token_timeout, idle_timeout, connect_timeout) + 5.0,
            http_client=http_client,
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def warm_up(self) -> None:
        """Open the HTTP (and TLS) connection now with a one-token completion, so the caller's
        first turn pays neither for the connection nor (on a local server) for loading the
        model. Best effort: failures are logged once; the real request will report."""
        try:
            body = {**self._request_body(_WARM_UP_MESSAGES, []), "max_tokens": 1}
            async with asyncio.timeout(_WARM_UP_SECONDS):
                stream = await self._post_stream(body)
                async with stream:
                    async for _ in stream:
                        pass
        except openai.APIStatusError as exc:
            _log.warning("OpenAI warm-up: %s", self._describe_status(exc))
        except Exception as exc:  # a warm-up must never fail a call
            _log.warning("OpenAI warm-up failed: %s", self._redact(f"{type(exc).__name__}: {exc}"))

    def _redact(self, text: str) -> str:
        # Some OpenAI-compatible servers echo the Authorization header or key back in errors.
        return text.replace(self._api_key, "***") if self._api_key else text

    def _request_body(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": True}
        if tools:
            # An empty `tools` array is a 400 on api.openai.com: omit it instead.
            body["tools"] = tools
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            # `max_tokens`, not `max_completion_tokens`: it is what the compatible servers
            # (Ollama, llama.cpp, vLLM) and the gpt-4o family all understand.
            body["max_tokens"] = self.max_tokens
        body.update(self.extra_body)
        return body

    async def _post_stream(self, body: dict[str, Any]) -> AsyncStream[object]:
        # What chat.completions.create(stream=True) sends, minus its transform (see the module
        # docstring); the bearer key only, as create() does. `object`: each chunk comes back as
        # the parsed JSON (the SDK's documented raw form) instead of a ChatCompletionChunk
        # model, which cost 91 us a chunk, 40 % of a streamed reply's CPU, in the same
        # callback as the chunk's arrival; the fields read here are the wire format's.
        return await self._client.post(
            "/chat/completions",
            body=body,
            cast_to=object,
            options={"security": {"bearer_auth": True}},
            stream=True,
            stream_cls=AsyncStream[object],
        )

    async def stream(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> AsyncIterator[LlmChunk]:
        """Yield text chunks as they arrive, then one chunk with the tool calls and finish reason.

        Raises ProviderError on HTTP/API errors and on timeouts. Closing the generator (or
        cancelling the task consuming it) closes the HTTP stream, so the server stops generating.
        """
        loop = asyncio.get_running_loop()
        first_deadline = loop.time() + self.first_token_timeout
        sdk_stream: AsyncStream[object] | None = None
        calls: list[_PartialToolCall] = []
        calls_by_index: dict[int | None, _PartialToolCall] = {}
        finish_reason: str | None = None
        seen_token = False
        try:
            try:
                async with asyncio.timeout_at(first_deadline):
                    sdk_stream = await self._post_stream(self._request_body(messages, tools))
                while True:
                    # Before the first real token only the first-token deadline applies (a
                    # bare role chunk says nothing about progress); after it, the idle bound.
                    deadline = loop.time() + self.idle_timeout if seen_token else first_deadline
                    async with asyncio.timeout_at(deadline):
                        try:
                            chunk = await anext(sdk_stream)
                        except StopAsyncIteration:
                            break
                    for choice in _choices(chunk):
                        # `n` is never set, so only choice 0 exists; servers that send extra
                        # chunks (usage, Azure's content-filter preamble) send no choices.
                        if choice.get("index", 0) != 0:
                            continue
                        delta = choice.get("delta")
                        if isinstance(delta, dict):
                            # A refusal is still something to say to the caller.
                            text = _text(delta.get("content")) or _text(delta.get("refusal"))
                            tool_deltas = delta.get("tool_calls")
                            if isinstance(tool_deltas, list) and tool_deltas:
                                seen_token = True
                                _merge_tool_deltas(calls, calls_by_index, tool_deltas)
                            if text:
                                seen_token = True
                                yield LlmChunk(text=text)
                        finish = choice.get("finish_reason")
                        if finish is not None:
                            seen_token = True
                            finish_reason = str(finish)
            except TimeoutError:
                phase = "between chunks" if seen_token else "before the first token"
                limit = self.idle_timeout if seen_token else self.first_token_timeout
                raise ProviderError(
                    f"OpenAI ({self.model}): timed out {phase} (no data for {limit:g} s)"
                ) from None
            except openai.APIStatusError as exc:
                # `from None`: the SDK exception carries the response body, which some servers
                # fill with (a masked form of) the key; our message says what matters.
                raise ProviderError(
                    self._describe_status(exc),
                    retry_after=_retry_after(exc.response.headers),
                    heals=exc.status_code not in _UNHEALING_STATUSES
                    and exc.code not in _UNHEALING_CODES,
                ) from None
            except openai.APIConnectionError as exc:
                # Timeouts from the HTTP layer are APITimeoutError, a subclass of this.
                kind = (
                    "timed out" if isinstance(exc, openai.APITimeoutError) else "connection failed"
                )
                cause = exc.__cause__
                detail = f": {type(cause).__name__}: {cause}" if cause else ""
                raise ProviderError(self._redact(f"OpenAI ({self.model}): {kind}{detail}")) from exc
            except openai.OpenAIError as exc:
                # E.g. an APIError for an `{"error": ...}` event sent in the middle of a stream.
                raise ProviderError(
                    self._redact(f"OpenAI ({self.model}): {type(exc).__name__}: {exc}")
                ) from None
        finally:
            if sdk_stream is not None:
                # On aclose()/cancel this drops the connection (an unfinished HTTP/1.1 body
                # cannot be reused), which is how the server learns to stop generating.
                await sdk_stream.close()

        yield LlmChunk(
            tool_calls=tuple(_finish_tool_call(i, call) for i, call in enumerate(calls)),
            finish_reason=finish_reason,
        )

    def _describe_status(self, exc: openai.APIStatusError) -> str:
        status = exc.status_code
        if status in (401, 403):
            # Never quote the server's text here: OpenAI's own 401 repeats part of the key.
            return (
                f"OpenAI ({self.model}): HTTP {status}: authentication failed (check the API key)"
            )
        parts = [f"OpenAI ({self.model}): HTTP {status}"]
        if status == 429:
            parts.append("rate limited")
        if exc.code:
            parts.append(str(exc.code))
        body = exc.body
        message = body.get("message") if isinstance(body, dict) else None
        if isinstance(message, str) and message:
            parts.append(message[:300])
        return self._redact(": ".join(parts))


def _merge_tool_deltas(
    calls: list[_PartialToolCall],
    by_index: dict[int | None, _PartialToolCall],
    deltas: list[Any],
) -> None:
    """Fold one chunk's tool-call deltas into the calls assembled so far (in order of arrival).

    Parallel calls can be interleaved and several can share one chunk, so `index` says which
    call a fragment belongs to; but Ollama streams parallel calls all with index 0, each whole
    in its own delta with its own id, so a delta whose id differs from its slot's id starts a
    new call. The id and name arrive whole in a call's first delta; some servers repeat them
    later, so the first non-empty value wins rather than being concatenated. Arguments are raw
    JSON text cut anywhere and are concatenated as is. Off-spec servers without `index`: a new
    id starts a new call, anything else continues the last one.
    """
    for tc in deltas:
        if not isinstance(tc, dict):
            continue
        index = tc.get("index")
        tc_id = _text(tc.get("id"))
        slot = by_index.get(index) if index is not None else (calls or [None])[-1]
        if slot is None or (tc_id and slot.id and tc_id != slot.id):
            slot = _PartialToolCall()
            calls.append(slot)
            by_index[index] = slot
        if tc_id and not slot.id:
            slot.id = tc_id
        function = tc.get("function")
        if isinstance(function, dict):
            name, arguments = _text(function.get("name")), _text(function.get("arguments"))
            if name and not slot.name:
                slot.name = name
            if arguments:
                slot.arguments.append(arguments)


def _choices(chunk: object) -> list[dict[str, Any]]:
    """A streamed chunk's choices (raw JSON); none for anything not shaped like a chunk."""
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not isinstance(choices, list):
        return []
    return [choice for choice in choices if isinstance(choice, dict)]


def _text(value: object) -> str:
    """A string field of a chunk ("" when absent, null, or not a string)."""
    return value if isinstance(value, str) else ""


def _retry_after(headers: Any) -> float | None:
    """Seconds to wait from a 429's `retry-after-ms` / `retry-after` (seconds) header."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            continue  # an HTTP date: rare enough to treat as "no advice"
    return None


def _finish_tool_call(index: int, call: _PartialToolCall) -> ToolCall:
    # Some local servers omit ids; the conversation still needs one to match tool results.
    return ToolCall(
        id=call.id or f"call_{index}",
        name=call.name,
        arguments="".join(call.arguments) or "{}",
    )

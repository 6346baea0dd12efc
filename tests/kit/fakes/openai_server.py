"""A scripted OpenAI chat-completions server on 127.0.0.1, speaking the real streaming wire format.

The provider under test talks to it through the real `openai` SDK, so everything the SDK parses
(SSE framing, `chat.completion.chunk` objects, tool-call deltas, error bodies, status codes) has
to look like what api.openai.com sends. Replies are scripted per request; knobs add latency,
failures and stalls; every request is recorded, including whether the client hung up before
the reply was finished (that is how tests prove that cancelling closes the HTTP stream).

    async with FakeOpenAIServer([Reply(text="Hello there.")]) as server:
        llm = OpenAILanguageModel(api_key=server.api_key, base_url=server.base_url)
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.kit.fakes.loopback import HttpFakeServer, client_port

# Argument fragments are cut to these lengths in turn: small and irregular, so cuts land
# mid-key, mid-string and between a backslash and what it escapes, as real streams do.
_FRAGMENT_SIZES = (1, 4, 2, 7, 3, 5)
_POLL = 0.01  # how often a waiting handler looks at its socket for a hang-up


@dataclass(frozen=True, slots=True)
class FakeToolCall:
    name: str
    arguments: str  # the exact JSON text the "model" produces; streamed in awkward pieces
    id: str = ""  # "" -> call_<n> assigned by the server

    @classmethod
    def of(cls, name: str, args: dict[str, Any], id: str = "") -> FakeToolCall:
        return cls(name=name, arguments=json.dumps(args, ensure_ascii=False), id=id)


@dataclass(frozen=True, slots=True)
class Reply:
    """What the "model" says for one request: text first (if any), then tool calls (if any)."""

    text: str = ""
    tool_calls: tuple[FakeToolCall, ...] = ()
    finish_reason: str | None = None  # None -> "tool_calls" when there are calls, else "stop"


ReplyLike = Reply | str
Script = Sequence[ReplyLike] | Callable[[dict[str, Any]], ReplyLike]


@dataclass(slots=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: Any  # the decoded JSON body (None when it was not JSON)
    status: int = 0
    chunks_sent: int = 0  # SSE `data:` chunk events written (not counting [DONE])
    chunks_planned: int = 0
    completed: bool = False  # the whole reply, [DONE] included, was written
    disconnected: bool = False  # the client hung up before the reply was complete
    received_at: float = 0.0  # loop.time() when the request arrived
    client_port: int = 0  # the client's TCP port: equal ports mean a reused connection
    first_chunk_at: float | None = None  # loop.time() when the first chunk was written
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # handler is done

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", [])) if isinstance(self.body, dict) else []

    @property
    def tools(self) -> list[dict[str, Any]]:
        return list(self.body.get("tools", [])) if isinstance(self.body, dict) else []


def _mask(key: str) -> str:
    # How api.openai.com quotes a wrong key back in its 401 message.
    return key[:3] + "*" * max(len(key) - 7, 0) + key[-4:] if len(key) > 7 else "***"


def _error_body(
    message: str, type_: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


ROLES = ("system", "assistant", "user", "function", "tool", "developer")


@dataclass(frozen=True, slots=True)
class HistoryError:
    """Why api.openai.com refuses a `messages` array (its 400 `message` and `param`)."""

    message: str
    param: str
    code: str | None = None


def history_error(messages: list[Any]) -> HistoryError | None:
    """The first reason the real API would answer 400 to this history, or None.

    The rules and wording are the API's own: roles from its fixed list; an assistant message
    with `tool_calls` followed, before anything else, by one `tool` message per id; a `tool`
    message only inside such a group and only for an id of that group; text content is a
    string (only an assistant message with tool calls may have none).
    """
    open_ids: list[str] = []  # ids of the last tool_calls message not answered yet
    group: set[str] = set()  # all ids of that message (a tool message may only answer these)
    in_group = False
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return HistoryError(
                f"Invalid type for 'messages[{i}]': expected an object.", f"messages[{i}]"
            )
        role = message.get("role")
        if role not in ROLES:
            supported = ", ".join(f"'{r}'" for r in ROLES[:-1]) + f", and '{ROLES[-1]}'"
            return HistoryError(
                f"Invalid value: '{role}'. Supported values are: {supported}.",
                f"messages[{i}].role",
                "invalid_value",
            )
        if role != "tool" and open_ids:
            return HistoryError(
                "An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(open_ids)}",
                f"messages.[{i}].role",
            )
        if role == "tool":
            if not in_group:
                return HistoryError(
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.",
                    f"messages.[{i}].role",
                )
            call_id = message.get("tool_call_id")
            if call_id not in group:
                return HistoryError(
                    f"Invalid parameter: 'tool_call_id' of '{call_id}' not found in "
                    "'tool_calls' of previous message.",
                    f"messages.[{i}].tool_call_id",
                )
            if call_id in open_ids:
                open_ids.remove(call_id)
            if not isinstance(message.get("content"), str):
                return HistoryError(
                    "Invalid type for 'content': expected a string.", f"messages[{i}].content"
                )
            continue
        calls = message.get("tool_calls") if role == "assistant" else None
        if calls:
            ids = [c.get("id") for c in calls if isinstance(c, dict)]
            if len(ids) != len(calls) or not all(isinstance(x, str) and x for x in ids):
                return HistoryError(
                    "Missing required parameter: 'tool_calls[].id'.",
                    f"messages[{i}].tool_calls",
                )
            open_ids, group, in_group = list(ids), set(ids), True
            continue
        in_group = False
        if not isinstance(message.get("content"), str):
            return HistoryError(
                f"Invalid value for 'content': expected a string, got "
                f"{type(message.get('content')).__name__}.",
                f"messages.[{i}].content",
            )
    if open_ids:
        return HistoryError(
            "An assistant message with 'tool_calls' must be followed by tool messages "
            "responding to each 'tool_call_id'. The following tool_call_ids did not have "
            f"response messages: {', '.join(open_ids)}",
            f"messages.[{len(messages)}].role",
        )
    return None


def _words(text: str) -> list[str]:
    # Word-sized content deltas that keep their trailing whitespace, like tokenizer output.
    return re.findall(r"\s*\S+\s*|\s+", text) or ([text] if text else [])


def _fragments(text: str) -> list[str]:
    sizes = itertools.cycle(_FRAGMENT_SIZES)
    out: list[str] = []
    i = 0
    while i < len(text):
        n = next(sizes)
        out.append(text[i : i + n])
        i += n
    return out


def plan_deltas(
    reply: Reply, call_ids: Sequence[str], style: str = "interleaved"
) -> list[tuple[dict[str, Any], str | None]]:
    """The (delta, finish_reason) of every chunk of `reply`, in the order they are sent.

    Tool calls follow OpenAI's scheme: the first delta of a call carries index, id, type and
    the function name (arguments "" or a first fragment); later deltas carry only index and an
    arguments fragment. "interleaved" mixes parallel calls by index (sometimes two calls in one
    delta), which a client that assumes one call at a time gets wrong; "sequential" sends them
    one after the other, as api.openai.com usually does; "ollama" sends each call whole with
    index 0 for all of them, told apart only by their ids, as Ollama does.
    """
    deltas: list[tuple[dict[str, Any], str | None]] = []
    role: dict[str, Any] = {"role": "assistant"}
    if reply.text:
        deltas.append(({**role, "content": "", "refusal": None}, None))
        deltas.extend(({"content": w}, None) for w in _words(reply.text))
        role = {}

    # One queue of tool-call pieces per call: header first, then argument fragments.
    queues: list[list[dict[str, Any]]] = []
    for i, (call, call_id) in enumerate(zip(reply.tool_calls, call_ids, strict=True)):
        frags = _fragments(call.arguments)
        # Odd calls carry their first fragment in the header ("partial arguments").
        first = frags.pop(0) if (i % 2 == 1 and frags) else ""
        header = {
            "index": i,
            "id": call_id,
            "type": "function",
            "function": {"name": call.name, "arguments": first},
        }
        queues.append([header, *({"index": i, "function": {"arguments": f}} for f in frags)])

    def with_role(pieces: list[dict[str, Any]]) -> dict[str, Any]:
        nonlocal role
        delta = {**role, "content": None, "tool_calls": pieces} if role else {"tool_calls": pieces}
        role = {}
        return delta

    if style == "ollama":
        # Ollama: each call whole in one delta, and every one of them with index 0.
        for call, call_id in zip(reply.tool_calls, call_ids, strict=True):
            whole = {
                "index": 0,
                "id": call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            deltas.append((with_role([whole]), None))
    elif style == "sequential":
        for queue in queues:
            deltas.extend((with_role([piece]), None) for piece in queue)
    else:
        for round_no in itertools.count():
            live = [q for q in queues if q]
            if not live:
                break
            if round_no % 3 == 2 and len(live) > 1:
                # Several calls' fragments in one delta: legal, and rarely tested.
                deltas.append((with_role([q.pop(0) for q in live]), None))
            else:
                deltas.extend((with_role([q.pop(0)]), None) for q in live)

    finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
    if role:  # empty reply: the role still comes first
        deltas.append(({**role, "content": ""}, None))
    deltas.append(({}, finish))
    return deltas


class FakeOpenAIServer(HttpFakeServer[RecordedRequest]):
    """`POST /v1/chat/completions` with `stream: true`, scripted; `GET /v1/models/{model}`.

    Knobs (attributes, changeable between requests):
      first_token_latency  seconds between the response headers and the first chunk
      inter_token_delay    seconds between chunks
      stall_after_tokens   after this many chunks stop sending, keep the connection open
      drop_after_tokens    after this many chunks close the connection abruptly
      tool_call_style      "interleaved" (default), "sequential" or "ollama" parallel tool calls
      fail_next(status, n) answer the next n requests with an error status (500, 429, ...);
                           warm-ups do not use these up (`failing_warm_ups` fails those)
      retry_after          the `retry-after` header (seconds) of a 429
    Like api.openai.com it refuses (400) a history that breaks the tool-call pairing rules or
    has an unknown role (`history_error`). A one-token request (`max_tokens: 1`, a warm-up) is
    answered with one token, recorded in `warm_ups`, and does not use up the script.
    """

    def __init__(
        self,
        replies: Script = (),
        *,
        api_key: str = "sk-test-fake-0123456789",
        first_token_latency: float = 0.0,
        inter_token_delay: float = 0.0,
        stall_after_tokens: int | None = None,
        drop_after_tokens: int | None = None,
        tool_call_style: str = "interleaved",
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.first_token_latency = first_token_latency
        self.inter_token_delay = inter_token_delay
        self.stall_after_tokens = stall_after_tokens
        self.drop_after_tokens = drop_after_tokens
        self.tool_call_style = tool_call_style
        self.retry_after = "1"
        self.failing_warm_ups = 0  # the next n warm-ups get a 500
        self.warm_ups: list[RecordedRequest] = []
        self.missing_models: set[str] = set()  # requests naming these models get a 404
        self.model_lookups: list[RecordedRequest] = []  # GET /v1/models/{model} (not in requests)
        self._script = replies if callable(replies) else list(replies)
        self._call_counter = itertools.count(1)

    # -- lifecycle -------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_get("/v1/models/{model}", self._model)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    # -- request handling ------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body: Any = await request.json()
        except ValueError:
            body = None
        warm_up = isinstance(body, dict) and 1 in (
            body.get("max_tokens"),
            body.get("max_completion_tokens"),
        )
        rec = self._record(request, body, into=self.warm_ups if warm_up else None)
        try:
            return await self._respond(request, rec)
        finally:
            rec.finished.set()

    def _record(
        self, request: web.Request, body: Any, into: list[RecordedRequest] | None = None
    ) -> RecordedRequest:
        rec = RecordedRequest(
            path=request.path_qs,
            headers=dict(request.headers),
            body=body,
            received_at=asyncio.get_running_loop().time(),
            client_port=client_port(request),
        )
        (self.requests if into is None else into).append(rec)
        return rec

    async def _model(self, request: web.Request) -> web.Response:
        """`GET /v1/models/{model}`: the model object, or OpenAI's 404 body for `missing_models`."""
        rec = self._record(request, None, into=self.model_lookups)
        rec.finished.set()
        if request.headers.get("Authorization", "") != f"Bearer {self.api_key}":
            return self._error(
                rec,
                401,
                _error_body(
                    "Incorrect API key provided", "invalid_request_error", "invalid_api_key"
                ),
            )
        model = request.match_info["model"]
        if model in self.missing_models:
            message = f"The model '{model}' does not exist or you do not have access to it."
            return self._error(
                rec, 404, _error_body(message, "invalid_request_error", "model_not_found")
            )
        rec.status = 200
        return web.json_response(
            {"id": model, "object": "model", "created": 1700000000, "owned_by": "system"}
        )

    def _error(self, rec: RecordedRequest, status: int, body: dict[str, Any]) -> web.Response:
        rec.status = status
        headers = {"x-request-id": f"req_fake_{len(self.requests)}"}
        if status == 429:
            headers["retry-after"] = self.retry_after
        return web.json_response(body, status=status, headers=headers)

    async def _respond(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        if auth != f"Bearer {self.api_key}":
            given = auth.removeprefix("Bearer ")
            msg = f"Incorrect API key provided: {_mask(given)}. Check your key."
            return self._error(
                rec, 401, _error_body(msg, "invalid_request_error", "invalid_api_key")
            )
        warm_up_fails = rec in self.warm_ups and self.failing_warm_ups > 0
        if warm_up_fails or (self._failures and rec not in self.warm_ups):
            if warm_up_fails:
                self.failing_warm_ups -= 1
            status = 500 if warm_up_fails else self._failures.pop(0)
            if status == 429:
                body = _error_body(
                    "Rate limit reached for requests", "requests", "rate_limit_exceeded"
                )
            else:
                body = _error_body(
                    "The server had an error while processing your request.", "server_error", None
                )
            return self._error(rec, status, body)
        body = rec.body
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return self._error(
                rec, 400, _error_body("'messages' is required", "invalid_request_error", None)
            )
        if not body.get("model"):
            return self._error(
                rec, 400, _error_body("'model' is required", "invalid_request_error", None)
            )
        if body.get("stream") is not True:
            return self._error(
                rec, 400, _error_body("this fake only streams", "invalid_request_error", None)
            )
        if "tools" in body and not body["tools"]:
            # api.openai.com rejects an empty tools array; clients must leave it out.
            return self._error(
                rec, 400, _error_body("[] is too short - 'tools'", "invalid_request_error", None)
            )
        if body["model"] in self.missing_models:
            message = f"The model '{body['model']}' does not exist or you do not have access to it."
            return self._error(
                rec, 404, _error_body(message, "invalid_request_error", "model_not_found")
            )
        refused = history_error(body["messages"])
        if refused is not None:
            return self._error(
                rec,
                400,
                _error_body(refused.message, "invalid_request_error", refused.code, refused.param),
            )

        reply = (
            Reply("Hi", finish_reason="length") if rec in self.warm_ups else self._next_reply(body)
        )
        if reply is None:
            return self._error(rec, 500, _error_body("fake script exhausted", "server_error", None))
        call_ids = [c.id or f"call_{next(self._call_counter):04d}" for c in reply.tool_calls]
        deltas = plan_deltas(reply, call_ids, self.tool_call_style)
        rec.chunks_planned = len(deltas)

        resp = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            },
        )
        resp.enable_chunked_encoding()
        rec.status = 200
        await resp.prepare(request)
        try:
            await self._stream(request, resp, rec, body, deltas)
        except ConnectionError:  # aiohttp raises a ConnectionResetError subclass on a hang-up
            rec.disconnected = True
        return resp

    def _next_reply(self, body: dict[str, Any]) -> Reply | None:
        if callable(self._script):
            got = self._script(body)
        elif self._script:
            got = self._script.pop(0)
        else:
            return None
        return Reply(text=got) if isinstance(got, str) else got

    async def _stream(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        rec: RecordedRequest,
        body: dict[str, Any],
        deltas: list[tuple[dict[str, Any], str | None]],
    ) -> None:
        chunk_id = f"chatcmpl-fake{len(self.requests):06d}"
        created = int(time.time())
        model = str(body["model"])

        def frame(payload: dict[str, Any] | str) -> bytes:
            data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
            return f"data: {data}\n\n".encode()

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }

        if not await self._pause(request, rec, self.first_token_latency):
            return
        for n, (delta, finish) in enumerate(deltas):
            if n and not await self._pause(request, rec, self.inter_token_delay):
                return
            if self.stall_after_tokens is not None and n >= self.stall_after_tokens:
                await self._pause(request, rec, None)
                return
            if self.drop_after_tokens is not None and n >= self.drop_after_tokens:
                if request.transport is not None:
                    request.transport.close()
                return
            await resp.write(frame(chunk(delta, finish)))
            if rec.first_chunk_at is None:
                rec.first_chunk_at = asyncio.get_running_loop().time()
            rec.chunks_sent += 1
        options = body.get("stream_options") or {}
        if options.get("include_usage"):
            usage = {
                "prompt_tokens": 10,
                "completion_tokens": len(deltas),
                "total_tokens": 10 + len(deltas),
            }
            await resp.write(frame({**chunk({}, None), "choices": [], "usage": usage}))
        await resp.write(frame("[DONE]"))
        await resp.write_eof()
        rec.completed = True

    async def _pause(
        self, request: web.Request, rec: RecordedRequest, seconds: float | None
    ) -> bool:
        """Wait `seconds` (None: until hang-up or server stop); False if the client hung up.

        aiohttp does not cancel a handler when its client goes away, so the socket is polled:
        this is what makes a hang-up during a delay or a stall visible in the record.
        """
        deadline = None if seconds is None else asyncio.get_running_loop().time() + seconds
        while True:
            transport = request.transport
            if transport is None or transport.is_closing():
                rec.disconnected = True
                return False
            if self._closing.is_set():
                return False
            now = asyncio.get_running_loop().time()
            if deadline is not None and now >= deadline:
                return True
            await asyncio.sleep(_POLL if deadline is None else min(_POLL, deadline - now))


def iter_chunk_text(deltas: Sequence[tuple[dict[str, Any], str | None]]) -> Iterator[str]:
    """The content pieces a plan sends (for tests that check streaming order)."""
    for delta, _ in deltas:
        if delta.get("content"):
            yield delta["content"]

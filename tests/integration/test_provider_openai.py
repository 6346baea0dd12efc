"""OpenAILanguageModel: the real `openai` SDK against a fake server speaking the real wire format.

Nothing here mocks the SDK: requests go over loopback HTTP, replies come back as SSE
`chat.completion.chunk` events. Assertions are about what was delivered and what the server
saw; waits have generous deadlines for liveness only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from openai import AsyncOpenAI

from sipagent.providers.base import LlmChunk, ProviderError
from sipagent.providers.openai_llm import OpenAILanguageModel
from tests.kit.fakes.openai_server import (
    FakeOpenAIServer,
    FakeToolCall,
    Reply,
    iter_chunk_text,
    plan_deltas,
)

USER = [{"role": "user", "content": "Hi, I'd like to book a cleaning."}]
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "check_availability",
            "description": "Free appointment slots on a day",
            "parameters": {
                "type": "object",
                "properties": {"day": {"type": "string"}, "dentist": {"type": "string"}},
                "required": ["day"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "book_appointment",
            "parameters": {"type": "object", "properties": {"name": {"type": "string"}}},
        },
    },
]
# Arguments chosen to break naive reassembly: escapes, unicode, nesting, long strings.
BOOK_ARGS = {
    "name": 'Zoë "Zee" O\'Neill',
    "phone": "+44 20 7946 0958",
    "slot": {"day": "2025-03-14", "time": "10:30", "notes": "back\\slash, comma, {brace}"},
    "reasons": ["cleaning", "check-up"],
}
AVAIL_ARGS = {"day": "Friday", "dentist": "Dr. Patel"}


def make_llm(server: FakeOpenAIServer, **kwargs: Any) -> OpenAILanguageModel:
    return OpenAILanguageModel(api_key=server.api_key, base_url=server.base_url, **kwargs)


async def collect(llm: OpenAILanguageModel, messages=USER, tools=TOOLS) -> list[LlmChunk]:
    return [chunk async for chunk in llm.stream(messages, tools)]


async def test_text_streams_in_order_then_one_final_chunk() -> None:
    text = "Sure! We have openings on Friday at ten thirty, or Monday afternoon."
    async with FakeOpenAIServer([Reply(text=text)]) as server:
        llm = make_llm(server)
        try:
            chunks = await collect(llm)
        finally:
            await llm.aclose()
    *texts, final = chunks
    # Exactly the deltas the server sent, in order, each passed on as its own chunk.
    assert [c.text for c in texts] == list(iter_chunk_text(plan_deltas(Reply(text=text), [])))
    assert all(not c.tool_calls and c.finish_reason is None for c in texts)
    assert "".join(c.text for c in texts) == text
    assert len(texts) > 5  # streamed word by word, not delivered as one lump
    assert final == LlmChunk(text="", tool_calls=(), finish_reason="stop")


async def test_first_text_chunk_arrives_while_the_server_is_still_sending() -> None:
    text = "one two three four five six seven eight nine ten"
    async with FakeOpenAIServer([Reply(text=text)], inter_token_delay=0.05) as server:
        llm = make_llm(server)
        try:
            gen = llm.stream(USER, [])
            first = await anext(gen)
            rec = server.requests[0]
            # The provider passed the first word on before the reply was finished on the wire.
            assert first.text == "one "
            assert not rec.completed and rec.chunks_sent < rec.chunks_planned
            rest = [c async for c in gen]
        finally:
            await llm.aclose()
    assert first.text + "".join(c.text for c in rest) == text
    assert rest[-1].finish_reason == "stop"


@pytest.mark.parametrize("style", ["interleaved", "sequential", "ollama"])
async def test_parallel_tool_calls_are_reassembled_exactly(style: str) -> None:
    calls = (
        FakeToolCall.of("check_availability", AVAIL_ARGS, id="call_avail"),
        FakeToolCall.of("book_appointment", BOOK_ARGS, id="call_book"),
        FakeToolCall.of("check_availability", {"day": "Monday"}, id="call_monday"),
    )
    reply = Reply(tool_calls=calls)
    if style == "interleaved":
        # The fake really interleaves: call 1 gets fragments before call 0 is complete.
        order = [
            tc["index"]
            for delta, _ in plan_deltas(reply, ["a", "b", "c"])
            for tc in delta.get("tool_calls", [])
        ]
        assert order.index(1) < len(order) - 1 - order[::-1].index(0)
    async with FakeOpenAIServer([reply], tool_call_style=style) as server:
        llm = make_llm(server)
        try:
            chunks = await collect(llm)
        finally:
            await llm.aclose()
    assert len(chunks) == 1  # no text: just the final chunk
    final = chunks[0]
    assert final.finish_reason == "tool_calls"
    assert [(c.id, c.name) for c in final.tool_calls] == [
        ("call_avail", "check_availability"),
        ("call_book", "book_appointment"),
        ("call_monday", "check_availability"),
    ]
    # Byte-exact JSON text, and it parses back to what the "model" meant.
    assert [c.arguments for c in final.tool_calls] == [c.arguments for c in calls]
    assert [json.loads(c.arguments) for c in final.tool_calls] == [
        AVAIL_ARGS,
        BOOK_ARGS,
        {"day": "Monday"},
    ]


async def test_text_then_tool_call_in_one_reply() -> None:
    reply = Reply(
        text="Let me check that for you.",
        tool_calls=(FakeToolCall.of("check_availability", AVAIL_ARGS),),
    )
    async with FakeOpenAIServer([reply]) as server:
        llm = make_llm(server)
        try:
            chunks = await collect(llm)
        finally:
            await llm.aclose()
    assert "".join(c.text for c in chunks) == "Let me check that for you."
    final = chunks[-1]
    assert final.text == "" and final.finish_reason == "tool_calls"
    assert len(final.tool_calls) == 1
    (call,) = final.tool_calls
    assert call.name == "check_availability" and call.id.startswith("call_")
    assert json.loads(call.arguments) == AVAIL_ARGS


async def test_finish_reason_is_passed_through() -> None:
    async with FakeOpenAIServer([Reply(text="We are open nine to", finish_reason="length")]) as s:
        llm = make_llm(s)
        try:
            chunks = await collect(llm)
        finally:
            await llm.aclose()
    assert chunks[-1].finish_reason == "length"


async def test_request_carries_messages_tools_and_settings_as_given() -> None:
    async with FakeOpenAIServer(["Hello.", "Hello again."]) as server:
        llm = make_llm(server, model="llama3.2:3b", temperature=0.2, max_tokens=150)
        try:
            await collect(llm, USER, TOOLS)
            await collect(llm, USER, [])
        finally:
            await llm.aclose()
    first, second = server.requests
    assert first.path == "/v1/chat/completions"
    assert first.headers["Authorization"] == f"Bearer {server.api_key}"
    assert first.body["model"] == "llama3.2:3b"
    assert first.body["stream"] is True
    assert first.body["temperature"] == 0.2 and first.body["max_tokens"] == 150
    assert first.messages == USER and first.tools == TOOLS
    # No tools: the key is left out altogether (an empty array is a 400 upstream).
    assert "tools" not in second.body


async def test_tool_results_are_fed_back_on_the_wire() -> None:
    def script(body: dict[str, Any]) -> Reply:
        # Like a model: call the tool first, answer once its result is in the conversation.
        results = [m for m in body["messages"] if m.get("role") == "tool"]
        if not results:
            return Reply(tool_calls=(FakeToolCall.of("check_availability", AVAIL_ARGS),))
        slots = json.loads(results[-1]["content"])["slots"]
        return Reply(text=f"Dr. Patel is free at {slots[0]} on Friday.")

    async with FakeOpenAIServer(script) as server:
        llm = make_llm(server)
        try:
            (final,) = await collect(llm)
            (call,) = final.tool_calls
            messages = [
                *USER,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": call.arguments},
                        }
                    ],
                },
                {
                    "role": "tool",
                    "tool_call_id": call.id,
                    "content": json.dumps({"slots": ["10:30", "14:00"]}),
                },
            ]
            answer = await collect(llm, messages)
        finally:
            await llm.aclose()
    assert "".join(c.text for c in answer) == "Dr. Patel is free at 10:30 on Friday."
    assert server.requests[1].messages == messages


@pytest.mark.parametrize(
    ("status", "words"),
    [(500, "HTTP 500"), (429, "HTTP 429: rate limited")],
)
async def test_http_errors_raise_provider_error_without_retrying(status: int, words: str) -> None:
    async with FakeOpenAIServer(["never sent"]) as server:
        server.fail_next(status)
        llm = make_llm(server)
        try:
            with pytest.raises(ProviderError) as err:
                await collect(llm)
        finally:
            await llm.aclose()
    assert words in str(err.value)
    assert server.api_key not in str(err.value)
    assert len(server.requests) == 1  # max_retries=0: the caller is waiting, no silent retry


async def refusal(
    messages: list[dict[str, Any]] = USER,
    prepare: Callable[[FakeOpenAIServer], None] = lambda server: None,
    **llm_options: Any,
) -> ProviderError:
    """The ProviderError one request gets from a fake set up by `prepare`."""
    async with FakeOpenAIServer(["never sent"]) as server:
        prepare(server)
        llm = OpenAILanguageModel(
            **{"api_key": server.api_key, "base_url": server.base_url, **llm_options}
        )
        try:
            with pytest.raises(ProviderError) as err:
                await collect(llm, messages=messages)
        finally:
            await llm.aclose()
    return err.value


def failing(status: int, retry_after: str) -> Callable[[FakeOpenAIServer], None]:
    def prepare(server: FakeOpenAIServer) -> None:
        server.fail_next(status)
        server.retry_after = retry_after

    return prepare


async def test_a_429_carries_the_services_retry_after() -> None:
    error = await refusal(prepare=failing(429, "7"))
    assert error.retry_after == 7.0 and error.heals


def asked_for(call_id: str, name: str, arguments: str = "{}") -> dict[str, Any]:
    """The assistant message of a tool round asking for one call."""
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    return {"role": "assistant", "content": None, "tool_calls": [call]}


@pytest.mark.parametrize(
    ("messages", "words"),
    [
        (
            [*USER, asked_for("call_1", "book_appointment"), {"role": "user", "content": "Wait"}],
            "did not have response messages: call_1",
        ),
        (
            [*USER, asked_for("call_1", "end_call"), {"role": "tool", "tool_call_id": "call_2"}],
            "'tool_call_id' of 'call_2' not found",
        ),
        ([{"role": "tool", "tool_call_id": "call_9", "content": "{}"}], "must be a response"),
        ([{"role": "caller", "content": "hi"}], "Invalid value: 'caller'"),
    ],
)
async def test_histories_the_real_api_refuses_are_refused_with_its_words(
    messages: list[dict[str, Any]], words: str
) -> None:
    error = str(await refusal(messages))
    assert "HTTP 400" in error and words in error


async def test_the_body_we_post_is_what_chat_completions_create_would_send() -> None:
    history = [
        *USER,
        asked_for("call_1", "check_availability", '{"day": "Friday"}'),
        {"role": "tool", "tool_call_id": "call_1", "content": '{"ok": true}'},
    ]
    async with FakeOpenAIServer(["One.", "Two."]) as server:
        llm = make_llm(server, temperature=0.3, max_tokens=120)
        client = AsyncOpenAI(api_key=server.api_key, base_url=server.base_url, max_retries=0)
        try:
            await collect(llm, messages=history)
            stream = await client.chat.completions.create(
                model=llm.model,
                messages=history,  # type: ignore[arg-type]
                tools=TOOLS,  # type: ignore[arg-type]
                stream=True,
                temperature=0.3,
                max_tokens=120,
            )
            async for _ in stream:
                pass
        finally:
            await llm.aclose()
            await client.close()
    ours, sdk = server.requests
    assert ours.body == sdk.body
    assert ours.headers["Authorization"] == sdk.headers["Authorization"]
    assert ours.headers["Content-Type"] == sdk.headers["Content-Type"]


@pytest.mark.parametrize(("status", "model"), [(401, "gpt-4o-mini"), (404, "no-such-model")])
async def test_errors_that_cannot_heal_say_so(status: int, model: str) -> None:
    wrong_key = {"api_key": "sk-wrong-0123456789abcdef"} if status == 401 else {}
    error = await refusal(
        prepare=lambda server: server.missing_models.add("no-such-model"), model=model, **wrong_key
    )
    assert f"HTTP {status}" in str(error) and error.heals is False


async def test_wrong_key_is_an_auth_error_that_does_not_quote_the_key() -> None:
    async with FakeOpenAIServer(["never sent"]) as server:
        key = "sk-wrong-0123456789abcdef"
        llm = OpenAILanguageModel(api_key=key, base_url=server.base_url)
        try:
            with pytest.raises(ProviderError) as err:
                await collect(llm)
        finally:
            await llm.aclose()
    message = str(err.value)
    assert "401" in message and "authentication" in message
    assert key not in message and key[-4:] not in message  # not even OpenAI's masked form
    assert err.value.__cause__ is None


async def test_stall_mid_reply_times_out_and_drops_the_connection() -> None:
    async with FakeOpenAIServer(["one two three four five"], stall_after_tokens=3) as server:
        llm = make_llm(server, idle_timeout=0.3)
        received: list[str] = []
        try:
            with pytest.raises(ProviderError, match="timed out between chunks"):
                async for chunk in llm.stream(USER, []):
                    received.append(chunk.text)
        finally:
            await llm.aclose()
        rec = await server.wait_finished()
    assert received == ["one ", "two "]  # what came before the stall was still delivered
    assert rec.disconnected and not rec.completed


async def test_no_first_token_times_out() -> None:
    # Role chunk, then nothing: a role chunk alone does not count as the model responding.
    async with FakeOpenAIServer(["never finished"], stall_after_tokens=1) as server:
        llm = make_llm(server, first_token_timeout=0.3, idle_timeout=60.0)
        try:
            with pytest.raises(ProviderError, match="before the first token"):
                await collect(llm)
        finally:
            await llm.aclose()
        rec = await server.wait_finished()
    assert rec.disconnected


async def test_first_token_latency_knob() -> None:
    async with FakeOpenAIServer(["slow", "slow"], first_token_latency=0.3) as server:
        # A first-token deadline shorter than the server's latency fails...
        impatient = make_llm(server, first_token_timeout=0.05)
        try:
            with pytest.raises(ProviderError, match="before the first token"):
                await collect(impatient)
        finally:
            await impatient.aclose()
        # ...a longer one waits it out; the first chunk is seen only after the server sent it.
        patient = make_llm(server, first_token_timeout=30.0)
        loop = asyncio.get_running_loop()
        try:
            gen = patient.stream(USER, [])
            first = await anext(gen)
            seen_at = loop.time()
            rest = [c async for c in gen]
        finally:
            await patient.aclose()
    rec = server.requests[1]
    assert first.text == "slow" and rest[-1].finish_reason == "stop"
    assert rec.first_chunk_at is not None and rec.received_at <= rec.first_chunk_at <= seen_at


async def test_aclose_mid_reply_closes_the_http_stream() -> None:
    words = " ".join(f"word{i}" for i in range(80))
    # 4 s to send it all: the hang-up always lands mid-reply.
    async with FakeOpenAIServer([words], inter_token_delay=0.05) as server:
        llm = make_llm(server)
        try:
            gen = llm.stream(USER, [])
            assert (await anext(gen)).text == "word0 "
            await gen.aclose()
            rec = await server.wait_finished()
        finally:
            await llm.aclose()
    assert rec.disconnected and not rec.completed
    assert rec.chunks_sent < rec.chunks_planned


async def test_cancelling_the_consumer_closes_the_http_stream() -> None:
    words = " ".join(f"word{i}" for i in range(80))
    # 4 s to send it all: the hang-up always lands mid-reply.
    async with FakeOpenAIServer([words], inter_token_delay=0.05) as server:
        llm = make_llm(server)
        got_one = asyncio.Event()

        async def consume() -> None:
            async for _ in llm.stream(USER, []):
                got_one.set()

        task = asyncio.create_task(consume())
        try:
            await asyncio.wait_for(got_one.wait(), 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            rec = await server.wait_finished()
        finally:
            await llm.aclose()
    assert rec.disconnected and not rec.completed


async def test_connection_dropped_mid_reply_is_a_provider_error() -> None:
    async with FakeOpenAIServer(["one two three four"], drop_after_tokens=2) as server:
        llm = make_llm(server)
        try:
            with pytest.raises(ProviderError, match="connection failed"):
                await collect(llm)
        finally:
            await llm.aclose()


async def test_unreachable_server_is_a_provider_error() -> None:
    async with FakeOpenAIServer() as server:
        url = server.base_url
    llm = OpenAILanguageModel(api_key="sk-x", base_url=url)  # nothing listens there any more
    try:
        with pytest.raises(ProviderError, match="connection failed"):
            await collect(llm)
    finally:
        await llm.aclose()


async def test_openai_base_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    async with FakeOpenAIServer(["From the environment."]) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", server.api_key)
        llm = OpenAILanguageModel()
        try:
            chunks = await collect(llm)
        finally:
            await llm.aclose()
    assert "".join(c.text for c in chunks) == "From the environment."


def test_missing_key_for_the_real_service_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ProviderError, match="no API key"):
        OpenAILanguageModel()


# -- the connection is opened ahead of the first turn and kept between turns --------------------


async def test_warm_up_is_a_one_token_completion_on_the_connection_the_turn_reuses() -> None:
    async with FakeOpenAIServer(["Hello."]) as server:
        llm = make_llm(server, model="llama3.2:3b")
        try:
            await llm.warm_up()
            await collect(llm)
        finally:
            await llm.aclose()
    [warm], [chat] = server.warm_ups, server.requests
    # A real completion: a local server loads the model for it, while the greeting plays.
    assert warm.path == "/v1/chat/completions" and warm.status == 200 and warm.completed
    assert warm.body["model"] == "llama3.2:3b" and warm.body["max_tokens"] == 1
    assert warm.headers["Authorization"] == f"Bearer {server.api_key}"
    assert chat.path == "/v1/chat/completions" and chat.status == 200
    assert chat.client_port == warm.client_port  # no new TCP (TLS) connection for the turn


async def test_a_failed_warm_up_never_raises_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    async with FakeOpenAIServer(["Hello."]) as server:
        server.failing_warm_ups = 1
        llm = make_llm(server)
        try:
            await llm.warm_up()
            await collect(llm)
        finally:
            await llm.aclose()
    [warm], [chat] = server.warm_ups, server.requests
    assert warm.status == 500 and chat.status == 200
    assert any("warm-up" in r.getMessage() and "HTTP 500" in r.getMessage() for r in caplog.records)


async def test_warm_up_with_nothing_listening_returns_quietly() -> None:
    async with FakeOpenAIServer() as server:
        url = server.base_url
    llm = OpenAILanguageModel(api_key="sk-x", base_url=url)
    try:
        await asyncio.wait_for(llm.warm_up(), 10)  # no exception: the turn itself will report
    finally:
        await llm.aclose()


async def test_an_idle_connection_outlives_httpx_five_second_default() -> None:
    # A caller's turn plus our reply often lasts longer than httpx's 5 s keep-alive: the next
    # turn must not pay for a new connection (a TLS handshake, against the real API).
    async with FakeOpenAIServer(["One.", "Two."]) as server:
        llm = make_llm(server)
        try:
            await collect(llm)
            await asyncio.sleep(5.6)
            await collect(llm)
        finally:
            await llm.aclose()
    first, second = server.requests
    assert second.client_port == first.client_port

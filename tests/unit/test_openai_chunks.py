"""The OpenAI stream's chunks as raw JSON (the SDK's `cast_to=object`): what is read from them,
and that a server's odd shapes are skipped rather than raised on mid-reply."""

from __future__ import annotations

from sipagent.providers.openai_llm import (
    _choices,
    _finish_tool_call,
    _merge_tool_deltas,
    _PartialToolCall,
    _text,
)


def test_choices_are_read_from_a_chunk_and_nothing_else() -> None:
    choice = {"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}
    assert _choices({"choices": [choice]}) == [choice]
    # Usage-only and content-filter chunks have none; junk has none either.
    assert _choices({"choices": []}) == []
    assert _choices({"usage": {"total_tokens": 3}}) == []
    assert _choices({"choices": "0"}) == []
    assert _choices({"choices": [None, 3, choice]}) == [choice]
    assert _choices(["choices"]) == []
    assert _choices(None) == []


def test_text_fields_are_strings_or_nothing() -> None:
    assert _text("Hello") == "Hello"
    assert _text(None) == ""
    assert _text(7) == ""


def test_tool_call_deltas_in_wire_format_are_reassembled() -> None:
    calls: list[_PartialToolCall] = []
    by_index: dict[int | None, _PartialToolCall] = {}
    deltas = [
        [{"index": 0, "id": "call_a", "type": "function",
          "function": {"name": "book_appointment", "arguments": ""}}],
        [{"index": 1, "id": "call_b", "function": {"name": "end_call", "arguments": "{"}}],
        [{"index": 0, "function": {"arguments": '{"patient_name": "Ann'}}],
        [{"index": 0, "function": {"arguments": ' Lee"}'}}, "junk", None],
        [{"index": 1, "function": {"arguments": "}", "name": None}}],
    ]  # fmt: skip
    for chunk in deltas:
        _merge_tool_deltas(calls, by_index, chunk)
    finished = [_finish_tool_call(i, call) for i, call in enumerate(calls)]
    assert [(c.id, c.name, c.arguments) for c in finished] == [
        ("call_a", "book_appointment", '{"patient_name": "Ann Lee"}'),
        ("call_b", "end_call", "{}"),
    ]


def test_calls_without_index_follow_their_ids() -> None:
    # Ollama: parallel calls each whole in its own delta, every one with index 0 or none.
    calls: list[_PartialToolCall] = []
    by_index: dict[int | None, _PartialToolCall] = {}
    _merge_tool_deltas(calls, by_index, [{"id": "a", "function": {"name": "x", "arguments": "{}"}}])
    _merge_tool_deltas(calls, by_index, [{"id": "b", "function": {"name": "y", "arguments": "{}"}}])
    assert [(c.id, c.name) for c in calls] == [("a", "x"), ("b", "y")]

"""The chat history stays valid for the OpenAI API (checked by the strict fake's own rules)
whatever a barge-in cuts, and a tool result that arrives after the cut is still kept."""

from __future__ import annotations

import json

from sipagent.conversation.history import INTERRUPTED_MARK, TOOL_INTERRUPTED, ChatHistory
from sipagent.providers.base import ToolCall
from tests.kit.fakes.openai_server import history_error

BOOK = ToolCall("call_1", "book_appointment", '{"patient_name": "Ann Lee"}')
FIND = ToolCall("call_2", "find_appointments", '{"phone": "+12125550123"}')
BOOKED = json.dumps({"ok": True, "appointment_id": 7})


def history_with_a_caller_turn() -> ChatHistory:
    history = ChatHistory("You are a receptionist.")
    history.add_user("Book me in for Tuesday.")
    return history


def test_it_starts_with_the_system_prompt() -> None:
    assert ChatHistory("Be brief.").messages == [{"role": "system", "content": "Be brief."}]


def test_a_tool_round_is_valid_at_once_and_its_result_replaces_the_placeholder() -> None:
    history = history_with_a_caller_turn()
    tool_round = history.open_tool_round("Let me check.", (BOOK, FIND))
    assert history_error(history.messages) is None
    assert [m["content"] for m in history.messages[-2:]] == [TOOL_INTERRUPTED] * 2
    assert history.messages[-3]["content"] == "Let me check."
    tool_round.answer(0, BOOKED)
    assert history.messages[-2] == {"role": "tool", "tool_call_id": "call_1", "content": BOOKED}
    assert history.messages[-1]["content"] == TOOL_INTERRUPTED  # the other call still open


def test_a_tool_round_without_text_has_no_content() -> None:
    history = history_with_a_caller_turn()
    history.open_tool_round("", (BOOK,))
    assert history.messages[-2]["content"] is None
    assert history_error(history.messages) is None


def test_a_reply_cut_mid_sentence_keeps_only_the_heard_words_marked() -> None:
    history = history_with_a_caller_turn()
    start = len(history)
    history.add_assistant("Tuesday at ten is free. Shall I book it?")
    history.keep_heard_part(start, "Tuesday at ten")
    assert history.messages[start:] == [
        {"role": "assistant", "content": f"Tuesday at ten {INTERRUPTED_MARK}"}
    ]


def test_a_reply_cut_before_a_word_was_heard_is_still_marked() -> None:
    history = history_with_a_caller_turn()
    start = len(history)
    history.keep_heard_part(start, "")
    assert history.messages[start:] == [{"role": "assistant", "content": INTERRUPTED_MARK}]
    assert history_error(history.messages) is None


def test_a_cut_during_a_tool_round_keeps_the_calls_answered_and_the_late_result() -> None:
    history = history_with_a_caller_turn()
    start = len(history)
    tool_round = history.open_tool_round("One moment.", (BOOK,))
    history.keep_heard_part(start, "One")  # the caller talks while the booking runs
    assert history_error(history.messages) is None
    # Cut inside what the round said before its call: the round keeps the word heard, marked.
    assert [m["role"] for m in history.messages[start:]] == ["assistant", "tool"]
    assert history.messages[start]["content"] == f"One {INTERRUPTED_MARK}"
    tool_round.answer(0, BOOKED)  # the booking committed after the cut
    assert history.messages[start + 1]["content"] == BOOKED
    assert history_error(history.messages) is None


def test_what_a_tool_round_said_is_not_repeated_in_the_heard_part() -> None:
    history = history_with_a_caller_turn()
    start = len(history)
    history.open_tool_round("One moment, I'll book that.", (BOOK,))
    history.add_assistant("You're booked for Tuesday at ten.")
    history.keep_heard_part(start, "One moment, I'll book that. You're booked")
    assert history_error(history.messages) is None
    said = [m["content"] for m in history.messages[start:] if m["role"] == "assistant"]
    assert said == ["One moment, I'll book that.", f"You're booked {INTERRUPTED_MARK}"]


def test_a_round_heard_in_full_and_nothing_after_it_is_followed_by_the_mark_alone() -> None:
    history = history_with_a_caller_turn()
    start = len(history)
    history.open_tool_round("One moment.", (FIND,))
    history.open_tool_round("Nearly there.", (BOOK,))  # the caller cut in before this one
    history.keep_heard_part(start, "One moment.")
    assert history_error(history.messages) is None
    said = [m["content"] for m in history.messages[start:] if m["role"] == "assistant"]
    assert said == ["One moment.", INTERRUPTED_MARK]


def test_a_cut_after_two_rounds_keeps_both_in_order_before_what_was_heard() -> None:
    history = history_with_a_caller_turn()
    start = len(history)
    history.open_tool_round("", (FIND,))
    history.add_assistant("I found it.")  # text between rounds is replaced by what was heard
    history.open_tool_round("", (BOOK,))
    history.keep_heard_part(start, "I found")
    assert [m.get("tool_call_id") or m["role"] for m in history.messages[start:]] == [
        "assistant", "call_2", "assistant", "call_1", "assistant",
    ]  # fmt: skip
    assert history.messages[-1]["content"] == f"I found {INTERRUPTED_MARK}"
    assert history_error(history.messages) is None


def test_a_caller_message_inside_the_cut_reply_follows_it() -> None:
    history = history_with_a_caller_turn()
    start = len(history)
    history.add_assistant("We open at nine")
    history.add_user("And on Saturdays?")
    history.keep_heard_part(start, "We open")
    assert [m["role"] for m in history.messages[start:]] == ["assistant", "user"]
    assert history.messages[-1]["content"] == "And on Saturdays?"


def test_words_heard_that_no_message_holds_leave_the_round_as_it_was() -> None:
    history = history_with_a_caller_turn()
    start = len(history)
    history.open_tool_round("One moment.", (BOOK,))
    # Spoken but kept in no message (an apology before a retried request), then the round.
    history.keep_heard_part(start, "Sorry, say that again? One moment.")
    assert history_error(history.messages) is None
    said = [m["content"] for m in history.messages[start:] if m["role"] == "assistant"]
    assert said == ["One moment.", f"Sorry, say that again? One moment. {INTERRUPTED_MARK}"]

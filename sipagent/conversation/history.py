"""The chat history sent to the LLM, kept valid for the OpenAI API on every path.

A tool round answers each of its tool_call ids at once with a placeholder, so the history is
valid whenever the reply around it is cancelled; the tool's real result replaces the
placeholder in place when it arrives, even after the reply was cut. A reply the caller
interrupted keeps only what they heard, marked as interrupted; its tool calls and their
answers stay (a booking that committed is never forgotten), and so do the words a tool round
said before its calls, once (the marked message does not say them again).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sipagent.providers.base import ToolCall

# What an open tool_call id is answered with until its tool finishes (or if it never does).
TOOL_INTERRUPTED = json.dumps({"ok": False, "error": "interrupted before completion"})
INTERRUPTED_MARK = "[interrupted by the caller]"


class ToolRound:
    """One assistant message's tool calls and their answers in the history."""

    def __init__(self, calls: Sequence[ToolCall], answers: list[dict[str, Any]]) -> None:
        self.calls = tuple(calls)
        self._answers = answers

    def answer(self, index: int, content: str) -> None:
        """The result of calls[index] replaces its placeholder, wherever the history is now."""
        self._answers[index]["content"] = content


class ChatHistory:
    def __init__(self, system_prompt: str) -> None:
        self.messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}]

    def __len__(self) -> int:
        return len(self.messages)

    def add_user(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})

    def add_assistant(self, text: str) -> None:
        self.messages.append({"role": "assistant", "content": text})

    def open_tool_round(self, text: str, calls: Sequence[ToolCall]) -> ToolRound:
        """The model's tool calls (with any text it said first), each answered at once with
        TOOL_INTERRUPTED until ToolRound.answer() gives its result."""
        answers = [
            {"role": "tool", "tool_call_id": call.id, "content": TOOL_INTERRUPTED} for call in calls
        ]
        self.messages.append(
            {
                "role": "assistant",
                "content": text or None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }
                    for call in calls
                ],
            }
        )
        self.messages.extend(answers)
        return ToolRound(calls, answers)

    def keep_heard_part(self, reply_start: int, heard: str) -> None:
        """The reply whose messages start at `reply_start` was interrupted: it becomes only what
        the caller heard, marked, so the model does not assume the rest was said. Its tool
        calls and their answers stay, in order (each id still answered), and any caller
        message after it follows it."""
        tail = self.messages[reply_start:]
        tool_related = [m for m in tail if m["role"] == "tool" or m.get("tool_calls")]
        callers = [m for m in tail if m["role"] == "user"]
        # What a tool round said before its calls was spoken first and stays with its calls:
        # the marked message carries only the words heard after it (it repeated them).
        unaccounted = heard.split()
        marked = False
        for message in tool_related:
            if message["role"] == "tool" or not message.get("content"):
                continue
            said = message["content"].split()
            if marked:
                message["content"] = None  # said after the cut: never heard
            elif unaccounted[: len(said)] == said:
                unaccounted = unaccounted[len(said) :]
            elif said[: len(unaccounted)] == unaccounted:
                # Cut inside what this round said (or before it): it keeps the words heard,
                # marked.
                message["content"] = " ".join([*unaccounted, INTERRUPTED_MARK])
                marked = True
            # Else the caller heard words no message holds (a retry's apology): the round
            # stays as it was, and the words heard go to the marked message after it.
        rest = (
            []
            if marked
            else [{"role": "assistant", "content": " ".join([*unaccounted, INTERRUPTED_MARK])}]
        )
        self.messages[reply_start:] = [*tool_related, *rest, *callers]

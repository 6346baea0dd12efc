"""What the conversation is doing, as `/status` and the monitor show it."""

from __future__ import annotations

from enum import StrEnum


class ConversationState(StrEnum):
    LISTENING = "listening"  # the caller's turn
    THINKING = "thinking"  # a reply is being prepared, nothing of it playing yet
    SPEAKING = "speaking"  # the reply's audio is going out

"""What the conversation engine needs from an app's tools: their schemas for the model, and a
way to run one call. The engine knows nothing of what the tools do (bookings, orders, ...):
another kind of business is another toolset and prompt, not an edit of the engine."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from sipagent.providers.base import ToolCall


class CallAction(StrEnum):
    """What the engine does with the call once the reply around a tool result is spoken."""

    TRANSFER = "transfer"
    HANG_UP = "hangup"


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    content: str  # JSON for the tool message
    action: CallAction | None = None


class Toolset(Protocol):
    @property
    def schemas(self) -> list[dict[str, Any]]:
        """OpenAI-style function schemas, sent with every LLM request."""
        ...

    @property
    def keypad_shortcuts(self) -> Mapping[str, str]:
        """Keypad entries that call a tool at once instead of reaching the model, e.g.
        {"0": "transfer_to_human"}."""
        ...

    async def execute(self, tool_call: ToolCall, call_id: str) -> ToolOutcome:
        """Run one tool call; every failure comes back as an outcome the model can act on."""
        ...

"""The conversation engine is not the dental receptionist: with another toolset and prompt
(a pizza order line here) it runs the same loop, sends that prompt and those tools, executes
them, honours their keypad shortcut and their call action, and nothing dental leaks in."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

from sipagent.conversation.session import ConversationSession, ConversationSettings
from sipagent.conversation.state import ConversationState
from sipagent.conversation.toolset import CallAction, ToolOutcome
from sipagent.providers.base import LlmChunk, ToolCall
from tests.kit.conversation_standins import InstantTts, MemoryCall, PushedStt, caller_says, wait_for
from tests.kit.fakes.openai_server import history_error

PROMPT = "You are the order line of Luigi's Pizza. Take orders with place_order."


def _function(name: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": name.replace("_", " "),
            "parameters": {"type": "object", "properties": properties, "required": []},
        },
    }


class PizzaTools:
    schemas: ClassVar[list[dict[str, Any]]] = [
        _function("place_order", {"pizza": {"type": "string"}}),
        _function("repeat_order", {}),
        _function("hang_up", {}),
    ]
    keypad_shortcuts: ClassVar[Mapping[str, str]] = {"9": "repeat_order"}

    def __init__(self) -> None:
        self.orders: list[str] = []
        self.calls: list[tuple[str, str]] = []

    async def execute(self, tool_call: ToolCall, call_id: str) -> ToolOutcome:
        self.calls.append((tool_call.name, call_id))
        if tool_call.name == "place_order":
            self.orders.append(json.loads(tool_call.arguments)["pizza"])
            return ToolOutcome(json.dumps({"ok": True, "order_number": len(self.orders)}))
        if tool_call.name == "repeat_order":
            return ToolOutcome(json.dumps({"ok": True, "orders": self.orders}))
        return ToolOutcome(json.dumps({"ok": True, "bye": True}), action=CallAction.HANG_UP)


class PizzaModel:
    """Calls place_order for a pizza and hang_up for a goodbye; reads tool results back."""

    def __init__(self) -> None:
        self.requests: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = []

    async def stream(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> AsyncIterator[LlmChunk]:
        self.requests.append((copy.deepcopy(messages), tools))
        last = messages[-1]
        if last["role"] == "tool":
            result = json.loads(last["content"])
            if "order_number" in result:
                yield LlmChunk(text=f"Order {result['order_number']}, coming up.")
            elif "orders" in result:
                yield LlmChunk(text=f"You ordered: {', '.join(result['orders'])}.")
            else:
                yield LlmChunk(text="Ciao!")
        elif "bye" in last["content"]:
            yield LlmChunk(tool_calls=(ToolCall("call_bye", "hang_up", "{}"),))
        else:
            yield LlmChunk(tool_calls=(ToolCall("call_1", "place_order", '{"pizza": "diavola"}'),))
        yield LlmChunk(finish_reason="stop")


class KeypadCall(MemoryCall):
    def __init__(self) -> None:
        super().__init__()
        self.keys: asyncio.Queue[str] = asyncio.Queue()

    async def digits(self) -> AsyncIterator[str]:
        while True:
            yield await self.keys.get()


async def test_another_toolset_and_prompt_run_the_same_engine() -> None:
    call, stt, tts = KeypadCall(), PushedStt(), InstantTts()
    tools, model = PizzaTools(), PizzaModel()
    session = ConversationSession(
        call,
        stt=stt,
        llm=model,
        tts=tts,
        toolset=tools,
        system_prompt=PROMPT,
        settings=ConversationSettings(greeting="Luigi's, what can I get you?"),
    )
    runner = asyncio.create_task(session.run())
    await wait_for(lambda: len(session.turns) == 1, "the greeting said")
    assert session.state == ConversationState.LISTENING == "listening"

    caller_says(stt, "A diavola, please")
    await wait_for(lambda: "Order 1, coming up." in tts.texts, "the order read back")
    assert tools.orders == ["diavola"]

    for key in "9#":  # the toolset's keypad shortcut: its tool at once, then the model
        call.keys.put_nowait(key)
    await wait_for(lambda: "You ordered: diavola." in tts.texts, "the order repeated")

    caller_says(stt, "That's all, bye")
    await asyncio.wait_for(runner, 5)  # the toolset's hang-up action ended the call
    assert call.ended.is_set() and tts.texts[-1] == "Ciao!"

    assert [name for name, _ in tools.calls] == ["place_order", "repeat_order", "hang_up"]
    for messages, schemas in model.requests:
        assert messages[0] == {"role": "system", "content": PROMPT}
        assert schemas is PizzaTools.schemas
        assert history_error(messages) is None
    sent = json.dumps([messages for messages, _ in model.requests])
    assert "book_appointment" not in sent and "receptionist" not in sent
    assert [(t.role, t.text) for t in session.turns if t.role == "user"] == [
        ("user", "A diavola, please"),
        ("user", "That's all, bye"),
    ]

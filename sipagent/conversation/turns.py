"""The call's turns (what was said, what the caller heard, when each stage happened) and when
they are handed to the recorder."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("sipagent.conversation")


@dataclass(slots=True)
class TurnTimings:
    """loop.time() stamps of one exchange; None where the stage did not happen."""

    caller_speech_end: float | None = None  # last voiced inbound frame
    stt_final: float | None = None
    llm_first_token: float | None = None
    tts_first_byte: float | None = None
    first_reply_packet: float | None = None  # first outbound RTP packet of the reply
    barge_in_onset: float | None = None
    barge_in_decision: float | None = None
    last_voiced_packet: float | None = None  # after a barge-in: when the line went quiet

    def as_dict(self) -> dict[str, float | None]:
        return {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]


@dataclass(slots=True)
class Turn:
    role: str  # "user" | "assistant"
    text: str
    heard_text: str | None = None
    interrupted: bool = False
    timings: TurnTimings = field(default_factory=TurnTimings)
    at: float = field(default_factory=time.time)


class TurnLog:
    """Every turn of the call, handed to `on_turn` (the recorder) in order.

    While a reply to the caller is being prepared the hand-over is held back: persisting a turn
    (SQL in a worker thread) holds the GIL for ~3 ms, which would land on the LLM request. The
    turns held go once the reply starts speaking, or ends without a word.
    """

    def __init__(self, call_id: str, on_turn: Callable[[int, Turn], None] | None = None) -> None:
        self.call_id = call_id
        self.on_turn = on_turn
        self.turns: list[Turn] = []
        self._waiting: list[int] = []
        self._holding = False

    def add(self, turn: Turn) -> int:
        """Append `turn`; returns its index in the call's turns."""
        self.turns.append(turn)
        index = len(self.turns) - 1
        self._waiting.append(index)
        if not self._holding:
            self.release()
        return index

    def hold(self) -> None:
        """Keep new turns back until release()."""
        self._holding = True

    def release(self) -> None:
        """Hand the turns held back so far to on_turn, in order."""
        self._holding = False
        waiting, self._waiting = self._waiting, []
        if self.on_turn is None:
            return
        for index in waiting:
            try:
                self.on_turn(index, self.turns[index])
            except Exception:  # persistence trouble never reaches the caller
                log.exception("[%s] recording a turn failed", self.call_id)

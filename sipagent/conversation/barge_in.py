"""Barge-in policy: when does the caller's voice interrupt the agent?

Local VAD reacts within a few frames but cannot tell a word from a cough; the STT's interim
transcript can, but arrives hundreds of milliseconds later. So the policy works in two steps:

1. VAD onset (`onset_ms` of voiced frames while the agent speaks) -> PAUSE: the agent goes
   quiet at once, keeping its queued audio.
2. Words -> INTERRUPT: an interim transcript longer than `min_chars` that is not a lone
   backchannel ("mhm", "okay") confirms it; the queue is flushed and the reply cancelled.
   No words within `confirm_ms` (a cough, a door) or a backchannel -> RESUME where it paused.

Pure: frames and transcripts come in with their times, decisions go out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

BACKCHANNELS = frozenset(
    {
        "mhm", "mm", "mmm", "hmm", "uh huh", "uh-huh", "uhhuh", "okay", "ok", "yeah", "yep",
        "yes", "right", "sure", "alright", "all right", "got it", "i see", "ah", "oh", "uh",
        "um",
    }
)  # fmt: skip


class BargeInAction(StrEnum):
    NONE = "none"
    PAUSE = "pause"
    RESUME = "resume"
    INTERRUPT = "interrupt"


@dataclass(frozen=True, slots=True)
class BargeInSettings:
    onset_ms: float = 100.0  # voiced audio needed before pausing
    min_chars: int = 3  # interim transcript must be longer than this
    confirm_ms: float = 900.0  # after a pause, wait this long for words before resuming
    interrupt_on_vad_ms: float = 1500.0  # this much continuous voice interrupts even unheard

    @classmethod
    def for_sensitivity(cls, sensitivity: str) -> BargeInSettings:
        presets = {
            "low": cls(onset_ms=200.0, min_chars=8, confirm_ms=700.0, interrupt_on_vad_ms=2500.0),
            "medium": cls(),
            "high": cls(onset_ms=60.0, min_chars=1, confirm_ms=1200.0, interrupt_on_vad_ms=900.0),
        }
        if sensitivity not in presets:
            raise ValueError(
                f"barge-in sensitivity must be low, medium or high, not {sensitivity!r}"
            )
        return presets[sensitivity]


def is_backchannel(text: str) -> bool:
    words = re.sub(r"[^a-z' -]", "", text.lower()).strip()
    return words in BACKCHANNELS


@dataclass(slots=True)
class BargeInEvent:
    action: BargeInAction
    at: float
    caller_onset: float | None = None  # first voiced frame of the interrupting speech
    transcript: str = ""


class BargeInPolicy:
    def __init__(self, settings: BargeInSettings | None = None) -> None:
        self.settings = settings or BargeInSettings()
        self.agent_speaking = False
        self.paused_at: float | None = None
        self._voiced_since: float | None = None
        self._last_voiced: float | None = None

    def set_agent_speaking(self, speaking: bool) -> None:
        self.agent_speaking = speaking
        if not speaking:
            self.paused_at = None

    def on_frame(self, voiced: bool, now: float, frame_ms: float = 20.0) -> BargeInEvent:
        """One 20 ms caller frame with the local VAD's verdict; `now` is its arrival time."""
        if voiced:
            if self._voiced_since is None:
                self._voiced_since = now - frame_ms / 1000
            self._last_voiced = now
        elif self._last_voiced is not None and now - self._last_voiced > 0.2:
            self._voiced_since = None  # a pause in the caller's voice ends the onset run
        if not self.agent_speaking:
            return BargeInEvent(BargeInAction.NONE, now)
        voiced_for_ms = 0.0 if self._voiced_since is None else (now - self._voiced_since) * 1000
        if self.paused_at is None:
            if voiced and voiced_for_ms >= self.settings.onset_ms:
                self.paused_at = now
                return BargeInEvent(BargeInAction.PAUSE, now, self._voiced_since)
            return BargeInEvent(BargeInAction.NONE, now)
        if voiced and voiced_for_ms >= self.settings.interrupt_on_vad_ms:
            return self._interrupt(now, "")
        if (now - self.paused_at) * 1000 >= self.settings.confirm_ms and not voiced:
            self.paused_at = None
            self._voiced_since = None
            return BargeInEvent(BargeInAction.RESUME, now)
        return BargeInEvent(BargeInAction.NONE, now)

    def on_transcript(self, text: str, now: float) -> BargeInEvent:
        """An interim or final transcript of what the caller is saying now."""
        text = text.strip()
        if not self.agent_speaking or not text:
            return BargeInEvent(BargeInAction.NONE, now)
        if len(text) <= self.settings.min_chars or is_backchannel(text):
            if self.paused_at is not None and is_backchannel(text):
                self.paused_at = None
                return BargeInEvent(BargeInAction.RESUME, now, transcript=text)
            return BargeInEvent(BargeInAction.NONE, now, transcript=text)
        return self._interrupt(now, text)

    def _interrupt(self, now: float, text: str) -> BargeInEvent:
        onset = self._voiced_since
        self.agent_speaking = False
        self.paused_at = None
        return BargeInEvent(BargeInAction.INTERRUPT, now, onset, text)

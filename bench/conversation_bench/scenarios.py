"""What each scenario plays: the caller's utterances (a mu-law file of espeak-ng clips and
silence), the fakes' replies, the targets; and one scenario run's record."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tests.kit.fakes.deepgram_server import frame_is_speech
from tests.kit.peerlib.audio import AudioLibrary

from .capture import FRAME_BYTES, FRAME_S, SILENCE
from .fakes import TimedDeepgram, TimedElevenLabs, TimedOpenAI

SCENARIOS = ("v2v", "barge-in")

TARGETS = {
    "v2v_p50_ms": 720.0,
    "overhead_p50_ms": 10.0,
    "overhead_p95_ms": 25.0,
    "onset_to_silence_p50_ms": 200.0,
    "decision_to_silence_ms": 20.0,
}

GREETING_CLEAR_S = 5.0  # the greeting (~3.9 s of audio) is over before the first utterance

V2V_UTTERANCES = (
    "Can I come in on Monday",
    "What time do you open",
    "Do you take new patients",
    "I need a cleaning soon",
    "Is there parking nearby",
    "My tooth has been hurting",
    "Could I bring my son",
    "Do you accept insurance",
)
V2V_REPLIES = ("Sure.", "Okay, got it.", "Of course.", "Yes, we do.", "Right, noted.")
BARGE_UTTERANCES = (
    "Actually I have another question",
    "Sorry but what about Saturday morning",
    "Hold on please let me check",
    "Wait I need something else",
    "Actually make that next week",
    "Sorry could you repeat that",
)
LONG_REPLIES = (
    "We are open from eight in the morning until six in the evening on weekdays. "
    "On Saturdays we open from nine until one in the afternoon. "
    "We are closed on Sundays and on public holidays.",
    "Our earliest appointment for a cleaning is next Tuesday at ten in the morning. "
    "The hygienist usually needs about forty five minutes for it. "
    "Please bring your insurance card with you.",
    "Doctor Patel and Doctor Nguyen both see new patients during the week. "
    "Your first visit includes a full exam and a set of x-rays. "
    "It usually takes a little more than an hour.",
)
BARGE_OFFSETS_S = (0.6, 1.0, 1.4, 0.8, 1.2)  # into the reply, cycled: where the caller cuts in


@dataclass
class Utterance:
    text: str
    start_frame: int  # first frame of the espeak clip in the file
    voiced_first: int  # first / last voiced frame (the fake Deepgram's VAD), file frame index
    voiced_last: int


@dataclass
class CallerScript:
    path: Path
    frames: int
    utterances: list[Utterance]

    @property
    def seconds(self) -> float:
        return self.frames * FRAME_S


class ScriptBuilder:
    """Raw mu-law: silence and espeak clips, frame-aligned, with each clip's voiced frames."""

    def __init__(self, lib: AudioLibrary) -> None:
        self.lib = lib
        self.data = bytearray()
        self.utterances: list[Utterance] = []

    @property
    def frame(self) -> int:
        return len(self.data) // FRAME_BYTES

    def silence_until(self, frame: int) -> None:
        self.data += bytes([SILENCE]) * max(0, (frame - self.frame) * FRAME_BYTES)

    def say(self, text: str) -> Utterance:
        clip = self.lib.speech_ulaw(text).read_bytes()
        clip += bytes([SILENCE]) * (-len(clip) % FRAME_BYTES)
        start = self.frame
        voiced = [
            i for i in range(len(clip) // FRAME_BYTES)
            if frame_is_speech(clip[i * FRAME_BYTES : (i + 1) * FRAME_BYTES])
        ]  # fmt: skip
        if not voiced:
            raise RuntimeError(f"espeak produced no voiced audio for {text!r}")
        self.data += clip
        utt = Utterance(text, start, start + voiced[0], start + voiced[-1])
        self.utterances.append(utt)
        return utt

    def finish(self, path: Path, tail_s: float) -> CallerScript:
        self.silence_until(self.frame + round(tail_s / FRAME_S))
        path.write_bytes(bytes(self.data))
        return CallerScript(path, self.frame, list(self.utterances))


def frames_of(seconds: float) -> int:
    return round(seconds / FRAME_S)


def v2v_script(lib: AudioLibrary, path: Path, turns: int, gap_s: float) -> CallerScript:
    b = ScriptBuilder(lib)
    b.silence_until(frames_of(GREETING_CLEAR_S))
    for i in range(turns):
        utt = b.say(V2V_UTTERANCES[i % len(V2V_UTTERANCES)])
        # the reply (<= 0.8 s of voice-to-voice + <= 0.72 s of audio) ends within the gap
        b.silence_until(utt.voiced_last + 1 + frames_of(gap_s))
    return b.finish(path, tail_s=0.5)


def barge_script(lib: AudioLibrary, path: Path, count: int, expected_v2v_s: float) -> CallerScript:
    b = ScriptBuilder(lib)
    b.silence_until(frames_of(1.5))  # the first utterance talks over the greeting
    for i in range(count):
        utt = b.say(BARGE_UTTERANCES[i % len(BARGE_UTTERANCES)])
        if i + 1 < count:
            cut_in = expected_v2v_s + BARGE_OFFSETS_S[i % len(BARGE_OFFSETS_S)]
            b.silence_until(utt.voiced_last + 1 + frames_of(cut_in))
    return b.finish(path, tail_s=2.5)


@dataclass
class ScenarioRun:
    name: str
    deepgram: TimedDeepgram
    openai: TimedOpenAI
    elevenlabs: TimedElevenLabs
    offsets: list[float] = field(default_factory=list)  # realtime - monotonic samples
    calls: list[dict[str, Any]] = field(default_factory=list)  # per call: script, capture...
    agent_dump: dict[str, Any] = field(default_factory=dict)

    def real(self, mono: float | None) -> float | None:
        return None if mono is None else mono + float(np.mean(self.offsets))

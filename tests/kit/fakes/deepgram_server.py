"""A scripted Deepgram live-transcription server (`GET /v1/listen` websocket) on 127.0.0.1.

The provider under test talks to it through the real `deepgram-sdk`, so every message it sends
has to parse into the SDK's `deepgram.listen.v1` types exactly as api.deepgram.com's do
(Results with `metadata.model_info`, SpeechStarted, UtteranceEnd, Metadata). It does not
recognise words: it is a *scripted recogniser*. A small energy VAD finds the caller's
utterances in the audio it receives, and utterance N is "heard" as `transcripts[N]`.

    async with FakeDeepgramServer(["I'd like to book a cleaning."]) as server:
        stt = DeepgramSpeechToText(api_key=server.api_key, ws_url=server.url)

Everything is decided on the *audio timeline* (audio time = mu-law bytes received / 8000), so
what is recognised, and where utterances start and end, does not depend on network jitter or on
how the client chunks its frames. Only *when* a message leaves the server uses the wall clock:

  * SpeechStarted     when the onset frame arrives (`timestamp` = audio time of the onset).
  * interim Results   every `interim_interval` s of audio time inside an utterance, revealing
                      one more scripted word per `word_seconds` of utterance audio; sent
                      `interim_latency` s after the frame that triggered them arrived.
  * final Results     (is_final and speech_final) once `endpointing` ms (the client's query
                      parameter) of non-speech audio follow the last speech frame. Sent at
                      ``max(arrival(last speech frame) + final_latency, arrival(endpoint frame))``:
                      `final_latency` is the whole delay from "the last voiced audio reached
                      the server" to "the final Result leaves it", *including* the endpointing
                      window. It can never be shorter than the window itself (the server cannot
                      know the caller stopped before it has heard the silence), so with audio
                      arriving in real time and endpointing=300, final_latency=0.3 means "final
                      exactly at endpoint detection" and 0.5 means 200 ms of extra processing.
  * UtteranceEnd      once `utterance_end_ms` of audio time have passed since the last word
                      ended with no new onset (needs the client to keep streaming audio, as
                      Deepgram does); never before the final of that utterance.
  * Finalize          a final Result with from_finalize=true (speech_final=false) for an
                      utterance in progress, or an empty one when unfinalized audio exists.
  * CloseStream       the final of any utterance in progress, then Metadata, then close 1000.
                      An empty binary message does the same on /v1/listen (Deepgram: "sending
                      an empty byte will cause unexpected closures"); `controls` records it.
  * idle timeout      no audio and no text message for `idle_timeout` s: close 1011 with
                      Deepgram's NET-0001 reason (what the real service does after ~10 s).

Results are contiguous segments like Deepgram's: each one's `start` is where the previous one
ended, and `start + duration` is the audio time up to which it is final (a client uses that to
know which audio it no longer needs to replay). Messages leave in the order they were produced.

Test knobs: `drop_connection_after_seconds` (wall clock since the connection opened) and
`drop_after_audio_seconds` (audio time received) abort the TCP connection without a close
frame, for the first `drops` connections. Everything received is recorded per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import re
import uuid
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from tests.kit.fakes.loopback import LoopbackServer

with warnings.catch_warnings():
    # stdlib audioop warns on import on 3.11/3.12 (audioop-lts replaces it on >= 3.13); the
    # fake must load under `-W error` runs too.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

SAMPLE_RATE = 8000  # mu-law: one byte per sample
FRAME_BYTES = 160  # the VAD looks at 20 ms frames
FRAME_SECONDS = FRAME_BYTES / SAMPLE_RATE

# What the provider must always ask for (a wrong value is a 400, like Deepgram's own check).
REQUIRED_PARAMS = (
    "encoding",
    "sample_rate",
    "interim_results",
    "endpointing",
    "vad_events",
    "utterance_end_ms",
    "smart_format",
)
NET0001 = (
    "Deepgram did not receive audio data or a text message within the timeout window. "
    "See https://dpgr.am/net0001"
)
_EPS = 1e-9
FLUX_UPDATE_SECONDS = 0.25  # Flux sends a TurnInfo Update for about every 0.25 s of audio
EMPTY_AUDIO = "<empty binary message>"  # recorded in `controls`: it ends a v1 stream


# ---------------------------------------------------------------------------------------------
# query parameters


@dataclass(frozen=True, slots=True)
class ListenParams:
    model: str
    interim_results: bool
    vad_events: bool
    smart_format: bool
    endpointing_s: float | None  # None: endpointing=false (only Finalize/UtteranceEnd end turns)
    utterance_end_s: float | None


def _parse_bool(name: str, value: str) -> bool:
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"{name} must be true or false, got {value!r}")


def parse_listen_params(
    query: Mapping[str, str], required: Collection[str] = REQUIRED_PARAMS
) -> ListenParams:
    """The subset of `/v1/listen` parameters the fake acts on; ValueError says what is wrong."""
    missing = [name for name in required if name not in query]
    if missing:
        raise ValueError(f"missing query parameter(s): {', '.join(missing)}")
    if query.get("encoding", "mulaw") != "mulaw":
        raise ValueError(f"encoding must be mulaw, got {query['encoding']!r}")
    if query.get("sample_rate", "8000") != "8000":
        raise ValueError(f"sample_rate must be 8000, got {query['sample_rate']!r}")
    if query.get("channels", "1") != "1":
        raise ValueError(f"channels must be 1, got {query['channels']!r}")
    endpointing = query.get("endpointing", "10")  # Deepgram's default is 10 ms
    utterance_end = query.get("utterance_end_ms")
    try:
        endpointing_s = (
            None if endpointing.lower() == "false" else int(endpointing) / 1000
        )  # fmt: skip
        utterance_end_s = None if utterance_end is None else int(utterance_end) / 1000
    except ValueError:
        raise ValueError(
            f"endpointing/utterance_end_ms must be integers, got {endpointing!r}/{utterance_end!r}"
        ) from None
    return ListenParams(
        model=query.get("model", "base"),
        interim_results=_parse_bool("interim_results", query.get("interim_results", "false")),
        vad_events=_parse_bool("vad_events", query.get("vad_events", "false")),
        smart_format=_parse_bool("smart_format", query.get("smart_format", "false")),
        endpointing_s=endpointing_s,
        utterance_end_s=utterance_end_s,
    )


def parse_flux_params(query: Mapping[str, str], eot_silence: float) -> ListenParams:
    """`/v2/listen` (Flux) parameters: mulaw at 8 kHz and a flux model are required here;
    thresholds are range-checked like the service does. Flux always reports interim words and
    turn starts; its end of turn comes after `eot_silence` s of silence (the fake's stand-in for
    the model's confidence), or `eot_timeout_ms` if that is shorter."""
    if not query.get("model", "").startswith("flux"):
        raise ValueError(f"model must be a flux model, got {query.get('model')!r}")
    if query.get("encoding") != "mulaw":
        raise ValueError(f"encoding must be mulaw, got {query.get('encoding')!r}")
    if query.get("sample_rate") != "8000":
        raise ValueError(f"sample_rate must be 8000, got {query.get('sample_rate')!r}")
    try:
        eot = float(query.get("eot_threshold", "0.7"))
        eager = float(query["eager_eot_threshold"]) if "eager_eot_threshold" in query else None
        timeout_s = int(query.get("eot_timeout_ms", "5000")) / 1000
    except ValueError:
        raise ValueError("eot_threshold/eager_eot_threshold/eot_timeout_ms malformed") from None
    if not 0.5 <= eot <= 1.0:
        raise ValueError(f"eot_threshold must be within 0.5-1.0, got {eot}")
    if eager is not None and not (0.3 <= eager <= 0.9 and eager <= eot):
        raise ValueError("eager_eot_threshold must be within 0.3-0.9 and <= eot_threshold")
    if not 0.5 <= timeout_s <= 60.0:
        raise ValueError(f"eot_timeout_ms must be within 500-60000, got {timeout_s * 1000:g}")
    return ListenParams(
        model=query["model"],
        interim_results=True,
        vad_events=True,
        smart_format=True,
        endpointing_s=min(eot_silence, timeout_s),
        utterance_end_s=None,
    )


# ---------------------------------------------------------------------------------------------
# the scripted recogniser (no I/O: fed bytes and arrival times, returns messages with due times)


@dataclass(frozen=True, slots=True)
class Outgoing:
    due: float  # loop.time() at which the message may leave (never before earlier messages)
    message: dict[str, Any]


class TranscriptScript:
    """Transcripts handed out one per utterance, shared by all connections of a server so an
    utterance cut off by a dropped connection is heard again (same text) on the next one."""

    def __init__(self, transcripts: Sequence[str]) -> None:
        self.transcripts = list(transcripts)
        self.index = 0
        self.finalized: list[str] = []  # transcripts sent in final Results, in order

    def current(self) -> str:
        return self.transcripts[self.index] if self.index < len(self.transcripts) else ""

    def consume(self) -> str:
        text = self.current()
        self.index += 1
        self.finalized.append(text)
        return text


# |linear sample| of each mu-law byte: the VAD's mean is a table lookup and a sum in numpy
# instead of a Python loop over 160 samples (80 us a frame, which at 50 calls took a fifth of
# a core from the benchmark process the agent shares the machine with).
_ABS_LINEAR = np.abs(
    np.frombuffer(audioop.ulaw2lin(bytes(range(256)), 2), dtype=np.int16).astype(np.int64)
)


def frame_is_speech(frame: bytes, threshold: int = 200) -> bool:
    """The fake's VAD: mean |sample| of the decoded 16-bit audio above `threshold`."""
    if not frame:
        return False
    total = int(_ABS_LINEAR[np.frombuffer(frame, dtype=np.uint8)].sum())
    return total / len(frame) > threshold


def _tokens(text: str) -> list[str]:
    return text.split()


def _bare_word(token: str) -> str:
    # Deepgram's `word` is the lower-case word without punctuation; `punctuated_word` keeps it.
    return re.sub(r"[^\w'-]", "", token).lower() or token.lower()


class Recogniser:
    """One connection's recognition state."""

    def __init__(
        self,
        script: TranscriptScript,
        params: ListenParams,
        *,
        final_latency: float,
        interim_interval: float,
        interim_latency: float,
        word_seconds: float,
        speech_threshold: int,
        onset_frames: int,
        request_id: str,
        model_uuid: str,
    ) -> None:
        self.script = script
        self.params = params
        self.final_latency = final_latency
        self.interim_interval = interim_interval
        self.interim_latency = interim_latency
        self.word_seconds = word_seconds
        self.speech_threshold = speech_threshold
        self.onset_frames = max(1, onset_frames)
        self.request_id = request_id
        self.model_uuid = model_uuid
        self.received = 0  # bytes of audio received
        self._pending = bytearray()  # an incomplete trailing frame
        self._frames = 0  # complete frames analysed
        self._last_out_due = 0.0
        self.speaking = False
        self._run = 0  # consecutive speech frames while idle
        self._run_start = 0.0
        self._utt_start = 0.0
        self._speech_end = 0.0  # audio time the last speech frame ended
        self._speech_end_arrival = 0.0
        self._next_interim = 0.0
        self._segment_start = 0.0  # results are contiguous segments from here
        self._utterance_end_at: float | None = None  # audio time UtteranceEnd is due
        self._last_word_end = 0.0

    @property
    def audio_seconds(self) -> float:
        return self.received / SAMPLE_RATE

    # -- input ---------------------------------------------------------------------------

    def feed(self, data: bytes, arrival: float) -> list[Outgoing]:
        self.received += len(data)
        self._pending.extend(data)
        out: list[Outgoing] = []
        while len(self._pending) >= FRAME_BYTES:
            frame = bytes(self._pending[:FRAME_BYTES])
            del self._pending[:FRAME_BYTES]
            t0 = self._frames * FRAME_SECONDS
            self._frames += 1
            self._frame(frame, t0, t0 + FRAME_SECONDS, arrival, out)
        return out

    def is_speech(self, frame: bytes) -> bool:
        return frame_is_speech(frame, self.speech_threshold)

    def _frame(
        self, frame: bytes, t0: float, t1: float, arrival: float, out: list[Outgoing]
    ) -> None:
        speech = self.is_speech(frame)
        if not self.speaking:
            if speech:
                if self._run == 0:
                    self._run_start = t0
                self._run += 1
                if self._run >= self.onset_frames:
                    self._onset(t1, arrival, out)
            else:
                self._run = 0
                if self._utterance_end_at is not None and t1 >= self._utterance_end_at - _EPS:
                    self._utterance_end(arrival, out)
            return
        if speech:
            self._speech_end = t1
            self._speech_end_arrival = arrival
        if self.params.interim_results and t1 >= self._next_interim - _EPS:
            self._next_interim += self.interim_interval
            words = self._revealed_words()
            out.append(self._emit(arrival + self.interim_latency, self._results(words, t1)))
        silence = t1 - self._speech_end
        ep = self.params.endpointing_s
        if ep is not None and silence >= ep - _EPS:
            due = max(self._speech_end_arrival + self.final_latency, arrival)
            self._final(t1, due, out, speech_final=True, from_finalize=False)
        elif (
            ep is None
            and self.params.utterance_end_s is not None
            and silence >= self.params.utterance_end_s - _EPS
        ):
            # No endpointing: the utterance is finalised (not speech_final) by the word gap.
            self._final(t1, arrival, out, speech_final=False, from_finalize=False)

    def _onset(self, t1: float, arrival: float, out: list[Outgoing]) -> None:
        self.speaking = True
        self._run = 0
        self._utt_start = self._run_start
        self._speech_end = t1
        self._speech_end_arrival = arrival
        self._next_interim = self._utt_start + self.interim_interval
        self._utterance_end_at = None  # new words: the gap UtteranceEnd waits for restarts
        if self.params.vad_events:
            msg = {
                "type": "SpeechStarted",
                "channel": [0, 1],
                "timestamp": round(self._utt_start, 3),
            }
            out.append(self._emit(arrival, msg))

    def finalize(self, now: float) -> list[Outgoing]:
        """`{"type": "Finalize"}`: flush the utterance in progress (or unfinalized audio)."""
        out: list[Outgoing] = []
        t = self.audio_seconds
        if self.speaking:
            self._final(t, now, out, speech_final=False, from_finalize=True)
        elif t > self._segment_start + _EPS:
            out.append(self._emit(now, self._results([], t, is_final=True, from_finalize=True)))
            self._segment_start = t
        return out

    def close_stream(self, now: float) -> list[Outgoing]:
        """`{"type": "CloseStream"}`: final of anything in progress, then Metadata."""
        out: list[Outgoing] = []
        if self.speaking:
            self._final(self.audio_seconds, now, out, speech_final=True, from_finalize=False)
        return out

    def metadata(self, audio: bytes, now: float) -> Outgoing:
        msg = {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": hashlib.sha256(audio).hexdigest(),
            "created": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "duration": round(self.audio_seconds, 3),
            "channels": 1,
            "models": [self.model_uuid],
            "model_info": {self.model_uuid: self._model_info()},
        }
        return self._emit(now, msg)

    # -- output --------------------------------------------------------------------------

    def _final(
        self, t: float, due: float, out: list[Outgoing], *, speech_final: bool, from_finalize: bool
    ) -> None:
        words = _tokens(self.script.consume())
        msg = self._results(
            words, t, is_final=True, speech_final=speech_final, from_finalize=from_finalize
        )
        out.append(self._emit(due, msg))
        self.speaking = False
        self._segment_start = t
        self._last_word_end = self._speech_end
        if self.params.utterance_end_s is not None:
            self._utterance_end_at = self._speech_end + self.params.utterance_end_s

    def _utterance_end(self, arrival: float, out: list[Outgoing]) -> None:
        self._utterance_end_at = None
        msg = {
            "type": "UtteranceEnd",
            "channel": [0, 1],
            "last_word_end": round(self._last_word_end, 3),
        }
        out.append(self._emit(arrival, msg))

    def _revealed_words(self) -> list[str]:
        words = _tokens(self.script.current())
        if not words:
            return []
        heard = self._speech_end - self._utt_start
        return words[: max(1, min(len(words), math.ceil(heard / self.word_seconds - _EPS)))]

    def _emit(self, due: float, message: dict[str, Any]) -> Outgoing:
        # Messages leave in production order: a due time is never earlier than the previous one.
        self._last_out_due = max(self._last_out_due, due)
        return Outgoing(self._last_out_due, message)

    def _model_info(self) -> dict[str, str]:
        return {
            "name": f"general-{self.params.model}",
            "version": "2025-01-01.0",
            "arch": self.params.model,
        }

    def _results(
        self,
        tokens: list[str],
        t: float,
        *,
        is_final: bool = False,
        speech_final: bool = False,
        from_finalize: bool = False,
    ) -> dict[str, Any]:
        # Words are spread evenly over the voiced part of the utterance.
        span_start = self._utt_start
        span_end = max(self._speech_end, span_start + FRAME_SECONDS)
        step = (span_end - span_start) / max(1, len(tokens))
        words = []
        for i, token in enumerate(tokens):
            word = _bare_word(token)
            words.append({
                "word": word,
                "start": round(span_start + i * step, 3),
                "end": round(span_start + (i + 1) * step, 3),
                "confidence": 0.99,
                "punctuated_word": token if self.params.smart_format else word,
            })  # fmt: skip
        if self.params.smart_format:
            transcript = " ".join(tokens)
        else:
            transcript = " ".join(w["word"] for w in words)
        return {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": round(t - self._segment_start, 3),
            "start": round(self._segment_start, 3),
            "is_final": is_final,
            "speech_final": speech_final,
            "channel": {
                "alternatives": [
                    {"transcript": transcript, "confidence": 0.99 if words else 0.0, "words": words}
                ]
            },
            "metadata": {
                "request_id": self.request_id,
                "model_info": self._model_info(),
                "model_uuid": self.model_uuid,
            },
            "from_finalize": from_finalize,
        }


class FluxRecogniser(Recogniser):
    """The same timeline as Recogniser, in Flux's words: `TurnInfo` messages (StartOfTurn at
    the onset, Update for interim words, EndOfTurn at the end of the turn, trigger "manual"
    after ForceEndTurn), every message numbered by `sequence_id` (0 is `Connected`). Like the
    service, it sends an Update for about every 0.25 s of audio between turns too (with an
    empty transcript)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sequence_id = 0
        self.turn_index = 0
        self._next_idle_update = FLUX_UPDATE_SECONDS

    def _frame(
        self, frame: bytes, t0: float, t1: float, arrival: float, out: list[Outgoing]
    ) -> None:
        was_speaking = self.speaking
        super()._frame(frame, t0, t1, arrival, out)
        if was_speaking or self.speaking or t1 < self._next_idle_update - _EPS:
            return
        self._next_idle_update = t1 + FLUX_UPDATE_SECONDS
        update = self._turn_info("Update", [], t1, confidence=0.0)
        out.append(self._emit(arrival, {**update, "audio_window_start": round(t0, 3)}))

    def connected(self, now: float) -> Outgoing:
        return self._emit(now, {"type": "Connected", "request_id": self.request_id})

    def _emit(self, due: float, message: dict[str, Any]) -> Outgoing:
        message = {**message, "sequence_id": self.sequence_id}
        self.sequence_id += 1
        return super()._emit(due, message)

    def _onset(self, t1: float, arrival: float, out: list[Outgoing]) -> None:
        super()._onset(t1, arrival, out)  # vad_events is on: that queued a SpeechStarted
        speech_started = out.pop()
        self.sequence_id -= 1  # never sent: its number goes to the StartOfTurn
        words = _tokens(self.script.current())[:1]
        out.append(
            self._emit(
                speech_started.due, self._turn_info("StartOfTurn", words, t1, confidence=0.0)
            )
        )

    def finalize(self, now: float) -> list[Outgoing]:
        """`ForceEndTurn`: end the turn in progress (nothing happens between turns)."""
        out: list[Outgoing] = []
        if self.speaking:
            self._final(self.audio_seconds, now, out, speech_final=True, from_finalize=True)
        return out

    def _final(
        self, t: float, due: float, out: list[Outgoing], *, speech_final: bool, from_finalize: bool
    ) -> None:
        super()._final(t, due, out, speech_final=speech_final, from_finalize=from_finalize)
        self.turn_index += 1

    def _results(
        self,
        tokens: list[str],
        t: float,
        *,
        is_final: bool = False,
        speech_final: bool = False,
        from_finalize: bool = False,
    ) -> dict[str, Any]:
        if not is_final:
            return self._turn_info("Update", tokens, t, confidence=0.1)
        message = self._turn_info("EndOfTurn", tokens, t, confidence=0.9)
        message["trigger"] = "manual" if from_finalize else "model"
        return message

    def _turn_info(
        self, event: str, tokens: list[str], t: float, *, confidence: float
    ) -> dict[str, Any]:
        return {
            "type": "TurnInfo",
            "request_id": self.request_id,
            "event": event,
            "turn_index": self.turn_index,
            "audio_window_start": round(self._utt_start, 3),
            "audio_window_end": round(t, 3),
            "transcript": " ".join(tokens),
            "words": [{"word": _bare_word(token), "confidence": 0.99} for token in tokens],
            "end_of_turn_confidence": confidence,
        }


# ---------------------------------------------------------------------------------------------
# the server


@dataclass(slots=True)
class Rejection:
    status: int
    reason: str
    query: dict[str, str]


@dataclass(slots=True)
class FakeListenConnection:
    """What one websocket connection received and sent."""

    index: int
    query: dict[str, str]
    headers: dict[str, str]
    params: ListenParams
    request_id: str
    protocol: str = "v1"  # "v1" (live) or "flux" (/v2/listen)
    audio: bytearray = field(default_factory=bytearray)
    audio_messages: list[int] = field(default_factory=list)  # bytes in each binary message
    controls: list[str] = field(default_factory=list)  # text message types, in order
    control_offsets: list[int] = field(default_factory=list)  # audio bytes received before each
    sent: list[dict[str, Any]] = field(default_factory=list)  # JSON messages sent, in order
    # For each message sent: how long after its due time it was written (the fake's own
    # lateness: a loaded event loop sends the final late, and that is not the client's fault).
    sent_late: list[float] = field(default_factory=list)
    closed_by: str = ""  # client | close_stream | drop | idle_timeout | server_stop
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def keepalives(self) -> int:
        return self.controls.count("KeepAlive")

    @property
    def audio_seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    def sent_of_type(self, type_: str) -> list[dict[str, Any]]:
        return [m for m in self.sent if m.get("type") == type_]


class FakeDeepgramServer(LoopbackServer):
    """`GET /v1/listen` websocket, scripted (see the module docstring for the timing model);
    `GET /v2/listen` speaks Flux on the same timeline (FluxRecogniser)."""

    def __init__(
        self,
        transcripts: Sequence[str] = (),
        *,
        api_key: str = "dg-test-key-0123456789abcdef",
        final_latency: float = 0.3,
        interim_interval: float = 0.2,
        interim_latency: float = 0.0,
        word_seconds: float = 0.35,
        speech_threshold: int = 200,
        onset_frames: int = 2,
        idle_timeout: float = 10.0,
        drop_connection_after_seconds: float | None = None,
        drop_after_audio_seconds: float | None = None,
        drops: int = 1,
        required_params: Collection[str] = REQUIRED_PARAMS,
        flux_eot_silence: float = 0.3,
    ) -> None:
        super().__init__()
        self.flux_eot_silence = flux_eot_silence
        self.api_key = api_key
        self.final_latency = final_latency
        self.interim_interval = interim_interval
        self.interim_latency = interim_latency
        self.word_seconds = word_seconds
        self.speech_threshold = speech_threshold
        self.onset_frames = onset_frames
        self.idle_timeout = idle_timeout
        self.drop_connection_after_seconds = drop_connection_after_seconds
        self.drop_after_audio_seconds = drop_after_audio_seconds
        self.drops = drops
        self.required_params = tuple(required_params)
        self.script = TranscriptScript(transcripts)
        self.connections: list[FakeListenConnection] = []
        self.rejected: list[Rejection] = []
        self.out_of_credit = False  # handshakes get 402 Payment Required
        self.model_uuid = str(uuid.uuid4())
        self._live: dict[int, web.Request] = {}
        self._changed = asyncio.Condition()

    # -- lifecycle -------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/listen", self._handle)
        app.router.add_get("/v2/listen", self._handle)

    async def stop(self) -> None:
        for index, request in list(self._live.items()):
            self.connections[index].closed_by = self.connections[index].closed_by or "server_stop"
            if request.transport is not None:
                request.transport.abort()
        await super().stop()

    @property
    def url(self) -> str:
        """What the SDK calls the `production` environment: the socket is `url + /v1/listen`."""
        return f"ws://127.0.0.1:{self._port}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    # -- observations ----------------------------------------------------------------------

    @property
    def connection_count(self) -> int:
        return len(self.connections)

    @property
    def keepalive_count(self) -> int:
        return sum(c.keepalives for c in self.connections)

    @property
    def finalized(self) -> list[str]:
        return list(self.script.finalized)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until `predicate()` holds (checked whenever the server records something)."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- connection handling ---------------------------------------------------------------

    async def _refuse(
        self, status: int, code: str, message: str, query: dict[str, str]
    ) -> web.Response:
        """Deepgram's refused handshake: the error body, and its message in `dg-error` (the
        only part a websocket client can read) with the request id in `dg-request-id`."""
        self.rejected.append(Rejection(status, message, query))
        await self._notify()
        request_id = str(uuid.uuid4())
        body = {"err_code": code, "err_msg": message, "request_id": request_id}
        headers = {"dg-error": message, "dg-request-id": request_id}
        return web.json_response(body, status=status, headers=headers)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        if request.headers.get("Authorization", "") != f"Token {self.api_key}":
            return await self._refuse(401, "INVALID_AUTH", "Invalid credentials.", query)
        if self.out_of_credit:
            message = "Project does not have enough credits for an API request."
            return await self._refuse(402, "ASR_PAYMENT_REQUIRED", message, query)
        protocol = "flux" if request.path == "/v2/listen" else "v1"
        try:
            if protocol == "flux":
                params = parse_flux_params(query, self.flux_eot_silence)
            else:
                params = parse_listen_params(query, self.required_params)
        except ValueError as exc:
            return await self._refuse(400, "Bad Request", str(exc), query)

        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        conn = FakeListenConnection(
            index=len(self.connections),
            query=query,
            headers=dict(request.headers),
            params=params,
            request_id=str(uuid.uuid4()),
            protocol=protocol,
        )
        self.connections.append(conn)
        self._live[conn.index] = request
        await self._notify()
        try:
            await self._serve(request, ws, conn)
        finally:
            self._live.pop(conn.index, None)
            conn.finished.set()
            await self._notify()
        return ws

    async def _serve(
        self, request: web.Request, ws: web.WebSocketResponse, conn: FakeListenConnection
    ) -> None:
        loop = asyncio.get_running_loop()
        recogniser_class = FluxRecogniser if conn.protocol == "flux" else Recogniser
        recogniser = recogniser_class(
            self.script,
            conn.params,
            final_latency=self.final_latency,
            interim_interval=self.interim_interval,
            interim_latency=self.interim_latency,
            word_seconds=self.word_seconds,
            speech_threshold=self.speech_threshold,
            onset_frames=self.onset_frames,
            request_id=conn.request_id,
            model_uuid=self.model_uuid,
        )
        outq: asyncio.Queue[Outgoing | None] = asyncio.Queue()
        may_drop = conn.index < self.drops
        last_data = loop.time()

        def abort(reason: str) -> None:
            # No close frame: the client sees the TCP connection vanish (code 1006).
            conn.closed_by = conn.closed_by or reason
            if request.transport is not None:
                request.transport.abort()

        async def writer() -> None:
            while (item := await outq.get()) is not None:
                delay = item.due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                try:
                    await ws.send_str(json.dumps(item.message))
                except ConnectionError:
                    return
                conn.sent.append(item.message)
                conn.sent_late.append(max(0.0, loop.time() - item.due))
                await self._notify()
            conn.closed_by = conn.closed_by or "close_stream"
            await ws.close(code=1000)

        async def watchdog() -> None:
            opened = loop.time()
            while True:
                deadline = last_data + self.idle_timeout
                if may_drop and self.drop_connection_after_seconds is not None:
                    deadline = min(deadline, opened + self.drop_connection_after_seconds)
                await asyncio.sleep(max(0.0, deadline - loop.time()))
                now = loop.time()
                if (
                    may_drop
                    and self.drop_connection_after_seconds is not None
                    and now >= opened + self.drop_connection_after_seconds - _EPS
                ):
                    abort("drop")
                    return
                if now >= last_data + self.idle_timeout - _EPS:
                    conn.closed_by = conn.closed_by or "idle_timeout"
                    await ws.close(code=1011, message=NET0001.encode())
                    return

        def queue(items: list[Outgoing]) -> None:
            for item in items:
                outq.put_nowait(item)

        if isinstance(recogniser, FluxRecogniser):
            queue([recogniser.connected(loop.time())])
        tasks = [asyncio.create_task(writer()), asyncio.create_task(watchdog())]
        closing = False
        try:
            async for msg in ws:
                now = loop.time()
                if msg.type == WSMsgType.BINARY and not msg.data and conn.protocol == "v1":
                    # Deepgram's docs: "sending an empty byte will cause unexpected closures"
                    # (an empty message was its end-of-audio signal before CloseStream).
                    conn.controls.append(EMPTY_AUDIO)
                    conn.control_offsets.append(len(conn.audio))
                    kind = "CloseStream"
                elif msg.type == WSMsgType.BINARY:
                    if closing:
                        continue  # Deepgram ignores audio after CloseStream
                    last_data = now
                    conn.audio.extend(msg.data)
                    conn.audio_messages.append(len(msg.data))
                    queue(recogniser.feed(msg.data, now))
                    await self._notify()
                    if (
                        may_drop
                        and self.drop_after_audio_seconds is not None
                        and recogniser.audio_seconds >= self.drop_after_audio_seconds
                    ):
                        abort("drop")
                        break
                    continue
                elif msg.type == WSMsgType.TEXT:
                    last_data = now
                    try:
                        kind = str(json.loads(msg.data).get("type", ""))
                    except (ValueError, AttributeError):
                        kind = f"<unparsable {msg.data[:40]!r}>"
                    conn.controls.append(kind)
                    conn.control_offsets.append(len(conn.audio))
                else:
                    break
                # A control message (text, or the empty binary one).
                await self._notify()
                finalize = "ForceEndTurn" if conn.protocol == "flux" else "Finalize"
                if kind == finalize:
                    queue(recogniser.finalize(now))
                elif kind == "CloseStream" and not closing:
                    closing = True
                    queue(recogniser.close_stream(now))
                    if conn.protocol == "v1":  # Flux sends no Metadata
                        queue([recogniser.metadata(bytes(conn.audio), now)])
                    outq.put_nowait(None)  # the writer closes after the queue drains
        finally:
            if not closing:
                conn.closed_by = conn.closed_by or "client"
                tasks[0].cancel()
            else:
                # Let the writer flush the last final and Metadata, then close.
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(tasks[0]), timeout=5.0)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

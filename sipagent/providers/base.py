"""What the conversation engine needs from speech-to-text, the LLM and text-to-speech.

One small Protocol per stage; one module per provider (cloud SDK or offline engine). Audio at
these boundaries is always 8 kHz mu-law (the call's own format), so nothing is transcoded on
the hot path when the provider speaks mu-law itself (Deepgram, ElevenLabs `ulaw_8000`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable


class ProviderError(Exception):
    """A provider failed (connection, HTTP status, protocol). The session speaks around it.

    `retry_after`: seconds the service asked us to wait before the next request (HTTP 429).
    `heals`: False when asking again within this call cannot work (bad key, no credit or quota
    left, unknown voice or model): the session then stops using the provider for the call.
    """

    def __init__(
        self, message: str, *, retry_after: float | None = None, heals: bool = True
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.heals = heals


class SttEventKind(StrEnum):
    PARTIAL = "partial"  # interim transcript of the words so far (may change)
    FINAL = "final"  # a finalized segment; `speech_final` marks the end of the caller's turn
    SPEECH_STARTED = "speech_started"  # provider VAD: the caller started talking
    UTTERANCE_END = "utterance_end"  # provider: no words for utterance_end_ms
    ERROR = "error"  # the stream failed; the provider is reconnecting or gave up


@dataclass(frozen=True, slots=True)
class SttEvent:
    kind: SttEventKind
    text: str = ""
    speech_final: bool = False
    received_at: float = 0.0  # loop.time() when the event arrived
    detail: str = ""


class SpeechToText(Protocol):
    """Streaming recognition of one call's inbound audio."""

    async def start(self) -> None:
        """Open the stream (socket, decoder). Raises ProviderError if it cannot."""

    def send_audio(self, mulaw: bytes) -> None:
        """Queue caller audio (20 ms frames); never blocks the media path."""

    def events(self) -> AsyncIterator[SttEvent]:
        """Transcripts and VAD events, in order, until close()."""
        ...

    async def finalize(self) -> None:
        """Flush what was said so far into a final result (end of call, forced turn end)."""

    async def close(self) -> None:
        """Finish and release the stream; events() then ends."""


@runtime_checkable
class BatchesAudio(Protocol):
    """A streaming STT that pays per message (a websocket send): the conversation sends it the
    caller's audio in batches (conversation/stt_feed.py) instead of one 20 ms frame each."""

    audio_batch_ms: int  # audio per message; 0: every frame on its own
    speech_tail_ms: int  # after voice, this much silence goes out frame by frame (endpointing)


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # raw JSON text as the model produced it; parsed (and checked) by the tools


@dataclass(frozen=True, slots=True)
class LlmChunk:
    """One piece of a streamed reply: text to speak, or (at the end) the tool calls."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None


class LanguageModel(Protocol):
    def stream(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> AsyncIterator[LlmChunk]:
        """Chat-completions style streaming. Closing the iterator (aclose) cancels the request
        and closes the HTTP stream. Raises ProviderError on failure or timeout."""
        ...


class TextToSpeech(Protocol):
    def synthesize(
        self, text: str, *, previous_text: str = "", next_text: str = ""
    ) -> AsyncIterator[bytes]:
        """8 kHz mu-law audio for `text`, chunk by chunk as it is produced. `previous_text` /
        `next_text` are the words said just before / to be said just after (when known), so a
        provider that can use them joins sentences naturally. Closing the iterator cancels
        synthesis. Raises ProviderError on failure."""
        ...


@runtime_checkable
class WarmsUp(Protocol):
    """A provider that can open its connection before the first request needs it."""

    async def warm_up(self) -> None:
        """Best effort, never raises; called at the start of every call."""


@dataclass(slots=True)
class ProviderTimings:
    """Per-request timestamps (loop.time()) a provider can report for latency accounting."""

    started: float = 0.0
    first_output: float | None = None
    finished: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


async def drain_events(
    queue: asyncio.Queue[SttEvent | None] | None, provider: str
) -> AsyncIterator[SttEvent]:
    """A local recogniser's events as `SpeechToText.events()` yields them; None ends them."""
    if queue is None:
        raise ProviderError(f"{provider}.events() before start()")
    while (event := await queue.get()) is not None:
        yield event

"""Instrumented fakes: the wire-protocol fakes of Deepgram, OpenAI and ElevenLabs
(tests/kit/fakes) with the same wire behaviour, plus the timestamps this benchmark needs, and the
reference design's provider latencies they are run at."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import tests.kit.fakes.deepgram_server as dg_fake
from tests.kit.fakes.deepgram_server import FakeDeepgramServer
from tests.kit.fakes.elevenlabs_server import FakeElevenLabsServer
from tests.kit.fakes.openai_server import FakeOpenAIServer, Reply

# The reference design's provider latencies (the numbers).
STT_FINAL_S = 0.3
LLM_FIRST_TOKEN_S = 0.3
TTS_FIRST_BYTE_S = 0.1
NOMINAL_PROVIDER_S = STT_FINAL_S + LLM_FIRST_TOKEN_S + TTS_FIRST_BYTE_S
ENDPOINTING_MS = 300


class TimedRecogniser(dg_fake.Recogniser):
    """The fake's recogniser, logging onsets and finals with the audio arrival times (the runner
    puts it in the fake's place)."""

    log: ClassVar[list[dict[str, Any]]] = []
    # request_id -> [(audio bytes received so far, arrival of that message)]
    arrivals: ClassVar[dict[str, list[tuple[int, float]]]] = {}

    def feed(self, data: bytes, arrival: float) -> list[dg_fake.Outgoing]:
        out = super().feed(data, arrival)
        self.arrivals.setdefault(self.request_id, []).append((self.received, arrival))
        return out

    def _onset(self, t1: float, arrival: float, out: list[dg_fake.Outgoing]) -> None:
        super()._onset(t1, arrival, out)
        self.log.append(
            {"kind": "onset", "request_id": self.request_id, "audio_t": self._utt_start,
             "arrival": arrival}
        )  # fmt: skip

    def _final(
        self,
        t: float,
        due: float,
        out: list[dg_fake.Outgoing],
        *,
        speech_final: bool,
        from_finalize: bool,
    ) -> None:
        speech_end, speech_end_arrival = self._speech_end, self._speech_end_arrival
        super()._final(t, due, out, speech_final=speech_final, from_finalize=from_finalize)
        self.log.append(
            {
                "kind": "final",
                "request_id": self.request_id,
                "speech_end_audio_t": speech_end,
                "speech_end_arrival": speech_end_arrival,
                "due": out[-1].due,
                "speech_final": speech_final,
                "message": out[-1].message,
            }
        )


class TimedDeepgram(FakeDeepgramServer):
    """Stamps every message when the fake has written it to the websocket."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent_at: dict[int, float] = {}  # id(message dict) -> loop.time() after send
        self._seen: dict[int, int] = {}

    async def _notify(self) -> None:
        # Called right after each `conn.sent.append` (and after each audio message).
        now = asyncio.get_running_loop().time()
        for conn in self.connections:
            seen = self._seen.get(conn.index, 0)
            for message in conn.sent[seen:]:
                self.sent_at[id(message)] = now
            self._seen[conn.index] = len(conn.sent)
        await super()._notify()

    def interims(self) -> list[tuple[float, str]]:
        """(send time, transcript) of every non-final Results message with words."""
        out = []
        for conn in self.connections:
            for message in conn.sent:
                if message.get("type") == "Results" and not message.get("is_final"):
                    text = message["channel"]["alternatives"][0]["transcript"]
                    if text and id(message) in self.sent_at:
                        out.append((self.sent_at[id(message)], text))
        return sorted(out)


class TimedOpenAI(FakeOpenAIServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reply_text: dict[int, str] = {}  # id(request record) -> the reply's text
        self.done_at: dict[int, float] = {}  # id(request record) -> [DONE] written

    def _next_reply(self, body: dict[str, Any]) -> Reply | None:
        reply = super()._next_reply(body)
        if reply is not None:  # called synchronously right after the record was appended
            self.reply_text[id(self.requests[-1])] = reply.text
        return reply

    async def _stream(self, request: Any, resp: Any, rec: Any, body: Any, deltas: Any) -> None:
        await super()._stream(request, resp, rec, body, deltas)
        if rec.completed:
            self.done_at[id(rec)] = asyncio.get_running_loop().time()


class _StampedEvent(asyncio.Event):
    """`first_chunk_sent`, which the fake sets right after writing the first audio chunk."""

    def __init__(self) -> None:
        super().__init__()
        self.at: float | None = None

    def set(self) -> None:
        if self.at is None:
            self.at = asyncio.get_running_loop().time()
        super().set()


class TimedElevenLabs(FakeElevenLabsServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received_at: dict[int, float] = {}  # id(request record) -> body read

    async def _respond(self, request: Any, rec: Any) -> Any:
        self.received_at[id(rec)] = asyncio.get_running_loop().time()
        rec.first_chunk_sent = _StampedEvent()
        return await super()._respond(request, rec)

"""A fake ElevenLabs streaming text-to-speech server on 127.0.0.1 (the real HTTP wire protocol).

`POST /v1/text-to-speech/{voice_id}/stream?output_format=ulaw_8000` with header `xi-api-key`
and a JSON body (`text`, `model_id`, optional `voice_settings`) answers with raw 8 kHz mu-law in
chunked transfer encoding, paced like a synthesizer that produces audio faster than real time.
The audio is a pure function of the text (`expected_audio`), so a test can check byte for byte
what a caller was played. Every request is recorded, with how far the reply got and whether the
client hung up first.

    async with FakeElevenLabsServer() as server:
        tts = ElevenLabsTextToSpeech(api_key=server.api_key, voice_id="v1",
                                     base_url=server.base_url)
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.kit.fakes.loopback import HttpFakeServer, client_port

SAMPLE_RATE = 8000
MS_PER_CHAR = 55
MIN_MS = 200
# Chunk lengths in turn (bytes = samples at 8 kHz): 20, 30 and 40 ms, like a real stream's
# uneven network chunks, so no client can get away with assuming frame-aligned chunks.
CHUNK_SIZES = (160, 240, 320)
_POLL = 0.01


def audio_duration_ms(text: str) -> int:
    return max(MIN_MS, MS_PER_CHAR * len(text))


def expected_audio(text: str) -> bytes:
    """The mu-law audio the fake "speaks" for `text`: deterministic, never silence.

    Each stretch of the audio is derived from the character it "says", so truncation,
    reordering or audio from the wrong text shows up in a comparison. No byte is 0xFF or 0x7F
    (the two mu-law encodings of zero), so the audio can never be mistaken for silence or
    comfort noise padding.
    """
    n = audio_duration_ms(text) * SAMPLE_RATE // 1000
    codes = text.encode() or b"\0"
    out = bytearray(n)
    for i in range(n):
        value = (codes[i * len(codes) // n] * 7 + i * 3) % 254  # 0..253
        out[i] = value + 1 if value >= 0x7F else value  # skip 0x7F; 0xFF is never reached
    return bytes(out)


@dataclass(slots=True)
class RecordedTtsRequest:
    path: str
    voice_id: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # decoded JSON body, None when it was not JSON
    status: int = 0
    client_port: int = 0  # the client's TCP port: equal ports mean a reused connection
    bytes_planned: int = 0
    bytes_sent: int = 0
    chunks_sent: int = 0
    completed: bool = False  # every byte was written and the body terminated
    disconnected: bool = False  # the client hung up before the reply was complete
    released: bool = False  # no longer counted against the concurrency limit
    first_chunk_sent: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # handler is done

    @property
    def text(self) -> str:
        return str(self.body.get("text", "")) if isinstance(self.body, dict) else ""


class FakeElevenLabsServer(HttpFakeServer[RecordedTtsRequest]):
    """Knobs (attributes, changeable between requests):
      first_byte_latency   seconds from the response headers to the first audio chunk
      speed                how many times faster than real time audio is sent (None: no pacing)
      drop_after_bytes     close the connection abruptly once this many bytes have been sent
      fail_next(status, n) answer the next n requests with an error status (500, 401, ...)
      concurrency_limit    the plan's concurrent requests (Free 2, Starter 3, Creator 5, ...):
                           one more in flight gets 429 `too_many_concurrent_requests`
      credits              characters left on the key (None: unlimited); a request for more
                           text than that gets 401 `quota_exceeded`
      voices               the voice ids that exist (None: any); others get 404
                           `voice_not_found`
    A wrong `xi-api-key` always gets a 401, like the real service. Error bodies are the real
    service's: {"detail": {"status": ..., "message": ...}}.
    """

    def __init__(
        self,
        *,
        api_key: str = "xi-test-fake-0123456789",
        first_byte_latency: float = 0.0,
        speed: float | None = 20.0,
        drop_after_bytes: int | None = None,
        concurrency_limit: int = 5,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.first_byte_latency = first_byte_latency
        self.speed = speed
        self.drop_after_bytes = drop_after_bytes
        self.concurrency_limit = concurrency_limit
        self.credits: int | None = None
        self.voices: set[str] | None = None
        self.in_flight = 0
        self.most_in_flight = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/text-to-speech/{voice_id}/stream", self._handle)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body: Any = await request.json()
        except ValueError:
            body = None
        rec = RecordedTtsRequest(
            path=request.path,
            voice_id=request.match_info["voice_id"],
            query=dict(request.query),
            headers=dict(request.headers),
            body=body,
            client_port=client_port(request),
        )
        self.requests.append(rec)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await self._respond(request, rec)
        finally:
            self._done_generating(rec)
            rec.finished.set()

    def _done_generating(self, rec: RecordedTtsRequest) -> None:
        """The request stops counting against the plan once its last byte is out (before the
        end of the body reaches the client, which may then start its next request at once)."""
        if not rec.released:
            rec.released = True
            self.in_flight -= 1

    @staticmethod
    def _error(rec: RecordedTtsRequest, status: int, code: str, message: str) -> web.Response:
        # The real service's error shape: {"detail": {"status": ..., "message": ...}}.
        rec.status = status
        return web.json_response({"detail": {"status": code, "message": message}}, status=status)

    async def _respond(self, request: web.Request, rec: RecordedTtsRequest) -> web.StreamResponse:
        if request.headers.get("xi-api-key") != self.api_key:
            return self._error(rec, 401, "invalid_api_key", "Invalid API key")
        if self._failures:
            status = self._failures.pop(0)
            if status == 401:
                return self._error(rec, 401, "invalid_api_key", "Invalid API key")
            return self._error(rec, status, "internal_error", "Synthesis failed, please retry")
        if self.in_flight > self.concurrency_limit:
            return self._error(
                rec,
                429,
                "too_many_concurrent_requests",
                "Too many concurrent requests. Your current subscription is associated with a "
                f"maximum of {self.concurrency_limit} concurrent requests running in parallel. "
                "Please upgrade your subscription to a higher tier or wait for other requests "
                "to finish.",
            )
        if self.voices is not None and rec.voice_id not in self.voices:
            return self._error(
                rec,
                404,
                "voice_not_found",
                f"A voice with the voice_id {rec.voice_id} was not found.",
            )
        if rec.query.get("output_format") != "ulaw_8000":
            # The fake speaks only the telephone format; anything else is a client bug here.
            return self._error(rec, 400, "invalid_output_format", "this fake serves ulaw_8000 only")
        body = rec.body
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("text"), str)
            or not body["text"].strip()
            or not isinstance(body.get("model_id", ""), str)
            or not isinstance(body.get("voice_settings") or {}, dict)
            or not all(isinstance(body.get(k) or "", str) for k in ("previous_text", "next_text"))
        ):
            return self._error(rec, 422, "invalid_body", "text, model_id or voice_settings invalid")
        needed = len(body["text"])
        if self.credits is not None:
            if needed > self.credits:
                return self._error(
                    rec,
                    401,
                    "quota_exceeded",
                    f"This request exceeds your quota of 10000. You have {self.credits} credits "
                    f"remaining, while {needed} credits are required for this request.",
                )
            self.credits -= needed

        audio = expected_audio(body["text"])
        rec.bytes_planned = len(audio)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "audio/basic"})
        resp.enable_chunked_encoding()
        rec.status = 200
        await resp.prepare(request)
        try:
            await self._stream(request, resp, rec, audio)
        except ConnectionError:  # aiohttp raises a ConnectionResetError subclass on a hang-up
            rec.disconnected = True
        return resp

    async def _stream(
        self, request: web.Request, resp: web.StreamResponse, rec: RecordedTtsRequest, audio: bytes
    ) -> None:
        if not await self._pause(request, rec, self.first_byte_latency):
            return
        sizes = itertools.cycle(CHUNK_SIZES)
        pos = 0
        while pos < len(audio):
            chunk = audio[pos : pos + next(sizes)]
            if self.drop_after_bytes is not None and pos + len(chunk) > self.drop_after_bytes:
                chunk = chunk[: max(self.drop_after_bytes - pos, 0)]
                if chunk:
                    await resp.write(chunk)
                    rec.bytes_sent += len(chunk)
                    rec.chunks_sent += 1
                if request.transport is not None:
                    request.transport.close()
                return
            await resp.write(chunk)
            pos += len(chunk)
            rec.bytes_sent = pos
            rec.chunks_sent += 1
            rec.first_chunk_sent.set()
            if pos < len(audio) and self.speed:
                seconds = len(chunk) / SAMPLE_RATE / self.speed
                if not await self._pause(request, rec, seconds):
                    return
        self._done_generating(rec)
        await resp.write_eof()
        rec.completed = True

    async def _pause(self, request: web.Request, rec: RecordedTtsRequest, seconds: float) -> bool:
        """Sleep `seconds`; False if the client hung up meanwhile (or the server is stopping).

        aiohttp does not cancel a handler whose client went away, so the socket is polled.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            transport = request.transport
            if transport is None or transport.is_closing():
                rec.disconnected = True
                return False
            if self._closing.is_set():
                return False
            now = loop.time()
            if now >= deadline:
                return True
            await asyncio.sleep(min(_POLL, deadline - now))

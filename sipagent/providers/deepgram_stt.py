"""Deepgram live transcription (listen v1 websocket, nova-3) as a `SpeechToText`.

Audio goes to Deepgram as the call's own 8 kHz mu-law, untouched. The media path only ever
appends to a buffer (`send_audio` never awaits); a sender task drains it to the socket and sends
KeepAlive when no audio has gone out for a while (Deepgram closes a silent stream after ~10 s).
Each `send_audio` goes out as one message (more if the sender fell behind), so the conversation
feeds it 80 ms batches rather than 20 ms frames (`audio_batch_ms`, conversation/stt_feed.py).

The same buffer is the replay buffer: it keeps the caller audio Deepgram has not yet turned into
a final result (bounded, 30 s by default). Deepgram's results are contiguous segments on the
connection's audio timeline, so `start + duration` of an `is_final` result says exactly up to
which byte the audio is done with; everything after that stays. When the socket drops, the
provider emits an ERROR event, reconnects with a small backoff and sends the kept audio again
before any new audio, so the words of the turn in progress are recognised on the new connection
instead of being lost.

The API key goes to the SDK and nowhere else: it is not in this object's repr, and every error
text that leaves this module is scrubbed of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import websockets.exceptions
from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment
from deepgram.core.api_error import ApiError

from .base import ProviderError, SttEvent, SttEventKind

with warnings.catch_warnings():
    # deepgram-sdk's async websocket path imports `websockets.legacy` and the deprecated
    # `InvalidStatusCode`; on websockets >= 14 both warn once, at import. Importing them here,
    # with those warnings silenced, keeps them out of every caller's output (and `-W error`
    # runs working). Only DeprecationWarnings raised while these modules load are affected.
    warnings.simplefilter("ignore", DeprecationWarning)
    import deepgram.listen.v1.client
    import deepgram.listen.v1.raw_client
    from deepgram.listen.v1.socket_client import AsyncV1SocketClient
    from deepgram.listen.v1.types import (
        ListenV1Error,
        ListenV1Results,
        ListenV1SpeechStarted,
        ListenV1UtteranceEnd,
    )

_log = logging.getLogger(__name__)


def connect_without_compression(*sdk_modules: Any) -> None:
    """Make the SDK's websocket connect offer no permessage-deflate (RFC 7692).

    The SDK calls websockets' `connect` with its defaults, which offer compression; a server
    that accepts it makes every audio message go through zlib both ways. Mu-law does not
    compress, and at 50 calls the deflate of our audio messages was 4 % of the agent's CPU
    samples (bench/results/capacity_receptionist_50calls_profile.svg). Not offering an
    extension is always valid (RFC 6455 9.1), so any server accepts the connection. The SDK's
    client and raw client each look the name up in their own module at every connect, so
    replacing it there is enough; the SDK-surface test fails should a new SDK rename it."""
    for module in sdk_modules:
        sdk_connect = module.websockets_client_connect
        if getattr(sdk_connect, "without_compression", False):
            continue

        def connect(*args: Any, _sdk_connect: Any = sdk_connect, **kwargs: Any) -> Any:
            kwargs.setdefault("compression", None)
            return _sdk_connect(*args, **kwargs)

        connect.without_compression = True  # type: ignore[attr-defined]
        module.websockets_client_connect = connect


connect_without_compression(deepgram.listen.v1.client, deepgram.listen.v1.raw_client)

SAMPLE_RATE = 8000  # mu-law: one byte per sample, so audio seconds = bytes / 8000
_CHUNK_BYTES = 1600  # at most 200 ms per websocket message (matters when replaying)
_STABLE_SECONDS = 10.0  # a connection that lived this long resets the backoff
_BACKOFF = (0.1, 0.25, 0.5, 1.0, 2.0)
# 80 ms per message: a quarter of the messages (and of the SDK's per-message work) of 20 ms
# frames, inside the 40-100 ms where batching costs no noticeable latency, and the size
# Deepgram recommends for Flux streams.
AUDIO_BATCH_MS = 80
# The silence after the caller's voice goes out frame by frame for the endpointing window plus
# this much: our VAD and Deepgram's need not agree on where the speech ended.
_TAIL_MARGIN_MS = 200


class ReplayBuffer:
    """Caller audio not yet finalized by Deepgram, plus how much of it the socket has taken.

    Offsets are absolute byte positions in the call's audio stream. `base` is the oldest kept
    byte, `sent` the next byte to send on the current connection, `end` one past the newest.
    Appending never fails: beyond `max_bytes` the oldest audio is dropped (even if unsent, which
    only happens when the connection has been down for longer than the buffer).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(1, max_bytes)
        self._data = bytearray()
        self.base = 0
        self.sent = 0
        self.dropped_unsent = 0  # bytes lost because the socket was down too long

    @property
    def end(self) -> int:
        return self.base + len(self._data)

    def append(self, audio: bytes) -> None:
        self._data.extend(audio)
        excess = len(self._data) - self.max_bytes
        if excess > 0:
            del self._data[:excess]
            self.base += excess
            if self.sent < self.base:
                self.dropped_unsent += self.base - self.sent
                self.sent = self.base

    def next_chunk(self, limit: int, upto: int | None = None) -> tuple[int, bytes]:
        """(offset, bytes) to send next: at most `limit` bytes, none at or beyond `upto`."""
        stop = min(self.end, self.sent + limit, self.end if upto is None else max(upto, self.sent))
        return self.sent, bytes(self._data[self.sent - self.base : stop - self.base])

    def mark_sent(self, upto: int) -> None:
        self.sent = min(self.end, max(self.sent, upto))

    def commit(self, upto: int) -> None:
        """Deepgram has finalized everything before `upto`: forget it (never unsent audio)."""
        upto = min(upto, self.sent)
        if upto > self.base:
            del self._data[: upto - self.base]
            self.base = upto

    def release(self) -> None:
        """Forget all kept audio (the stream ended); offsets stay where they were."""
        self.base = self.end
        self.sent = max(self.sent, self.base)
        self._data = bytearray()

    def rewind(self) -> int:
        """A new connection: send everything kept again. Returns how many bytes that is."""
        self.sent = self.base
        return len(self._data)


def events_from_message(message: Any, received_at: float) -> tuple[list[SttEvent], float | None]:
    """SttEvents for one SDK message, and (for is_final results) the connection audio time up
    to which Deepgram has finalized the audio."""
    if isinstance(message, ListenV1Results):
        alternatives = getattr(getattr(message, "channel", None), "alternatives", None) or []
        text = (getattr(alternatives[0], "transcript", "") or "").strip() if alternatives else ""
        if not message.is_final:
            if not text:  # interims of silence carry nothing the conversation can use
                return [], None
            return [SttEvent(SttEventKind.PARTIAL, text=text, received_at=received_at)], None
        finalized_until = float(getattr(message, "start", 0.0) or 0.0) + float(
            getattr(message, "duration", 0.0) or 0.0
        )
        speech_final = bool(message.speech_final)
        from_finalize = bool(getattr(message, "from_finalize", False))
        # An empty final still matters when it ends the turn or answers our Finalize.
        if not (text or speech_final or from_finalize):
            return [], finalized_until
        event = SttEvent(
            SttEventKind.FINAL,
            text=text,
            speech_final=speech_final,
            received_at=received_at,
            # SttEvent has no from_finalize field; the engine can tell this final answers its
            # own finalize() by this marker.
            detail="from_finalize" if from_finalize else "",
        )
        return [event], finalized_until
    if isinstance(message, ListenV1SpeechStarted):
        return [SttEvent(SttEventKind.SPEECH_STARTED, received_at=received_at)], None
    if isinstance(message, ListenV1UtteranceEnd):
        return [SttEvent(SttEventKind.UTTERANCE_END, received_at=received_at)], None
    if isinstance(message, ListenV1Error):
        detail = f"Deepgram error {message.variant}: {message.description}"
        return [SttEvent(SttEventKind.ERROR, received_at=received_at, detail=detail)], None
    return [], None  # Metadata, ConfigureSuccess, unknown messages: nothing to report


def _handshake_error(exc: ApiError) -> str:
    """ ": <reason>" from the refused handshake's `dg-error` header (where Deepgram says why),
    or "". The SDK's ApiError keeps only our request headers; the websockets exception it was
    raised from (its __context__) has the response's."""
    failure = exc.__context__
    response = getattr(failure, "response", None)  # websockets.InvalidStatus
    headers = getattr(response, "headers", None) or getattr(failure, "headers", None)
    reason = headers.get("dg-error") if headers is not None else None
    return f": {reason}" if reason else ""


def _ws_to_http(url: str) -> str:
    return "https" + url[3:] if url.startswith("wss") else "http" + url[2:]


def _http_to_ws(url: str) -> str:
    return "wss" + url[5:] if url.startswith("https") else "ws" + url[4:]


@dataclass(slots=True)
class _Control:
    kind: str  # "finalize" | "close"
    upto: int  # audio queued before the request goes out first
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class _StreamEnded(Exception):
    """The server closed the socket although we had not asked it to."""


def new_client(api_key: str, base_url: str, ws_url: str) -> AsyncDeepgramClient:
    """A Deepgram SDK client for these endpoints (once per process: see `client` below)."""
    return AsyncDeepgramClient(
        api_key=api_key,
        environment=DeepgramClientEnvironment(
            base=base_url, production=ws_url, agent=ws_url, agent_rest=base_url
        ),
    )


class DeepgramSpeechToText:
    """One call's live transcription over Deepgram's websocket (see the module docstring)."""

    # Audio per websocket message: 0 sends each frame the moment it arrives (v1); a subclass
    # may ask for fixed-size messages (then only the audio before a control goes out shorter).
    message_bytes = 0

    def __init__(
        self,
        api_key: str,
        *,
        model: str = "nova-3",
        language: str = "en-US",
        endpointing_ms: int | None = 300,
        utterance_end_ms: int | None = 1000,
        interim_results: bool = True,
        vad_events: bool = True,
        smart_format: bool = True,
        base_url: str | None = None,
        ws_url: str | None = None,
        keepalive_interval: float = 5.0,
        replay_seconds: float = 30.0,
        connect_timeout: float = 5.0,
        close_timeout: float = 2.0,
        max_reconnect_attempts: int = 5,
        client: AsyncDeepgramClient | None = None,
        audio_batch_ms: int = AUDIO_BATCH_MS,
    ) -> None:
        self._api_key = api_key
        # Shared by every call of a process when given (`shared_client`): building one costs
        # ~60 ms of event-loop CPU (an httpx client and an SSL context), which a burst of
        # calls paid once each, all while answering and greeting the others.
        self._client = client
        self.model = model
        self.language = language
        self.endpointing_ms = endpointing_ms
        self.utterance_end_ms = utterance_end_ms
        self.interim_results = interim_results
        self.vad_events = vad_events
        self.smart_format = smart_format
        if ws_url is None and base_url is not None:
            ws_url = _http_to_ws(base_url)
        if ws_url is not None:
            self.ws_url = ws_url.rstrip("/")
            self.base_url = (base_url or _ws_to_http(self.ws_url)).rstrip("/")
        else:
            self.ws_url = DeepgramClientEnvironment.PRODUCTION.production
            self.base_url = DeepgramClientEnvironment.PRODUCTION.base
        self.keepalive_interval = keepalive_interval
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        self.max_reconnect_attempts = max_reconnect_attempts
        # BatchesAudio: how the conversation feeds send_audio (conversation/stt_feed.py).
        self.audio_batch_ms = audio_batch_ms
        window_ms = endpointing_ms if endpointing_ms is not None else utterance_end_ms
        self.speech_tail_ms = (window_ms or 0) + _TAIL_MARGIN_MS

        self._audio = ReplayBuffer(int(replay_seconds * SAMPLE_RATE))
        self._controls: deque[_Control] = deque()
        self._events: asyncio.Queue[SttEvent | None] = asyncio.Queue()
        self._wake = asyncio.Event()  # new audio or control for the sender
        self._stop = asyncio.Event()  # close() was called: no more reconnects
        self._task: asyncio.Task[None] | None = None
        self._conn_base = 0  # absolute audio offset of the current connection's time 0
        self._close_sent = False
        self._finished = False  # the stream is over (closed or gave up); audio is dropped
        self.connections = 0  # successful websocket handshakes (1 + reconnects)

    def __repr__(self) -> str:
        # Never the key: this object ends up in logs and tracebacks.
        return f"DeepgramSpeechToText(model={self.model!r}, url={self.listen_url!r})"

    @property
    def listen_url(self) -> str:
        return f"{self.ws_url}/v1/listen"

    @property
    def client(self) -> AsyncDeepgramClient:
        if self._client is None:
            self._client = new_client(self._api_key, self.base_url, self.ws_url)
        return self._client

    # -- SpeechToText ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            raise ProviderError("Deepgram stream already started")
        if not self._api_key:
            raise ProviderError("no Deepgram API key configured")
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(ready), name="deepgram-stt")
        try:
            await ready
        except BaseException:  # ProviderError, or start() itself was cancelled
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            raise

    def send_audio(self, mulaw: bytes) -> None:
        if self._finished or not mulaw:
            return
        self._audio.append(mulaw)
        self._wake.set()

    async def events(self) -> AsyncIterator[SttEvent]:
        while (event := await self._events.get()) is not None:
            yield event
        self._events.put_nowait(None)  # a later events() call ends at once too

    async def finalize(self) -> None:
        """Send Finalize after the audio queued so far; returns once it is on the wire (or
        after `close_timeout` if the connection is down: the result arrives as events)."""
        if self._task is None or self._task.done() or self._stop.is_set():
            return
        control = _Control("finalize", self._audio.end)
        self._controls.append(control)
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(control.done), self.close_timeout)

    async def close(self) -> None:
        """CloseStream after the queued audio, wait (bounded) for the last results and the
        server's close, then end events()."""
        task = self._task
        if task is None:
            self._finish()
            return
        if not task.done() and not self._stop.is_set():
            self._stop.set()
            self._controls.append(_Control("close", self._audio.end))
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), self.close_timeout)
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        self._finish()

    # -- connection supervision ------------------------------------------------------------

    async def _run(self, ready: asyncio.Future[None]) -> None:
        client = self.client
        loop = asyncio.get_running_loop()
        failed_attempts = 0  # consecutive handshakes that failed
        quick_drops = 0  # consecutive connections that died young
        try:
            while not self._stop.is_set():
                opened_at: float | None = None
                try:
                    async with contextlib.AsyncExitStack() as stack:
                        async with asyncio.timeout(self.connect_timeout):
                            socket = await stack.enter_async_context(self._connect(client))
                        opened_at = loop.time()
                        self.connections += 1
                        failed_attempts = 0
                        self._conn_base = self._audio.base
                        replay = self._audio.rewind()
                        if not ready.done():
                            ready.set_result(None)
                        elif replay:
                            _log.info(
                                "deepgram: reconnected, replaying %.2f s of caller audio",
                                replay / SAMPLE_RATE,
                            )
                        await self._session(socket)
                    return  # the session only returns when we closed the stream
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    reason, fatal = self._describe(exc)
                if not ready.done():
                    ready.set_exception(ProviderError(reason))
                    return
                if self._stop.is_set():
                    return
                if opened_at is None:
                    failed_attempts += 1
                elif loop.time() - opened_at < _STABLE_SECONDS:
                    quick_drops += 1
                else:
                    quick_drops = 0
                if fatal or failed_attempts > self.max_reconnect_attempts:
                    self._emit_error(f"gave up: {reason}")
                    return
                self._emit_error(f"reconnecting: {reason}")
                step = max(0, failed_attempts + quick_drops - 1)
                delay = _BACKOFF[min(len(_BACKOFF) - 1, step)]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
        finally:
            if not ready.done():
                ready.set_exception(ProviderError("Deepgram stream stopped before it opened"))
            self._finish()

    def _connect(self, client: AsyncDeepgramClient) -> contextlib.AbstractAsyncContextManager[Any]:
        return client.listen.v1.connect(
            model=self.model,
            language=self.language,
            encoding="mulaw",
            sample_rate=SAMPLE_RATE,
            channels=1,
            interim_results=self.interim_results,
            endpointing=self.endpointing_ms if self.endpointing_ms is not None else False,
            vad_events=self.vad_events,
            utterance_end_ms=self.utterance_end_ms,
            smart_format=self.smart_format,
        )

    async def _session(self, socket: AsyncV1SocketClient) -> None:
        """Run one connection. Returns when it ended because we sent CloseStream; raises when
        it failed or the server ended it on its own."""
        receiver = asyncio.create_task(self._receive(socket))
        sender = asyncio.create_task(self._send(socket))
        try:
            done, _ = await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
            if sender in done:
                sender.result()  # a failed send raises here
                await receiver  # CloseStream sent: the server sends the rest, then closes
                return
            receiver.result()  # an abnormal close raises here
            if self._close_sent:
                return
            raise _StreamEnded("Deepgram closed the stream")
        finally:
            for task in (receiver, sender):
                task.cancel()
            await asyncio.gather(receiver, sender, return_exceptions=True)

    def _events_from(self, message: Any, received_at: float) -> tuple[list[SttEvent], float | None]:
        return events_from_message(message, received_at)

    async def _send_finalize(self, socket: Any) -> None:
        await socket.send_finalize()

    async def _keep_alive(self, socket: Any) -> None:
        await socket.send_keep_alive()

    async def _receive(self, socket: AsyncV1SocketClient) -> None:
        loop = asyncio.get_running_loop()
        async for message in socket:
            events, finalized_until = self._events_from(message, loop.time())
            if finalized_until is not None:
                self._audio.commit(self._conn_base + round(finalized_until * SAMPLE_RATE))
            for event in events:
                self._events.put_nowait(event)

    async def _send(self, socket: AsyncV1SocketClient) -> None:
        loop = asyncio.get_running_loop()
        last_sent = loop.time()
        while True:
            self._wake.clear()
            while True:  # audio first (up to the next control's position), then that control
                upto = self._controls[0].upto if self._controls else None
                offset, chunk = self._audio.next_chunk(self.message_bytes or _CHUNK_BYTES, upto)
                if chunk and (len(chunk) >= self.message_bytes or upto is not None):
                    await socket.send_media(chunk)
                    self._audio.mark_sent(offset + len(chunk))
                    last_sent = loop.time()
                    continue
                if not self._controls:
                    break
                control = self._controls[0]
                if control.kind == "close":
                    await socket.send_close_stream()
                    self._close_sent = True
                else:
                    await self._send_finalize(socket)
                self._controls.popleft()
                if not control.done.done():
                    control.done.set_result(None)
                last_sent = loop.time()
                if control.kind == "close":
                    return
            idle_left = self.keepalive_interval - (loop.time() - last_sent)
            if idle_left <= 0:
                # Nothing sent for a while (the media path paused): keep Deepgram from
                # closing the stream for lack of data.
                await self._keep_alive(socket)
                last_sent = loop.time()
                continue
            # asyncio.timeout, not wait_for: no task per wake-up (about 5 us less each).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(idle_left):
                    await self._wake.wait()

    # -- helpers ---------------------------------------------------------------------------

    def _describe(self, exc: BaseException) -> tuple[str, bool]:
        """A key-free description of a connection failure, and whether retrying is futile."""
        url = self.listen_url
        if isinstance(exc, ApiError):
            status = exc.status_code or 0
            said = _handshake_error(exc)
            if status in (401, 403):
                text = f"Deepgram rejected the API key (HTTP {status}{said}) at {url}"
            elif status == 400:
                text = f"Deepgram refused the stream parameters (HTTP 400{said}) at {url}"
            elif status == 402:
                text = f"Deepgram: out of credit (HTTP 402{said}) at {url}"
            else:
                text = f"Deepgram websocket handshake failed (HTTP {status}{said}) at {url}"
            # Asking again cannot fix a bad key, bad parameters or an empty account.
            fatal = status in (400, 401, 402, 403)
        elif isinstance(exc, TimeoutError):
            text, fatal = f"timed out connecting to Deepgram at {url}", False
        elif isinstance(exc, websockets.exceptions.ConnectionClosed):
            text, fatal = f"connection to Deepgram lost ({exc})", False
        elif isinstance(exc, _StreamEnded):
            text, fatal = str(exc), False
        elif isinstance(exc, OSError | websockets.exceptions.WebSocketException):
            text, fatal = f"cannot connect to Deepgram at {url}: {type(exc).__name__}: {exc}", False
        else:
            text, fatal = f"Deepgram stream failed: {type(exc).__name__}: {exc}", False
        return self._scrub(text), fatal

    def _scrub(self, text: str) -> str:
        # Belt and braces: no error text may carry the key, whatever a library put in it.
        return text.replace(self._api_key, "[REDACTED]") if self._api_key else text

    def _emit_error(self, detail: str) -> None:
        _log.warning("deepgram: %s", detail)
        loop_time = asyncio.get_running_loop().time()
        self._events.put_nowait(SttEvent(SttEventKind.ERROR, received_at=loop_time, detail=detail))

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._stop.set()
        for control in self._controls:
            if not control.done.done():
                control.done.set_result(None)
        self._controls.clear()
        # The stream is over: its unfinalised audio (up to 30 s, 240 KB) is no use to anyone,
        # and the finished call's session may be kept a while for /status and /metrics.
        self._audio.release()
        self._events.put_nowait(None)

"""SpeechToText over Deepgram Flux (`/v2/listen`), the model that detects the end of a turn itself.

Flux streams `TurnInfo` messages for a turn: `StartOfTurn` when the caller starts speaking,
`Update` as words are recognised, `EagerEndOfTurn` / `TurnResumed` while it is not sure yet, and
`EndOfTurn` when it is (its `trigger` says whether the model, `eot_timeout_ms` or our
`ForceEndTurn` ended it). That maps onto the same SttEvents as the live (v1) provider, so the
conversation engine does not know which one it is talking to:

    StartOfTurn               -> SPEECH_STARTED (+ PARTIAL with the first words, if any)
    Update / EagerEndOfTurn /
    TurnResumed               -> PARTIAL (the turn so far; barge-in reads these)
    EndOfTurn                 -> FINAL with speech_final (the caller's turn is over)
    Error                     -> ERROR

Everything else is inherited from DeepgramSpeechToText: connection supervision, reconnect with
replay of the audio no EndOfTurn has covered yet (`audio_window_end` plays the part of a v1
final's `start + duration`; between turns only the last half second is replayed), close and
error descriptions. Audio goes out in 80 ms messages, the chunk size Deepgram recommends for
Flux (the media path delivers 20 ms frames). A turn is open from StartOfTurn to EndOfTurn only:
Flux also sends Updates between turns, which must not make a reconnect replay the silence. Flux
has no KeepAlive message, so a stream whose caller audio stopped (media paused) is kept open
with 80 ms of mu-law silence, queued as audio so that the replay offsets stay true;
`finalize()` sends `ForceEndTurn`.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any

from deepgram import AsyncDeepgramClient

from sipagent.providers.base import SttEvent, SttEventKind
from sipagent.providers.deepgram_stt import (
    SAMPLE_RATE,
    DeepgramSpeechToText,
    connect_without_compression,
)

with warnings.catch_warnings():
    # The same import-time deprecation warnings as the v1 socket client (see deepgram_stt).
    warnings.simplefilter("ignore", DeprecationWarning)
    import deepgram.listen.v2.client
    import deepgram.listen.v2.raw_client
    from deepgram.listen.v2.types import ListenV2FatalError, ListenV2TurnInfo, ListenV2Warning

connect_without_compression(deepgram.listen.v2.client, deepgram.listen.v2.raw_client)

DEFAULT_FLUX_MODEL = "flux-general-en"
# Between turns (no StartOfTurn open), a new connection gets only this much of the audio sent
# before the drop: a turn could be starting in it; nothing older is waiting for a transcript.
_REPLAY_BETWEEN_TURNS_BYTES = SAMPLE_RATE // 2
_MESSAGE_BYTES = SAMPLE_RATE * 80 // 1000  # 80 ms per message, as Deepgram recommends
_SILENCE = b"\xff" * _MESSAGE_BYTES  # 80 ms of mu-law zero
_log = logging.getLogger(__name__)
_PARTIAL_EVENTS = frozenset({"Update", "EagerEndOfTurn", "TurnResumed"})


def flux_events_from_message(
    message: Any, received_at: float
) -> tuple[list[SttEvent], float | None]:
    """SttEvents for one Flux message, and (at EndOfTurn) the connection audio time up to which
    the turn is final."""
    if isinstance(message, ListenV2TurnInfo):
        text = (message.transcript or "").strip()
        event = str(message.event)
        if event == "EndOfTurn":
            final = SttEvent(
                SttEventKind.FINAL,
                text=text,
                speech_final=True,
                received_at=received_at,
                detail="from_finalize" if message.trigger == "manual" else "",
            )
            return [final], float(message.audio_window_end)
        events: list[SttEvent] = []
        if event == "StartOfTurn":
            events.append(SttEvent(SttEventKind.SPEECH_STARTED, received_at=received_at))
        if text and (event == "StartOfTurn" or event in _PARTIAL_EVENTS):
            events.append(SttEvent(SttEventKind.PARTIAL, text=text, received_at=received_at))
        return events, None
    if isinstance(message, ListenV2FatalError):
        detail = f"Deepgram Flux error {message.code}: {message.description}"
        return [SttEvent(SttEventKind.ERROR, received_at=received_at, detail=detail)], None
    return [], None  # Connected, ConfigureSuccess, unknown messages: nothing to report


class DeepgramFluxSpeechToText(DeepgramSpeechToText):
    """One call's transcription with Deepgram Flux; see the module docstring."""

    message_bytes = _MESSAGE_BYTES

    def __init__(
        self,
        api_key: str,
        *,
        model: str = DEFAULT_FLUX_MODEL,
        eot_threshold: float | None = None,
        eager_eot_threshold: float | None = None,
        eot_timeout_ms: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(api_key, model=model, **options)
        # Already 80 ms per message (message_bytes): batching above that would only delay.
        self.audio_batch_ms = 0
        self._turn_open = False  # a StartOfTurn without its EndOfTurn yet
        self.eot_threshold = eot_threshold
        self.eager_eot_threshold = eager_eot_threshold
        self.eot_timeout_ms = eot_timeout_ms

    def __repr__(self) -> str:
        return f"DeepgramFluxSpeechToText(model={self.model!r}, url={self.listen_url!r})"

    @property
    def listen_url(self) -> str:
        return f"{self.ws_url}/v2/listen"

    def _connect(self, client: AsyncDeepgramClient) -> contextlib.AbstractAsyncContextManager[Any]:
        if not self._turn_open:
            # Only EndOfTurn commits audio, so without this a drop after a long silence (the
            # caller listening to a long reply) would replay all of it before the new words.
            self._audio.commit(self._audio.sent - _REPLAY_BETWEEN_TURNS_BYTES)
        options: dict[str, Any] = {}
        if self.eot_threshold is not None:
            options["eot_threshold"] = self.eot_threshold
        if self.eager_eot_threshold is not None:
            options["eager_eot_threshold"] = self.eager_eot_threshold
        if self.eot_timeout_ms is not None:
            options["eot_timeout_ms"] = self.eot_timeout_ms
        return client.listen.v2.connect(
            model=self.model, encoding="mulaw", sample_rate=SAMPLE_RATE, **options
        )

    def _events_from(self, message: Any, received_at: float) -> tuple[list[SttEvent], float | None]:
        event = str(message.event) if isinstance(message, ListenV2TurnInfo) else ""
        if event in ("StartOfTurn", "EndOfTurn"):
            self._turn_open = event == "StartOfTurn"
        if isinstance(message, ListenV2Warning):
            _log.warning("deepgram flux: %s", self._scrub(f"{message.code}: {message.description}"))
        return flux_events_from_message(message, received_at)

    async def _send_finalize(self, socket: Any) -> None:
        await socket.send_force_end_turn()

    async def _keep_alive(self, socket: Any) -> None:
        # Queued like caller audio (the sender sends it next), so replay offsets stay exact.
        self._audio.append(_SILENCE)

"""Offline speech-to-text: pocketsphinx 5 with the receptionist's own language model.

No key, no network: the acoustic model ships inside the pocketsphinx wheel, and the language
model and dictionary (`receptionist_lm/`, built by tools/receptionist_lm) cover what callers say to
a dental receptionist: booking phrases, services, names, days, dates, times, digits, yes/no.

Audio path per 20 ms frame: mu-law 8 kHz -> 16-bit linear (`audioop.ulaw2lin`) -> webrtcvad
on the 8 kHz frame (~4 us) for endpointing -> upsampled to 16 kHz (`audioop.ratecv`, state
kept across frames; the wheel's model only initialises at 16 kHz) -> `Decoder.process_raw`.

Endpointing is ours rather than the decoder's, so the events mirror the cloud provider's
(Deepgram): SPEECH_STARTED when webrtcvad hears `speech_start_ms` of voice, PARTIAL every
`partial_interval_ms` of speech when the hypothesis changed, and after `endpointing_ms` of
non-speech FINAL(speech_final=True) then UTTERANCE_END. All timing is on the audio timeline
(frames received), not the wall clock, so the same audio always gives the same events however
fast it is fed.

Decoding is CPU work (RTF ~0.05 here), so each call gets one worker thread that owns the
decoder; the event loop only queues bytes and receives events. pocketsphinx holds the GIL
inside its calls, so the worker keeps each call short (one 20 ms frame) and yields between
them (see `_yield_gil`). For the same reason the "fwdflat" second search pass is off: it runs
entirely inside end_utt() (~25 ms per second of speech, which would stall every call's RTP
pacing at each end of turn) and bought little accuracy here.
"""

from __future__ import annotations

import asyncio
import audioop
import collections
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sipagent.providers.base import ProviderError, SttEvent, SttEventKind, drain_events

log = logging.getLogger(__name__)

LM_DIR = Path(__file__).resolve().parent / "receptionist_lm"
DEFAULT_LM = LM_DIR / "receptionist.lm"
DEFAULT_DICT = LM_DIR / "receptionist.dict"

FRAME_MS = 20
_FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law
_DECODER_RATE = 16000
# webrtcvad calls the first ~100 ms of any stream speech while its noise model settles (even
# for faint line noise), so its first frames cannot start an utterance. Speech that really
# starts that early keeps going past them, and the preroll still carries its onset.
_VAD_WARMUP_FRAMES = 6


def _yield_gil() -> None:
    """Let the event loop run between decoder calls.

    pocketsphinx's process_raw() keeps the GIL for its whole run (~1 ms per 20 ms frame).
    Back to back, a decoding thread gives the GIL up only when the 5 ms switch interval forces
    it, and with several calls' decoders the loop lost that race repeatedly: 4 calls fed in
    real time stalled it up to 112 ms (p99 26 ms). Releasing it after every frame (sleep(0)
    is a real release and a reacquire) brought that to 23 ms (p99 13 ms).
    """
    time.sleep(0)


@dataclass(frozen=True, slots=True)
class _Flush:
    done: concurrent.futures.Future[None]


@dataclass(frozen=True, slots=True)
class _Close:
    done: concurrent.futures.Future[None]


_Item = bytes | _Flush | _Close


class PocketsphinxSpeechToText:
    """`SpeechToText` for one call, decoded locally by pocketsphinx.

    endpointing_ms: non-speech after speech that ends the caller's turn (FINAL, speech_final).
    partial_interval_ms: at most one PARTIAL per this much speech, and only when it changed.
    speech_start_ms: consecutive voiced audio needed to declare SPEECH_STARTED (ignores clicks).
    preroll_ms: audio kept from before the VAD fired and decoded with the utterance, so the
        first phoneme (which the VAD needs a few frames to be sure of) is not lost.
    vad_mode: webrtcvad aggressiveness 0..3; 3 ignores faint line noise.
    max_utterance_ms: a turn longer than this is cut into finals (speech_final=False) so the
        decoder's memory and end-of-turn latency stay bounded.
    lm_path / dict_path: another ARPA (or .lm.bin) model and dictionary, e.g. the wheel's
        general English model for open vocabulary (slower and less accurate on phone audio).
    cmn_warmup_ms: while less than this much speech has been decoded in the call, each
        utterance is decoded a second time at its end and the FINAL comes from that pass. Live
        cepstral mean normalisation starts from a wideband-microphone prior and only adapts
        to the caller's line and voice at the end of an utterance, so the first turn (the
        one that says why they call) came out worst: 57% word accuracy vs 77% with the second
        pass, over five espeak-ng voices through the 8 kHz mu-law path. Costs ~5% of the
        utterance's length in extra latency for those finals only; 0 disables it.
    decoder_options: extra pocketsphinx Config keys (e.g. {"lw": 8.0}).
    """

    def __init__(
        self,
        *,
        endpointing_ms: int = 300,
        partial_interval_ms: int = 250,
        speech_start_ms: int = 60,
        preroll_ms: int = 300,
        vad_mode: int = 3,
        max_utterance_ms: int = 30_000,
        cmn_warmup_ms: int = 3000,
        lm_path: str | Path | None = None,
        dict_path: str | Path | None = None,
        decoder_options: dict[str, Any] | None = None,
    ) -> None:
        if not 0 <= vad_mode <= 3:
            raise ValueError("vad_mode must be 0..3")
        for name, value in (
            ("endpointing_ms", endpointing_ms),
            ("partial_interval_ms", partial_interval_ms),
            ("speech_start_ms", speech_start_ms),
            ("max_utterance_ms", max_utterance_ms),
        ):
            if value < FRAME_MS:
                raise ValueError(f"{name} must be at least {FRAME_MS} ms")
        self.endpointing_ms = endpointing_ms
        self.partial_interval_ms = partial_interval_ms
        self.speech_start_frames = max(1, speech_start_ms // FRAME_MS)
        self.preroll_frames = max(self.speech_start_frames, preroll_ms // FRAME_MS)
        self.vad_mode = vad_mode
        self.max_utterance_ms = max_utterance_ms
        self.cmn_warmup_ms = cmn_warmup_ms
        self.lm_path = Path(lm_path) if lm_path is not None else DEFAULT_LM
        self.dict_path = Path(dict_path) if dict_path is not None else DEFAULT_DICT
        self.decoder_options = dict(decoder_options or {})

        self._inbox: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._events: asyncio.Queue[SttEvent | None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._closed_future: concurrent.futures.Future[None] | None = None
        self._failed = False
        self._pending = b""  # mu-law bytes short of a whole 20 ms frame

        # Backlog accounting without a lock: each counter has a single writer thread.
        self._bytes_in = 0  # event loop (send_audio)
        self._bytes_done = 0  # worker
        # Audio processed and the worker's CPU time doing it (both passes, endpointing, VAD):
        # cpu_seconds / audio_seconds is the real-time factor.
        self.audio_seconds = 0.0
        self.cpu_seconds = 0.0

    @property
    def queued_bytes(self) -> int:
        """Mu-law bytes handed to the worker and not yet decoded: how far decoding lags."""
        return self._bytes_in - self._bytes_done

    # --- SpeechToText ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._events = asyncio.Queue()
        # Building the decoder reads the acoustic model (~25 ms): off the loop too.
        decoder, vad = await asyncio.to_thread(self._make_decoder)
        self._thread = threading.Thread(
            target=self._run, args=(decoder, vad), name="pocketsphinx-stt", daemon=True
        )
        self._thread.start()

    def send_audio(self, mulaw: bytes) -> None:
        if self._closing or self._failed or not mulaw:
            return
        # Cut into whole 20 ms frames here, so the worker (and webrtcvad) always sees exact
        # frames whatever packetisation the caller's RTP uses.
        data = self._pending + mulaw
        cut = len(data) - len(data) % _FRAME_BYTES
        self._pending = data[cut:]
        if cut:
            self._bytes_in += cut
            self._inbox.put(data[:cut])

    def events(self) -> AsyncIterator[SttEvent]:
        return drain_events(self._events, "PocketsphinxSpeechToText")

    async def finalize(self) -> None:
        if self._thread is None or self._closing or self._failed:
            return
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._inbox.put(_Flush(done))
        # Resolves once everything queued before it is decoded and any final is emitted.
        await asyncio.wrap_future(done)

    async def close(self) -> None:
        if self._closed_future is None:
            self._closing = True
            self._closed_future = concurrent.futures.Future()
            if self._thread is None:
                # Never started: nothing to flush, but events() (if started) must end.
                self._closed_future.set_result(None)
                self._post(None)
            else:
                self._inbox.put(_Close(self._closed_future))
        await asyncio.wrap_future(self._closed_future)

    # --- worker thread -----------------------------------------------------------------------

    def _make_decoder(self) -> tuple[Any, Any]:
        try:
            import pocketsphinx
            import webrtcvad
        except ImportError as exc:
            raise ProviderError(f"offline STT dependency missing: {exc}") from exc
        for path in (self.lm_path, self.dict_path):
            if not path.is_file():
                raise ProviderError(f"pocketsphinx model file missing: {path}")
        options: dict[str, Any] = {
            "lm": str(self.lm_path),
            "dict": str(self.dict_path),
            "samprate": _DECODER_RATE,
            # Dither: the upsampled 8 kHz band leaves the model's upper filters (and digital
            # silence everything) near zero energy; a little noise keeps the log spectrum sane.
            # pocketsphinx seeds it with a fixed seed, so results stay deterministic.
            "dither": True,
            "fwdflat": False,  # see the module docstring: GIL-bound second pass at end_utt
            "bestpath": True,  # ~2 ms at end_utt; without it word accuracy fell ~9 points
            "loglevel": "ERROR",
        }
        options.update(self.decoder_options)
        try:
            return pocketsphinx.Decoder(**options), webrtcvad.Vad(self.vad_mode)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ProviderError(f"pocketsphinx decoder failed to initialise: {exc}") from exc

    def _post(self, event: SttEvent | None) -> None:
        """Hand an event to the loop (from any thread); dropped if the loop is gone."""
        loop, events = self._loop, self._events
        if loop is None or events is None:
            return
        # RuntimeError: loop closed, the call is over and nobody reads events any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(events.put_nowait, event)

    def _emit(self, kind: SttEventKind, text: str = "", *, speech_final: bool = False) -> None:
        # loop.time() is the monotonic clock, safe to read from this thread.
        assert self._loop is not None
        self._post(
            SttEvent(kind=kind, text=text, speech_final=speech_final, received_at=self._loop.time())
        )

    def _run(self, decoder: Any, vad: Any) -> None:
        session = _Utterances(self, decoder, vad)
        while True:
            item = self._inbox.get()
            if isinstance(item, bytes):
                self._bytes_done += len(item)
                self.audio_seconds += len(item) / 8000
                self._guarded(session.feed, item)
                continue
            # finalize() or close(): flush speech in progress, then acknowledge. For close,
            # the end-of-events marker goes first so events() has ended when close() returns.
            self._guarded(session.end_turn)
            if isinstance(item, _Close):
                self._post(None)
                self._resolve(item.done)
                return
            self._resolve(item.done)

    def _guarded(self, step: Callable[..., None], *args: Any) -> None:
        """Run one decoding step; the first failure is reported and stops decoding.

        A decoder failure is not recoverable in any useful way mid-call: the conversation gets
        an ERROR event and speaks around it, and the worker keeps draining its inbox so that
        finalize() and close() still return.
        """
        if self._failed:
            return
        started = time.thread_time()
        try:
            step(*args)
        except Exception as exc:
            log.exception("pocketsphinx decoding failed")
            self._failed = True
            assert self._loop is not None
            self._post(
                SttEvent(
                    kind=SttEventKind.ERROR,
                    detail=f"pocketsphinx decoding failed: {exc!r}",
                    received_at=self._loop.time(),
                )
            )
        finally:
            self.cpu_seconds += time.thread_time() - started

    def _resolve(self, done: concurrent.futures.Future[None]) -> None:
        if not done.done():
            done.set_result(None)


class _Utterances:
    """VAD-driven segmentation and decoding; lives entirely in the worker thread."""

    def __init__(self, stt: PocketsphinxSpeechToText, decoder: Any, vad: Any) -> None:
        self.stt = stt
        self.decoder = decoder
        self.vad = vad
        self.resample_state: Any = None
        self.preroll: collections.deque[bytes] = collections.deque(maxlen=stt.preroll_frames)
        self.voiced_run = 0  # consecutive voiced frames while waiting for speech
        self.frames_seen = 0
        self.in_speech = False
        self.silence_ms = 0
        self.utt_ms = 0
        self.last_partial_check = 0
        self.last_partial = ""
        self.speech_ms_total = 0  # decoded speech in this call, for the CMN warm-up
        self.second_pass = False
        self.utterance_audio: list[bytes] = []  # kept only when a second pass will run
        self.turn_has_text = False  # a FINAL with words was emitted in this turn

    def feed(self, mulaw: bytes) -> None:
        for i in range(0, len(mulaw), _FRAME_BYTES):
            self.frame(mulaw[i : i + _FRAME_BYTES])

    def frame(self, mulaw: bytes) -> None:
        stt = self.stt
        lin8 = audioop.ulaw2lin(mulaw, 2)
        self.frames_seen += 1
        voiced = self.vad.is_speech(lin8, 8000) and self.frames_seen > _VAD_WARMUP_FRAMES
        # Resample every frame, speech or not, so the filter state stays continuous.
        lin16, self.resample_state = audioop.ratecv(
            lin8, 2, 1, 8000, _DECODER_RATE, self.resample_state
        )
        if not self.in_speech:
            self.preroll.append(lin16)
            self.voiced_run = self.voiced_run + 1 if voiced else 0
            if self.voiced_run < stt.speech_start_frames:
                return
            stt._emit(SttEventKind.SPEECH_STARTED)
            self.begin()
            for piece in self.preroll:  # one 20 ms frame per call: short GIL holds
                self.process(piece)
            self.preroll.clear()
            return

        self.process(lin16)
        self.utt_ms += FRAME_MS
        self.silence_ms = 0 if voiced else self.silence_ms + FRAME_MS
        if self.silence_ms >= stt.endpointing_ms:
            self.end_turn()
            return
        if self.utt_ms >= stt.max_utterance_ms:
            # Still talking: close this segment, keep listening in the same turn.
            self.finish_segment(speech_final=False)
            self.begin()
            return
        if self.utt_ms - self.last_partial_check >= stt.partial_interval_ms:
            self.last_partial_check = self.utt_ms
            text = self.hypothesis()
            if text and text != self.last_partial:
                self.last_partial = text
                stt._emit(SttEventKind.PARTIAL, text)

    def begin(self) -> None:
        self.decoder.start_utt()
        self.in_speech = True
        self.silence_ms = 0
        self.utt_ms = 0
        self.last_partial_check = 0
        self.last_partial = ""
        self.second_pass = self.speech_ms_total < self.stt.cmn_warmup_ms
        self.utterance_audio = []

    def process(self, lin16: bytes) -> None:
        if self.second_pass:
            self.utterance_audio.append(lin16)
        self.decoder.process_raw(lin16, False, False)
        _yield_gil()

    def hypothesis(self) -> str:
        hyp = self.decoder.hyp()
        if hyp is None:
            return ""
        # Fillers and silence markers are not words; the LM has none but a custom one might.
        return " ".join(w for w in hyp.hypstr.split() if not w.startswith(("<", "[", "+")))

    def finish_segment(self, *, speech_final: bool) -> None:
        self.decoder.end_utt()  # also updates the live CMN estimate from this utterance
        self.in_speech = False
        self.speech_ms_total += self.utt_ms
        if self.second_pass and self.utterance_audio:
            # Same audio again, now normalised with a mean that has seen this caller. Fed in
            # 20 ms frames: process_raw holds the GIL, so one call per frame keeps each hold
            # to about a millisecond.
            self.decoder.start_utt()
            for lin16 in self.utterance_audio:
                self.decoder.process_raw(lin16, False, False)
                _yield_gil()
            self.decoder.end_utt()
        self.utterance_audio = []
        text = self.hypothesis()
        if text:
            self.turn_has_text = True
        # A VAD trigger with no words (a cough, line noise) gives no FINAL: an empty final
        # would only make the conversation answer nothing. The exception: a long turn already
        # cut into non-final FINALs whose last piece is empty still needs its speech_final.
        if text or (speech_final and self.turn_has_text):
            self.stt._emit(SttEventKind.FINAL, text, speech_final=speech_final)

    def end_turn(self) -> None:
        """End of the caller's turn (silence, finalize(), close()): FINAL then UTTERANCE_END."""
        if not self.in_speech:
            return
        self.finish_segment(speech_final=True)
        self.stt._emit(SttEventKind.UTTERANCE_END)
        self.turn_has_text = False
        self.voiced_run = 0
        self.preroll.clear()

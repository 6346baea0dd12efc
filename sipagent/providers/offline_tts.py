"""Offline text-to-speech: libespeak-ng (from the `espeakng-loader` wheel) through ctypes.

No key, no network, no apt package: the wheel ships the shared library and its voice data.
espeak-ng synthesises at 22050 Hz 16-bit; each buffer is resampled to 8 kHz (`audioop.ratecv`,
state carried across buffers so there is no click at chunk edges) and mu-law encoded from
16-bit samples, the call's own format.

libespeak-ng keeps all its state in process globals (one voice, one callback, one output mode)
and is not thread-safe, so every synthesis in the process goes through one worker thread and
one lock. Synthesis is ~1000x faster than real time, so serialising calls costs a few
milliseconds per sentence; running it off the event loop keeps RTP pacing untouched.
"""

from __future__ import annotations

import asyncio
import audioop
import ctypes
import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sipagent.providers.base import ProviderError

OUTPUT_RATE = 8000

# speak_lib.h constants (the ABI of libespeak-ng 1.5x).
_AUDIO_OUTPUT_SYNCHRONOUS = 2  # callback runs in the espeak_Synth caller's thread, Synth blocks
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_DEFAULT_PITCH = 50  # espeak's neutral setting: the voice's own pitch
# Without this flag espeak_Initialize calls exit() when it cannot find its data: that would
# take the whole server (every call) down instead of raising a ProviderError.
_INITIALIZE_DONT_EXIT = 0x8000
# Below 60 ms libespeak-ng still hands out 60 ms buffers; 60 ms at 8 kHz is 480 mu-law bytes,
# a few RTP packets: small enough for a fast first chunk, big enough to keep loop wake-ups low.
_BUFFER_MS = 60

_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)

_log = logging.getLogger(__name__)


class _Espeak:
    """The process-wide libespeak-ng instance. Only touched while holding `_LOCK`."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:  # a packaging error, reported like any provider failure
            raise ProviderError(f"espeakng-loader is not installed: {exc}") from exc
        try:
            lib = ctypes.CDLL(espeakng_loader.get_library_path())
            data_path = espeakng_loader.get_data_path()
        except (OSError, RuntimeError) as exc:
            raise ProviderError(f"cannot load libespeak-ng: {exc}") from exc
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,  # text
            ctypes.c_size_t,  # size incl. the terminating NUL
            ctypes.c_uint,  # position
            ctypes.c_int,  # position type
            ctypes.c_uint,  # end position (0: none)
            ctypes.c_uint,  # flags
            ctypes.c_void_p,  # unique identifier out (unused)
            ctypes.c_void_p,  # user data (unused: the sink is a Python global, see below)
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, data_path.encode(), _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            raise ProviderError(f"espeak_Initialize failed ({rate}) with data at {data_path}")
        self.lib = lib
        self.sample_rate: int = rate
        # The sink of the synthesis in progress. A Python global rather than espeak's user_data
        # pointer: the lock guarantees one synthesis at a time, and no pointer round-trips.
        self.sink: Callable[[bytes], bool] | None = None
        self.callback_error: Exception | None = None
        # Keep a reference: ctypes frees the trampoline when the Python object dies.
        self._callback = _SynthCallback(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav: Any, numsamples: int, _events: int | None) -> int:
        sink = self.sink
        if sink is None:
            return 1  # nobody listening: abort
        if numsamples > 0 and wav:
            try:
                keep_going = sink(ctypes.string_at(wav, numsamples * 2))
            except Exception as exc:
                # ctypes would print and swallow an exception raised in a callback; keep it
                # for synth() to raise once espeak has returned.
                self.callback_error = exc
                return 1
            if not keep_going:
                return 1  # espeak aborts the synthesis when the callback returns 1
        return 0

    def synth(
        self, text: str, voice: str, rate: int, pitch: int | None, sink: Callable[[bytes], bool]
    ) -> None:
        # Voice and parameters are process-global: set them on every call, since instances
        # with different voices share this one engine.
        if self.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise ProviderError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(_PARAM_RATE, rate, 0)
        self.lib.espeak_SetParameter(_PARAM_VOLUME, 100, 0)
        # Always set: a pitch left by another instance would otherwise carry over.
        self.lib.espeak_SetParameter(_PARAM_PITCH, _DEFAULT_PITCH if pitch is None else pitch, 0)
        data = text.encode("utf-8")
        self.sink = sink
        self.callback_error = None
        try:
            rc = self.lib.espeak_Synth(
                data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
            )
        finally:
            self.sink = None
        if self.callback_error is not None:
            raise ProviderError(f"espeak-ng audio handling failed: {self.callback_error!r}")
        if rc != _EE_OK:
            raise ProviderError(f"espeak_Synth failed ({rc})")


_LOCK = threading.Lock()
_engine: _Espeak | None = None
# One thread for the whole process: espeak is global state, so more threads would only queue
# on the lock while holding pool slots.
_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espeak")


def _engine_locked() -> _Espeak:
    global _engine
    if _engine is None:
        _engine = _Espeak()
    return _engine


_DONE = object()


class EspeakTextToSpeech:
    """`TextToSpeech` on libespeak-ng: 8 kHz mu-law, streamed in ~60 ms chunks.

    voice: an espeak-ng voice name, optionally with a variant ("en-us+f3" is US English with a
    female variant). rate: words per minute (espeak-ng accepts 80..450; 175 is its default).
    pitch: 0..99 (50 is the voice's own); None keeps the voice's own.
    """

    def __init__(self, voice: str = "en-us+f3", rate: int = 165, pitch: int | None = None) -> None:
        if not 80 <= rate <= 450:
            raise ValueError(f"rate {rate} outside espeak-ng's 80..450 words per minute")
        if pitch is not None and not 0 <= pitch <= 99:
            raise ValueError(f"pitch {pitch} outside 0..99")
        self.voice = voice
        self.rate = rate
        self.pitch = pitch

    async def warm_up(self) -> None:
        """Load the library and voice data now rather than on the first sentence of a call."""
        loop = asyncio.get_running_loop()

        def load() -> None:
            with _LOCK:
                _engine_locked()

        await loop.run_in_executor(_executor, load)

    async def synthesize(
        self, text: str, *, previous_text: str = "", next_text: str = ""
    ) -> AsyncIterator[bytes]:
        # espeak-ng speaks each sentence on its own: the neighbouring text is not used.
        if not text.strip():
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        # Set on the loop when the consumer goes away; the callback checks it for every buffer
        # and makes espeak abort, so a barge-in stops synthesis within one buffer.
        cancelled = threading.Event()

        def post(item: object) -> bool:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:
                return False  # the loop closed under us: nobody is listening any more
            return True

        def work() -> None:
            if cancelled.is_set():
                return  # closed while queued behind another call's sentence: no work to do
            state = None

            def sink(pcm: bytes) -> bool:
                nonlocal state
                if cancelled.is_set():
                    return False
                pcm8k, state = audioop.ratecv(pcm, 2, 1, in_rate, OUTPUT_RATE, state)
                return not pcm8k or post(audioop.lin2ulaw(pcm8k, 2))

            try:
                with _LOCK:
                    engine = _engine_locked()
                    in_rate = engine.sample_rate
                    engine.synth(text, self.voice, self.rate, self.pitch, sink)
            except ProviderError as exc:
                post(exc)
            except Exception as exc:  # ctypes/audioop failures must still reach the consumer
                post(ProviderError(f"espeak-ng synthesis failed: {exc!r}"))
            finally:
                post(_DONE)  # after the last chunk: call_soon_threadsafe keeps FIFO order

        future = loop.run_in_executor(_executor, work)
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, ProviderError):
                    raise item
                assert isinstance(item, bytes)
                yield item
        finally:
            # aclose(), cancellation or an error: stop espeak at its next buffer and wait for
            # the worker, so the engine is free (and nothing more is produced) once we return.
            cancelled.set()
            if not future.done():
                try:
                    await asyncio.shield(future)
                except asyncio.CancelledError:
                    raise  # the worker still stops at its next buffer; cancellation wins
                except Exception as error:  # its queue has no reader any more: log it here
                    _log.debug("espeak-ng worker failed after the stream closed: %r", error)

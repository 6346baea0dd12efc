"""PocketsphinxSpeechToText end to end on speech from our own EspeakTextToSpeech (no binaries).

The audio is synthesised in a fresh subprocess: libespeak-ng carries state from one synthesis
to the next (a static pitch-flutter index in its wave generator, and libc rand() for noise), so
the same sentence sounds slightly different depending on what the process said before. A fresh
process always says the same thing, which makes the recogniser's input, and so its output,
reproducible: the expectations below are what this audio gives, with a margin only for the
aggregate accuracy.
"""

from __future__ import annotations

import asyncio
import audioop
import base64
import itertools
import json
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from sipagent.providers.base import SttEvent, SttEventKind
from sipagent.providers.offline_stt import PocketsphinxSpeechToText

VOICE = "en-us"
RATE = 165
FRAME = 160  # 20 ms of 8 kHz mu-law
SILENCE = b"\xff" * 4000  # 0.5 s of mu-law silence

# (sentence, key slot words that the booking flow needs from it)
SENTENCES: list[tuple[str, list[str]]] = [
    ("I'd like to book a cleaning for next Tuesday at three pm.",
     ["book", "cleaning", "tuesday", "three", "pm"]),
    ("My name is David Miller.", ["david", "miller"]),
    ("My phone number is five five five zero one two three.", ["5550123"]),
    ("Do you have anything on Monday morning?", ["monday", "morning"]),
    ("I have a toothache and I need to see someone.", ["toothache"]),
    ("The fifteenth of March at ten thirty.", ["fifteenth", "march", "ten", "thirty"]),
    ("Can I get a checkup tomorrow in the afternoon?", ["checkup", "tomorrow", "afternoon"]),
    ("It's an emergency, my tooth is broken.", ["emergency", "broken"]),
    ("I'd like to make an appointment for a consultation with doctor Patel.",
     ["appointment", "consultation", "patel"]),
    ("Hi, this is Michael Brown, I need to cancel my appointment on Friday.",
     ["michael", "brown", "cancel", "friday"]),
    ("Call me at eight oh four two two nine one.", ["8042291"]),
    ("How about Wednesday at eleven a.m.?", ["wednesday", "eleven", "am"]),
    ("I'd like to schedule a root canal on the third of June.", ["root", "canal", "third", "june"]),
    ("Yes, that works, thank you.", ["yes", "thank|thanks"]),
    ("No, thanks, goodbye.", ["no", "bye|goodbye"]),
]  # fmt: skip

_DIGITS = {
    "zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
}  # fmt: skip

_SYNTH = """
import asyncio, base64, json, sys
from sipagent.providers.offline_tts import EspeakTextToSpeech

async def main():
    tts = EspeakTextToSpeech(voice=sys.argv[1], rate=int(sys.argv[2]))
    out = []
    for text in json.load(sys.stdin):
        audio = b"".join([chunk async for chunk in tts.synthesize(text)])
        out.append(base64.b64encode(audio).decode())
    json.dump(out, sys.stdout)

asyncio.run(main())
"""


def synthesize_fresh(texts: list[str]) -> list[bytes]:
    """8 kHz mu-law for each text, from a fresh process (see the module docstring)."""
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _SYNTH, VOICE, str(RATE)],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [base64.b64decode(a) for a in json.loads(proc.stdout)]


@pytest.fixture(scope="module")
def audio() -> dict[str, bytes]:
    texts = [s for s, _ in SENTENCES]
    return dict(zip(texts, synthesize_fresh(texts), strict=True))


def words(text: str) -> list[str]:
    text = text.lower().replace("a.m.", "am").replace("p.m.", "pm").replace("check up", "checkup")
    return re.sub(r"[^a-z' ]", " ", text).split()


def digits(text: str) -> str:
    return "".join(_DIGITS.get(w, "") for w in words(text))


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i in range(1, len(ref) + 1):
        prev, row[0] = row[0], i
        for j in range(1, len(hyp) + 1):
            prev, row[j] = (
                row[j],
                min(row[j] + 1, row[j - 1] + 1, prev + (ref[i - 1] != hyp[j - 1])),
            )
    return row[len(hyp)]


def key_hits(keys: list[str], text: str) -> list[str]:
    """Keys found in `text`: digit strings inside its digits, words (a|b: either) as words."""
    heard, heard_digits = set(words(text)), digits(text)
    return [
        k
        for k in keys
        if (k in heard_digits if k.isdigit() else any(alt in heard for alt in k.split("|")))
    ]


class Listener:
    """Reads events() in the background, like the conversation engine does."""

    def __init__(self, stt: PocketsphinxSpeechToText) -> None:
        self.stt = stt
        self.events: list[SttEvent] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for event in self.stt.events():
            self.events.append(event)

    async def until(self, predicate: Callable[[list[SttEvent]], bool], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.events):
            assert time.monotonic() < deadline, f"timed out; events: {self.events}"
            await asyncio.sleep(0.005)

    def take(self) -> list[SttEvent]:
        events, self.events = self.events, []
        return events


def feed(stt: PocketsphinxSpeechToText, audio: bytes, packet: int = FRAME) -> None:
    for i in range(0, len(audio), packet):
        stt.send_audio(audio[i : i + packet])


def kinds(events: list[SttEvent]) -> list[SttEventKind]:
    return [e.kind for e in events]


def finals(events: list[SttEvent]) -> str:
    return " ".join(e.text for e in events if e.kind == SttEventKind.FINAL)


async def test_receptionist_sentences_are_recognised(audio):
    stt = PocketsphinxSpeechToText()
    await stt.start()
    listener = Listener(stt)
    errors = ref_words = 0
    hits = total_keys = 0
    results: dict[str, str] = {}
    for text, keys in SENTENCES:
        feed(stt, audio[text] + SILENCE)
        # The 0.5 s of silence ends the turn by endpointing (300 ms), not by finalize().
        await listener.until(lambda ev: SttEventKind.UTTERANCE_END in kinds(ev))
        await stt.finalize()  # barrier: the rest of the silence is decoded too
        events = listener.take()
        heard = finals(events)
        results[text] = heard
        errors += edit_distance(words(text), words(heard))
        ref_words += len(words(text))
        found = key_hits(keys, heard)
        hits += len(found)
        total_keys += len(keys)

        # Event order for every turn: SPEECH_STARTED, partials, FINAL(speech_final), END.
        seq = kinds(events)
        assert seq[0] == SttEventKind.SPEECH_STARTED, seq
        assert seq[-1] == SttEventKind.UTTERANCE_END, seq
        assert seq[-2] == SttEventKind.FINAL and events[-2].speech_final, seq
        assert SttEventKind.PARTIAL in seq[1:-2], seq
        assert seq.index(SttEventKind.PARTIAL) < seq.index(SttEventKind.FINAL)
        times = [e.received_at for e in events]
        assert times == sorted(times)
    await stt.close()
    await listener.task

    accuracy = 1 - errors / ref_words
    rtf = stt.cpu_seconds / stt.audio_seconds
    report = "\n".join(f"  {t!r}\n    -> {h!r}" for t, h in results.items())
    print(
        f"\nword accuracy {accuracy:.3f} ({ref_words - errors}/{ref_words} words, "
        f"{len(SENTENCES)} sentences); key slot words {hits}/{total_keys}; RTF {rtf:.3f}\n{report}"
    )
    # Measured on this audio: word accuracy 0.876 (113/129), key slot words 33/39, RTF ~0.05.
    # The input is reproducible, so is the output; the margins only absorb the small shifts
    # a pocketsphinx or espeak-ng upgrade brings, not a broken model or pipeline.
    assert accuracy >= 0.8, report
    assert hits >= 0.75 * total_keys, report
    assert rtf < 0.5

    # Slot words the booking flow depends on, recognised exactly in this audio.
    said = {text: set(words(heard)) for text, heard in results.items()}
    assert {"book", "cleaning", "next", "tuesday", "three", "pm"} <= said[SENTENCES[0][0]]
    assert {"david", "miller"} <= said[SENTENCES[1][0]]
    assert digits(results[SENTENCES[2][0]]) == "5550123"
    assert {"monday", "morning"} <= said[SENTENCES[3][0]]
    assert {"march", "ten", "thirty"} <= said[SENTENCES[5][0]]
    assert {"emergency", "broken"} <= said[SENTENCES[7][0]]
    assert {"brown", "cancel", "friday"} <= said[SENTENCES[9][0]]
    assert digits(results[SENTENCES[10][0]]) == "8042291"
    assert {"root", "canal", "third", "june"} <= said[SENTENCES[12][0]]


async def test_partials_grow_before_the_final(audio):
    text = SENTENCES[0][0]
    stt = PocketsphinxSpeechToText(partial_interval_ms=200)
    await stt.start()
    listener = Listener(stt)
    feed(stt, audio[text] + SILENCE)
    await listener.until(lambda ev: SttEventKind.UTTERANCE_END in kinds(ev))
    await stt.close()
    events = listener.take()
    partials = [e.text for e in events if e.kind == SttEventKind.PARTIAL]
    # ~3.5 s of speech at one partial per 200 ms when the words changed: several, all distinct
    # consecutive values, the first ones before the last words were spoken.
    assert len(partials) >= 5, partials
    assert all(a != b for a, b in itertools.pairwise(partials))
    assert len(words(partials[0])) < len(words(finals(events)))
    assert "book" in words(partials[len(partials) // 2])


async def test_finalize_flushes_speech_in_progress(audio):
    text = SENTENCES[0][0]
    cut = audio[text][: int(len(audio[text]) * 0.6)]  # stop mid-sentence, no trailing silence
    stt = PocketsphinxSpeechToText()
    await stt.start()
    listener = Listener(stt)
    feed(stt, cut)
    await stt.finalize()
    await listener.until(lambda ev: SttEventKind.UTTERANCE_END in kinds(ev), timeout=2)
    events = listener.take()
    final = [e for e in events if e.kind == SttEventKind.FINAL]
    assert len(final) == 1 and final[0].speech_final, events
    assert {"book", "cleaning"} <= set(words(final[0].text)), final[0].text
    assert kinds(events)[-1] == SttEventKind.UTTERANCE_END

    # finalize() with nothing in progress emits nothing; the stream keeps working afterwards.
    await stt.finalize()
    feed(stt, audio[SENTENCES[3][0]] + SILENCE)
    await listener.until(lambda ev: SttEventKind.UTTERANCE_END in kinds(ev))
    assert "monday" in words(finals(listener.take()))
    await stt.close()


async def test_close_flushes_and_ends_events(audio):
    text = SENTENCES[0][0]
    stt = PocketsphinxSpeechToText()
    await stt.start()
    listener = Listener(stt)
    feed(stt, audio[text])  # no silence: still talking when the call ends
    await stt.close()
    await asyncio.wait_for(listener.task, 2)  # events() ended
    assert {"cleaning", "tuesday"} <= set(words(finals(listener.events)))
    assert kinds(listener.events)[-1] == SttEventKind.UTTERANCE_END
    stt.send_audio(audio[text])  # after close: ignored, no error
    await stt.finalize()
    await stt.close()  # idempotent


async def test_packetisation_does_not_change_the_result(audio):
    text = SENTENCES[9][0]
    results = []
    for packet in (160, 100, 333, 1600):
        stt = PocketsphinxSpeechToText()
        await stt.start()
        listener = Listener(stt)
        feed(stt, audio[text] + SILENCE, packet)
        await stt.close()
        await listener.task
        results.append([(e.kind, e.text) for e in listener.events])
    # Decoding runs on whole 20 ms frames on the audio timeline: same audio, same events.
    assert all(r == results[0] for r in results), results


async def test_line_noise_and_silence_produce_no_events():
    rng = random.Random(7)
    # 3 s of faint white noise (about -55 dBFS) then 1 s of digital silence.
    pcm = b"".join(rng.randint(-60, 60).to_bytes(2, "little", signed=True) for _ in range(24000))
    stt = PocketsphinxSpeechToText()
    await stt.start()
    listener = Listener(stt)
    feed(stt, audioop.lin2ulaw(pcm, 2) + SILENCE * 2)
    await stt.close()
    await listener.task
    assert listener.events == []


async def record_loop_gaps(gaps: list[float], stop: asyncio.Event) -> None:
    """Wake every 5 ms until `stop`, appending how long each wake-up really took: a blocked
    event loop shows as a long gap."""
    loop = asyncio.get_running_loop()
    last = loop.time()
    while not stop.is_set():
        await asyncio.sleep(0.005)
        now = loop.time()
        gaps.append(now - last)
        last = now


async def test_decoding_does_not_block_the_event_loop(audio):
    """All the audio queued at once (a worst-case backlog): the loop keeps ticking."""
    stt = PocketsphinxSpeechToText()
    await stt.start()
    listener = Listener(stt)
    gaps: list[float] = []
    stop = asyncio.Event()

    tick = asyncio.create_task(record_loop_gaps(gaps, stop))
    await asyncio.sleep(0.02)
    started = time.perf_counter()
    for text, _ in SENTENCES:
        feed(stt, audio[text] + SILENCE)
    await stt.close()
    decode_wall = time.perf_counter() - started
    stop.set()
    await tick
    await listener.task
    assert sum(e.kind == SttEventKind.FINAL for e in listener.events) >= len(SENTENCES)
    # Decoding took a while (seconds of CPU) and the ticker kept going throughout: worst
    # gap a few GIL switch intervals, nowhere near the decode time.
    assert decode_wall > 0.5
    assert len(gaps) > decode_wall / 0.05
    assert max(gaps) < 0.1, max(gaps)
    gap_ms = max(gaps) * 1000
    print(
        f"\ndecoded {stt.audio_seconds:.1f} s in {decode_wall:.2f} s; max loop gap {gap_ms:.1f} ms"
    )


async def test_missing_model_is_a_provider_error(tmp_path):
    from sipagent.providers.base import ProviderError

    stt = PocketsphinxSpeechToText(lm_path=tmp_path / "nope.lm")
    with pytest.raises(ProviderError, match="missing"):
        await stt.start()
    await stt.close()


async def test_long_turn_is_cut_into_finals(audio):
    stt = PocketsphinxSpeechToText(max_utterance_ms=1000)
    await stt.start()
    listener = Listener(stt)
    feed(stt, audio[SENTENCES[0][0]] + SILENCE)
    await stt.close()
    await listener.task
    final = [e for e in listener.events if e.kind == SttEventKind.FINAL]
    # ~3.3 s of speech in 1 s segments: the turn ends only with the last one.
    assert len(final) >= 3, final
    assert [e.speech_final for e in final] == [False] * (len(final) - 1) + [True]
    assert kinds(listener.events).count(SttEventKind.SPEECH_STARTED) == 1
    assert kinds(listener.events).count(SttEventKind.UTTERANCE_END) == 1


async def test_decoder_failure_is_an_error_event_and_close_still_returns(audio, monkeypatch):
    from sipagent.providers import offline_stt

    def broken(self, lin16: bytes) -> None:
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(offline_stt._Utterances, "process", broken)
    stt = PocketsphinxSpeechToText()
    await stt.start()
    listener = Listener(stt)
    feed(stt, audio[SENTENCES[0][0]])
    await stt.finalize()
    feed(stt, audio[SENTENCES[0][0]])  # ignored once failed
    await asyncio.wait_for(stt.close(), 2)
    await listener.task
    errors = [e for e in listener.events if e.kind == SttEventKind.ERROR]
    assert len(errors) == 1 and "decoder exploded" in errors[0].detail
    assert SttEventKind.FINAL not in kinds(listener.events)
    assert stt.queued_bytes == 0


async def test_concurrent_calls_in_real_time_keep_the_loop_responsive(audio):
    """Three calls' audio paced like RTP (20 ms frames every 20 ms), decoded side by side."""
    text = SENTENCES[0][0]
    stream = audio[text] + SILENCE
    stts = [PocketsphinxSpeechToText() for _ in range(3)]
    for stt in stts:
        await stt.start()
    listeners = [Listener(stt) for stt in stts]
    loop = asyncio.get_running_loop()
    gaps: list[float] = []
    stop = asyncio.Event()

    tick = asyncio.create_task(record_loop_gaps(gaps, stop))
    start = loop.time()
    for n, i in enumerate(range(0, len(stream), FRAME)):
        for stt in stts:
            stt.send_audio(stream[i : i + FRAME])
        await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - loop.time()))
    for stt in stts:
        await stt.close()
    stop.set()
    await tick
    for listener in listeners:
        await listener.task
        assert {"book", "cleaning", "tuesday"} <= set(words(finals(listener.events)))
    # A 5 ms ticker: expect gaps of a few ms over that, loosely bounded for a loaded machine.
    assert max(gaps) < 0.1, max(gaps)

"""Pure logic of the Deepgram provider (replay buffer, message -> event mapping) and the timing
contract of the fake Deepgram server that the integration tests and the benchmark rely on."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from deepgram.core.unchecked_base_model import construct_type

from sipagent.providers.base import SttEvent, SttEventKind
from sipagent.providers.deepgram_stt import (
    DeepgramSpeechToText,
    ReplayBuffer,
    events_from_message,
)
from tests.kit.fakes.deepgram_server import (
    FRAME_BYTES,
    ListenParams,
    Recogniser,
    TranscriptScript,
    parse_listen_params,
)
from tests.kit.peerlib.audio import pcm16_to_ulaw, tone_pcm16

# ---------------------------------------------------------------------------------------------
# ReplayBuffer


def test_replay_buffer_sends_in_order_and_keeps_unfinalized_audio() -> None:
    buf = ReplayBuffer(max_bytes=1000)
    buf.append(b"a" * 300)
    offset, chunk = buf.next_chunk(200)
    assert (offset, chunk) == (0, b"a" * 200)
    buf.mark_sent(200)
    buf.append(b"b" * 100)
    assert buf.next_chunk(1000) == (200, b"a" * 100 + b"b" * 100)
    buf.mark_sent(400)
    assert buf.next_chunk(1000) == (400, b"")

    buf.commit(250)  # Deepgram finalized the first 250 bytes
    assert (buf.base, buf.sent, buf.end) == (250, 400, 400)
    assert buf.rewind() == 150  # a new connection gets the rest again
    assert buf.next_chunk(1000) == (250, b"a" * 50 + b"b" * 100)


def test_replay_buffer_never_commits_unsent_audio() -> None:
    buf = ReplayBuffer(max_bytes=1000)
    buf.append(b"x" * 500)
    buf.mark_sent(100)
    buf.commit(400)  # a result can only cover audio the server has; clamp to what was sent
    assert (buf.base, buf.sent) == (100, 100)


def test_replay_buffer_stops_before_a_control_position() -> None:
    buf = ReplayBuffer(max_bytes=1000)
    buf.append(b"x" * 300)
    assert buf.next_chunk(1000, upto=120) == (0, b"x" * 120)
    buf.mark_sent(120)
    assert buf.next_chunk(1000, upto=120) == (120, b"")


def test_replay_buffer_is_bounded() -> None:
    buf = ReplayBuffer(max_bytes=100)
    buf.append(b"a" * 80)
    buf.mark_sent(80)
    buf.append(b"b" * 50)  # 30 bytes of sent audio fall out
    assert (buf.base, buf.end, buf.sent, buf.dropped_unsent) == (30, 130, 80, 0)
    buf.append(b"c" * 100)  # the socket is down: unsent audio falls out too, and is counted
    assert (buf.base, buf.end, buf.sent) == (130, 230, 130)
    assert buf.dropped_unsent == 50
    assert buf.next_chunk(1000) == (130, b"c" * 100)


# ---------------------------------------------------------------------------------------------
# message -> SttEvent


def _results(
    text: str,
    *,
    is_final: bool,
    speech_final: bool = False,
    from_finalize: bool = False,
    start: float = 1.0,
    duration: float = 2.5,
) -> dict[str, Any]:
    words = [
        {"word": w.lower().strip(".,"), "start": 1.0, "end": 1.2, "confidence": 0.9}
        for w in text.split()
    ]
    return {
        "type": "Results",
        "channel_index": [0, 1],
        "duration": duration,
        "start": start,
        "is_final": is_final,
        "speech_final": speech_final,
        "channel": {"alternatives": [{"transcript": text, "confidence": 0.9, "words": words}]},
        "metadata": {
            "request_id": "52cc0efe-fa77-4aa7-b79c-0dda09de2f14",
            "model_info": {"name": "general-nova-3", "version": "2025-01-01.0", "arch": "nova-3"},
            "model_uuid": "c0d1a568-ce81-4fea-97e7-bd45cb1fdf3c",
        },
        "from_finalize": from_finalize,
    }


def _parse(message: dict[str, Any]) -> Any:
    # Exactly what the SDK's socket iterator does with a text frame.
    from deepgram.listen.v1.socket_client import V1SocketClientResponse

    return construct_type(type_=V1SocketClientResponse, object_=message)


def _events(message: dict[str, Any]) -> tuple[list[SttEvent], float | None]:
    return events_from_message(_parse(message), 42.0)


def test_interim_result_is_a_partial() -> None:
    events, until = _events(_results("I'd like", is_final=False))
    assert events == [SttEvent(SttEventKind.PARTIAL, text="I'd like", received_at=42.0)]
    assert until is None  # interims finalize nothing


def test_empty_interim_is_dropped() -> None:
    assert _events(_results("", is_final=False)) == ([], None)


def test_final_carries_speech_final_and_the_finalized_audio_time() -> None:
    events, until = _events(_results("Book me in.", is_final=True, speech_final=True))
    assert events == [
        SttEvent(SttEventKind.FINAL, text="Book me in.", speech_final=True, received_at=42.0)
    ]
    assert until == pytest.approx(3.5)


def test_segment_final_is_final_without_speech_final() -> None:
    events, _ = _events(_results("on Tuesday", is_final=True))
    assert [(e.kind, e.text, e.speech_final) for e in events] == [
        (SttEventKind.FINAL, "on Tuesday", False)
    ]


def test_empty_final_only_reports_turn_ends_and_finalize_answers() -> None:
    assert _events(_results("", is_final=True, start=0.0, duration=3.0)) == ([], 3.0)
    (turn_end,), _ = _events(_results("", is_final=True, speech_final=True))
    assert turn_end.kind == SttEventKind.FINAL and turn_end.speech_final
    (flushed,), _ = _events(_results("", is_final=True, from_finalize=True))
    assert flushed.detail == "from_finalize" and not flushed.speech_final


def test_vad_and_utterance_end_messages() -> None:
    (started,), _ = _events({"type": "SpeechStarted", "channel": [0, 1], "timestamp": 9.54})
    (ended,), _ = _events({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 2.395})
    assert started == SttEvent(SttEventKind.SPEECH_STARTED, received_at=42.0)
    assert ended == SttEvent(SttEventKind.UTTERANCE_END, received_at=42.0)


def test_error_message_is_an_error_event_and_metadata_is_ignored() -> None:
    (error,), _ = _events({"type": "Error", "variant": "SchemaError", "description": "bad json"})
    assert error.kind == SttEventKind.ERROR and "bad json" in error.detail
    metadata = {
        "type": "Metadata",
        "transaction_key": "deprecated",
        "request_id": "8c8ebea9-dbec-45fa-a035-e4632cb05b5f",
        "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "created": "2024-08-29T22:37:55.202Z",
        "duration": 0.0,
        "channels": 0,
    }
    assert _events(metadata) == ([], None)


# ---------------------------------------------------------------------------------------------
# construction


def test_repr_and_urls_never_show_the_key() -> None:
    stt = DeepgramSpeechToText("dg-secret-123456", base_url="http://127.0.0.1:8123/")
    assert stt.ws_url == "ws://127.0.0.1:8123" and stt.base_url == "http://127.0.0.1:8123"
    assert stt.listen_url == "ws://127.0.0.1:8123/v1/listen"
    assert "dg-secret" not in repr(stt)
    cloud = DeepgramSpeechToText("k")
    assert cloud.listen_url == "wss://api.deepgram.com/v1/listen"


def test_importing_the_provider_is_clean_under_warnings_as_errors() -> None:
    # deepgram-sdk's async path imports websockets.legacy (DeprecationWarning on import); the
    # provider loads it with those warnings silenced, so a `-W error` run still works.
    code = "import sipagent.providers.deepgram_stt"
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------------------------------------
# the fake server's timing contract (what `final_latency` means)

PARAMS = ListenParams(
    model="nova-3",
    interim_results=True,
    vad_events=True,
    smart_format=True,
    endpointing_s=0.3,
    utterance_end_s=1.0,
)


def _recogniser(final_latency: float, script: TranscriptScript | None = None) -> Recogniser:
    return Recogniser(
        script or TranscriptScript(["I need to move my appointment."]),
        PARAMS,
        final_latency=final_latency,
        interim_interval=0.2,
        interim_latency=0.0,
        word_seconds=0.35,
        speech_threshold=200,
        onset_frames=2,
        request_id="req",
        model_uuid="uuid",
    )


def _call_audio() -> bytes:
    # 0.2 s silence, 1.6 s "speech" (a tone), 1.4 s silence: speech ends at audio time 1.8 s.
    tone = pcm16_to_ulaw(tone_pcm16(440.0, 1600))
    return b"\xff" * 1600 + tone + b"\xff" * 11200


def _feed_realtime(rec: Recogniser, audio: bytes, t0: float = 100.0) -> list[tuple[float, Any]]:
    out = []
    for k in range(len(audio) // FRAME_BYTES):
        frame = audio[k * FRAME_BYTES : (k + 1) * FRAME_BYTES]
        # frame k (audio 20k..20k+20 ms) arrives when it has been spoken: real time
        out += [(o.due, o.message) for o in rec.feed(frame, t0 + (k + 1) * 0.02)]
    return out


@pytest.mark.parametrize(
    ("final_latency", "expected_delay"),
    [
        (0.3, 0.3),  # = the endpointing window: final at endpoint detection
        (0.5, 0.5),  # 200 ms of "processing" after the window
        (0.1, 0.3),  # cannot beat the window: the silence has to be heard first
    ],
)
def test_final_latency_counts_from_the_last_voiced_frame(
    final_latency: float, expected_delay: float
) -> None:
    out = _feed_realtime(_recogniser(final_latency), _call_audio())
    (due, final) = next((d, m) for d, m in out if m.get("is_final"))
    speech_end_arrival = 100.0 + 1.8  # the last tone frame ends at audio 1.8 s
    assert due == pytest.approx(speech_end_arrival + expected_delay)
    assert final["speech_final"] and final["channel"]["alternatives"][0]["transcript"] == (
        "I need to move my appointment."
    )
    # A contiguous segment from the start of the stream to the endpoint.
    assert final["start"] == 0.0 and final["duration"] == pytest.approx(2.1)


def test_fake_emits_vad_interims_final_then_utterance_end_in_order() -> None:
    out = _feed_realtime(_recogniser(0.3), _call_audio())
    types = [m["type"] for _, m in out]
    assert types[0] == "SpeechStarted" and out[0][1]["timestamp"] == pytest.approx(0.2)
    assert types[-1] == "UtteranceEnd" and out[-1][1]["last_word_end"] == pytest.approx(1.8)
    interims = [m for _, m in out if m["type"] == "Results" and not m["is_final"]]
    counts = [len(m["channel"]["alternatives"][0]["transcript"].split()) for m in interims]
    assert len(interims) >= 7 and counts == sorted(counts) and counts[-1] == 5
    dues = [d for d, _ in out]
    assert dues == sorted(dues)  # messages leave in production order
    # UtteranceEnd: 1.0 s of audio after the last word, i.e. when audio 2.8 s arrives.
    assert out[-1][0] == pytest.approx(100.0 + 2.8)


def test_fake_timeline_ignores_chunking_and_uses_arrival_only_for_send_times() -> None:
    audio = _call_audio()
    burst = _recogniser(0.3).feed(audio, 100.0)  # the whole call in one message
    paced = _feed_realtime(_recogniser(0.3), audio)
    assert [o.message for o in burst] == [m for _, m in paced]
    final_due = next(o.due for o in burst if o.message.get("is_final"))
    assert final_due == pytest.approx(100.3)  # arrival of the last voiced frame + 0.3


def test_fake_checks_the_query_like_deepgram() -> None:
    query = {
        "encoding": "mulaw",
        "sample_rate": "8000",
        "interim_results": "true",
        "endpointing": "false",
        "vad_events": "false",
        "utterance_end_ms": "1000",
        "smart_format": "true",
    }
    params = parse_listen_params(query)
    assert params.endpointing_s is None and params.utterance_end_s == 1.0
    with pytest.raises(ValueError, match="encoding"):
        parse_listen_params({**query, "encoding": "linear16"})
    with pytest.raises(ValueError, match="missing"):
        parse_listen_params({k: v for k, v in query.items() if k != "vad_events"})

import struct

import pytest

from sipagent.media.dtmf import (
    DtmfDetector,
    TelephoneEvent,
    TelephoneEventParseError,
    parse_telephone_event,
)
from sipagent.media.rtp import RtpPacket


def event_payload(event: int, *, end: bool = False, volume: int = 10, duration: int = 0) -> bytes:
    return struct.pack("!BBH", event, (0x80 if end else 0) | volume, duration)


def key_press_packets(
    event: int, timestamp: int, first_sequence: int, *, ssrc: int = 5
) -> list[RtpPacket]:
    """What a typical sender emits: start (marker), two updates, then the end packet 3 times."""
    blocks = [
        event_payload(event, duration=160),
        event_payload(event, duration=320),
        event_payload(event, duration=480),
        event_payload(event, end=True, duration=640),
        event_payload(event, end=True, duration=640),
        event_payload(event, end=True, duration=640),
    ]
    return [
        RtpPacket(101, (first_sequence + i) % 65536, timestamp, ssrc, i == 0, block)
        for i, block in enumerate(blocks)
    ]


def test_parse_telephone_event_fields() -> None:
    parsed = parse_telephone_event(bytes([11, 0x80 | 0x40 | 7, 0x03, 0x20]))
    assert parsed == TelephoneEvent(event=11, end=True, volume=7, duration=800)
    assert parsed.digit == "#"


def test_parse_ignores_redundant_extra_blocks() -> None:
    payload = event_payload(3, duration=100) + event_payload(2, end=True, duration=900)
    assert parse_telephone_event(payload).event == 3


def test_parse_rejects_short_payload() -> None:
    with pytest.raises(TelephoneEventParseError):
        parse_telephone_event(b"\x01\x02\x03")
    assert issubclass(TelephoneEventParseError, ValueError)


@pytest.mark.parametrize(
    ("event", "digit"),
    [(0, "0"), (9, "9"), (10, "*"), (11, "#"), (12, "A"), (15, "D"), (16, None), (40, None)],
)
def test_event_digit_mapping(event: int, digit: str | None) -> None:
    assert TelephoneEvent(event, False, 0, 0).digit == digit


def test_each_key_press_is_reported_exactly_once() -> None:
    detector = DtmfDetector()
    packets = (
        key_press_packets(1, timestamp=1000, first_sequence=10)
        + key_press_packets(1, timestamp=5000, first_sequence=16)  # same key pressed again
        + key_press_packets(11, timestamp=9000, first_sequence=22)
    )
    reported = [digit for packet in packets if (digit := detector.push(packet)) is not None]
    assert reported == ["1", "1", "#"]
    assert detector.digits_detected == 3


def test_press_is_reported_even_if_only_end_packets_arrive() -> None:
    detector = DtmfDetector()
    packets = key_press_packets(7, timestamp=200, first_sequence=1)[3:]
    assert [detector.push(packet) for packet in packets] == ["7", None, None]


def test_flash_and_malformed_events_are_ignored() -> None:
    detector = DtmfDetector()
    assert detector.push(RtpPacket(101, 1, 0, 5, True, event_payload(16))) is None
    assert detector.push(RtpPacket(101, 2, 160, 5, True, b"\x01")) is None
    assert detector.malformed == 1
    assert detector.digits_detected == 0


def test_same_timestamp_from_another_ssrc_is_a_new_press() -> None:
    detector = DtmfDetector()
    assert detector.push(key_press_packets(4, 100, 1, ssrc=1)[0]) == "4"
    assert detector.push(key_press_packets(4, 100, 1, ssrc=2)[0]) == "4"

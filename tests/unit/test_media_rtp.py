import struct

import pytest

from sipagent.media.rtp import (
    FilterVerdict,
    InboundRtpFilter,
    RtpPacket,
    RtpPacketizer,
    RtpParseError,
    build_rtp,
    parse_rtp,
)


def packet(**overrides: object) -> RtpPacket:
    fields: dict[str, object] = {
        "payload_type": 0,
        "sequence": 1234,
        "timestamp": 0xDEADBEEF,
        "ssrc": 0x11223344,
        "marker": False,
        "payload": b"\x01\x02\x03",
    }
    fields.update(overrides)
    return RtpPacket(**fields)  # type: ignore[arg-type]


def header(
    *,
    version: int = 2,
    padding: bool = False,
    extension: bool = False,
    csrc_count: int = 0,
    marker: bool = False,
    payload_type: int = 0,
) -> bytes:
    first = version << 6 | padding << 5 | extension << 4 | csrc_count
    second = marker << 7 | payload_type
    return struct.pack("!BBHII", first, second, 7, 160, 0xCAFEBABE)


def reason_of(datagram: bytes) -> str:
    with pytest.raises(RtpParseError) as caught:
        parse_rtp(datagram)
    return caught.value.reason


def test_build_then_parse_round_trips() -> None:
    original = packet(marker=True, payload_type=8, sequence=65535, timestamp=0)
    assert parse_rtp(build_rtp(original)) == original


def test_build_produces_rfc3550_header() -> None:
    datagram = build_rtp(packet(marker=True, payload_type=8, sequence=0x0102, timestamp=3, ssrc=4))
    assert datagram[:12] == bytes([0x80, 0x88, 1, 2, 0, 0, 0, 3, 0, 0, 0, 4])
    assert datagram[12:] == b"\x01\x02\x03"


def test_build_rejects_out_of_range_fields() -> None:
    with pytest.raises(ValueError):
        build_rtp(packet(payload_type=128))
    with pytest.raises(ValueError):
        build_rtp(packet(sequence=65536))
    with pytest.raises(ValueError):
        build_rtp(packet(ssrc=-1))


def test_parse_skips_csrcs_and_extension_and_strips_padding() -> None:
    csrcs = struct.pack("!II", 1, 2)
    extension = struct.pack("!HH", 0xBEDE, 2) + b"\xaa" * 8
    padding = b"\x00\x00\x03"
    datagram = (
        header(padding=True, extension=True, csrc_count=2) + csrcs + extension + b"audio" + padding
    )
    parsed = parse_rtp(datagram)
    assert parsed.payload == b"audio"
    assert parsed.ssrc == 0xCAFEBABE
    assert parsed.sequence == 7
    assert parsed.timestamp == 160


def test_parse_accepts_empty_payload() -> None:
    assert parse_rtp(header()).payload == b""


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"", "too_short"),
        (header()[:11], "too_short"),
        (header(version=1) + b"x", "bad_version"),
        (header(version=0), "bad_version"),
        (header(csrc_count=3) + b"\x00" * 8, "truncated_csrc"),
        (header(extension=True) + b"\xbe\xde", "truncated_extension"),
        (
            header(extension=True) + struct.pack("!HH", 0xBEDE, 4) + b"\x00" * 12,
            "truncated_extension",
        ),
        (header(padding=True) + b"ab\x00", "bad_padding"),
        (header(padding=True) + b"ab\x04", "bad_padding"),
        (header(padding=True), "bad_padding"),
    ],
)
def test_parse_rejects_malformed(datagram: bytes, reason: str) -> None:
    assert reason_of(datagram) == reason


@pytest.mark.parametrize("packet_type", [200, 201, 202, 203, 204, 206])
def test_parse_rejects_rtcp(packet_type: int) -> None:
    datagram = bytes([0x80, packet_type]) + b"\x00\x06" + b"\x00" * 24
    assert reason_of(datagram) == "rtcp"


def test_parse_keeps_high_payload_types_without_marker() -> None:
    # PT 72 without the marker bit is byte 72, not an RTCP packet type.
    assert parse_rtp(header(payload_type=72)).payload_type == 72
    assert parse_rtp(header(payload_type=101, marker=True)).payload_type == 101


def test_parse_error_is_value_error() -> None:
    assert issubclass(RtpParseError, ValueError)


def test_packetizer_numbers_packets_and_wraps() -> None:
    packetizer = RtpPacketizer(0, ssrc=42, initial_sequence=65535, initial_timestamp=2**32 - 160)
    first = parse_rtp(packetizer.packetize(b"\xff" * 160, marker=True))
    second = parse_rtp(packetizer.packetize(b"\x7f" * 160))
    assert (first.sequence, first.timestamp, first.marker, first.ssrc) == (
        65535,
        2**32 - 160,
        True,
        42,
    )
    assert (second.sequence, second.timestamp, second.marker) == (0, 0, False)
    assert second.payload == b"\x7f" * 160
    assert packetizer.packets_sent == 2
    assert packetizer.octets_sent == 320
    assert packetizer.next_sequence == 1
    assert packetizer.next_timestamp == 160


def test_packetizer_samples_override_and_skip() -> None:
    packetizer = RtpPacketizer(8, ssrc=1, initial_sequence=10, initial_timestamp=1000)
    packetizer.packetize(b"x" * 10, samples=160)
    assert packetizer.next_timestamp == 1160
    packetizer.skip(480)
    assert packetizer.next_timestamp == 1640
    assert packetizer.next_sequence == 11  # skipping sends nothing
    assert packetizer.packets_sent == 1
    with pytest.raises(ValueError):
        packetizer.skip(-1)


def test_packetizer_random_defaults_differ() -> None:
    identities = {
        (p.ssrc, p.next_sequence, p.next_timestamp) for p in (RtpPacketizer(0) for _ in range(8))
    }
    assert len(identities) == 8


def test_filter_locks_on_first_allowed_packet() -> None:
    rtp_filter = InboundRtpFilter({0, 101})
    assert rtp_filter.accept(packet(payload_type=9, ssrc=5)) is FilterVerdict.DROP_PAYLOAD_TYPE
    assert rtp_filter.locked_ssrc is None
    assert rtp_filter.accept(packet(ssrc=1)) is FilterVerdict.ACCEPT_NEW_STREAM
    assert rtp_filter.accept(packet(ssrc=1)) is FilterVerdict.ACCEPT
    assert rtp_filter.accept(packet(ssrc=1, payload_type=101)) is FilterVerdict.ACCEPT
    assert rtp_filter.locked_ssrc == 1


def test_filter_drops_foreign_ssrc_interleaved_with_locked_stream() -> None:
    rtp_filter = InboundRtpFilter({0}, relock_after=3)
    rtp_filter.accept(packet(ssrc=1))
    for _ in range(10):
        assert rtp_filter.accept(packet(ssrc=2)) is FilterVerdict.DROP_FOREIGN_SSRC
        assert rtp_filter.accept(packet(ssrc=2)) is FilterVerdict.DROP_FOREIGN_SSRC
        assert rtp_filter.accept(packet(ssrc=1)) is FilterVerdict.ACCEPT
    assert rtp_filter.locked_ssrc == 1
    assert rtp_filter.dropped_foreign_ssrc == 20
    assert rtp_filter.relocks == 0


def test_filter_relocks_after_consecutive_packets_of_new_ssrc() -> None:
    rtp_filter = InboundRtpFilter({0}, relock_after=3)
    rtp_filter.accept(packet(ssrc=1))
    assert not rtp_filter.accept(packet(ssrc=2))
    assert not rtp_filter.accept(packet(ssrc=3))  # a different candidate restarts the count
    assert not rtp_filter.accept(packet(ssrc=2))
    assert not rtp_filter.accept(packet(ssrc=2))
    assert rtp_filter.accept(packet(ssrc=2)) is FilterVerdict.ACCEPT_NEW_STREAM
    assert rtp_filter.locked_ssrc == 2
    assert rtp_filter.relocks == 1
    assert rtp_filter.accept(packet(ssrc=1)) is FilterVerdict.DROP_FOREIGN_SSRC
    assert rtp_filter.dropped == {"drop_payload_type": 0, "drop_foreign_ssrc": 5}


def test_filter_reset_locks_on_the_next_packet() -> None:
    # Media moved to another source (RtpSourceLatch): its stream is taken at once.
    rtp_filter = InboundRtpFilter({0}, relock_after=3)
    rtp_filter.accept(packet(ssrc=1))
    rtp_filter.accept(packet(ssrc=2))
    rtp_filter.reset()
    assert rtp_filter.accept(packet(ssrc=3)) is FilterVerdict.ACCEPT_NEW_STREAM
    assert rtp_filter.accept(packet(ssrc=2)) is FilterVerdict.DROP_FOREIGN_SSRC
    assert rtp_filter.accept(packet(ssrc=2)) is FilterVerdict.DROP_FOREIGN_SSRC  # count restarted


def test_filter_verdict_truthiness() -> None:
    assert FilterVerdict.ACCEPT and FilterVerdict.ACCEPT_NEW_STREAM
    assert not FilterVerdict.DROP_PAYLOAD_TYPE
    assert not FilterVerdict.DROP_FOREIGN_SSRC

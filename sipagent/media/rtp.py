"""RTP (RFC 3550) packet parsing/building, sending-side packetizer and inbound stream filter.

Everything here is sans-IO: bytes in, bytes/objects out, no sockets and no clocks.
"""

from __future__ import annotations

import enum
import secrets
import struct
from dataclasses import dataclass
from typing import Final

RTP_VERSION: Final = 2
RTP_HEADER_SIZE: Final = 12
SEQUENCE_MODULO: Final = 1 << 16
TIMESTAMP_MODULO: Final = 1 << 32

# RFC 5761 section 4: RTCP packet types 192-223 occupy the second header byte values
# that would read as marker=1 + payload type 64-95; such datagrams are RTCP, not RTP.
_RTCP_SECOND_BYTE_RANGE: Final = range(192, 224)

_HEADER = struct.Struct("!BBHII")


class RtpParseError(ValueError):
    """A datagram is not a valid RTP packet; `reason` is a short stable token for counters."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    marker: bool
    payload: bytes


def parse_rtp(datagram: bytes) -> RtpPacket:
    """Parse and validate one RTP datagram; raise RtpParseError on anything malformed.

    CSRCs and header extensions are validated and skipped; padding is stripped.
    """
    size = len(datagram)
    if size < RTP_HEADER_SIZE:
        raise RtpParseError("too_short", f"{size} bytes")
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(datagram)
    if first >> 6 != RTP_VERSION:
        raise RtpParseError("bad_version", f"version {first >> 6}")
    if second in _RTCP_SECOND_BYTE_RANGE:
        raise RtpParseError("rtcp", f"packet type {second}")

    header_end = RTP_HEADER_SIZE + 4 * (first & 0x0F)
    if header_end > size:
        raise RtpParseError("truncated_csrc", f"{first & 0x0F} CSRCs in {size} bytes")
    if first & 0x10:
        if header_end + 4 > size:
            raise RtpParseError("truncated_extension", "no room for extension header")
        (extension_words,) = struct.unpack_from("!H", datagram, header_end + 2)
        header_end += 4 + 4 * extension_words
        if header_end > size:
            raise RtpParseError("truncated_extension", f"{extension_words} words in {size} bytes")

    payload_end = size
    if first & 0x20:
        pad_length = datagram[-1]
        # The pad count includes itself, so it is at least 1 and must fit after the header.
        if pad_length == 0 or pad_length > size - header_end:
            raise RtpParseError("bad_padding", f"pad length {pad_length}")
        payload_end -= pad_length

    return RtpPacket(
        payload_type=second & 0x7F,
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        marker=bool(second & 0x80),
        payload=bytes(datagram[header_end:payload_end]),
    )


def build_rtp(packet: RtpPacket) -> bytes:
    """Serialize a packet with a plain 12-byte header (no CSRC, extension or padding)."""
    if not 0 <= packet.payload_type <= 0x7F:
        raise ValueError(f"payload type out of range: {packet.payload_type}")
    if not 0 <= packet.sequence < SEQUENCE_MODULO:
        raise ValueError(f"sequence number out of range: {packet.sequence}")
    if not (0 <= packet.timestamp < TIMESTAMP_MODULO and 0 <= packet.ssrc < TIMESTAMP_MODULO):
        raise ValueError("timestamp and SSRC must be 32-bit unsigned")
    header = _HEADER.pack(
        RTP_VERSION << 6,
        (0x80 if packet.marker else 0) | packet.payload_type,
        packet.sequence,
        packet.timestamp,
        packet.ssrc,
    )
    return header + packet.payload


class RtpPacketizer:
    """Numbers outgoing packets of one RTP stream.

    SSRC, first sequence number and first timestamp are random by default, as
    RFC 3550 asks, so that a restarted stream is not mistaken for the old one.
    """

    def __init__(
        self,
        payload_type: int,
        ssrc: int | None = None,
        initial_sequence: int | None = None,
        initial_timestamp: int | None = None,
    ) -> None:
        if not 0 <= payload_type <= 0x7F:
            raise ValueError(f"payload type out of range: {payload_type}")
        self.payload_type = payload_type
        self._ssrc = secrets.randbits(32) if ssrc is None else ssrc % TIMESTAMP_MODULO
        self._sequence = (
            secrets.randbits(16) if initial_sequence is None else initial_sequence % SEQUENCE_MODULO
        )
        self._timestamp = (
            secrets.randbits(32)
            if initial_timestamp is None
            else initial_timestamp % TIMESTAMP_MODULO
        )
        self.packets_sent = 0
        self.octets_sent = 0  # payload octets, as RTCP sender reports count them

    @property
    def ssrc(self) -> int:
        return self._ssrc

    @property
    def next_sequence(self) -> int:
        return self._sequence

    @property
    def next_timestamp(self) -> int:
        return self._timestamp

    def packetize(
        self,
        payload: bytes,
        marker: bool = False,
        samples: int | None = None,
        payload_type: int | None = None,
    ) -> bytes:
        """Build the next packet; the timestamp then advances by `samples`.

        `samples` defaults to len(payload), which is right for G.711 (one byte per sample).
        `payload_type` overrides the stream's (telephone-event packets share its sequence).
        """
        datagram = _HEADER.pack(
            RTP_VERSION << 6,
            (0x80 if marker else 0) | (self.payload_type if payload_type is None else payload_type),
            self._sequence,
            self._timestamp,
            self._ssrc,
        ) + bytes(payload)
        self._sequence = (self._sequence + 1) % SEQUENCE_MODULO
        self.skip(len(payload) if samples is None else samples)
        self.packets_sent += 1
        self.octets_sent += len(payload)
        return datagram

    def skip(self, samples: int) -> None:
        """Advance the timestamp for media time that passed without a packet being sent."""
        if samples < 0:
            raise ValueError("cannot skip a negative number of samples")
        self._timestamp = (self._timestamp + samples) % TIMESTAMP_MODULO


class FilterVerdict(enum.Enum):
    ACCEPT = "accept"
    ACCEPT_NEW_STREAM = "accept_new_stream"  # first packet, or a re-lock: reset stream state
    DROP_PAYLOAD_TYPE = "drop_payload_type"
    DROP_FOREIGN_SSRC = "drop_foreign_ssrc"

    @property
    def accepted(self) -> bool:
        return self in (FilterVerdict.ACCEPT, FilterVerdict.ACCEPT_NEW_STREAM)

    def __bool__(self) -> bool:
        # Lets `if rtp_filter.accept(packet):` read naturally.
        return self.accepted


class InboundRtpFilter:
    """Keeps one inbound stream: locks on the first SSRC with an allowed payload type.

    Packets of another SSRC are dropped, unless that SSRC sends `relock_after`
    consecutive packets: then the sender really switched streams (re-INVITE,
    B2BUA transfer, restarted phone) and the filter re-locks onto it. The first
    packet of a locked stream is reported as ACCEPT_NEW_STREAM so the caller can
    reset per-stream state (jitter buffer, address latching).
    """

    def __init__(self, allowed_payload_types: set[int], relock_after: int = 3) -> None:
        if relock_after < 1:
            raise ValueError("relock_after must be at least 1")
        self.allowed_payload_types = frozenset(allowed_payload_types)
        self.relock_after = relock_after
        self.locked_ssrc: int | None = None
        self.relocks = 0
        self.dropped_payload_type = 0
        self.dropped_foreign_ssrc = 0
        self._candidate_ssrc: int | None = None
        self._candidate_count = 0

    def reset(self) -> None:
        """Forget the locked stream (media moved to another source): lock on the next packet."""
        self.locked_ssrc = None
        self._candidate_ssrc = None
        self._candidate_count = 0

    def accept(self, packet: RtpPacket) -> FilterVerdict:
        if packet.payload_type not in self.allowed_payload_types:
            self.dropped_payload_type += 1
            return FilterVerdict.DROP_PAYLOAD_TYPE
        if self.locked_ssrc is None:
            self.locked_ssrc = packet.ssrc
            return FilterVerdict.ACCEPT_NEW_STREAM
        if packet.ssrc == self.locked_ssrc:
            self._candidate_ssrc = None
            self._candidate_count = 0
            return FilterVerdict.ACCEPT
        if packet.ssrc == self._candidate_ssrc:
            self._candidate_count += 1
        else:
            self._candidate_ssrc = packet.ssrc
            self._candidate_count = 1
        if self._candidate_count >= self.relock_after:
            self.locked_ssrc = packet.ssrc
            self._candidate_ssrc = None
            self._candidate_count = 0
            self.relocks += 1
            return FilterVerdict.ACCEPT_NEW_STREAM
        self.dropped_foreign_ssrc += 1
        return FilterVerdict.DROP_FOREIGN_SSRC

    @property
    def dropped(self) -> dict[str, int]:
        return {
            FilterVerdict.DROP_PAYLOAD_TYPE.value: self.dropped_payload_type,
            FilterVerdict.DROP_FOREIGN_SSRC.value: self.dropped_foreign_ssrc,
        }

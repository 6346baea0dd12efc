"""RFC 4733 (formerly RFC 2833) telephone-event parsing and DTMF key-press detection."""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Final

from sipagent.media.rtp import RtpPacket

_EVENT = struct.Struct("!BBH")
EVENT_PAYLOAD_SIZE: Final = 4
DTMF_DIGITS: Final = "0123456789*#ABCD"  # RFC 4733 events 0-15
EVENT_FLASH: Final = 16
_REMEMBERED_PRESSES: Final = 32


class TelephoneEventParseError(ValueError):
    """The payload is not a telephone-event block."""


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    event: int
    end: bool
    volume: int  # dBm0 below 0, 0-63
    duration: int  # timestamp units since the event's RTP timestamp

    @property
    def digit(self) -> str | None:
        """The DTMF character, or None for non-DTMF events (flash, tones)."""
        return DTMF_DIGITS[self.event] if self.event < len(DTMF_DIGITS) else None


def parse_telephone_event(payload: bytes) -> TelephoneEvent:
    """Parse the first event block of a telephone-event payload.

    Further blocks (RFC 4733 section 2.5.1.5 redundancy) repeat earlier events and
    are ignored: the DTMF detector deduplicates by timestamp anyway.
    """
    if len(payload) < EVENT_PAYLOAD_SIZE:
        raise TelephoneEventParseError(f"telephone-event payload of {len(payload)} bytes")
    event, flags, duration = _EVENT.unpack_from(payload)
    return TelephoneEvent(
        event=event, end=bool(flags & 0x80), volume=flags & 0x3F, duration=duration
    )


class DtmfDetector:
    """Turns a telephone-event packet stream into key presses, one report per press.

    Senders repeat the start packet and send the end packet three times, all with
    the RTP timestamp of the event's start; so a press is identified by
    (SSRC, timestamp, event code) and reported on the first packet seen for it,
    which is the earliest moment and survives loss of any particular packet.
    Events that are not DTMF digits (e.g. 16, hook flash) are ignored.
    """

    def __init__(self) -> None:
        self._seen: deque[tuple[int, int, int]] = deque(maxlen=_REMEMBERED_PRESSES)
        self.digits_detected = 0
        self.malformed = 0

    def push(self, packet: RtpPacket) -> str | None:
        try:
            event = parse_telephone_event(packet.payload)
        except TelephoneEventParseError:
            self.malformed += 1
            return None
        digit = event.digit
        if digit is None:
            return None
        press = (packet.ssrc, packet.timestamp, event.event)
        if press in self._seen:
            return None
        self._seen.append(press)
        self.digits_detected += 1
        return digit

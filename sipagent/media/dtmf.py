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


class DtmfSender:
    """Key presses as RFC 4733 events, one packet per 20 ms frame slot: a start packet with
    the marker, packets of growing duration, then the end packet three times. Pure: the media
    tick asks for the next packet while digits are pending."""

    def __init__(self, tone_ms: int = 100, gap_ms: int = 60, volume: int = 10) -> None:
        self.tone_frames = max(1, tone_ms // 20)
        self.gap_frames = max(1, gap_ms // 20)
        self.volume = volume
        self._digits: deque[str] = deque()
        self._step = 0  # frame slot within the current digit (tone, 3 end packets, gap)

    def press(self, digits: str) -> None:
        for digit in digits.upper():
            if digit not in DTMF_DIGITS:
                raise ValueError(f"not a DTMF key: {digit!r}")
            self._digits.append(digit)

    @property
    def active(self) -> bool:
        return bool(self._digits)

    def next_packet(self) -> tuple[bytes, bool, bool] | None:
        """(payload, marker, event_start) for this frame slot, or None for a silent gap slot.
        The RTP timestamp stays at the event start for all its packets (RFC 4733 2.3.1)."""
        if not self._digits:
            return None
        step = self._step
        self._step += 1
        event = DTMF_DIGITS.index(self._digits[0])
        tone_samples = self.tone_frames * 160
        if step < self.tone_frames:
            payload = struct.pack("!BBH", event, self.volume, (step + 1) * 160)
            return payload, step == 0, step == 0
        if step < self.tone_frames + 3:
            return struct.pack("!BBH", event, 0x80 | self.volume, tone_samples), False, False
        if step >= self.tone_frames + 3 + self.gap_frames - 1:
            self._digits.popleft()
            self._step = 0
        return None

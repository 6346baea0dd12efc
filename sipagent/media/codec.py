"""G.711 payload types and transcoding.

Internally the media layer speaks mu-law (PCMU) only; A-law (PCMA) is converted at
the wire boundary. Transcoding always goes through 16-bit linear PCM: 8-bit linear
would throw away most of G.711's dynamic range.
"""

from __future__ import annotations

import warnings
from typing import Final

with warnings.catch_warnings():
    # Python 3.11/3.12 warn that audioop is deprecated; on 3.13+ the audioop-lts
    # package provides the same module without the warning.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

PCMU: Final = 0
PCMA: Final = 8
SUPPORTED_PAYLOAD_TYPES: Final = frozenset({PCMU, PCMA})

CLOCK_RATE: Final = 8000
FRAME_SAMPLES: Final = 160  # 20 ms at 8 kHz
FRAME_BYTES: Final = FRAME_SAMPLES  # G.711: one byte per sample
MULAW_SILENCE: Final = 0xFF
ALAW_SILENCE: Final = 0xD5

_LINEAR_WIDTH: Final = 2  # 16-bit linear intermediate


class UnsupportedPayloadTypeError(ValueError):
    """The payload type is not one of the G.711 codecs this module handles."""

    def __init__(self, payload_type: int) -> None:
        super().__init__(f"unsupported audio payload type {payload_type} (only PCMU=0, PCMA=8)")
        self.payload_type = payload_type


def _check(payload_type: int) -> None:
    if payload_type not in SUPPORTED_PAYLOAD_TYPES:
        raise UnsupportedPayloadTypeError(payload_type)


def silence_byte(payload_type: int) -> int:
    """The byte that encodes digital silence (linear 0) for this payload type."""
    _check(payload_type)
    return MULAW_SILENCE if payload_type == PCMU else ALAW_SILENCE


def silence_frame(payload_type: int = PCMU, samples: int = FRAME_SAMPLES) -> bytes:
    """A frame of digital silence in the given payload type."""
    return bytes([silence_byte(payload_type)]) * samples


def to_wire(mulaw_frame: bytes, payload_type: int) -> bytes:
    """Encode internal mu-law audio for the negotiated payload type."""
    _check(payload_type)
    if payload_type == PCMU:
        return mulaw_frame
    return audioop.lin2alaw(audioop.ulaw2lin(mulaw_frame, _LINEAR_WIDTH), _LINEAR_WIDTH)


def from_wire(payload: bytes, payload_type: int) -> bytes:
    """Decode a received payload of the negotiated payload type to mu-law."""
    _check(payload_type)
    if payload_type == PCMU:
        return payload
    return audioop.lin2ulaw(audioop.alaw2lin(payload, _LINEAR_WIDTH), _LINEAR_WIDTH)


def attenuate_mulaw(mulaw: bytes, factor: float) -> bytes:
    """Scale mu-law audio by `factor` (0..1), in 16-bit linear."""
    linear = audioop.ulaw2lin(mulaw, _LINEAR_WIDTH)
    return audioop.lin2ulaw(audioop.mul(linear, _LINEAR_WIDTH, factor), _LINEAR_WIDTH)

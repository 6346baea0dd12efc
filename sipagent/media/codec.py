"""G.711 payload types and transcoding.

Internally the media layer speaks mu-law (PCMU) only; A-law (PCMA) is converted at
the wire boundary. Transcoding always goes through 16-bit linear PCM: 8-bit linear would
throw away most of G.711's dynamic range. A codec is known by its name (G711Codec): the
payload type number is only what goes in the RTP header, and may be a dynamic one.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
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


class UnsupportedCodecError(ValueError):
    """The codec name is not one of the G.711 codecs this module handles."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unsupported audio codec {name!r} (only PCMU, PCMA)")
        self.name = name


@dataclass(frozen=True, slots=True)
class G711Codec:
    """One G.711 variant, known by its name: a dynamic payload type (an SDP
    `a=rtpmap:96 PCMU/8000`) carries the same audio as the static one."""

    name: str
    static_payload_type: int
    silence_byte: int  # the byte that encodes digital silence (linear 0)

    @property
    def transcodes(self) -> bool:
        """False for PCMU: the internal format goes on the wire as it is."""
        return self.name != "PCMU"

    def silence_frame(self, samples: int = FRAME_SAMPLES) -> bytes:
        return bytes([self.silence_byte]) * samples

    def to_wire(self, mulaw_frame: bytes) -> bytes:
        """Encode internal mu-law audio for this codec."""
        if not self.transcodes:
            return mulaw_frame
        return audioop.lin2alaw(audioop.ulaw2lin(mulaw_frame, _LINEAR_WIDTH), _LINEAR_WIDTH)

    def from_wire(self, payload: bytes) -> bytes:
        """Decode a received payload of this codec to mu-law."""
        if not self.transcodes:
            return payload
        return audioop.lin2ulaw(audioop.alaw2lin(payload, _LINEAR_WIDTH), _LINEAR_WIDTH)


PCMU_CODEC: Final = G711Codec("PCMU", PCMU, MULAW_SILENCE)
PCMA_CODEC: Final = G711Codec("PCMA", PCMA, ALAW_SILENCE)
_BY_NAME: Final = {codec.name: codec for codec in (PCMU_CODEC, PCMA_CODEC)}
_BY_STATIC_PAYLOAD_TYPE: Final = {codec.static_payload_type: codec for codec in _BY_NAME.values()}


def codec_named(name: str) -> G711Codec:
    """The codec an SDP rtpmap encoding name denotes (case-insensitive, RFC 4855 3)."""
    codec = _BY_NAME.get(name.upper())
    if codec is None:
        raise UnsupportedCodecError(name)
    return codec


def static_codec(payload_type: int) -> G711Codec:
    """The codec of a static payload type (RFC 3551: 0 = PCMU, 8 = PCMA)."""
    codec = _BY_STATIC_PAYLOAD_TYPE.get(payload_type)
    if codec is None:
        raise UnsupportedPayloadTypeError(payload_type)
    return codec


def silence_byte(payload_type: int) -> int:
    """The byte that encodes digital silence (linear 0) for this static payload type."""
    return static_codec(payload_type).silence_byte


def silence_frame(payload_type: int = PCMU, samples: int = FRAME_SAMPLES) -> bytes:
    """A frame of digital silence in the given static payload type."""
    return static_codec(payload_type).silence_frame(samples)


def to_wire(mulaw_frame: bytes, payload_type: int) -> bytes:
    """Encode internal mu-law audio for a static payload type."""
    return static_codec(payload_type).to_wire(mulaw_frame)


def from_wire(payload: bytes, payload_type: int) -> bytes:
    """Decode a received payload of a static payload type to mu-law."""
    return static_codec(payload_type).from_wire(payload)


def attenuate_mulaw(mulaw: bytes, factor: float) -> bytes:
    """Scale mu-law audio by `factor` (0..1), in 16-bit linear."""
    linear = audioop.ulaw2lin(mulaw, _LINEAR_WIDTH)
    return audioop.lin2ulaw(audioop.mul(linear, _LINEAR_WIDTH, factor), _LINEAR_WIDTH)

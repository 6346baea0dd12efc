import warnings

import pytest

from sipagent.media import codec

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop


def test_payload_type_numbers() -> None:
    assert (codec.PCMU, codec.PCMA) == (0, 8)


def test_silence_bytes() -> None:
    assert codec.silence_byte(codec.PCMU) == 0xFF
    assert codec.silence_byte(codec.PCMA) == 0xD5
    assert codec.silence_frame(codec.PCMA) == b"\xd5" * 160
    assert codec.silence_frame() == b"\xff" * 160


def test_pcmu_passes_through_unchanged() -> None:
    frame = bytes(range(160))
    assert codec.to_wire(frame, codec.PCMU) is frame
    assert codec.from_wire(frame, codec.PCMU) is frame


def test_silence_transcodes_to_silence() -> None:
    assert codec.to_wire(b"\xff" * 160, codec.PCMA) == b"\xd5" * 160
    # A-law has no exact zero: its silence code is +8, the quietest non-zero mu-law step.
    decoded = audioop.ulaw2lin(codec.from_wire(b"\xd5" * 160, codec.PCMA), 2)
    assert audioop.max(decoded, 2) <= 8


def test_pcma_uses_16_bit_linear_and_keeps_levels() -> None:
    mulaw = bytes(range(256))
    alaw = codec.to_wire(mulaw, codec.PCMA)
    assert alaw == audioop.lin2alaw(audioop.ulaw2lin(mulaw, 2), 2)
    # 8-bit linear would collapse quiet samples to zero; 16-bit keeps them within a step.
    original = audioop.ulaw2lin(mulaw, 2)
    decoded = audioop.alaw2lin(alaw, 2)
    for before, after in zip(
        memoryview(original).cast("h"), memoryview(decoded).cast("h"), strict=True
    ):
        assert abs(before - after) <= max(64, abs(before) // 8)


def test_round_trip_through_pcma_is_stable() -> None:
    mulaw = bytes(range(256))
    once = codec.from_wire(codec.to_wire(mulaw, codec.PCMA), codec.PCMA)
    twice = codec.from_wire(codec.to_wire(once, codec.PCMA), codec.PCMA)
    assert once == twice
    assert len(once) == 256


def test_unsupported_payload_type() -> None:
    with pytest.raises(codec.UnsupportedPayloadTypeError):
        codec.to_wire(b"\x00", 18)
    with pytest.raises(ValueError):
        codec.silence_byte(9)


def test_attenuate_halves_amplitude() -> None:
    loud = audioop.lin2ulaw(b"\x00\x40" * 160, 2)  # 16384 little-endian
    quiet = codec.attenuate_mulaw(loud, 0.5)
    assert len(quiet) == 160
    assert (
        audioop.max(audioop.ulaw2lin(quiet, 2), 2) < audioop.max(audioop.ulaw2lin(loud, 2), 2) * 0.6
    )


def test_codecs_are_known_by_name_whatever_the_payload_type() -> None:
    # An SDP may map any dynamic payload type to either (a=rtpmap:96 PCMU/8000).
    assert codec.codec_named("PCMU") is codec.static_codec(codec.PCMU)
    assert codec.codec_named("pcma") is codec.static_codec(codec.PCMA)
    mulaw = bytes(range(256))
    pcma = codec.codec_named("PCMA")
    assert pcma.to_wire(mulaw) == codec.to_wire(mulaw, codec.PCMA)
    assert pcma.from_wire(pcma.to_wire(mulaw)) == codec.from_wire(pcma.to_wire(mulaw), codec.PCMA)
    assert pcma.silence_frame() == b"\xd5" * 160
    assert codec.codec_named("PCMU").to_wire(mulaw) is mulaw


@pytest.mark.parametrize("name", ["G729", "", "PCMU/8000", "L16"])
def test_unsupported_codec_name(name: str) -> None:
    with pytest.raises(codec.UnsupportedCodecError):
        codec.codec_named(name)

"""Deterministic test audio: speech (espeak-ng + sox), tone sequences, a pseudo-random mu-law
pattern for frame-for-frame comparison, and WAV <-> raw mu-law helpers (pure-Python G.711).

Everything is cached under a directory by a hash of what produced it, written atomically.
"""

from __future__ import annotations

import array
import hashlib
import math
import os
import subprocess
import sys
import tempfile
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .common import which

RATE = 8000
FRAME_SAMPLES = 160  # 20 ms at 8 kHz
FRAME_BYTES = 160  # of mu-law

# ---------------------------------------------------------------------------------------------
# G.711 mu-law (same results as audioop.lin2ulaw / ulaw2lin)

_BIAS = 0x84
_SEG_END = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)


def _encode_sample(sample: int) -> int:
    # CPython audioop's st_14linear2ulaw on the top 14 bits (arithmetic shift, as audioop does)
    value = sample >> 2
    mask = 0xFF
    if value < 0:
        value, mask = -value, 0x7F
    value = min(value, 8159) + (_BIAS >> 2)
    seg = next((i for i, end in enumerate(_SEG_END) if value <= end), 8)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((value >> (seg + 1)) & 0x0F)) ^ mask


def _decode_byte(byte: int) -> int:
    u = ~byte & 0xFF
    exponent = (u >> 4) & 0x07
    sample = ((((u & 0x0F) << 3) + _BIAS) << exponent) - _BIAS
    return -sample if u & 0x80 else sample


_ENCODE = bytes(_encode_sample(s - 65536 if s >= 32768 else s) for s in range(65536))
_DECODE = array.array("h", (_decode_byte(b) for b in range(256)))


def pcm16_to_ulaw(pcm: bytes) -> bytes:
    """Signed 16-bit native-endian (little on x86) PCM -> mu-law bytes."""
    samples = array.array("h")
    samples.frombytes(pcm[: len(pcm) // 2 * 2])
    if sys.byteorder == "big":
        samples.byteswap()
    return bytes(_ENCODE[s & 0xFFFF] for s in samples)


def ulaw_to_pcm16(ulaw: bytes) -> bytes:
    """mu-law bytes -> signed 16-bit little-endian PCM."""
    samples = array.array("h", (_DECODE[b] for b in ulaw))
    if sys.byteorder == "big":
        samples.byteswap()
    return samples.tobytes()


# ---------------------------------------------------------------------------------------------
# WAV


@dataclass(frozen=True)
class WavInfo:
    rate: int
    channels: int
    sample_width: int
    frames: int

    @property
    def seconds(self) -> float:
        return self.frames / self.rate if self.rate else 0.0


def wav_info(path: Path | str) -> WavInfo:
    with wave.open(str(path), "rb") as w:
        return WavInfo(w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes())


def read_wav_pcm16(path: Path | str) -> bytes:
    """The PCM of an 8 kHz mono S16 WAV (anything else is an error: convert it with sox)."""
    with wave.open(str(path), "rb") as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (RATE, 1, 2):
            raise ValueError(
                f"{path}: want 8000 Hz mono 16-bit, got {w.getframerate()} Hz "
                f"{w.getnchannels()} ch {8 * w.getsampwidth()}-bit"
            )
        return w.readframes(w.getnframes())


def write_wav_pcm16(path: Path | str, pcm: bytes, rate: int = RATE) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return path


def wav_to_ulaw(wav: Path | str, out: Path | str) -> Path:
    """8 kHz mono S16 WAV -> raw mu-law file (no header), like ``sox in.wav -t ul out.ulaw``."""
    out = Path(out)
    _atomic_write(out, lambda tmp: tmp.write_bytes(pcm16_to_ulaw(read_wav_pcm16(wav))))
    return out


def ulaw_to_wav(ulaw: Path | str, out: Path | str) -> Path:
    """Raw mu-law file -> 8 kHz mono S16 WAV."""
    out = Path(out)
    pcm = ulaw_to_pcm16(Path(ulaw).read_bytes())
    _atomic_write(out, lambda tmp: write_wav_pcm16(tmp, pcm))
    return out


def wav_ulaw_bytes(wav: Path | str) -> bytes:
    """The mu-law encoding of a WAV's samples (e.g. what baresip recorded) for comparison."""
    return pcm16_to_ulaw(read_wav_pcm16(wav))


def rms(pcm: bytes) -> float:
    samples = array.array("h")
    samples.frombytes(pcm[: len(pcm) // 2 * 2])
    if not samples:
        return 0.0
    return math.sqrt(sum(s * s for s in samples) / len(samples))


# ---------------------------------------------------------------------------------------------
# generators


def pattern_ulaw_bytes(n_bytes: int, seed: str = "sipagent") -> bytes:
    """Deterministic pseudo-random mu-law bytes, never 0x7F/0xFF (the two zero codes), so the
    pattern survives a mu-law -> PCM -> mu-law round trip exactly and is never 'silence'."""
    out = bytearray()
    counter = 0
    while len(out) < n_bytes:
        block = hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        out.extend(b for b in block if b not in (0x7F, 0xFF))
        counter += 1
    return bytes(out[:n_bytes])


def tone_pcm16(freq: float, ms: int, *, amplitude: float = 0.3, rate: int = RATE) -> bytes:
    """A sine tone (with 5 ms ramps) as S16LE PCM."""
    n = rate * ms // 1000
    ramp = max(1, rate * 5 // 1000)
    samples = array.array("h")
    for i in range(n):
        env = min(1.0, i / ramp, (n - 1 - i) / ramp) if n > 2 * ramp else 1.0
        samples.append(int(32767 * amplitude * env * math.sin(2 * math.pi * freq * i / rate)))
    if sys.byteorder == "big":
        samples.byteswap()
    return samples.tobytes()


def silence_pcm16(ms: int, rate: int = RATE) -> bytes:
    return b"\x00\x00" * (rate * ms // 1000)


DEFAULT_TONES = (440.0, 620.0, 880.0, 1120.0, 1400.0, 1760.0)
CALLER_TEXT = "I'd like to book a cleaning on Tuesday at three pm"
AGENT_TEXT = "Thank you for calling. How can I help you today?"


def _atomic_write(dest: Path, produce: Callable[[Path], object]) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=dest.suffix, dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        produce(tmp)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)


def _key(*parts: object) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:10]


class AudioLibrary:
    """Generated audio cached in ``root`` (safe to share between test sessions)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _cached(self, name: str, produce: Callable[[Path], object]) -> Path:
        dest = self.root / name
        if not dest.exists() or dest.stat().st_size == 0:
            _atomic_write(dest, produce)
        return dest

    # speech ---------------------------------------------------------------------------
    def speech_wav(self, text: str, *, voice: str = "en-us", speed: int = 160) -> Path:
        """``text`` spoken by espeak-ng, as 8 kHz mono S16 WAV (sox resampling, no dither)."""
        name = f"speech-{_key(text, voice, speed)}.wav"

        def produce(tmp: Path) -> None:
            with tempfile.TemporaryDirectory(dir=self.root) as work:
                raw = Path(work) / "espeak.wav"
                subprocess.run(
                    [which("espeak-ng"), "-v", voice, "-s", str(speed), "-w", str(raw), text],
                    check=True, capture_output=True,
                )  # fmt: skip
                subprocess.run(
                    [which("sox"), "-D", str(raw), "-r", str(RATE), "-c", "1", "-b", "16",
                     "-e", "signed-integer", "-t", "wav", str(tmp)],
                    check=True, capture_output=True,
                )  # fmt: skip

        return self._cached(name, produce)

    def speech_ulaw(self, text: str, *, voice: str = "en-us", speed: int = 160) -> Path:
        """:meth:`speech_wav` as raw mu-law."""
        wav = self.speech_wav(text, voice=voice, speed=speed)
        return self._cached(wav.with_suffix(".ulaw").name, lambda tmp: wav_to_ulaw(wav, tmp))

    # transforms -----------------------------------------------------------------------
    def padded(self, wav: Path, seconds: float, *, lead: float = 0.0) -> Path:
        """``wav`` with ``lead`` s of silence before and ``seconds`` s after (8 kHz S16)."""
        name = f"{wav.stem}-pad{lead:g}+{seconds:g}.wav"

        def produce(tmp: Path) -> None:
            pcm = read_wav_pcm16(wav)
            write_wav_pcm16(
                tmp, silence_pcm16(int(lead * 1000)) + pcm + silence_pcm16(int(seconds * 1000))
            )

        return self._cached(name, produce)

    def padded_to(self, wav: Path, total_seconds: float) -> Path:
        """``wav`` padded with trailing silence to at least ``total_seconds``."""
        have = wav_info(wav).seconds
        return self.padded(wav, max(0.0, math.ceil((total_seconds - have) * 10) / 10))

    def ulaw(self, wav: Path) -> Path:
        """The raw mu-law version of a (cached or external) 8 kHz WAV."""
        return self._cached(f"{wav.stem}-{_key(str(wav))}.ulaw", lambda t: wav_to_ulaw(wav, t))

    # synthetic ------------------------------------------------------------------------
    def pattern_ulaw(self, seconds: float = 2.0, seed: str = "sipagent") -> Path:
        """:func:`pattern_ulaw_bytes` for ``seconds`` (a whole number of 20 ms frames)."""
        frames = max(1, round(seconds * 50))
        name = f"pattern-{_key(seed)}-{frames}f.ulaw"
        return self._cached(
            name, lambda tmp: tmp.write_bytes(pattern_ulaw_bytes(frames * FRAME_BYTES, seed))
        )

    def pattern_wav(self, seconds: float = 2.0, seed: str = "sipagent") -> Path:
        """The pattern decoded to PCM: encoding it to PCMU again gives the pattern exactly."""
        ulaw = self.pattern_ulaw(seconds, seed)
        return self._cached(ulaw.with_suffix(".wav").name, lambda tmp: ulaw_to_wav(ulaw, tmp))

    def tones_wav(
        self, freqs: Sequence[float] = DEFAULT_TONES, *, tone_ms: int = 200, gap_ms: int = 50
    ) -> Path:
        """Distinct tones one after another (a recognisable non-speech signal)."""
        name = f"tones-{_key(tuple(freqs), tone_ms, gap_ms)}.wav"

        def produce(tmp: Path) -> None:
            pcm = b"".join(tone_pcm16(f, tone_ms) + silence_pcm16(gap_ms) for f in freqs)
            write_wav_pcm16(tmp, pcm)

        return self._cached(name, produce)

    def silence_wav(self, seconds: float) -> Path:
        return self._cached(
            f"silence-{seconds:g}s.wav",
            lambda tmp: write_wav_pcm16(tmp, silence_pcm16(int(seconds * 1000))),
        )


# file names of the standard set made by build_standard_audio()
STANDARD_FILES = (
    "caller.wav", "caller.ulaw", "caller_padded.wav",
    "agent.wav", "agent.ulaw",
    "pattern.ulaw", "pattern.wav",
    "tones.wav", "tones.ulaw",
)  # fmt: skip


def build_standard_audio(root: Path | str) -> Path:
    """Populate ``root`` with the standard set (links to cached files, stable names):
    caller/agent speech (WAV + raw mu-law), caller_padded.wav (+8 s silence), a 2 s
    pseudo-random mu-law pattern (+ its WAV) and a tone sequence."""
    lib = AudioLibrary(Path(root) / "cache")
    made = {
        "caller.wav": lib.speech_wav(CALLER_TEXT),
        "caller.ulaw": lib.speech_ulaw(CALLER_TEXT),
        "agent.wav": lib.speech_wav(AGENT_TEXT),
        "agent.ulaw": lib.speech_ulaw(AGENT_TEXT),
        "pattern.ulaw": lib.pattern_ulaw(2.0),
        "pattern.wav": lib.pattern_wav(2.0),
        "tones.wav": lib.tones_wav(),
    }
    made["caller_padded.wav"] = lib.padded(made["caller.wav"], 8.0)
    made["tones.ulaw"] = lib.ulaw(made["tones.wav"])
    for name, target in made.items():
        link = Path(root) / name
        if link.is_symlink() or link.exists():
            if link.resolve() == target.resolve():
                continue
            link.unlink()
        link.symlink_to(target.relative_to(Path(root)))
    return Path(root)

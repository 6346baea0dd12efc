"""Per-call WAV recording for debugging: caller on the left channel, agent on the right."""

from __future__ import annotations

import audioop
import wave
from pathlib import Path

from sipagent.media.codec import FRAME_BYTES, MULAW_SILENCE

MAX_SECONDS = 3 * 3600  # a stuck call must not fill the disk


class TwoChannelRecorder:
    """Collects the 20 ms frames as they are delivered/sent; writes a stereo 16-bit WAV."""

    def __init__(self) -> None:
        self.caller = bytearray()
        self.agent = bytearray()
        self._limit = MAX_SECONDS * 8000

    def caller_frame(self, mulaw: bytes) -> None:
        if len(self.caller) < self._limit:
            self.caller += mulaw

    def agent_frame(self, mulaw: bytes) -> None:
        if len(self.agent) < self._limit:
            self.agent += mulaw

    def write(self, path: Path) -> Path:
        # The caller's frames lag by the jitter buffer delay; both start at the answer.
        length = max(len(self.caller), len(self.agent))
        length += -length % FRAME_BYTES
        silence = bytes([MULAW_SILENCE])
        left = audioop.ulaw2lin(bytes(self.caller) + silence * (length - len(self.caller)), 2)
        right = audioop.ulaw2lin(bytes(self.agent) + silence * (length - len(self.agent)), 2)
        stereo = audioop.add(audioop.tostereo(left, 2, 1, 0), audioop.tostereo(right, 2, 0, 1), 2)
        path.parent.mkdir(parents=True, exist_ok=True)
        with wave.open(str(path), "wb") as out:
            out.setnchannels(2)
            out.setsampwidth(2)
            out.setframerate(8000)
            out.writeframes(stereo)
        return path

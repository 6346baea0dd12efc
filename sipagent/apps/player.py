"""Test app: plays a raw mu-law file to the caller and records what the caller sends.

Recordings are raw mu-law (`<call-id>.ulaw`) plus the DTMF digits (`<call-id>.digits`), written
when the call ends, so tests can compare them byte for byte with what the peer streamed.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from sipagent.channel import CallChannel
from sipagent.config import AgentSettings


class PlayerApp:
    def __init__(self, audio: bytes, record_dir: Path | None) -> None:
        self.audio = audio
        self.record_dir = record_dir

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> PlayerApp:
        audio = Path(settings.player_file).read_bytes() if settings.player_file else b""
        record_dir = Path(settings.record_dir) if settings.record_dir else None
        return cls(audio, record_dir)

    async def handle(self, call: CallChannel) -> None:
        received = bytearray()
        digits: list[str] = []

        async def record_audio() -> None:
            async for frame in call.frames():
                received.extend(frame)

        async def record_digits() -> None:
            async for digit in call.digits():
                digits.append(digit)

        if self.audio:
            call.play(self.audio)
        try:
            await asyncio.gather(record_audio(), record_digits())
        finally:
            if self.record_dir is not None:
                self.record_dir.mkdir(parents=True, exist_ok=True)
                stem = re.sub(r"[^A-Za-z0-9_.-]", "_", call.call_id)
                (self.record_dir / f"{stem}.ulaw").write_bytes(bytes(received))
                (self.record_dir / f"{stem}.digits").write_text("".join(digits))

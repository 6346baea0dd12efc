"""Asterisk Echo() equivalent: the caller hears themselves, to check two-way audio."""

from __future__ import annotations

from sipagent.channel import CallChannel


class EchoApp:
    async def handle(self, call: CallChannel) -> None:
        async for frame in call.frames():
            call.play(frame)

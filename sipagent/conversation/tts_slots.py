"""How many TTS requests may be in flight at once, process-wide.

TTS plans cap concurrent requests (ElevenLabs: 2 to 15 by plan) and refuse the excess with
429 `too_many_concurrent_requests`, so the process waits for a free slot instead of sending a
request bound to fail. A reply's first sentence goes ahead of later sentences waiting for a
slot: the caller is in silence until it plays, while a later sentence only has to arrive
before the one in front of it finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator


class TtsSlots:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the TTS concurrency limit must be at least 1")
        self.limit = limit
        self.in_use = 0
        self._first_sentences: deque[asyncio.Future[None]] = deque()
        self._later_sentences: deque[asyncio.Future[None]] = deque()

    @contextlib.asynccontextmanager
    async def slot(self, *, first_sentence: bool) -> AsyncIterator[None]:
        await self._acquire(first_sentence)
        try:
            yield
        finally:
            self._release()

    @property
    def waiting(self) -> int:
        return sum(not f.done() for f in (*self._first_sentences, *self._later_sentences))

    async def _acquire(self, first_sentence: bool) -> None:
        if self.in_use < self.limit and not self.waiting:
            self.in_use += 1
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        (self._first_sentences if first_sentence else self._later_sentences).append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if not granted.cancelled():  # the slot was handed over just as we gave up
                self._release()
            raise

    def _release(self) -> None:
        self.in_use -= 1
        while self.in_use < self.limit:
            queue = self._first_sentences or self._later_sentences
            if not queue:
                return
            granted = queue.popleft()
            if not granted.done():
                self.in_use += 1
                granted.set_result(None)

"""TtsSlots: the process-wide cap on TTS requests in flight, first sentences first."""

from __future__ import annotations

import asyncio

import pytest

from sipagent.conversation.tts_slots import TtsSlots


async def hold_slot(
    slots: TtsSlots, first: bool, order: list[str], name: str, release: asyncio.Event
) -> None:
    async with slots.slot(first_sentence=first):
        order.append(name)
        await release.wait()


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_no_more_requests_than_the_limit_and_a_first_sentence_goes_ahead() -> None:
    slots, order, release = TtsSlots(1), [], asyncio.Event()
    busy = asyncio.create_task(hold_slot(slots, True, order, "playing", release))
    await settle()
    later = asyncio.create_task(hold_slot(slots, False, order, "later sentence", release))
    await settle()
    first = asyncio.create_task(hold_slot(slots, True, order, "other reply's first", release))
    await settle()
    assert order == ["playing"] and slots.waiting == 2
    release.set()
    await asyncio.gather(busy, later, first)
    assert order == ["playing", "other reply's first", "later sentence"]
    assert slots.in_use == 0


async def test_a_request_cancelled_while_waiting_gives_its_turn_away() -> None:
    slots, order, release = TtsSlots(1), [], asyncio.Event()
    busy = asyncio.create_task(hold_slot(slots, True, order, "a", release))
    await settle()
    gave_up = asyncio.create_task(hold_slot(slots, False, order, "b", release))
    waiting = asyncio.create_task(hold_slot(slots, False, order, "c", release))
    await settle()
    gave_up.cancel()
    release.set()
    await asyncio.gather(busy, waiting, gave_up, return_exceptions=True)
    assert order == ["a", "c"] and slots.in_use == 0


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        TtsSlots(0)

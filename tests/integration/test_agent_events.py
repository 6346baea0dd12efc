"""The SIP side's events from a real call between two in-process agents: each endpoint reports
its own calls on its own bus, once each, and a call's end carries its final RTP figures."""

from __future__ import annotations

import asyncio

from sipagent.observability.events import CallAnswered, CallEnded, CallStarted, Event
from tests.kit.agentlib import running_agent, wait_until


async def test_each_agent_reports_its_own_call_once_with_final_media():
    async with running_agent(app="echo") as callee, running_agent() as caller:
        heard: dict[str, list[Event]] = {"callee": [], "caller": []}
        callee.events.subscribe(heard["callee"].append)
        caller.events.subscribe(heard["caller"].append)
        host, port = callee.local_address
        call = await caller.dial(f"sip:agent@{host}:{port}")
        call.play(b"\x40" * 160 * 25)  # half a second (not silence) for the echo to return
        await asyncio.sleep(0.8)
        await caller.hangup(call, "done")
        await wait_until(
            lambda: any(isinstance(e, CallEnded) for e in heard["callee"]), 5, "callee's end"
        )

    callee_events, caller_events = heard["callee"], heard["caller"]
    assert [type(e) for e in callee_events] == [CallStarted, CallAnswered, CallEnded]
    assert [type(e) for e in caller_events] == [CallStarted, CallEnded]  # we answered nothing
    assert {e.call_id for e in (*callee_events, *caller_events)} == {call.call_id}

    answered = callee_events[1]
    assert isinstance(answered, CallAnswered) and 0 <= answered.answer_seconds < 5
    ended = callee_events[2]
    assert isinstance(ended, CallEnded) and ended.reason == "caller hung up"
    assert ended.duration is not None and ended.duration >= 0.5
    assert ended.media is not None and ended.media.packets_in >= 20  # final: after the close
    caller_end = caller_events[1]
    assert isinstance(caller_end, CallEnded) and caller_end.media is not None
    assert caller_end.media.packets_out >= 20

"""Call control by the receptionist over SIP: transfer (REFER) accepted or refused, and the
idle policy (re-prompt, then a polite hang-up)."""

from __future__ import annotations

import asyncio

import pytest
from test_conversation_e2e import agent_settings, agent_stream, caller_audio, heard_all

from tests.kit.agentlib import running_agent, wait_until
from tests.kit.fakes.deepgram_server import FakeDeepgramServer
from tests.kit.fakes.elevenlabs_server import FakeElevenLabsServer
from tests.kit.fakes.openai_server import FakeOpenAIServer, FakeToolCall, Reply

pytestmark = [pytest.mark.peers]

FRONT_DESK = "sip:frontdesk@127.0.0.1:5099"


def transfer_replies(request: dict) -> Reply:
    if request["messages"][-1]["role"] == "tool":
        return Reply("")
    return Reply("Of course, transferring you now.", (FakeToolCall.of("transfer_to_human", {}),))


@pytest.mark.parametrize("accepted", [True, False], ids=["refer-accepted", "refer-declined"])
async def test_transfer_to_a_human_with_refer(sipp, capture, audio, tmp_path, accepted):
    caller = caller_audio(audio, tmp_path, [(5.0, "Can I talk to a real person please?")], 12.0)
    async with (
        FakeDeepgramServer(["Can I talk to a real person please?"]) as deepgram,
        FakeOpenAIServer(transfer_replies) as openai,
        FakeElevenLabsServer() as elevenlabs,
        running_agent(
            **agent_settings(deepgram, openai, elevenlabs), transfer_uri=FRONT_DESK
        ) as agent,
    ):
        host, port = agent.local_address
        scenario = "uac_refer_accept.xml" if accepted else "uac_refer_decline.xml"
        runner = sipp(scenario, remote=f"{host}:{port}", service="agent", timeout=30,
                      params={"AUDIO": caller, "HOLD_MS": 20000, "TAIL_MS": 7000})  # fmt: skip
        async with capture(runner.media_port) as cap:
            result = (await runner.run()).check()
            await wait_until(lambda: bool(agent.ended_calls), 5, "call ended")
        call = agent.ended_calls[0]
    refer = next(m for m in result.received() if m.method == "REFER")
    assert refer.header("Refer-To") == f"<{FRONT_DESK}>"
    heard = agent_stream(cap, runner.media_port)
    assert heard_all("Of course, transferring you now.", heard)
    if accepted:
        assert call.end_reason == f"transferred to {FRONT_DESK}"
        assert "BYE" in result.received_requests()
    else:
        # Refused: the caller hears that, and is offered a callback instead of dead air.
        assert heard_all(
            "I'm sorry, I couldn't reach the front desk right now. I can have someone call you "
            "back. What's the best number to reach you?",
            heard,
        )
        assert call.end_reason == "caller hung up"


async def test_silence_gets_reprompts_then_a_polite_hangup(sipp, capture, audio, tmp_path):
    caller = caller_audio(audio, tmp_path, [], tail=30.0)
    async with (
        FakeDeepgramServer([]) as deepgram,
        FakeOpenAIServer([]) as openai,
        FakeElevenLabsServer() as elevenlabs,
        running_agent(
            **{**agent_settings(deepgram, openai, elevenlabs), "idle_reprompt_seconds": 2.0}
        ) as agent,
    ):
        host, port = agent.local_address
        runner = sipp("uac_call.xml", remote=f"{host}:{port}", service="agent", timeout=40,
                      params={"AUDIO": caller, "HOLD_MS": 30000})  # fmt: skip
        async with capture(runner.media_port) as cap:
            result = (await runner.run()).check()
        call = agent.ended_calls[0]
        session = agent.app.sessions[call.call_id]
    assert "BYE" in result.received_requests()
    assert call.end_reason == "agent ended the call"
    heard = agent_stream(cap, runner.media_port)
    assert heard_all("Are you still there?", heard)
    spoken = [turn.text for turn in session.turns if turn.role == "assistant"]
    assert spoken.count("Are you still there?") == 2
    assert spoken[-1] == "I haven't heard anything, so I'll hang up now. Goodbye!"
    assert heard_all(spoken[-1], heard)
    assert not openai.requests  # silence never reached the model


async def test_shutdown_says_goodbye_before_the_bye(sipp, capture, audio, tmp_path):
    caller = caller_audio(audio, tmp_path, [], tail=20.0)
    async with (
        FakeDeepgramServer([]) as deepgram,
        FakeOpenAIServer([]) as openai,
        FakeElevenLabsServer() as elevenlabs,
    ):
        async with running_agent(**agent_settings(deepgram, openai, elevenlabs)) as agent:
            host, port = agent.local_address
            runner = sipp("uac_call.xml", remote=f"{host}:{port}", service="agent", timeout=30,
                          params={"AUDIO": caller, "HOLD_MS": 20000})  # fmt: skip
            cap = capture(runner.media_port)
            await cap.__aenter__()
            await runner.start(wait_bound=False)
            await wait_until(lambda: any(agent.app.sessions), 5, "the call")
            await asyncio.sleep(5.0)  # the greeting plays, then the agent is stopped
        result = (await runner.wait()).check()
        await cap.__aexit__(None, None, None)
    assert "BYE" in result.received_requests()
    assert agent.ended_calls[0].end_reason == "agent shutting down"
    goodbye = "I'm sorry, I have to end this call now. Please call us back. Goodbye!"
    assert heard_all(goodbye, agent_stream(cap, runner.media_port))

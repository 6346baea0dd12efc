"""Hostile and unusual SIP over real UDP (issue 9): each case is a message that once silenced the
agent, went unanswered, or got the wrong answer. The agent runs in-process on loopback; the
peer is a raw socket, so every byte on the wire is the test's own."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from sipagent.sip.call import CallState
from tests.kit.agentlib import MiniUac, drain, request, running_agent, sdp, wait_until


def options(uac: MiniUac, agent_port: int, *, via: str = "", call_id: str = "opt-1",
            from_: str = "<sip:mini@127.0.0.1>;tag=minitag", to: str = "<sip:agent@127.0.0.1>",
            cseq: str = "1 OPTIONS", target: str = "", extra: str = "") -> str:  # fmt: skip
    via = via or f"SIP/2.0/UDP 127.0.0.1:{uac.port};branch=z9hG4bK{call_id};rport"
    return (
        f"OPTIONS {target or f'sip:agent@127.0.0.1:{agent_port}'} SIP/2.0\n"
        f"Via: {via}\nFrom: {from_}\nTo: {to}\nCall-ID: {call_id}\nCSeq: {cseq}\n"
        f"Max-Forwards: 70\n{extra}Content-Length: 0\n\n"
    )


async def answered(uac: MiniUac, agent_address: tuple[str, int], call_id: str) -> list[int]:
    """A fresh OPTIONS from a clean socket is answered: the SIP socket is alive."""
    uac.received.clear()
    uac.send(options(uac, agent_address[1], call_id=call_id), agent_address)
    await uac.collect(0.4)
    return [m.status_code for m in uac.received if m.call_id == call_id]


async def send_and_collect(uac: MiniUac, agent_address: tuple[str, int], data: str,
                           call_id: str, seconds: float = 0.4) -> list[int]:  # fmt: skip
    uac.received.clear()
    uac.send(data, agent_address)
    await uac.collect(seconds)
    return [m.status_code for m in uac.received if m.call_id == call_id]


@pytest.mark.parametrize("port", ["65536", "99999999999999999999", "0"])
async def test_an_unroutable_via_port_is_dropped_and_the_socket_lives(port):
    # Once: OverflowError inside asyncio's sendto, the SIP socket closed for good.
    async with running_agent(app="echo") as agent:
        uac = MiniUac()
        via = f"SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKbad"
        statuses = await send_and_collect(
            uac, agent.local_address, options(uac, 0, via=via, call_id="bad-via"), "bad-via"
        )
        assert statuses == []  # nowhere to send an answer to
        assert await answered(uac, agent.local_address, "alive") == [200]
        assert agent.transport_state == {"up": True, "losses": 0, "error": ""}
        assert any("unroutable top Via" in kind for kind in agent.dropped), agent.dropped


async def test_a_socket_killed_under_the_agent_is_reopened_and_reported():
    async with running_agent(app="echo") as agent:
        uac = MiniUac()
        port = agent.local_address[1]
        assert agent.transport is not None
        # What any non-OSError in sendto does: asyncio's _fatal_error closes the transport.
        agent.transport.sendto(b"x", ("127.0.0.1", 65536))
        await wait_until(lambda: agent.transport_losses == 1, 2, "loss noticed")
        await wait_until(lambda: agent.transport_state["up"], 3, "socket re-opened")
        assert agent.local_address[1] == port
        assert agent.status()["sip_socket"]["losses"] == 1  # reported, not hidden
        assert await answered(uac, agent.local_address, "after") == [200]


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("tel-from", {"from_": "<tel:+15551234567>;tag=t1"}),
        ("tel-to", {"to": "<tel:+15551234567>"}),
        ("sips-from", {"from_": "<sips:mini@127.0.0.1>;tag=t1"}),
        ("upper-scheme", {"from_": "<SIP:mini@127.0.0.1>;tag=t1"}),
        ("cseq-tab", {"cseq": "1\tOPTIONS"}),
        ("ipv6-via", {"via": "SIP/2.0/UDP [2001:db8::1]:5070;branch=z9hG4bKv6;rport"}),
        ("quoted-name", {"from_": '"Dr. \\"Who\\", DDS" <sip:mini@127.0.0.1>;tag=t1'}),
    ],
)
async def test_legal_but_unusual_requests_are_answered(name, kwargs):
    async with running_agent(app="echo") as agent:
        uac = MiniUac()
        data = options(uac, agent.local_address[1], call_id=name, **kwargs)
        # rport: the answer comes back to this socket whatever the Via says.
        assert await send_and_collect(uac, agent.local_address, data, name) == [200]


@pytest.mark.parametrize(
    ("name", "kwargs", "status", "header"),
    [
        ("require", {"extra": "Require: foo, 100rel\n"}, 420, "Unsupported: foo, 100rel"),
        ("scheme", {"target": "mailto:agent@127.0.0.1"}, 416, ""),
        ("unquoted-comma", {"from_": "Bell, Alexander <sip:a@127.0.0.1>;tag=1"}, 400, "Warning"),
        ("open-quote", {"to": '"Mr. J. User <sip:agent@127.0.0.1>'}, 400, ""),
        ("addr-spec-with-query", {"to": "sip:agent@127.0.0.1?Route=%3Csip:x%3E"}, 400, ""),
        ("request-uri-headers",
         {"target": "sip:agent@127.0.0.1?Route=%3Csip:example.com%3E"}, 400, ""),
        ("nul-in-contact", {"extra": "Contact: <sip:mini@127.0.0.\x001:5060>\n"}, 400, ""),
        ("bad-cseq", {"cseq": "1 2 OPTIONS"}, 400, ""),
        ("lws-request-line", {"target": "sip:agent@127.0.0.1  "}, 400, ""),
    ],
)  # fmt: skip
async def test_requests_the_rfc_refuses_get_its_answer(name, kwargs, status, header):
    async with running_agent(app="echo") as agent:
        uac = MiniUac()
        data = options(uac, agent.local_address[1], call_id=name, **kwargs)
        assert await send_and_collect(uac, agent.local_address, data, name) == [status]
        if header:
            raw = uac.received[0]
            assert any(header in f"{n}: {v}" for n, v in raw.fields), raw.fields
        assert await answered(uac, agent.local_address, "still") == [200]


def invite(uac: MiniUac, agent_port: int, body: str, *, call_id: str,
           content_type: str = "application/sdp", extra: str = "") -> str:  # fmt: skip
    message = request("INVITE", uac, agent_port, cseq=1, sdp=body, call_id=call_id,
                      branch=f"z9hG4bK{call_id}")  # fmt: skip
    message = message.replace("Content-Type: application/sdp", f"Content-Type: {content_type}", 1)
    return message.replace("Max-Forwards: 70\n", f"Max-Forwards: 70\n{extra}", 1)


SDP_PCMU = sdp(40000).replace("RTP/AVP 8 0", "RTP/AVP 0")


@pytest.mark.parametrize(
    ("name", "body", "status"),
    [
        ("pt-128", SDP_PCMU.replace("RTP/AVP 0", "RTP/AVP 0 128"), 400),
        ("pt-huge", SDP_PCMU.replace("RTP/AVP 0", "RTP/AVP 4294967296 0"), 400),
        ("pt-negative", SDP_PCMU.replace("RTP/AVP 0", "RTP/AVP -1 0"), 400),
        ("ptime-inf", SDP_PCMU + "a=ptime:inf\n", 200),
        ("dynamic-pcmu", sdp(40000).replace("RTP/AVP 8 0", "RTP/AVP 96")
         .replace("a=rtpmap:8 PCMA/8000\na=rtpmap:0 PCMU/8000", "a=rtpmap:96 PCMU/8000"), 200),
        ("c-hostname", SDP_PCMU.replace("c=IN IP4 127.0.0.1", "c=IN IP4 slow.example.com"), 488),
        ("c-ipv6", SDP_PCMU.replace("c=IN IP4 127.0.0.1", "c=IN IP6 fd00::2"), 488),
        ("c-nul", SDP_PCMU.replace("c=IN IP4 127.0.0.1", "c=IN IP4 127.0.\x00.1"), 488),
        ("c-multicast", SDP_PCMU.replace("c=IN IP4 127.0.0.1", "c=IN IP4 224.0.0.9"), 488),
        ("no-codec", SDP_PCMU.replace("RTP/AVP 0", "RTP/AVP 9"), 488),
    ],
)  # fmt: skip
async def test_every_invite_gets_a_final_answer(name, body, status):
    async with running_agent(app="echo") as agent:
        uac = MiniUac()
        data = invite(uac, agent.local_address[1], body, call_id=name)
        statuses = await send_and_collect(uac, agent.local_address, data, name, seconds=0.6)
        finals = [code for code in statuses if code >= 200]
        assert finals and finals[0] == status, statuses
        if status == 200:
            ok = next(m for m in uac.received if m.status_code == 200)
            assert b"a=rtpmap:96 PCMU/8000" in ok.content or b"RTP/AVP 0" in ok.content


@pytest.mark.parametrize(
    ("name", "content_type", "extra", "status"),
    [
        ("text-body", "text/plain", "", 415),
        ("accept-html", "application/sdp", "Accept: text/html\n", 406),
        ("accept-any", "application/sdp", "Accept: application/*, text/html\n", 200),
        ("gzip", "application/sdp", "Content-Encoding: gzip\n", 415),
    ],
)
async def test_content_negotiation_of_an_invite(name, content_type, extra, status):
    async with running_agent(app="echo") as agent:
        uac = MiniUac()
        data = invite(uac, agent.local_address[1], SDP_PCMU, call_id=name,
                      content_type=content_type, extra=extra)  # fmt: skip
        statuses = await send_and_collect(uac, agent.local_address, data, name, seconds=0.6)
        assert [code for code in statuses if code >= 200][:1] == [status], statuses
        if status == 415:
            assert any(n in ("Accept", "Accept-Encoding") for n, _ in uac.received[-1].fields)


async def test_a_multipart_offer_is_answered():
    boundary = "unique-boundary-1"
    body = (
        f"--{boundary}\nContent-Type: application/sdp\n\n{SDP_PCMU}\n"
        f"--{boundary}\nContent-Type: image/gif\nContent-Transfer-Encoding: binary\n\nGIF89a\n"
        f"--{boundary}--\n"
    )
    async with running_agent(app="echo") as agent:
        uac = MiniUac()
        data = invite(uac, agent.local_address[1], body, call_id="mpart",
                      content_type=f'multipart/mixed;boundary="{boundary}"')  # fmt: skip
        statuses = await send_and_collect(uac, agent.local_address, data, "mpart", seconds=0.6)
        assert 200 in statuses, statuses


async def test_half_open_invites_cannot_make_a_real_caller_hear_busy():
    """50 INVITEs from one address that never ACK: before, each held a call slot for 32 s."""
    attacker_media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    attacker_media.bind(("127.0.0.2", 0))
    attacker_media.setblocking(False)
    async with running_agent(app="echo", max_calls=5) as agent:
        attacker = MiniUac(host="127.0.0.2")
        for index in range(50):
            body = sdp(attacker_media.getsockname()[1]).replace("127.0.0.1", "127.0.0.2")
            attacker.send(invite(attacker, agent.local_address[1], body, call_id=f"flood-{index}")
                          .replace("127.0.0.1:", "127.0.0.2:"), agent.local_address)  # fmt: skip
        await attacker.collect(0.8)
        finals = {m.call_id: m.status_code for m in attacker.received
                  if m.cseq_method == "INVITE" and m.status_code >= 200}  # fmt: skip
        assert len(finals) == 50
        assert list(finals.values()).count(200) == 8, finals  # max_unconfirmed_per_source
        assert set(finals.values()) == {200, 503}

        caller = MiniUac()
        data = invite(caller, agent.local_address[1], SDP_PCMU, call_id="real-caller")
        statuses = await send_and_collect(caller, agent.local_address, data, "real-caller", 0.6)
        assert 200 in statuses and 486 not in statuses, statuses
        ok = next(m for m in caller.received if m.status_code == 200)
        ack = request("ACK", caller, agent.local_address[1], cseq=1, to_tag=ok.to_tag or "",
                      branch="z9hG4bKack", call_id="real-caller")  # fmt: skip
        caller.send(ack, agent.local_address)
        await wait_until(
            lambda: agent.calls["real-caller"].state == CallState.CONFIRMED, 2, "real call up"
        )
        bye = request("BYE", caller, agent.local_address[1], cseq=2, to_tag=ok.to_tag or "",
                      branch="z9hG4bKbye", call_id="real-caller")  # fmt: skip
        caller.send(bye, agent.local_address)
        # Unconfirmed dialogs sent no media to the address their offer named.
        with pytest.raises(BlockingIOError):
            attacker_media.recv(2048)
    attacker_media.close()


@pytest.mark.parametrize("hold_sdp", ["a=sendonly", "a=inactive", "c=0.0.0.0"])
async def test_hold_sends_nothing_and_unhold_continues_where_it_stopped(tmp_path, hold_sdp):
    """A phone's hold (RFC 3264 8.4, or RFC 2543's c=0.0.0.0): once the agent went on talking
    into the void. Now nothing is sent while held and the queued audio waits for the unhold."""
    prompt = tmp_path / "prompt.ulaw"
    prompt.write_bytes(bytes([0x25]) * 8000 * 4)  # 4 s of voiced audio
    media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    media.bind(("127.0.0.1", 0))
    media.setblocking(False)
    media_port = media.getsockname()[1]
    async with running_agent(app="player", player_file=str(prompt)) as agent:
        uac = MiniUac()
        port = agent.local_address[1]
        uac.send(invite(uac, port, SDP_PCMU.replace("40000", str(media_port)), call_id="hold"),
                 agent.local_address)  # fmt: skip
        await uac.collect(0.3)
        ok = next(m for m in uac.received if m.status_code == 200)
        to_tag = ok.to_tag or ""
        uac.send(request("ACK", uac, port, cseq=1, to_tag=to_tag, branch="z9hG4bKa1",
                         call_id="hold"), agent.local_address)  # fmt: skip
        await wait_until(lambda: agent.calls["hold"].state == CallState.CONFIRMED, 2, "up")
        call = agent.calls["hold"]
        changes: list[bool] = []

        async def watch() -> None:
            async for held in call.hold_changes():
                changes.append(held)

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0.5)
        assert len(drain(media)) >= 15  # talking

        held_sdp = sdp(media_port, version=2).replace("RTP/AVP 8 0", "RTP/AVP 0")
        held_sdp = (held_sdp.replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0")
                    if hold_sdp == "c=0.0.0.0" else held_sdp + hold_sdp + "\n")  # fmt: skip
        reinvite = request("INVITE", uac, port, cseq=2, to_tag=to_tag, branch="z9hG4bKh1",
                           sdp=held_sdp, call_id="hold")  # fmt: skip
        statuses = await send_and_collect(uac, agent.local_address, reinvite, "hold")
        assert 200 in statuses
        answer = next(m for m in uac.received if m.status_code == 200 and m.cseq == 2)
        expected = b"a=inactive" if hold_sdp == "a=inactive" else b"a=recvonly"
        if hold_sdp != "c=0.0.0.0":
            assert expected in answer.content
        uac.send(request("ACK", uac, port, cseq=2, to_tag=to_tag, branch="z9hG4bKa2",
                         call_id="hold"), agent.local_address)  # fmt: skip
        await asyncio.sleep(0.1)
        drain(media)  # what left before the re-INVITE arrived
        sent_at_hold = call.sent_audio_ms
        await asyncio.sleep(1.0)
        assert drain(media) == []  # on hold: not one packet
        assert call.on_hold and call.sent_audio_ms == sent_at_hold

        resume = request("INVITE", uac, port, cseq=3, to_tag=to_tag, branch="z9hG4bKh2",
                         sdp=sdp(media_port, version=3), call_id="hold")  # fmt: skip
        statuses = await send_and_collect(uac, agent.local_address, resume, "hold")
        assert 200 in statuses
        uac.send(request("ACK", uac, port, cseq=3, to_tag=to_tag, branch="z9hG4bKa3",
                         call_id="hold"), agent.local_address)  # fmt: skip
        await asyncio.sleep(0.5)
        voiced = [p for p in drain(media) if p[12:13] == bytes([0x25])]
        assert len(voiced) >= 15  # the prompt goes on from where the hold stopped it
        assert not call.on_hold and changes == [True, False]
        assert call.sent_audio_ms > sent_at_hold
        watcher.cancel()
        uac.send(request("BYE", uac, port, cseq=4, to_tag=to_tag, branch="z9hG4bKb",
                         call_id="hold"), agent.local_address)  # fmt: skip
        await wait_until(lambda: not agent.calls, 2, "call ended")
    media.close()


async def test_a_call_whose_media_dies_is_ended_with_a_bye():
    """Once: the RTP socket closed under a live call, which then stayed up and silent."""
    async with running_agent(app="echo") as agent:
        uac = MiniUac()
        port = agent.local_address[1]
        uac.send(invite(uac, port, SDP_PCMU, call_id="dies"), agent.local_address)
        await uac.collect(0.3)
        ok = next(m for m in uac.received if m.status_code == 200)
        uac.send(request("ACK", uac, port, cseq=1, to_tag=ok.to_tag or "", branch="z9hG4bKa",
                         call_id="dies"), agent.local_address)  # fmt: skip
        await wait_until(lambda: agent.calls["dies"].rtp is not None, 2, "media up")
        session = agent.calls["dies"].rtp
        assert session is not None and session._transport is not None
        session._transport.sendto(b"x", ("127.0.0.1", 65536))  # asyncio closes the socket
        uac.received.clear()
        await uac.collect(1.0)
        assert any(m.is_request and m.method == "BYE" for m in uac.received)
        assert agent.ended_calls[-1].end_reason.startswith("media lost")


async def test_other_sip_versions_get_505_and_rfc2543_transactions_are_told_apart():
    async with running_agent(app="echo") as agent:
        uac = MiniUac()
        data = options(uac, agent.local_address[1], call_id="v7")
        data = data.replace(" SIP/2.0\n", " SIP/7.0\n", 1)
        assert await send_and_collect(uac, agent.local_address, data, "v7") == [505]
        # Two RFC 2543 INVITEs (no branch): each its own transaction, each answered.
        for call_id in ("old-1", "old-2"):
            data = invite(uac, agent.local_address[1], SDP_PCMU.replace("RTP/AVP 0", "RTP/AVP 9"),
                          call_id=call_id).replace(f";branch=z9hG4bK{call_id}", "")  # fmt: skip
            statuses = await send_and_collect(uac, agent.local_address, data, call_id)
            assert [code for code in statuses if code >= 200][:1] == [488], statuses


async def test_a_loop_that_cannot_keep_its_calls_on_time_refuses_new_ones():
    """Beyond capacity, refusals, not degradation: while the media clock runs late (here the
    event loop is made to stall 30 ms at a time, as a saturated core does) a new INVITE gets
    503 with Retry-After; once the loop keeps time again for 3 s, calls are taken again."""
    loop = asyncio.get_running_loop()
    async with running_agent(app="echo") as agent:
        caller = MiniUac()
        data = invite(caller, agent.local_address[1], SDP_PCMU, call_id="first-call")
        assert 200 in await send_and_collect(caller, agent.local_address, data, "first-call")
        ok = next(m for m in caller.received if m.status_code == 200)
        caller.send(request("ACK", caller, agent.local_address[1], cseq=1, to_tag=ok.to_tag or "",
                            branch="z9hG4bKack1", call_id="first-call"),
                    agent.local_address)  # fmt: skip
        await wait_until(
            lambda: agent.calls["first-call"].state == CallState.CONFIRMED, 2, "first call up"
        )
        assert agent.uas.overload is not None
        stalling = True

        def stall() -> None:
            if stalling:
                time.sleep(0.03)
                loop.call_later(0.01, stall)

        stall()
        await asyncio.sleep(3.0)
        assert agent.uas.overload.overloaded(loop.time())
        data = invite(caller, agent.local_address[1], SDP_PCMU, call_id="while-late")
        caller.received.clear()
        caller.send(data, agent.local_address)
        await caller.collect(0.5)
        refusal = next(m for m in caller.received if m.call_id == "while-late"
                       and m.status_code >= 200)  # fmt: skip
        assert refusal.status_code == 503
        assert refusal.first("Retry-After") == "5"
        assert agent.calls["first-call"].state == CallState.CONFIRMED  # the call it has goes on

        stalling = False
        await asyncio.sleep(3.5)
        data = invite(caller, agent.local_address[1], SDP_PCMU, call_id="on-time-again")
        assert 200 in await send_and_collect(caller, agent.local_address, data, "on-time-again")

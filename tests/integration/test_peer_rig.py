"""The real-peer rig proves itself: Kamailio, SIPp, baresip and tcpdump against each other.

No agent is involved here: these tests pin down that the peers, templates and parsers work, so
that an agent test failing later is about the agent.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from pathlib import Path

import pytest

from tests.kit.peerlib.audio import (
    FRAME_BYTES,
    read_wav_pcm16,
    rms,
    ulaw_to_pcm16,
    wav_info,
    wav_ulaw_bytes,
)
from tests.kit.peerlib.capture import (
    LINKTYPE_EN10MB,
    Datagram,
    read_udp_datagrams,
    rfc2833_datagrams,
    rtp_packets,
    rtp_payload,
    telephone_events,
    write_dtmf_pcap,
    write_udp_pcap,
)
from tests.kit.peerlib.common import LOOPBACK, free_udp_port
from tests.kit.peerlib.kamailio import parse_ul_dump

# --------------------------------------------------------------------------------------------
# pure-Python parts (no peers needed)


def test_pcap_writer_and_reader_round_trip(tmp_path: Path) -> None:
    grams = [
        Datagram(1.5, ("127.0.0.1", 4000), ("127.0.0.1", 5000), b"hello"),
        Datagram(1.52, ("10.0.0.1", 65535), ("127.0.0.2", 1), bytes(range(256)) * 4),
    ]
    back = read_udp_datagrams(write_udp_pcap(tmp_path / "x.pcap", grams))
    assert [(d.src, d.dst, d.payload) for d in back] == [(d.src, d.dst, d.payload) for d in grams]
    assert back[1].time == pytest.approx(1.52, abs=1e-6)


def test_rfc2833_generator_decodes_back() -> None:
    grams = rfc2833_datagrams("19#*", pt=101, tone_ms=100)
    packets = rtp_packets(grams)
    events = telephone_events(packets, pt=101)
    assert "".join(e.digit for e in events) == "19#*"
    assert all(e.ended and e.duration == 800 for e in events)
    assert len({p.ssrc for p in packets}) == 1
    seqs = [p.seq for p in packets]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    starts = [p for p in packets if p.pt == 101 and p.marker]
    assert len(starts) == 4


def test_ul_dump_parser() -> None:
    text = """{
        Domains: {
            Domain: {
                Domain: location
                AoRs: {
                    Info: {
                        AoR: agent
                        Contacts: {
                            Contact: {
                                Address: sip:agent@127.0.0.1:5099;transport=udp
                                Expires: 57
                                Call-ID: abc@x
                                CSeq: 3
                                User-Agent: sipagent
                                Received: [not set]
                            }
                        }
                    }
                }
            }
        }
    }"""
    (binding,) = parse_ul_dump(text)
    assert binding.aor == "agent"
    assert binding.uri == "sip:agent@127.0.0.1:5099;transport=udp"
    assert binding.expires == 57
    assert binding.user_agent == "sipagent"
    assert binding.received is None
    assert binding.cseq == 3


# --------------------------------------------------------------------------------------------
# against the real peers


@pytest.mark.peers
def test_standard_audio_is_deterministic(audio_dir: Path, audio) -> None:
    for name in ("caller.wav", "agent.wav", "caller_padded.wav", "pattern.wav", "tones.wav"):
        info = wav_info(audio_dir / name)
        assert (info.rate, info.channels, info.sample_width) == (8000, 1, 2), name
    caller = read_wav_pcm16(audio_dir / "caller.wav")
    assert rms(caller) > 500
    assert (audio_dir / "caller.ulaw").stat().st_size == len(caller) // 2
    assert wav_info(audio_dir / "caller_padded.wav").seconds == pytest.approx(
        wav_info(audio_dir / "caller.wav").seconds + 8.0, abs=0.01
    )
    pattern = (audio_dir / "pattern.ulaw").read_bytes()
    assert len(pattern) == 100 * FRAME_BYTES
    assert wav_ulaw_bytes(audio_dir / "pattern.wav") == pattern
    # a fresh generation elsewhere gives byte-identical speech
    other = type(audio)(audio.root.parent / f"regen-{secrets.token_hex(3)}")
    try:
        regenerated = other.speech_wav("I'd like to book a cleaning on Tuesday at three pm")
        assert read_wav_pcm16(regenerated) == caller
    finally:
        for f in other.root.iterdir():
            f.unlink()
        other.root.rmdir()


@pytest.mark.peers
@pytest.mark.parametrize("qop", [True, False], ids=["qop", "no-qop"])
async def test_sipp_registers_with_digest(kamailio, sipp, qop: bool) -> None:
    kam = await kamailio(qop=qop)
    reg = sipp("register.xml", remote=kam.address, service="caller", auth=("caller", "callerpw"))
    result = (await reg.run()).check()

    challenge = next(m for m in result.received() if m.status == 401)
    www = challenge.header("WWW-Authenticate") or ""
    assert www.startswith("Digest ")
    assert ('qop="auth"' in www) is qop
    assert result.received_statuses("REGISTER")[-1] == 200

    contacts = await kam.registered_contacts("caller")
    assert contacts == [f"sip:caller@{LOOPBACK}:{reg.local_port}"]
    (binding,) = await kam.bindings("caller")
    assert 0 < (binding.expires or 0) <= 300


@pytest.mark.peers
async def test_proxy_auth_challenges_register_with_407(kamailio, sipp) -> None:
    kam = await kamailio(proxy_auth=True)
    reg = sipp("register.xml", remote=kam.address, service="caller", auth=("caller", "callerpw"))
    result = (await reg.run()).check()
    assert result.received_statuses("REGISTER") == [407, 200]
    challenge = result.received()[0]
    assert (challenge.header("Proxy-Authenticate") or "").startswith("Digest ")
    assert challenge.header("WWW-Authenticate") is None
    assert result.sent()[1].header("Proxy-Authorization") is not None
    assert await kam.registered_contacts("caller") == [f"sip:caller@{LOOPBACK}:{reg.local_port}"]


@pytest.mark.peers
async def test_wrong_password_is_refused(kamailio, sipp) -> None:
    kam = await kamailio()
    result = await sipp(
        "register.xml",
        remote=kam.address,
        service="caller",
        auth=("caller", "nope"),
        timeout=5,
    ).run()
    assert not result.ok
    assert 200 not in result.received_statuses()
    assert await kam.registered_contacts("caller") == []


@pytest.mark.peers
async def test_restart_keeps_port_and_forgets_registrations(kamailio, sipp) -> None:
    kam = await kamailio()
    (
        await sipp(
            "register.xml", remote=kam.address, service="agent", auth=("agent", "agentpw")
        ).run()
    ).check()
    assert await kam.registered_contacts("agent")
    port = kam.port
    await kam.restart()
    assert kam.port == port
    assert kam.ping()
    assert await kam.registered_contacts("agent") == []
    assert "start #2" in kam.log_text()


def _options(target: str, lport: int, tag: str) -> bytes:
    return (
        f"OPTIONS {target} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {LOOPBACK}:{lport};branch=z9hG4bK{tag};rport\r\n"
        f"From: <sip:caller@{LOOPBACK}>;tag={tag}\r\n"
        f"To: <{target}>\r\nCall-ID: {tag}@{LOOPBACK}\r\nCSeq: 1 OPTIONS\r\n"
        "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


@pytest.mark.peers
async def test_options_routed_to_registered_aor_and_404_otherwise(kamailio, sipp) -> None:
    kam = await kamailio()
    ua = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with ua, caller:
        ua.bind((LOOPBACK, 0))
        caller.bind((LOOPBACK, 0))
        ua.settimeout(3)
        caller.settimeout(3)
        ua_port, caller_port = ua.getsockname()[1], caller.getsockname()[1]

        caller.sendto(_options(kam.aor("agent"), caller_port, "t1"), (LOOPBACK, kam.port))
        reply = (await asyncio.to_thread(caller.recv, 65535)).decode()
        assert reply.startswith("SIP/2.0 404 ")

        contact = f"sip:agent@{LOOPBACK}:{ua_port}"
        (
            await sipp(
                "register.xml",
                remote=kam.address,
                service="agent",
                auth=("agent", "agentpw"),
                params={"CONTACT": contact},
            ).run()
        ).check()
        assert await kam.registered_contacts("agent") == [contact]

        caller.sendto(_options(kam.aor("agent"), caller_port, "t2"), (LOOPBACK, kam.port))
        request = (await asyncio.to_thread(ua.recv, 65535)).decode()
        assert request.startswith(f"OPTIONS {contact} SIP/2.0")


def _assert_stream(packets, expected: bytes, what: str) -> None:
    assert packets, f"no RTP for {what}"
    assert {p.pt for p in packets} == {0}, what
    assert len({p.ssrc for p in packets}) == 1, what
    assert all(len(p.payload) == FRAME_BYTES for p in packets), what
    seqs = [p.seq for p in packets]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))], what
    assert rtp_payload(packets) == expected, what


@pytest.mark.peers
async def test_sipp_call_direct_rtp_is_the_streamed_files(sipp, capture, audio) -> None:
    agent_audio = audio.pattern_ulaw(1.0, seed="agent")
    caller_audio = audio.pattern_ulaw(1.0, seed="caller")
    uas = sipp("uas_call.xml", params={"AUDIO": agent_audio})
    uac = sipp(
        "uac_call.xml",
        remote=uas.address,
        service="agent",
        params={"AUDIO": caller_audio, "HOLD_MS": 1600},
    )
    ports = (uas.local_port, uas.media_port, uac.local_port, uac.media_port)
    async with capture(*ports) as cap, uas:
        (await uac.run()).check()
        uas_result = (await uas.wait()).check()
    assert uas_result.received_requests() == ["INVITE", "ACK", "BYE"]
    assert cap.linktype() == LINKTYPE_EN10MB

    grams = cap.datagrams()
    _assert_stream(rtp_packets(grams, dst_port=uac.media_port), agent_audio.read_bytes(), "to UAC")
    _assert_stream(rtp_packets(grams, dst_port=uas.media_port), caller_audio.read_bytes(), "to UAS")
    sip = [d for d in grams if d.dst[1] in (uas.local_port, uac.local_port)]
    assert any(d.payload.startswith(b"INVITE ") for d in sip)


@pytest.mark.peers
@pytest.mark.parametrize("record_route", [False, True], ids=["no-rr", "rr"])
async def test_sipp_call_through_kamailio(kamailio, sipp, capture, audio, record_route) -> None:
    kam = await kamailio(record_route=record_route)
    agent_audio = audio.pattern_ulaw(1.0, seed="agent")
    caller_audio = audio.pattern_ulaw(1.0, seed="caller")
    uas = sipp("uas_call.xml", params={"AUDIO": agent_audio})
    # SIPp cannot register a UAS scenario itself: register its address for 'agent' separately
    (
        await sipp(
            "register.xml",
            remote=kam.address,
            service="agent",
            auth=("agent", "agentpw"),
            params={"CONTACT": uas.contact_uri},
        ).run()
    ).check()
    assert await kam.registered_contacts("agent") == [uas.contact_uri]

    uac = sipp(
        "uac_call.xml",
        remote=kam.address,
        service="agent",
        params={"AUDIO": caller_audio, "HOLD_MS": 1600},
    )
    async with capture(uas.media_port, uac.media_port) as cap, uas:
        uac_result = (await uac.run()).check()
        uas_result = (await uas.wait()).check()

    invite = next(m for m in uas_result.received() if m.method == "INVITE")
    assert len(invite.headers("Via")) == 2  # came through the proxy
    ok = next(m for m in uac_result.received() if m.status == 200 and m.method == "INVITE")
    bye = next(m for m in uac_result.sent() if m.method == "BYE")
    if record_route:
        assert invite.header("Record-Route") is not None
        assert kam.address in (ok.header("Record-Route") or "")
        assert kam.address in (bye.header("Route") or "")
    else:
        assert invite.header("Record-Route") is None
        assert bye.header("Route") is None
    assert uas_result.received_requests() == ["INVITE", "ACK", "BYE"]

    grams = cap.datagrams()
    _assert_stream(rtp_packets(grams, dst_port=uac.media_port), agent_audio.read_bytes(), "to UAC")
    _assert_stream(rtp_packets(grams, dst_port=uas.media_port), caller_audio.read_bytes(), "to UAS")


@pytest.mark.peers
async def test_sipp_cancel_scenario(sipp) -> None:
    uas = sipp("uas_ring_cancel.xml")
    uac = sipp(
        "uac_cancel.xml", remote=uas.address, service="agent", params={"CANCEL_DELAY_MS": 200}
    )
    async with uas:
        uac_result = (await uac.run()).check()
        (await uas.wait()).check()
    assert uac_result.received_statuses("INVITE")[-1] == 487
    assert 200 in uac_result.received_statuses("CANCEL")
    sent = uac_result.sent()
    assert [m.method for m in sent] == ["INVITE", "CANCEL", "ACK"]
    branches = {(m.header("Via") or "").split("branch=")[1].split(";")[0] for m in sent}
    assert len(branches) == 1


@pytest.mark.peers
async def test_sipp_unsupported_codec_scenario(sipp) -> None:
    uas = sipp("uas_reject.xml", params={"CODE": 488, "REASON": "Not Acceptable Here"})
    uac = sipp("uac_unsupported_codec.xml", remote=uas.address, service="agent")
    async with uas:
        uac_result = (await uac.run()).check()
        uas_result = (await uas.wait()).check()
    assert uac_result.received_statuses() == [100, 488]
    invite = uas_result.received()[0]
    assert "m=audio" in invite.body and "RTP/AVP 9\n" in invite.body
    assert "PCMU" not in invite.body


@pytest.mark.peers
async def test_sipp_sends_rfc2833_dtmf(sipp, capture, audio, tmp_path) -> None:
    pcap = write_dtmf_pcap(tmp_path / "dtmf.pcap", "12#9", pt=101)
    uas = sipp("uas_call.xml", params={"AUDIO": audio.pattern_ulaw(0.2)})
    uac = sipp(
        "uac_dtmf.xml",
        remote=uas.address,
        service="agent",
        params={"DTMF_PCAP": pcap, "HOLD_MS": 3500, "PRE_MS": 100},
    )
    async with capture(uas.media_port) as cap, uas:
        (await uac.run()).check()
        (await uas.wait()).check()
    packets = rtp_packets(cap.datagrams(), dst_port=uas.media_port)
    events = telephone_events(packets, pt=101)
    assert "".join(e.digit for e in events) == "12#9"
    assert all(e.ended for e in events)
    assert {p.src[1] for p in packets} == {uac.media_port}
    assert {p.pt for p in packets} == {0, 101}


@pytest.mark.peers
async def test_baresip_direct_call_records_what_it_hears(sipp, capture, baresip, audio) -> None:
    heard = audio.pattern_ulaw(2.0, seed="agent")
    uas = sipp("uas_call.xml", params={"AUDIO": heard})
    async with capture(uas.media_port) as cap, uas:
        result = await baresip(
            f"sip:agent@{uas.address}", audio.pattern_wav(1.0, seed="bs"), duration=4
        )
        result.check()
        (await uas.wait()).check()

    # what baresip sent is the WAV, PCMU-encoded, frame for frame
    sent = rtp_payload(rtp_packets(cap.datagrams(), dst_port=uas.media_port, pt=0))
    expected = audio.pattern_ulaw(1.0, seed="bs").read_bytes()
    assert sent[: len(expected)] == expected

    # what it recorded contains (most of) what SIPp streamed: the jitter buffer may slip frames
    assert result.recording is not None
    recorded = wav_ulaw_bytes(result.recording)
    frames = [heard.read_bytes()[i : i + FRAME_BYTES] for i in range(0, 16000, FRAME_BYTES)]
    found = sum(1 for f in frames if f in recorded)
    assert found >= 0.9 * len(frames), f"{found}/{len(frames)} frames found in the recording"


@pytest.mark.peers
async def test_baresip_registers_and_calls_through_kamailio(kamailio, sipp, baresip, audio_dir):
    kam = await kamailio(qop=True, record_route=True)
    uas = sipp("uas_call.xml", params={"AUDIO": audio_dir / "agent.ulaw"})
    (
        await sipp(
            "register.xml",
            remote=kam.address,
            service="agent",
            auth=("agent", "agentpw"),
            params={"CONTACT": uas.contact_uri},
        ).run()
    ).check()
    async with uas:
        result = await baresip(
            kam.aor("agent"), audio_dir / "caller.wav", duration=4, registrar=kam.address
        )
        result.check()
        uas_result = (await uas.wait()).check()
    assert result.registered, result.describe()
    assert f"REQ REGISTER sip:{kam.address}" in kam.log_text()
    invite = next(m for m in uas_result.received() if m.method == "INVITE")
    assert "baresip" in (invite.header("User-Agent") or "")
    assert result.recording is not None
    speech = read_wav_pcm16(result.recording)
    assert rms(speech) > 300, "baresip heard (almost) nothing"
    agent = ulaw_to_pcm16((audio_dir / "agent.ulaw").read_bytes())
    assert len(speech) >= len(agent) // 2


async def test_free_port_helper_gives_bindable_ports() -> None:
    port = free_udp_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, port))

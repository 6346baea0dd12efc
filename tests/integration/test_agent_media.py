"""The agent's media as real peers see it on the wire: flush (barge-in), baresip through
Kamailio, concurrent calls, and the echo app's two-way audio."""

from __future__ import annotations

import itertools

import pytest
from test_agent_calls import FRAME, assert_same_frames

from sipagent.sip.call import CallState
from sipagent.sip.registration import RegistrationState
from tests.kit.agentlib import running_agent, wait_until
from tests.kit.peerlib.audio import wav_ulaw_bytes
from tests.kit.peerlib.capture import RtpPacket, rtp_packets

pytestmark = [pytest.mark.peers]

SILENCE = b"\xff" * FRAME  # PCMU digital silence; the test patterns never contain 0xFF


def frames_of(data: bytes) -> list[bytes]:
    """Whole 160-byte frames of ``data`` (a trailing partial frame is ignored)."""
    return [data[i : i + FRAME] for i in range(0, len(data) - len(data) % FRAME, FRAME)]


# tcpdump (run without --immediate-mode) hands packets over in ring-buffer blocks retired by a
# 1 s timeout, and what sits in the current block when it gets SIGINT is lost: the rig's
# default 0.2 s linger drops up to the last second of a call.  Linger past the block timeout
# so that every packet the agent sent is in the file.
CAPTURE_LINGER_S = 1.5


def whole_capture(capture, *ports: int):
    cap = capture(*ports)
    cap.linger = CAPTURE_LINGER_S
    return cap


def confirmed_call(agent):
    return next((c for c in agent.calls.values() if c.state == CallState.CONFIRMED), None)


def assert_steady_stream(packets: list[RtpPacket], skipped_slots: int = 0) -> None:
    """One SSRC, consecutive sequence numbers, timestamps advancing by one frame each — or by
    more where the sender reports it gave up frame slots after a stall (``skipped_slots``)."""
    assert len({p.ssrc for p in packets}) == 1, {hex(p.ssrc) for p in packets}
    extra_slots = 0
    for before, after in itertools.pairwise(packets):
        assert after.seq == (before.seq + 1) % 65536, (before.seq, after.seq)
        advance = (after.ts - before.ts) % 2**32
        assert advance >= FRAME and advance % FRAME == 0, (before.ts, after.ts)
        extra_slots += advance // FRAME - 1
    assert extra_slots <= skipped_slots, f"timestamps skip {extra_slots} frames"


def longest_run(haystack: bytes, needle: bytes) -> tuple[int, int, int]:
    """The longest run of consecutive ``needle`` frames found back to back (at any byte
    offset) in ``haystack``: (first needle frame index, byte offset in haystack, frames).
    Meant for pseudo-random patterns, whose frames each occur at most once."""
    positions = [haystack.find(f) for f in frames_of(needle)]
    best = (0, -1, 0)
    start = 0
    for i in range(1, len(positions) + 1):
        run_continues = (
            i < len(positions)
            and positions[i] >= 0
            and positions[i - 1] >= 0
            and positions[i] == positions[i - 1] + FRAME
        )
        if not run_continues:
            length = i - start if positions[start] >= 0 else 0
            if length > best[2]:
                best = (start, positions[start], length)
            start = i
    return best


# ---------------------------------------------------------------------------------------------
# 1. flush (barge-in), seen on the wire


async def test_flush_stops_the_agent_audio_on_the_wire(sipp, capture, audio, audio_dir):
    played = audio.pattern_ulaw(seconds=6).read_bytes()  # 300 frames, never 0xFF
    async with running_agent(player_file=str(audio.pattern_ulaw(seconds=6))) as agent:
        host, port = agent.local_address
        caller = sipp("uac_call.xml", remote=f"{host}:{port}", service="agent",
                      params={"AUDIO": audio_dir / "pattern.ulaw", "HOLD_MS": 4000})  # fmt: skip
        async with whole_capture(capture, caller.media_port) as cap:
            await caller.start(wait_bound=False)
            await wait_until(lambda: confirmed_call(agent) is not None, 5, "call confirmed")
            call = confirmed_call(agent)
            rtp_port = call.rtp_port
            await wait_until(lambda: call.rtp.sent_audio_ms >= 1000, 3, "1 s of audio sent")
            result = call.rtp.flush()
            sent_ms = call.rtp.sent_audio_ms
            queued_after = call.rtp.queued_ms
            (await caller.wait()).check()
            await wait_until(lambda: bool(agent.ended_calls), 5, "call ended")
    assert agent.ended_calls[-1].end_reason == "caller hung up"
    assert queued_after == 0
    skipped = call.rtp.stats.frames_skipped  # slots given up after a stall (none, normally)

    sent = rtp_packets(cap.datagrams(), src_port=rtp_port, dst_port=caller.media_port, pt=0)
    assert len(sent) == call.rtp.stats.packets_out  # the capture holds the whole stream
    voiced_at = [i for i, p in enumerate(sent) if p.payload != SILENCE]
    assert voiced_at, "the agent sent no audio"
    first, last = voiced_at[0], voiced_at[-1]
    voiced = sent[first : last + 1]
    # the audio that went out is one unbroken prefix of the file, in order
    assert voiced_at == list(range(first, last + 1)), "silence inside the played audio"
    assert b"".join(p.payload for p in voiced) == played[: len(voiced) * FRAME]
    assert voiced[0].marker and not any(p.marker for p in voiced[1:])
    # at most one more frame of it after the flush, and the flush dropped all the rest
    assert len(voiced) <= sent_ms / 20 + 1, (len(voiced), sent_ms)
    assert len(voiced) < len(played) // FRAME
    assert abs(len(voiced) * FRAME + result.dropped_bytes - len(played)) <= FRAME
    assert result.dropped_ms == pytest.approx(result.dropped_bytes / 8)
    # and the stream goes on: silence, same SSRC, no gap in sequence numbers or timestamps
    after = sent[last + 1 :]
    assert len(after) >= 20, f"only {len(after)} packets after the last voiced one"
    assert all(p.payload == SILENCE for p in after)
    assert_steady_stream(sent, skipped)


# ---------------------------------------------------------------------------------------------
# 2. baresip calling the registered agent through Kamailio


@pytest.mark.parametrize("record_route", [False, True], ids=["plain", "record-route"])
async def test_baresip_through_kamailio_two_way_audio(
    kamailio, baresip, audio, audio_dir, tmp_path, record_route
):
    kam = await kamailio(qop=True, record_route=record_route)
    record_dir = tmp_path / "rec"
    agent_file = audio.pattern_ulaw(seconds=3, seed="agent")
    agent_audio = agent_file.read_bytes()
    caller_audio = (audio_dir / "pattern.ulaw").read_bytes()  # pattern.wav, encoded
    async with running_agent(
        server=kam.address, password="agentpw", record_dir=record_dir,
        player_file=str(agent_file),
    ) as agent:  # fmt: skip
        await wait_until(
            lambda: agent.registration.status.state == RegistrationState.REGISTERED,
            5, "agent registered",
        )  # fmt: skip
        result = await baresip(
            f"sip:agent@{kam.address}", audio_dir / "pattern.wav",
            duration=5, registrar=kam.address,
        )  # fmt: skip
        result.check()
        await wait_until(lambda: bool(agent.ended_calls) and not agent.calls, 5, "call ended")
    assert result.registered, result.describe()
    call = agent.ended_calls[-1]
    assert call.end_reason == "caller hung up", call.end_reason  # baresip's BYE at -t
    assert call.bye_status is None  # the agent sent no BYE of its own
    assert "terminated" in result.log, result.describe()
    if record_route:
        assert call.dialog.route_set, "Record-Route not kept"

    # What baresip sent (its encoder dump): the source pattern, then the silence it was padded
    # with (baresip adds no leading silence, but allow for it).
    assert result.sent, result.describe()
    sent = wav_ulaw_bytes(result.sent[0])
    pattern_frames = len(caller_audio) // FRAME
    start, sent_at, n = longest_run(sent, caller_audio)
    assert (start, n) == (0, pattern_frames), (start, sent_at, n)

    # The agent recorded all of it, frame for frame, and nothing else but silence.
    recordings = sorted(record_dir.glob("*.ulaw"))
    assert len(recordings) == 1, recordings
    recorded = recordings[0].read_bytes()
    start, at, n = longest_run(recorded, caller_audio)
    diagnosis = f"recording {len(recorded)} B, pattern frames {start}..{start + n} at byte {at}"
    assert n >= 50, f"less than 1 s of the caller's audio in one piece: {diagnosis}"
    assert (start, n) == (0, pattern_frames), diagnosis
    assert at % FRAME == 0, diagnosis
    rest = recorded[:at] + recorded[at + len(caller_audio) :]
    assert set(frames_of(rest)) <= {SILENCE}, diagnosis
    # from the pattern on, the recording is what baresip encoded, until the BYE
    overlap = min(len(recorded) - at, len(sent) - sent_at)
    assert recorded[at : at + overlap] == sent[sent_at : sent_at + overlap]

    # baresip heard the agent's whole file (decoder dump back to mu-law), after the silence the
    # agent sends between its 200 OK and the ACK.
    assert result.recording is not None, result.describe()
    heard = wav_ulaw_bytes(result.recording)
    start, at, n = longest_run(heard, agent_audio)
    diagnosis = f"baresip heard {len(heard)} B, agent frames {start}..{start + n} at byte {at}"
    assert n >= 50, f"less than 1 s of the agent's audio in one piece: {diagnosis}"
    assert (start, n) == (0, len(agent_audio) // FRAME), diagnosis
    assert set(frames_of(heard[:at])) <= {SILENCE}, diagnosis


# ---------------------------------------------------------------------------------------------
# 3. concurrent calls


def agent_streams(packets: list[RtpPacket]) -> dict[int, list[RtpPacket]]:
    """PCMU packets grouped by SSRC (capture order kept)."""
    streams: dict[int, list[RtpPacket]] = {}
    for p in packets:
        if p.pt == 0:
            streams.setdefault(p.ssrc, []).append(p)
    return streams


def assert_plays_file(stream: list[RtpPacket], played: bytes, call) -> None:
    """``stream`` is all ``call`` sent: steady, and ``played`` (last frame padded) after the
    silence sent before the ACK."""
    stats = call.rtp.stats
    assert len(stream) == stats.packets_out
    assert_steady_stream(stream, stats.frames_skipped)
    first = next(i for i, p in enumerate(stream) if p.payload != SILENCE)
    assert stream[first].marker
    heard = b"".join(p.payload for p in stream[first:])
    padded = played + b"\xff" * (-len(played) % FRAME)
    assert heard[: len(padded)] == padded


async def test_five_concurrent_calls_from_one_sipp(sipp, capture, audio, audio_dir, tmp_path):
    record_dir = tmp_path / "rec"
    pattern = (audio_dir / "pattern.ulaw").read_bytes()
    agent_file = audio.pattern_ulaw(seconds=2, seed="agent")
    async with running_agent(record_dir=record_dir, player_file=str(agent_file)) as agent:
        host, port = agent.local_address
        callers = sipp(
            "uac_call.xml", remote=f"{host}:{port}", service="agent", calls=5,
            params={"AUDIO": audio_dir / "pattern.ulaw", "HOLD_MS": len(pattern) // 8 + 1500},
            extra_args=["-l", "5", "-r", "5"],
        )  # fmt: skip
        async with whole_capture(capture, callers.media_port) as cap:
            await callers.start(wait_bound=False)
            await wait_until(lambda: len(agent.calls) == 5, 5, "5 calls at once")
            (await callers.wait()).check()
            await wait_until(lambda: len(agent.ended_calls) == 5 and not agent.calls, 5, "ended")
    assert [c.end_reason for c in agent.ended_calls] == ["caller hung up"] * 5
    assert len({c.call_id for c in agent.ended_calls}) == 5
    recordings = sorted(record_dir.glob("*.ulaw"))
    assert len(recordings) == 5, recordings
    for path in recordings:
        assert_same_frames(path.read_bytes(), pattern)

    # SIPp 3.6 uses its one -mp port for every call's media (SDP and rtp_stream alike), so
    # the 5 streams share a destination; each comes from its own agent port with its own SSRC.
    streams = agent_streams(rtp_packets(cap.datagrams(), dst_port=callers.media_port))
    assert len(streams) == 5, {hex(s): len(v) for s, v in streams.items()}
    sources = {ssrc: {p.src for p in stream} for ssrc, stream in streams.items()}
    assert all(len(s) == 1 for s in sources.values()), sources
    calls_by_port = {c.rtp_port: c for c in agent.ended_calls}
    assert {next(iter(s))[1] for s in sources.values()} == set(calls_by_port)
    for stream in streams.values():
        call = calls_by_port[stream[0].src[1]]
        assert_plays_file(stream, agent_file.read_bytes(), call)


async def test_five_concurrent_callers_each_get_their_own_stream(
    sipp, capture, audio, audio_dir, tmp_path
):
    record_dir = tmp_path / "rec"
    pattern = (audio_dir / "pattern.ulaw").read_bytes()
    agent_file = audio.pattern_ulaw(seconds=2, seed="agent")
    async with running_agent(record_dir=record_dir, player_file=str(agent_file)) as agent:
        host, port = agent.local_address
        params = {"AUDIO": audio_dir / "pattern.ulaw", "HOLD_MS": len(pattern) // 8 + 1500}
        callers = [
            sipp("uac_call.xml", remote=f"{host}:{port}", service="agent", params=params)
            for _ in range(5)
        ]
        media_ports = [c.media_port for c in callers]
        async with whole_capture(capture, *media_ports) as cap:
            for caller in callers:
                await caller.start(wait_bound=False)
            await wait_until(lambda: len(agent.calls) == 5, 5, "5 calls at once")
            for caller in callers:
                (await caller.wait()).check()
            await wait_until(lambda: len(agent.ended_calls) == 5 and not agent.calls, 5, "ended")
    assert [c.end_reason for c in agent.ended_calls] == ["caller hung up"] * 5
    recordings = sorted(record_dir.glob("*.ulaw"))
    assert len(recordings) == 5, recordings
    for path in recordings:
        assert_same_frames(path.read_bytes(), pattern)

    from_agent = [p for p in rtp_packets(cap.datagrams()) if p.src[1] not in media_ports]
    streams = agent_streams([p for p in from_agent if p.dst[1] in media_ports])
    assert len(streams) == 5, {hex(s): len(v) for s, v in streams.items()}
    destinations = {ssrc: {p.dst[1] for p in stream} for ssrc, stream in streams.items()}
    assert sorted(next(iter(d)) for d in destinations.values()) == sorted(media_ports)
    assert all(len(d) == 1 for d in destinations.values()), destinations
    sources = {ssrc: {p.src[1] for p in stream} for ssrc, stream in streams.items()}
    assert all(len(s) == 1 for s in sources.values()), sources
    calls_by_port = {c.rtp_port: c for c in agent.ended_calls}
    assert {next(iter(s)) for s in sources.values()} == set(calls_by_port)
    for stream in streams.values():
        call = calls_by_port[stream[0].src[1]]
        assert_plays_file(stream, agent_file.read_bytes(), call)


# ---------------------------------------------------------------------------------------------
# 4. echo app


async def test_echo_sends_back_what_it_receives(sipp, capture, audio_dir):
    pattern = (audio_dir / "pattern.ulaw").read_bytes()
    async with running_agent(app="echo") as agent:
        host, port = agent.local_address
        caller = sipp("uac_call.xml", remote=f"{host}:{port}", service="agent",
                      params={"AUDIO": audio_dir / "pattern.ulaw",
                              "HOLD_MS": len(pattern) // 8 + 1500})  # fmt: skip
        async with whole_capture(capture, caller.media_port) as cap:
            (await caller.run()).check()
            await wait_until(lambda: bool(agent.ended_calls), 5, "call ended")
    assert agent.ended_calls[-1].end_reason == "caller hung up"
    datagrams = cap.datagrams()
    to_agent = rtp_packets(datagrams, src_port=caller.media_port, pt=0)
    from_agent = rtp_packets(datagrams, dst_port=caller.media_port, pt=0)
    # SIPp streamed the pattern
    received = [p.payload for p in to_agent]
    assert received[: len(pattern) // FRAME] == frames_of(pattern)
    # the agent sent back exactly those frames, in order, as one unbroken stretch
    voiced_at = [i for i, p in enumerate(from_agent) if p.payload != SILENCE]
    assert voiced_at, "nothing echoed"
    first, last = voiced_at[0], voiced_at[-1]
    echoed = [p.payload for p in from_agent[first : last + 1] if p.payload != SILENCE]
    assert echoed == [f for f in received if f != SILENCE], (len(echoed), len(received))
    gaps = sorted(set(range(first, last + 1)) - set(voiced_at))
    assert not gaps, f"silence inside the echo at packets {gaps[:10]} ({len(gaps)} in all)"
    assert from_agent[first].marker
    stats = agent.ended_calls[-1].rtp.stats
    assert len(from_agent) == stats.packets_out
    assert_steady_stream(from_agent, stats.frames_skipped)

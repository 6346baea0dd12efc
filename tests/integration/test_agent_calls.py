"""The agent as a SIP endpoint, driven by real SIPp callers (direct and through Kamailio)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.kit.agentlib import running_agent, wait_until
from tests.kit.peerlib.capture import rtp_packets

pytestmark = [pytest.mark.peers]

FRAME = 160


def recording(record_dir: Path) -> bytes:
    files = sorted(record_dir.glob("*.ulaw"))
    assert len(files) == 1, f"expected one recording, found {files}"
    return files[0].read_bytes()


def assert_same_frames(received: bytes, sent: bytes) -> None:
    """Frame for frame after the jitter buffer: nothing added, lost, or reordered."""
    assert len(received) % FRAME == 0
    sent_frames = [sent[i : i + FRAME] for i in range(0, len(sent) - len(sent) % FRAME, FRAME)]
    received_frames = [received[i : i + FRAME] for i in range(0, len(received), FRAME)]
    assert len(received_frames) == len(sent_frames), (len(received_frames), len(sent_frames))
    pairs = zip(received_frames, sent_frames, strict=True)
    mismatches = [i for i, (a, b) in enumerate(pairs) if a != b]
    assert not mismatches, f"frames differ at {mismatches[:10]}"


async def test_direct_invite_peer_to_peer(sipp, capture, audio_dir, tmp_path):
    record_dir = tmp_path / "rec"
    pattern = (audio_dir / "pattern.ulaw").read_bytes()
    agent_audio = (audio_dir / "agent.ulaw").read_bytes()
    async with running_agent(
        record_dir=record_dir, player_file=str(audio_dir / "agent.ulaw")
    ) as agent:
        host, port = agent.local_address
        caller = sipp(
            "uac_call.xml", remote=f"{host}:{port}", service="agent",
            params={"AUDIO": audio_dir / "pattern.ulaw", "HOLD_MS": len(pattern) // 8 + 1500},
        )  # fmt: skip
        async with capture(caller.media_port) as cap:
            result = (await caller.run()).check()
            await wait_until(lambda: not agent.calls and bool(agent.ended_calls), 5, "call end")
    statuses = result.received_statuses("INVITE")
    assert statuses[:3] == [100, 180, 200]
    assert agent.ended_calls[-1].end_reason == "caller hung up"
    assert_same_frames(recording(record_dir), pattern)
    # What SIPp received from the agent: the agent's file, in order, marker on the first frame.
    to_caller = [p for p in rtp_packets(cap.datagrams(), dst_port=caller.media_port) if p.pt == 0]
    first_voiced = next(i for i, p in enumerate(to_caller) if p.marker)
    heard = b"".join(p.payload for p in to_caller[first_voiced:])
    padded = agent_audio + b"\xff" * (-len(agent_audio) % FRAME)  # last frame filled with silence
    assert heard[: len(padded)] == padded


async def test_call_recording_has_caller_left_and_agent_right(sipp, audio_dir, tmp_path):
    import audioop
    import wave

    pattern = (audio_dir / "pattern.ulaw").read_bytes()
    agent_audio = (audio_dir / "agent.ulaw").read_bytes()
    async with running_agent(
        record_calls_dir=str(tmp_path / "calls"), player_file=str(audio_dir / "agent.ulaw")
    ) as agent:
        host, port = agent.local_address
        caller = sipp("uac_call.xml", remote=f"{host}:{port}", service="agent",
                      params={"AUDIO": audio_dir / "pattern.ulaw", "HOLD_MS": 4000})  # fmt: skip
        (await caller.run()).check()
        await wait_until(lambda: bool(agent.ended_calls), 5, "call end")
    [path] = (tmp_path / "calls").glob("*.wav")
    assert agent.ended_calls[0].recording_path == str(path)
    with wave.open(str(path)) as recording:
        assert (recording.getnchannels(), recording.getframerate()) == (2, 8000)
        stereo = recording.readframes(recording.getnframes())
    left = audioop.lin2ulaw(audioop.tomono(stereo, 2, 1, 0), 2)
    right = audioop.lin2ulaw(audioop.tomono(stereo, 2, 0, 1), 2)
    assert pattern[:8000] in left  # what the caller sent
    assert agent_audio[:8000] in right  # what the agent played

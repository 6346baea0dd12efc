"""RtpSession against a plain UDP socket peer on 127.0.0.1 (real sockets, real time).

Waits have generous deadlines for liveness only; assertions are about what was
delivered, never about how long it took.
"""

import asyncio
import contextlib
import itertools
import os
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from sipagent.media.clock import MediaClock, ThreadedMediaClock
from sipagent.media.codec import PCMA, from_wire, to_wire
from sipagent.media.rtp import RtpPacket, build_rtp, parse_rtp
from sipagent.media.session import RtpSession

SILENCE = b"\xff" * 160
TELEPHONE_EVENT = 101
LIVENESS_TIMEOUT = 15.0


def pattern_frame(index: int) -> bytes:
    """Recognisable, never-silent 160-byte frame: index in the first two bytes."""
    return struct.pack("!H", index) + bytes((index * 3 + i) % 240 for i in range(158))


def udp_socket(host: str = "127.0.0.1", sock_class: type[socket.socket] = socket.socket):
    # Linux routes all of 127.0.0.0/8 on lo: 127.0.0.2 is a distinct source on this host.
    sock = sock_class(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


@dataclass
class Received:
    packet: RtpPacket
    source: tuple[str, int]
    at: float = 0.0  # loop.time() of arrival


@dataclass
class Peer(asyncio.DatagramProtocol):
    """The far end: collects what the session sends; sends with sock.sendto."""

    sock: socket.socket
    received: list[Received] = field(default_factory=list)
    on_packet: Callable[[RtpPacket], None] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        packet = parse_rtp(data)
        self.received.append(Received(packet, addr, asyncio.get_running_loop().time()))
        if self.on_packet is not None:
            self.on_packet(packet)

    def send(self, datagram: bytes, to: tuple[str, int]) -> None:
        self.sock.sendto(datagram, to)

    def voiced(self) -> list[RtpPacket]:
        return [r.packet for r in self.received if r.packet.payload != SILENCE]


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(LIVENESS_TIMEOUT):
            while not condition():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"gave up waiting for: {what}") from None


async def settle(ticks: int = 10) -> None:
    """Let the session run a few more media ticks (to catch anything extra it would emit)."""
    await asyncio.sleep(ticks * 0.02)


@pytest.fixture
async def peer_factory() -> AsyncIterator[Callable[[], Awaitable[Peer]]]:
    loop = asyncio.get_running_loop()
    transports: list[asyncio.DatagramTransport] = []

    async def make(host: str = "127.0.0.1") -> Peer:
        sock = udp_socket(host)
        peer = Peer(sock)
        transport, _ = await loop.create_datagram_endpoint(lambda: peer, sock=sock)
        transports.append(transport)
        return peer

    yield make
    for transport in transports:
        transport.close()


@dataclass
class Harness:
    session: RtpSession
    address: tuple[str, int]
    audio: list[bytes]
    digits: list[str]


@pytest.fixture(params=["loop_sends", "thread_sends"])
async def open_session(
    request: pytest.FixtureRequest,
) -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    """Sessions sending from the event loop's MediaClock, and (`media_thread`) from the
    ThreadedMediaClock: every test here holds for both."""
    sessions: list[RtpSession] = []
    media_thread = request.param == "thread_sends"

    async def make(
        remote: tuple[str, int],
        payload_type: int = 0,
        on_audio: Callable[[bytes], None] | None = None,
        sock: socket.socket | None = None,
        **options: Any,
    ) -> Harness:
        audio: list[bytes] = []
        digits: list[str] = []
        sock = sock or udp_socket()
        address = sock.getsockname()
        session = await RtpSession.open(
            sock=sock,
            remote=remote,
            payload_type=payload_type,
            telephone_event_pt=TELEPHONE_EVENT,
            on_audio=on_audio or audio.append,
            on_dtmf=digits.append,
            call_id="loopback",
            **({"media_thread": True} if media_thread and "clock" not in options else {}),
            **options,
        )
        sessions.append(session)
        return Harness(session, address, audio, digits)

    yield make
    for session in sessions:
        await session.close()


def audio_packet(
    index: int,
    *,
    ssrc: int = 0x5EED,
    first_sequence: int = 65_500,
    payload_type: int = 0,
    payload: bytes | None = None,
) -> bytes:
    return build_rtp(
        RtpPacket(
            payload_type=payload_type,
            sequence=(first_sequence + index) % 65536,
            timestamp=(3_000_000 + index * 160) % 2**32,
            ssrc=ssrc,
            marker=index == 0,
            payload=pattern_frame(index) if payload is None else payload,
        )
    )


async def test_inbound_reordered_duplicated_and_junk_are_delivered_exactly(
    peer_factory, open_session
) -> None:
    peer = await peer_factory()
    harness = await open_session(peer.address)
    count = 60
    order = list(range(count))
    order[10], order[11] = order[11], order[10]
    order[30], order[33] = order[33], order[30]
    order[40:44] = [43, 41, 40, 42]
    datagrams = [audio_packet(i) for i in order]
    datagrams.insert(21, audio_packet(20))  # duplicate
    junk = [
        b"",
        b"hello",
        b"\x40" + bytes(20),  # RTP version 1
        b"\x80\xc8\x00\x06" + bytes(24),  # RTCP sender report
        b"\x90\x00" + bytes(10),  # extension bit but nothing behind the header
        build_rtp(RtpPacket(96, 1, 1, 0x5EED, False, b"video?")),  # not negotiated
        build_rtp(RtpPacket(0, 9, 9, 0xBAD, False, SILENCE)),  # foreign SSRC
    ]
    for position, datagram in zip((5, 15, 25, 35, 45, 50, 55), junk, strict=True):
        datagrams.insert(position, datagram)

    for datagram in datagrams:
        peer.send(datagram, harness.address)
    await wait_until(lambda: len(harness.audio) >= count, "all frames delivered")
    await settle()

    assert harness.audio == [pattern_frame(i) for i in range(count)]
    stats = harness.session.stats
    assert stats.datagrams_in == len(datagrams)
    assert stats.jitter.duplicates == 1
    assert (stats.jitter.lost, stats.jitter.concealed, stats.jitter.late) == (0, 0, 0)
    assert stats.dropped["too_short"] == 2
    assert stats.dropped["bad_version"] == 1
    assert stats.dropped["rtcp"] == 1
    assert stats.dropped["truncated_extension"] == 1
    assert stats.dropped["drop_payload_type"] == 1
    assert stats.dropped["drop_foreign_ssrc"] == 1


async def test_frames_behind_a_lost_packet_are_delivered_when_no_more_packets_come(
    peer_factory, open_session
) -> None:
    # The caller's last words before a pause, with one packet lost: nothing arrives after
    # them to push the jitter buffer on, yet they must reach the recogniser (after the
    # missing frame's wait, concealed).
    peer = await peer_factory()
    harness = await open_session(peer.address)
    for index in [*range(10), *range(11, 20)]:
        peer.send(audio_packet(index), harness.address)
    await wait_until(lambda: len(harness.audio) >= 20, "the frames behind the gap")
    await settle()
    assert harness.audio[:10] == [pattern_frame(i) for i in range(10)]
    assert harness.audio[11:] == [pattern_frame(i) for i in range(11, 20)]
    stats = harness.session.stats
    assert (stats.jitter.lost, stats.jitter.concealed) == (1, 1)


async def test_played_audio_reaches_peer_in_order_with_marker(peer_factory, open_session) -> None:
    peer = await peer_factory()
    harness = await open_session(peer.address)
    frames = [pattern_frame(i) for i in range(250)]  # 5 s
    harness.session.play(b"".join(frames))
    await wait_until(lambda: len(peer.voiced()) >= 250, "the whole pattern at the peer")
    await wait_until(lambda: peer.received[-1].packet.payload == SILENCE, "silence after it")

    packets = [r.packet for r in peer.received]
    assert [p.payload for p in peer.voiced()] == frames
    first_voiced = next(i for i, p in enumerate(packets) if p.payload != SILENCE)
    assert [i for i, p in enumerate(packets) if p.marker] == [first_voiced]
    assert all(p.payload == SILENCE for p in packets[first_voiced + 250 :])
    assert len({p.ssrc for p in packets}) == 1
    for before, after in itertools.pairwise(packets):
        assert after.sequence == (before.sequence + 1) % 65536
        # 160 per frame; a multiple only if the tick stalled and gave up slots.
        advance = (after.timestamp - before.timestamp) % 2**32
        assert advance >= 160
        assert advance % 160 == 0
    assert harness.session.sent_audio_ms == pytest.approx(5000)
    assert harness.session.queued_ms == 0
    assert {r.source for r in peer.received} == {harness.address}  # symmetric: same socket


async def test_a_reply_on_a_quiet_line_goes_out_at_once_and_rtp_time_stays_on_the_clock(
    peer_factory, open_session
) -> None:
    peer = await peer_factory()
    harness = await open_session(peer.address)
    session = harness.session
    frames = [pattern_frame(i) for i in range(50)]
    sent_by_play: list[int] = []

    def play_just_after_a_silence_packet(packet: RtpPacket) -> None:
        # The next tick is ~20 ms away: the first frame must not wait for it.
        if len(peer.received) == 30 and not sent_by_play:
            before = session.stats.packets_out
            session.play(b"".join(frames))
            sent_by_play.append(session.stats.packets_out - before)

    peer.on_packet = play_just_after_a_silence_packet
    await wait_until(lambda: len(peer.voiced()) >= 50, "the reply at the peer")
    await wait_until(lambda: len(peer.received) >= 30 + 50 + 40, "silence after it")

    assert sent_by_play == [1]  # sent inside play(), not at the next tick
    packets = [r.packet for r in peer.received]
    assert [p.payload for p in peer.voiced()] == frames
    assert [i for i, p in enumerate(packets) if p.marker] == [30]
    for before, after in itertools.pairwise(packets):
        assert after.sequence == (before.sequence + 1) % 65536
        assert (after.timestamp - before.timestamp) % 2**32 == 160  # contiguous RTP time

    def rtp_clock_offsets(received: list[Received]) -> float:
        # Arrival time minus RTP time: constant while the stream keeps real time.
        offsets = sorted(r.at - r.packet.timestamp / 8000 for r in received)
        return offsets[len(offsets) // 2]

    before = rtp_clock_offsets(peer.received[10:30])
    during = rtp_clock_offsets(peer.received[31:80])
    after = rtp_clock_offsets(peer.received[90:120])
    assert before - during > 0.005  # the reply ran ahead of the old schedule...
    assert abs(after - before) < 0.004  # ...and the silence after it gave that time back


async def test_flush_stops_audio_after_at_most_one_more_frame(peer_factory, open_session) -> None:
    peer = await peer_factory()
    harness = await open_session(peer.address)
    total = 250 * 160
    harness.session.play(b"".join(pattern_frame(i) for i in range(250)))
    seen_at_flush: list[int] = []
    flush_results = []
    sent_at_flush: list[float] = []

    def flush_on_25th_voiced(packet: RtpPacket) -> None:
        if packet.payload != SILENCE and len(peer.voiced()) == 25 and not seen_at_flush:
            seen_at_flush.append(25)
            flush_results.append(harness.session.flush())
            sent_at_flush.append(harness.session.sent_audio_ms)

    peer.on_packet = flush_on_25th_voiced
    await wait_until(lambda: bool(seen_at_flush), "25 voiced frames at the peer")
    count_after_flush = len(peer.received)
    await wait_until(lambda: len(peer.received) >= count_after_flush + 15, "frames after flush")

    voiced = peer.voiced()
    assert len(voiced) <= seen_at_flush[0] + 1
    assert len(voiced) * 20 == pytest.approx(sent_at_flush[0])  # nothing left after flush
    assert [p.payload for p in voiced] == [pattern_frame(i) for i in range(len(voiced))]
    last_voiced = max(i for i, r in enumerate(peer.received) if r.packet.payload != SILENCE)
    assert all(r.packet.payload == SILENCE for r in peer.received[last_voiced + 1 :])
    assert len(peer.received) - last_voiced > 10
    result = flush_results[0]
    assert result.dropped_bytes + harness.session.sent_audio_ms * 8 == pytest.approx(total)
    assert result.dropped_ms == pytest.approx(result.dropped_bytes / 8)
    assert harness.session.queued_ms == 0


async def test_symmetric_rtp_latches_to_the_packet_source(peer_factory, open_session) -> None:
    sdp_address_peer = await peer_factory()
    real_peer = await peer_factory()
    harness = await open_session(sdp_address_peer.address)
    await wait_until(lambda: len(sdp_address_peer.received) >= 3, "media to the SDP address")
    assert not harness.session.stats.latched

    real_peer.send(audio_packet(0), harness.address)
    await wait_until(lambda: len(real_peer.received) >= 5, "media to the latched source")
    stats = harness.session.stats
    assert stats.latched
    assert stats.send_address == real_peer.address
    assert stats.remote == sdp_address_peer.address
    count_at_sdp = len(sdp_address_peer.received)
    await settle()
    assert len(sdp_address_peer.received) <= count_at_sdp + 1  # at most one was in flight

    harness.session.update_remote(sdp_address_peer.address)  # a session refresh: same SDP
    assert harness.session.send_address == real_peer.address
    moved_peer = await peer_factory()
    harness.session.update_remote(moved_peer.address)  # re-INVITE to a new address: latch again
    assert harness.session.send_address == moved_peer.address
    assert not harness.session.stats.latched
    await wait_until(lambda: len(moved_peer.received) >= 3, "media to the new SDP address")


def dtmf_packets(
    digit_event: int, timestamp: int, first_sequence: int, ssrc: int = 0x5EED
) -> list[bytes]:
    durations = [(160, False), (320, False), (480, False), (640, True), (640, True), (640, True)]
    return [
        build_rtp(
            RtpPacket(
                payload_type=TELEPHONE_EVENT,
                sequence=(first_sequence + i) % 65536,
                timestamp=timestamp,
                ssrc=ssrc,
                marker=i == 0,
                payload=struct.pack("!BBH", digit_event, (0x80 if end else 0) | 10, duration),
            )
        )
        for i, (duration, end) in enumerate(durations)
    ]


async def test_dtmf_digits_reported_once_each(peer_factory, open_session) -> None:
    peer = await peer_factory()
    harness = await open_session(peer.address)
    datagrams = [audio_packet(i, first_sequence=100) for i in range(5)]
    sequence = 105
    timestamp = 3_000_000 + 5 * 160
    for event in (1, 5, 11):  # "1", "5", "#"
        datagrams += dtmf_packets(event, timestamp, sequence)
        sequence += 6
        timestamp += 800
    # Audio resumes where the sender's clock is now; sequence numbers continue.
    for offset in range(5):
        datagrams.append(
            build_rtp(
                RtpPacket(0, sequence + offset, timestamp + offset * 160, 0x5EED, False, SILENCE)
            )
        )
    for datagram in datagrams:
        peer.send(datagram, harness.address)
    await wait_until(lambda: harness.session.stats.datagrams_in == len(datagrams), "all received")
    await wait_until(lambda: len(harness.audio) >= 10, "audio around the digits")
    await settle()

    assert harness.digits == ["1", "5", "#"]
    assert harness.session.stats.dtmf_digits == 3
    # Telephone-events used sequence numbers, but no audio was lost or invented for them.
    assert harness.audio == [pattern_frame(i) for i in range(5)] + [SILENCE] * 5
    assert harness.session.stats.jitter.lost == 0


async def test_callback_exceptions_do_not_stop_media(peer_factory, open_session) -> None:
    peer = await peer_factory()
    delivered: list[bytes] = []

    def flaky_on_audio(frame: bytes) -> None:
        delivered.append(frame)
        if len(delivered) % 2:
            raise RuntimeError("application bug")

    harness = await open_session(peer.address, on_audio=flaky_on_audio)
    for index in range(6):
        peer.send(audio_packet(index), harness.address)
    await wait_until(lambda: len(delivered) >= 6, "all frames despite errors")
    harness.session.play(pattern_frame(0))
    await wait_until(lambda: len(peer.voiced()) >= 1, "outbound still flowing")
    assert delivered == [pattern_frame(i) for i in range(6)]
    assert harness.session.stats.callback_errors == 3


async def test_pcma_is_transcoded_both_ways(peer_factory, open_session) -> None:
    peer = await peer_factory()
    harness = await open_session(peer.address, payload_type=PCMA)
    mulaw_frames = [pattern_frame(i) for i in range(5)]
    for index, frame in enumerate(mulaw_frames):
        alaw = to_wire(frame, PCMA)
        peer.send(build_rtp(RtpPacket(8, index, index * 160, 1, False, alaw)), harness.address)
    harness.session.play(b"".join(mulaw_frames))
    await wait_until(lambda: len(harness.audio) >= 5, "inbound PCMA")
    await wait_until(
        lambda: sum(r.packet.payload != b"\xd5" * 160 for r in peer.received) >= 5, "outbound"
    )
    assert harness.audio == [from_wire(to_wire(f, PCMA), PCMA) for f in mulaw_frames]
    outbound = [r.packet for r in peer.received if r.packet.payload != b"\xd5" * 160]
    assert {r.packet.payload_type for r in peer.received} == {PCMA}
    assert [p.payload for p in outbound] == [to_wire(f, PCMA) for f in mulaw_frames]


async def test_close_is_idempotent_and_stops_sending(peer_factory, open_session) -> None:
    peer = await peer_factory()
    harness = await open_session(peer.address)
    await wait_until(lambda: len(peer.received) >= 2, "some packets")
    await harness.session.close()
    await harness.session.close()
    count = len(peer.received)
    await settle()
    assert len(peer.received) == count


async def test_hold_sends_nothing_and_unhold_plays_what_was_queued(
    peer_factory, open_session
) -> None:
    peer = await peer_factory()
    harness = await open_session(peer.address)
    session = harness.session
    await wait_until(lambda: len(peer.received) >= 3, "media before the hold")
    session.set_held(True)
    count_at_hold = len(peer.received)
    session.play(b"".join(pattern_frame(i) for i in range(10)))
    await settle(20)
    assert len(peer.received) <= count_at_hold + 1  # at most one was in flight
    session.set_held(False)
    await wait_until(lambda: len(peer.voiced()) >= 10, "the queued audio after the unhold")
    assert [p.payload for p in peer.voiced()] == [pattern_frame(i) for i in range(10)]


# ------------------------------------------------------------------- hostile network (issue 9)

ATTACK = b"\x42" * 160  # what an attacker would inject into the call (never a pattern frame)


@asynccontextmanager
async def streaming(
    peer: Peer, to: tuple[str, int], *, ssrc: int, first_index: int = 0
) -> AsyncIterator[list[int]]:
    """`peer` streams pattern frames to `to` in real time (one per 20 ms) inside the block.
    Yields [next index], which says how far the stream has got."""
    position = [first_index]

    async def run() -> None:
        while True:
            peer.send(audio_packet(position[0], ssrc=ssrc, first_sequence=100), to)
            position[0] += 1
            await asyncio.sleep(0.02)

    task = asyncio.create_task(run())
    try:
        yield position
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def frame_index(frame: bytes) -> int:
    return struct.unpack_from("!H", frame)[0]


@pytest.mark.parametrize(
    ("attack_packets", "paced"), [(3, False), (10, False), (100, False), (100, True)]
)
async def test_a_hijacker_gets_nothing_while_the_caller_is_live(
    peer_factory, open_session, attack_packets: int, paced: bool
) -> None:
    caller = await peer_factory()
    attacker = await peer_factory("127.0.0.2")
    harness = await open_session(caller.address)
    async with streaming(caller, harness.address, ssrc=0xCA11):
        await wait_until(lambda: len(harness.audio) >= 5, "the caller's audio at the agent")
        received_by_caller = len(caller.received)
        before = harness.session.stats.datagrams_in
        for index in range(attack_packets):  # a well-formed stream of its own
            attacker.send(audio_packet(index, ssrc=0xBAD, payload=ATTACK), harness.address)
            if paced:
                await asyncio.sleep(0.02)
        await wait_until(
            lambda: harness.session.stats.datagrams_in >= before + attack_packets + 5,
            "the attack and more of the caller's stream handled",
        )
        await settle()
        assert len(caller.received) > received_by_caller + 5  # the caller still hears the agent

    assert attacker.received == []
    assert ATTACK not in harness.audio
    stats = harness.session.stats
    assert stats.send_address == caller.address
    assert stats.dropped["rejected_foreign_source"] == attack_packets
    assert stats.relatches == 0


async def test_a_foreign_source_cannot_press_keys(peer_factory, open_session) -> None:
    caller = await peer_factory()
    attacker = await peer_factory("127.0.0.2")
    harness = await open_session(caller.address)
    async with streaming(caller, harness.address, ssrc=0x5EED):
        await wait_until(lambda: len(harness.audio) >= 5, "the caller's audio at the agent")
        before = harness.session.stats.datagrams_in
        keypress = dtmf_packets(0, timestamp=160, first_sequence=1, ssrc=0xBAD)  # "0": a human
        for datagram in keypress:
            attacker.send(datagram, harness.address)
        await wait_until(
            lambda: harness.session.stats.datagrams_in >= before + len(keypress) + 5,
            "the key press and more of the caller's stream handled",
        )
    assert harness.digits == []
    assert harness.session.stats.dropped["rejected_foreign_source"] == len(keypress)


async def test_after_the_caller_falls_silent_a_proper_run_from_a_new_source_takes_over(
    peer_factory, open_session
) -> None:
    """A NAT rebinding: the caller's stream goes on, same SSRC, from a new port."""
    caller = await peer_factory()
    rebound = await peer_factory("127.0.0.3")
    harness = await open_session(caller.address)
    async with streaming(caller, harness.address, ssrc=0xCA11) as position:
        await wait_until(lambda: len(harness.audio) >= 10, "the caller's audio at the agent")
    first_rebound_index = position[0]
    async with streaming(
        rebound, harness.address, ssrc=0xCA11, first_index=first_rebound_index
    ) as position:
        await wait_until(lambda: position[0] >= first_rebound_index + 25, "0.5 s of silence")
        assert rebound.received == []  # the old source is not silent long enough yet
        await wait_until(lambda: bool(rebound.received), "media moved to the new source")
        audio_at_relatch = len(harness.audio)
        received_by_caller = len(caller.received)
        await wait_until(
            lambda: len(harness.audio) >= audio_at_relatch + 10, "the new source's audio"
        )
    stats = harness.session.stats
    assert stats.send_address == rebound.address
    assert stats.relatches == 1
    assert len(caller.received) <= received_by_caller + 1  # at most one was in flight
    new_frames = [frame_index(f) for f in harness.audio[audio_at_relatch:]]
    assert new_frames == list(range(new_frames[0], new_frames[0] + len(new_frames)))
    assert new_frames[0] > first_rebound_index  # the run before the re-latch was not played


async def test_a_new_ssrc_from_the_latched_address_is_followed(peer_factory, open_session) -> None:
    """A phone restart or a B2BUA switching streams: same address, new SSRC."""
    caller = await peer_factory()
    harness = await open_session(caller.address)
    for index in range(10):
        caller.send(audio_packet(index, ssrc=0x1111), harness.address)
    for index in range(10, 20):
        caller.send(audio_packet(index, ssrc=0x2222, first_sequence=7), harness.address)
    await wait_until(lambda: pattern_frame(19) in harness.audio, "the new stream's audio")
    assert harness.session.stats.send_address == caller.address
    assert harness.session.stats.relatches == 0


class BreakableSocket(socket.socket):
    """A UDP socket whose sendto raises what a bad address makes it raise, once broken."""

    broken = False

    def sendto(self, *args: Any) -> int:
        if self.broken:
            raise OverflowError("sendto(): port must be 0-65535.")
        return super().sendto(*args)


async def test_a_lost_transport_is_reported_exactly_once(peer_factory, open_session) -> None:
    peer = await peer_factory()
    lost: list[str] = []
    sock = udp_socket(sock_class=BreakableSocket)
    harness = await open_session(peer.address, sock=sock, on_transport_lost=lost.append)
    if harness.session.sends_from_thread:
        pytest.skip("the media thread sends on the descriptor (the test below)")
    if not isinstance(asyncio.get_running_loop(), asyncio.BaseEventLoop):
        # uvloop sends with libuv on the file descriptor, never through the socket object.
        pytest.skip("the broken socket only breaks asyncio's own datagram transport")
    await wait_until(lambda: len(peer.received) >= 3, "media before the failure")
    sock.broken = True  # asyncio closes the transport on a non-OSError from sendto
    await wait_until(lambda: bool(lost), "the loss reported")
    await settle()
    await harness.session.close()
    assert len(lost) == 1
    assert "OverflowError" in lost[0]


async def test_a_descriptor_broken_under_the_media_thread_is_a_lost_transport_once(
    peer_factory, open_session
) -> None:
    peer = await peer_factory()
    lost: list[str] = []
    sock = udp_socket()
    harness = await open_session(peer.address, sock=sock, on_transport_lost=lost.append)
    if not harness.session.sends_from_thread:
        pytest.skip("on the event loop the transport reports its own loss (the test above)")
    await wait_until(lambda: len(peer.received) >= 3, "media before the failure")
    read_end, write_end = os.pipe()
    try:
        os.dup2(write_end, sock.fileno())  # the descriptor is now a pipe: ENOTSOCK
        await wait_until(lambda: bool(lost), "the loss reported")
        await settle()
        await harness.session.close()
    finally:
        os.close(read_end)
        os.close(write_end)
    assert len(lost) == 1
    assert "non-socket" in lost[0]  # ENOTSOCK


async def test_our_own_close_is_not_a_lost_transport(peer_factory, open_session) -> None:
    peer = await peer_factory()
    lost: list[str] = []
    harness = await open_session(peer.address, on_transport_lost=lost.append)
    await wait_until(lambda: len(peer.received) >= 3, "media")
    await harness.session.close()
    await settle()
    assert lost == []


BAD_REMOTES = [
    pytest.param(("127.0.0.1", 65536), id="port 65536"),
    pytest.param(("127.0.0.1", 0), id="port 0"),
    pytest.param(("slow.example.com", 4000), id="host name"),
    pytest.param(("fd00::2", 4000), id="IPv6 on an IPv4 socket"),
    pytest.param(("127.0.0.1\x00", 4000), id="NUL byte"),
]


@pytest.mark.parametrize("remote", BAD_REMOTES)
async def test_a_bad_remote_is_refused_at_open(open_session, remote) -> None:
    sock = udp_socket()
    with pytest.raises(ValueError):
        await open_session(remote, sock=sock)
    assert sock.fileno() == -1  # the session owned it: not leaked


@pytest.mark.parametrize("remote", BAD_REMOTES)
async def test_a_bad_remote_is_refused_at_update_remote(peer_factory, open_session, remote) -> None:
    peer = await peer_factory()
    lost: list[str] = []
    harness = await open_session(peer.address, on_transport_lost=lost.append)
    with pytest.raises(ValueError):
        harness.session.update_remote(remote)
    assert harness.session.send_address == peer.address
    count = len(peer.received)
    await wait_until(lambda: len(peer.received) >= count + 5, "media still flowing")
    assert lost == []


@pytest.mark.parametrize(
    ("payload_type", "codec", "wire"),
    [
        pytest.param(96, "PCMU", lambda frame: frame, id="PT 96 PCMU"),
        pytest.param(97, "PCMA", lambda frame: to_wire(frame, PCMA), id="PT 97 PCMA"),
    ],
)
async def test_a_dynamic_payload_type_carries_the_codec_named_in_the_sdp(
    peer_factory, open_session, payload_type: int, codec: str, wire
) -> None:
    peer = await peer_factory()
    harness = await open_session(peer.address, payload_type=payload_type, codec=codec)
    frames = [pattern_frame(i) for i in range(5)]
    for index, frame in enumerate(frames):
        peer.send(
            audio_packet(index, payload_type=payload_type, payload=wire(frame)), harness.address
        )
    harness.session.play(b"".join(frames))
    silence = wire(SILENCE)
    await wait_until(lambda: len(harness.audio) >= 5, "inbound audio")
    await wait_until(
        lambda: sum(r.packet.payload != silence for r in peer.received) >= 5, "outbound audio"
    )
    await wait_until(lambda: peer.received[-1].packet.payload == silence, "silence after it")
    assert harness.audio == [from_wire(wire(f), PCMA) if codec == "PCMA" else f for f in frames]
    assert {r.packet.payload_type for r in peer.received} == {payload_type}
    outbound = [r.packet.payload for r in peer.received if r.packet.payload != silence]
    assert outbound == [wire(f) for f in frames]


async def test_a_dynamic_payload_type_without_a_codec_name_is_refused(open_session) -> None:
    with pytest.raises(ValueError):
        await open_session(("127.0.0.1", 4000), payload_type=96)


# ------------------------------------------------- the media clock and playout events (issue 13)


async def test_drained_resolves_when_the_last_queued_frame_has_gone_out(
    peer_factory, open_session
) -> None:
    peer = await peer_factory()
    harness = await open_session(peer.address)
    session = harness.session
    await asyncio.wait_for(session.drained(), 1)  # nothing queued: at once
    frames = [pattern_frame(i) for i in range(10)]
    session.play(b"".join(frames))
    assert session.queued_ms > 0
    await asyncio.wait_for(session.drained(), LIVENESS_TIMEOUT)
    assert session.queued_ms == 0
    assert session.sent_audio_ms == pytest.approx(200)  # every frame handed to the socket
    await wait_until(lambda: len(peer.voiced()) == 10, "the frames at the peer")
    assert [p.payload for p in peer.voiced()] == frames

    session.play(b"".join(frames))
    waiter = asyncio.create_task(session.drained())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    session.flush()  # a barge-in drains the queue too
    await asyncio.wait_for(waiter, 1)


async def test_first_packet_sent_resolves_with_the_reply_s_first_wire_time(
    peer_factory, open_session
) -> None:
    peer = await peer_factory()
    harness = await open_session(peer.address)
    session = harness.session
    await wait_until(lambda: len(peer.received) >= 3, "silence before the reply")
    before = session.talkspurt_started_at
    waiter = asyncio.create_task(session.first_packet_sent(before))
    await asyncio.sleep(0.05)
    assert not waiter.done()  # nothing played yet
    session.play(pattern_frame(0))  # one frame: the next pass sends it
    sent_at = await asyncio.wait_for(waiter, LIVENESS_TIMEOUT)
    assert sent_at is not None and sent_at == session.talkspurt_started_at
    await wait_until(lambda: bool(peer.voiced()), "the reply at the peer")
    first = next(r for r in peer.received if r.packet.payload != SILENCE)
    assert first.packet.marker and first.at >= sent_at
    # Asked after the fact, it answers at once; a session that closes answers None.
    assert await session.first_packet_sent(before) == sent_at
    pending = asyncio.create_task(session.first_packet_sent(sent_at))
    await asyncio.sleep(0.05)
    await session.close()
    assert await asyncio.wait_for(pending, 1) is None
    await asyncio.wait_for(session.drained(), 1)


async def test_every_session_is_served_by_the_one_media_clock(peer_factory, open_session) -> None:
    peer = await peer_factory()
    tasks_before = len(asyncio.all_tasks())
    threads_before = threading.active_count()
    harnesses = [await open_session(peer.address)]
    clock: MediaClock | ThreadedMediaClock = (
        ThreadedMediaClock.for_loop()
        if harnesses[0].session.sends_from_thread
        else MediaClock.for_loop()
    )
    before = len(clock) - 1
    harnesses += [await open_session(peer.address) for _ in range(19)]
    assert len(clock) == before + 20
    assert len(asyncio.all_tasks()) == tasks_before  # no task per call
    assert threading.active_count() <= threads_before + 1  # no thread per call either
    passes, served = clock.passes, clock.served
    await asyncio.sleep(0.5)
    for harness in harnesses:
        await harness.session.close()
    assert len(clock) == before
    # About 25 frames per session; sessions due together share a wake-up.
    assert clock.served - served >= 20 * 20
    assert clock.passes - passes < clock.served - served
    by_ssrc: dict[int, list[RtpPacket]] = {}
    for received in peer.received:
        by_ssrc.setdefault(received.packet.ssrc, []).append(received.packet)
    assert len(by_ssrc) == 20
    for packets in by_ssrc.values():
        for before_packet, after in itertools.pairwise(packets):
            assert after.sequence == (before_packet.sequence + 1) % 65536


QUIET = bytes([0xF0, 0x70, 0xE8, 0x68]) * 40  # low noise: a pause between sentences


async def test_a_busy_event_loop_does_not_hold_up_a_media_thread(
    peer_factory, open_session
) -> None:
    # What the thread is for: a provider SDK's step holding the loop (and the GIL) for
    # milliseconds. Here the loop computes for 300 ms without once yielding.
    peer = await peer_factory()
    harness = await open_session(peer.address)
    session = harness.session
    if not session.sends_from_thread:
        pytest.skip("on the event loop, frames wait for the loop (the test below)")
    words = [pattern_frame(i) for i in range(60)]
    session.play(b"".join(words))
    await wait_until(lambda: len(peer.voiced()) >= 10, "the reply under way")
    sent_before = session.stats.packets_out
    busy_until = time.monotonic() + 0.3
    spins = 0
    while time.monotonic() < busy_until:  # pure Python work: the GIL is only handed over
        spins += 1
    sent_during = session.stats.packets_out - sent_before
    assert sent_during >= 10  # of the 15 slots in 300 ms (the rest: a loaded test machine)
    await asyncio.wait_for(session.drained(), LIVENESS_TIMEOUT)
    await wait_until(lambda: pattern_frame(59) in [p.payload for p in peer.voiced()], "the end")
    assert [p.payload for p in peer.voiced()] == words
    packets = [r.packet for r in peer.received]
    for before, after in itertools.pairwise(packets):
        assert after.sequence == (before.sequence + 1) % 65536


async def test_a_stall_mid_reply_skips_slots_instead_of_bursting_and_its_delay_is_shed(
    peer_factory, open_session
) -> None:
    peer = await peer_factory()
    harness = await open_session(peer.address)
    session = harness.session
    if session.sends_from_thread:
        pytest.skip("a stalled loop does not stall the media thread (the test above)")
    words = [pattern_frame(i) for i in range(60)]
    # Two sentences with a 0.6 s pause between them; the loop stalls 300 ms in the first.
    session.play(b"".join(words[:30]) + QUIET * 30 + b"".join(words[30:]))
    await wait_until(lambda: len(peer.voiced()) >= 10, "the reply under way")
    time.sleep(0.3)  # the stall under test: nothing else runs
    await asyncio.wait_for(session.drained(), LIVENESS_TIMEOUT)
    await wait_until(lambda: pattern_frame(59) in [p.payload for p in peer.voiced()], "the end")

    stats = session.stats
    assert [p.payload for p in peer.voiced() if p.payload != QUIET] == words  # every word
    packets = [r.packet for r in peer.received]
    for before, after in itertools.pairwise(packets):
        assert after.sequence == (before.sequence + 1) % 65536

    first_word_timestamp = next(p.timestamp for p in packets if p.payload == words[0])

    def slot(frame: bytes) -> int:
        """The frame's RTP time, in frames since the reply's first word."""
        packet = next(p for p in packets if p.payload == frame)
        return (packet.timestamp - first_word_timestamp) % 2**32 // 160

    stall_skip = max(
        (after.timestamp - before.timestamp) % 2**32 // 160 - 1
        for before, after in itertools.pairwise(packets)
    )
    # The stall's slots were given up in one timestamp jump, not sent as a burst of late
    # frames: the rest of the first sentence is that much later...
    assert stall_skip >= 12
    assert slot(words[29]) == 29 + stall_skip
    # ...and the pause was that much shorter, so the second sentence is where it would have
    # been without the stall (give or take slots a loaded test machine skipped after it).
    assert stats.frames_shed >= stall_skip
    skipped_after_pause = stats.frames_skipped - stats.frames_shed
    assert slot(words[30]) == 60 + skipped_after_pause
    assert slot(words[59]) == 89 + skipped_after_pause


async def test_reading_stats_sends_frames_that_fell_due_meanwhile(
    peer_factory, open_session
) -> None:
    # A status poll reads every call's stats in one callback: frames due meanwhile go out
    # between the reads, not after the whole poll.
    peer = await peer_factory()
    harnesses = [await open_session(peer.address) for _ in range(3)]
    await wait_until(lambda: len(peer.received) >= 9, "media")
    sent_before = [h.session.stats.packets_out for h in harnesses]
    time.sleep(0.05)  # the poll's own work, for the length of two frames
    sent_during = [h.session.stats.packets_out for h in harnesses]
    assert all(during > before for before, during in zip(sent_before, sent_during, strict=True))

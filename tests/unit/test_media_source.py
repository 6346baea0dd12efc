"""RtpSourceLatch (where inbound RTP may come from) and validate_remote, in virtual time."""

import socket

import pytest

from sipagent.media.rtp import RtpPacket
from sipagent.media.source import (
    RELATCH_RUN,
    RELATCH_SILENCE,
    RtpSourceLatch,
    SourceVerdict,
    validate_remote,
)

SDP = ("192.0.2.10", 4000)
CALLER = ("203.0.113.5", 31000)  # the caller's NAT: not what its SDP says
ATTACKER = ("198.51.100.66", 5004)
REBOUND = ("203.0.113.5", 31044)  # the caller's NAT after a rebinding
FRAME = 0.02
PCMU, TELEPHONE_EVENT, COMFORT_NOISE = 0, 101, 13


def packet(index: int, *, ssrc: int = 0xCA11E4, payload_type: int = PCMU) -> RtpPacket:
    return RtpPacket(
        payload_type=payload_type,
        sequence=(60_000 + index) % 65536,
        timestamp=(1_000 + index * 160) % 2**32,
        ssrc=ssrc,
        marker=False,
        payload=b"\x01" * 160,
    )


class Stream:
    """One sender: consecutive packets of one SSRC, stamped 20 ms apart from `start`."""

    def __init__(self, address: tuple[str, int], ssrc: int, start: float = 0.0) -> None:
        self.address = address
        self.ssrc = ssrc
        self.start = start
        self.index = 0

    def send(self, latch: RtpSourceLatch, now: float | None = None) -> SourceVerdict:
        at = self.start + self.index * FRAME if now is None else now
        verdict = latch.check(self.address, packet(self.index, ssrc=self.ssrc), at)
        self.index += 1
        return verdict

    def times(self, count: int) -> list[float]:
        """When this stream's next `count` packets are due."""
        return [self.start + (self.index + i) * FRAME for i in range(count)]


def latched_to_caller() -> tuple[RtpSourceLatch, Stream]:
    latch = RtpSourceLatch(SDP, {PCMU, TELEPHONE_EVENT})
    caller = Stream(CALLER, ssrc=0xCA11E4)
    assert latch.send_address == SDP  # before anything arrives: where the SDP said
    assert caller.send(latch) is SourceVerdict.LATCHED  # comedia: the first source
    return latch, caller


def test_first_source_latches_and_its_packets_are_accepted() -> None:
    latch, caller = latched_to_caller()
    assert latch.latched_address == CALLER
    assert latch.send_address == CALLER
    assert [caller.send(latch) for _ in range(5)] == [SourceVerdict.ACCEPT] * 5


def test_a_non_media_packet_does_not_latch() -> None:
    latch = RtpSourceLatch(SDP, {PCMU})
    assert latch.check(ATTACKER, packet(0, payload_type=96), 0.0) is SourceVerdict.ACCEPT
    assert latch.latched_address is None
    assert latch.send_address == SDP


@pytest.mark.parametrize("attack_packets", [3, 10, 100])
def test_a_new_source_never_takes_over_while_the_caller_is_live(attack_packets: int) -> None:
    latch, caller = latched_to_caller()
    attacker = Stream(ATTACKER, ssrc=0xBAD)
    verdicts = []
    for _ in range(attack_packets):
        caller.send(latch)
        # A well-formed stream, each packet right after one of the caller's.
        verdicts.append(attacker.send(latch, now=caller.start + caller.index * FRAME))
    assert set(verdicts) == {SourceVerdict.REJECT_FOREIGN_SOURCE}
    assert latch.send_address == CALLER
    assert latch.rejected == {
        "rejected_foreign_source": attack_packets,
        "rejected_address_family": 0,
    }
    assert latch.relatches == 0


def test_a_burst_within_the_silence_threshold_is_rejected() -> None:
    latch, caller = latched_to_caller()
    last_heard = caller.start
    burst_at = last_heard + RELATCH_SILENCE * 0.9
    attacker = Stream(ATTACKER, ssrc=0xBAD)
    verdicts = {attacker.send(latch, now=burst_at) for _ in range(200)}
    assert verdicts == {SourceVerdict.REJECT_FOREIGN_SOURCE}
    assert latch.send_address == CALLER


def test_after_a_real_silence_a_proper_run_relatches() -> None:
    """The NAT-rebinding case: the old source falls silent, the same phone goes on from a
    new port; media follows once the silence and the run are both long enough."""
    latch, caller = latched_to_caller()
    for _ in range(50):
        caller.send(latch)
    caller_last = caller.start + (caller.index - 1) * FRAME
    rebound = Stream(REBOUND, ssrc=0xCA11E4, start=caller_last + FRAME)
    verdicts = [(at, rebound.send(latch)) for at in rebound.times(200)]

    relatched_at = [at for at, verdict in verdicts if verdict is SourceVerdict.RELATCHED]
    assert len(relatched_at) == 1
    assert relatched_at[0] - caller_last >= RELATCH_SILENCE
    assert relatched_at[0] - caller_last < RELATCH_SILENCE + FRAME  # not later than needed
    before = [verdict for at, verdict in verdicts if at < relatched_at[0]]
    after = [verdict for at, verdict in verdicts if at > relatched_at[0]]
    assert set(before) == {SourceVerdict.REJECT_FOREIGN_SOURCE}
    assert set(after) == {SourceVerdict.ACCEPT}
    assert latch.send_address == REBOUND
    assert latch.relatches == 1
    # The old source is now the foreign one.
    assert caller.send(latch, now=relatched_at[0] + 0.1) is SourceVerdict.REJECT_FOREIGN_SOURCE


def test_the_run_must_be_long_enough_even_after_a_long_silence() -> None:
    latch, _ = latched_to_caller()
    newcomer = Stream(ATTACKER, ssrc=0xBAD, start=10.0)
    verdicts = [newcomer.send(latch) for _ in range(RELATCH_RUN)]
    assert verdicts[:-1] == [SourceVerdict.REJECT_FOREIGN_SOURCE] * (RELATCH_RUN - 1)
    assert verdicts[-1] is SourceVerdict.RELATCHED


def run_verdicts(latch: RtpSourceLatch, packets: list[RtpPacket], start: float) -> set:
    return {latch.check(ATTACKER, p, start + i * FRAME) for i, p in enumerate(packets)}


@pytest.mark.parametrize(
    "make_packet",
    [
        pytest.param(lambda i: packet(i * 7), id="sequence jumps"),
        pytest.param(lambda i: packet(i, ssrc=i), id="ssrc changes"),
        pytest.param(lambda i: packet(i, payload_type=96), id="payload type not negotiated"),
        pytest.param(
            lambda i: packet(i) if i % 2 else packet(i, payload_type=96),
            id="every other packet not negotiated",
        ),
        pytest.param(lambda i: RtpPacket(PCMU, i, i * 16_000, 1, False, b""), id="timestamp leaps"),
        pytest.param(lambda i: packet(-i), id="sequence runs backwards"),
    ],
)
def test_an_invalid_run_never_relatches(make_packet) -> None:
    latch, _ = latched_to_caller()
    verdicts = run_verdicts(latch, [make_packet(i) for i in range(500)], start=10.0)
    assert verdicts == {SourceVerdict.REJECT_FOREIGN_SOURCE}
    assert latch.send_address == CALLER


def test_a_run_with_pauses_longer_than_a_second_never_relatches() -> None:
    latch, _ = latched_to_caller()
    verdicts = {latch.check(ATTACKER, packet(i), 10.0 + i * 1.1) for i in range(100)}
    assert verdicts == {SourceVerdict.REJECT_FOREIGN_SOURCE}


def test_one_lost_packet_does_not_break_a_run() -> None:
    latch, _ = latched_to_caller()
    indexes = [i for i in range(RELATCH_RUN + 1) if i != 5]
    verdicts = [latch.check(REBOUND, packet(i), 10.0 + i * FRAME) for i in indexes]
    assert verdicts[-1] is SourceVerdict.RELATCHED


def test_another_address_family_is_rejected_whatever_it_sends() -> None:
    latch, _ = latched_to_caller()
    v6 = ("2001:db8::66", 5004)
    verdicts = {latch.check(v6, packet(i), 10.0 + i * FRAME) for i in range(100)}
    assert verdicts == {SourceVerdict.REJECT_ADDRESS_FAMILY}
    assert latch.rejected["rejected_address_family"] == 100
    fresh = RtpSourceLatch(SDP, {PCMU})
    assert fresh.check(v6, packet(0), 0.0) is SourceVerdict.REJECT_ADDRESS_FAMILY
    assert fresh.latched_address is None


def test_comfort_noise_keeps_the_caller_live() -> None:
    latch, _ = latched_to_caller()
    attacker = Stream(ATTACKER, ssrc=0xBAD, start=0.5)
    verdicts = set()
    for at in attacker.times(400):
        if round(at / FRAME) % 25 == 0:  # CN every 500 ms: a phone's silence suppression
            latch.check(CALLER, packet(0, payload_type=COMFORT_NOISE), at)
        verdicts.add(attacker.send(latch, now=at))
    assert verdicts == {SourceVerdict.REJECT_FOREIGN_SOURCE}


def test_packets_from_other_sources_between_a_real_runs_packets_do_not_break_it() -> None:
    latch, _ = latched_to_caller()
    rebound = Stream(REBOUND, ssrc=0xCA11E4, start=10.0)
    relatched = False
    for number, at in enumerate(rebound.times(RELATCH_RUN)):
        latch.check(ATTACKER, packet(number * 5, ssrc=number), at)  # a stream of its own
        for spray in range(2):  # and new addresses with a single packet each
            latch.check(("198.51.100.7", 10_000 + number * 2 + spray), packet(0), at)
        relatched = rebound.send(latch) is SourceVerdict.RELATCHED
    assert relatched
    assert latch.send_address == REBOUND


def test_the_sdp_address_wins_back_media_from_a_first_packet_racer() -> None:
    """An attacker who sends first is latched (comedia cannot tell); the real peer's first
    packet from the address its SDP gave takes media back at once, even though the racer is
    live, and the racer cannot take it back while the peer is live."""
    latch = RtpSourceLatch(SDP, {PCMU})
    racer = Stream(ATTACKER, ssrc=0xBAD)
    peer = Stream(SDP, ssrc=0x600D)
    assert racer.send(latch, now=0.0) is SourceVerdict.LATCHED
    verdicts = []
    for at in peer.times(RELATCH_RUN):
        racer.send(latch, now=at)
        verdicts.append(peer.send(latch))
    assert verdicts[0] is SourceVerdict.RELATCHED  # not a single caller frame more is lost
    assert set(verdicts[1:]) == {SourceVerdict.ACCEPT}
    assert latch.send_address == SDP
    racer_verdicts = set()
    for at in peer.times(100):
        peer.send(latch)
        racer_verdicts.add(racer.send(latch, now=at))
    assert racer_verdicts == {SourceVerdict.REJECT_FOREIGN_SOURCE}


def test_no_other_source_takes_over_while_the_caller_is_on_hold() -> None:
    """On hold (a=inactive) the caller sends nothing for minutes: that silence proves nothing."""
    latch, _ = latched_to_caller()
    latch.set_held(True, now=1.0)
    newcomer = Stream(ATTACKER, ssrc=0xBAD, start=100.0)
    assert {newcomer.send(latch) for _ in range(500)} == {SourceVerdict.REJECT_FOREIGN_SOURCE}
    unheld_at = 110.0
    latch.set_held(False, now=unheld_at)
    # After the unhold the caller gets a fresh silence allowance before anyone may take over.
    verdicts = [(at, newcomer.send(latch)) for at in newcomer.times(200)]
    relatched_at = [at for at, verdict in verdicts if verdict is SourceVerdict.RELATCHED]
    assert relatched_at
    assert relatched_at[0] - unheld_at >= RELATCH_SILENCE


def test_restart_with_the_same_address_keeps_the_latch() -> None:
    latch, _ = latched_to_caller()
    latch.restart(SDP)  # a session refresh or hold and back: same SDP address
    assert latch.latched_address == CALLER
    assert latch.check(ATTACKER, packet(0), 1.0) is SourceVerdict.REJECT_FOREIGN_SOURCE


def test_restart_latches_afresh() -> None:
    latch, _ = latched_to_caller()
    moved = ("192.0.2.77", 6000)
    latch.restart(moved)
    assert latch.latched_address is None
    assert latch.send_address == moved
    assert latch.check(REBOUND, packet(0), 1.0) is SourceVerdict.LATCHED
    assert latch.send_address == REBOUND


# ---------------------------------------------------------------------------- validate_remote


@pytest.mark.parametrize(
    ("remote", "family", "expected"),
    [
        (("127.0.0.1", 5004), socket.AF_INET, ("127.0.0.1", 5004)),
        (("0.0.0.0", 9), socket.AF_INET, ("0.0.0.0", 9)),  # RFC 2543 hold: legal, never sent to
        (("192.0.2.1", 65535), socket.AF_INET, ("192.0.2.1", 65535)),
        (("FD00:0:0::2", 1), socket.AF_INET6, ("fd00::2", 1)),  # as the kernel spells sources
    ],
)
def test_validate_remote_accepts_ip_literals(remote, family, expected) -> None:
    assert validate_remote(remote, family) == expected


@pytest.mark.parametrize(
    ("remote", "family"),
    [
        (("127.0.0.1", 65536), socket.AF_INET),
        (("127.0.0.1", 10**20), socket.AF_INET),
        (("127.0.0.1", 0), socket.AF_INET),
        (("127.0.0.1", -1), socket.AF_INET),
        (("127.0.0.1", "5004"), socket.AF_INET),
        (("127.0.0.1", True), socket.AF_INET),
        (("slow.example.com", 5004), socket.AF_INET),
        (("fd00::2", 5004), socket.AF_INET),
        (("127.0.0.1", 5004), socket.AF_INET6),
        (("127.0.0.1\x00", 5004), socket.AF_INET),
        (("127.0.\x000.1", 5004), socket.AF_INET),
        (("", 5004), socket.AF_INET),
        ((b"127.0.0.1", 5004), socket.AF_INET),
        (("224.0.0.1", 5004), socket.AF_INET),
        (("fe80::1%lo", 5004), socket.AF_INET6),
        (("127.0.0.1", 5004, 0), socket.AF_INET),
        ("127.0.0.1:5004", socket.AF_INET),
    ],
)
def test_validate_remote_refuses_what_sendto_could_choke_on(remote, family) -> None:
    with pytest.raises(ValueError):
        validate_remote(remote, family)

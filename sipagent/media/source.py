"""Where a call's inbound RTP may come from, and so where its outbound RTP goes.

Sans-IO like the rest of sipagent.media: addresses and packets in, verdicts out; time is
passed in by the caller. RtpSession is the adapter that feeds it datagrams.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
from dataclasses import dataclass
from typing import Final

from sipagent.media.rtp import SEQUENCE_MODULO, TIMESTAMP_MODULO, RtpPacket

Address = tuple[str, int]

# A new source must send this many valid, in-sequence packets of one SSRC (320 ms of
# 20 ms audio) before media moves to it: a few sprayed packets never qualify.
RELATCH_RUN: Final = 16
# ...and the current source must have been silent this long: a live caller is never
# displaced. A NAT rebinding costs this much of the agent's audio, once.
RELATCH_SILENCE: Final = 1.5
_MAX_SEQUENCE_STEP: Final = 3  # one or two lost packets do not break a run
_MAX_SAMPLES_PER_STEP: Final = 8000  # 1 s of 8 kHz audio per sequence step, at most
_RUN_GAP: Final = 1.0  # seconds without a packet that end a candidate's run
_MAX_CANDIDATES: Final = 4  # sources tracked at once; the stalest is forgotten first


def validate_remote(remote: object, family: int) -> Address:
    """`remote` as the (IP literal, port) tuple a UDP socket of `family` can send to.

    Raises ValueError for anything `sendto` could choke on or would have to resolve: host
    names (never resolved here), another address family, NUL bytes, ports outside 1-65535,
    and multicast groups (call audio goes to one peer only). The host comes back in the
    form the kernel reports sources in, so it compares equal to them.
    """
    if not isinstance(remote, tuple) or len(remote) != 2:
        raise ValueError(f"RTP remote must be a (host, port) pair, not {remote!r}")
    host, port = remote
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ValueError(f"RTP remote port must be 1-65535, not {port!r}")
    if not isinstance(host, str):
        raise ValueError(f"RTP remote host must be an IP literal, not {host!r}")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"RTP remote host is not an IP literal: {host!r}") from None
    wanted_version = 4 if family == socket.AF_INET else 6 if family == socket.AF_INET6 else None
    if ip.version != wanted_version:
        raise ValueError(f"RTP remote {host!r} does not fit a socket of family {family!r}")
    if ip.is_multicast:
        raise ValueError(f"RTP remote {host!r} is a multicast group")
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        raise ValueError(f"RTP remote {host!r} has a scope id")
    return socket.inet_ntop(family, ip.packed), port


def _same_family(a: Address, b: Address) -> bool:
    return (":" in a[0]) == (":" in b[0])


class SourceVerdict(enum.Enum):
    ACCEPT = "accept"  # from the latched source (or nothing is latched and it cannot latch)
    LATCHED = "latched"  # the first source: media goes there from now on
    RELATCHED = "relatched"  # media moves to this new source: reset the stream state
    REJECT_FOREIGN_SOURCE = "rejected_foreign_source"
    REJECT_ADDRESS_FAMILY = "rejected_address_family"

    @property
    def accepted(self) -> bool:
        return self in _ACCEPTED


_ACCEPTED: Final = frozenset({SourceVerdict.ACCEPT, SourceVerdict.LATCHED, SourceVerdict.RELATCHED})


@dataclass(slots=True)
class _Candidate:
    ssrc: int
    sequence: int
    timestamp: int
    last_at: float
    run: int = 1


class RtpSourceLatch:
    """Symmetric RTP (RFC 4961, "comedia") that cannot be hijacked by a few packets.

    Media is sent to the SDP address until the first packet with an allowed payload type
    arrives; from then on, to that packet's source (what gets through NATs that rewrite the
    announced address). Packets from any other source are rejected, and media moves to a
    new source only when it sends a run of `relatch_run` valid in-sequence packets of one
    SSRC while the latched source has been silent for `relatch_silence` seconds (a NAT
    rebinding, a moved phone). The SDP address itself is taken back on its first media
    packet: moving media to where the signalling said cannot leak it to a third party, and
    it undoes an attacker winning the first-packet race before the caller's audio lost more
    than a frame. SSRC changes from the latched source itself are
    not this class's concern (InboundRtpFilter re-locks on them).
    """

    def __init__(
        self,
        signalled: Address,
        allowed_payload_types: set[int],
        *,
        relatch_run: int = RELATCH_RUN,
        relatch_silence: float = RELATCH_SILENCE,
    ) -> None:
        if relatch_run < 2:
            raise ValueError("relatch_run must be at least 2")
        self._signalled = signalled
        self._allowed = frozenset(allowed_payload_types)
        self._relatch_run = relatch_run
        self._relatch_silence = relatch_silence
        self._latched: Address | None = None
        self._last_heard = float("-inf")  # when the latched source last sent anything
        self._held = False
        self._candidates: dict[Address, _Candidate] = {}
        self.relatches = 0
        self.rejected_foreign_source = 0
        self.rejected_address_family = 0

    @property
    def latched_address(self) -> Address | None:
        return self._latched

    @property
    def send_address(self) -> Address:
        return self._latched or self._signalled

    @property
    def rejected(self) -> dict[str, int]:
        return {
            SourceVerdict.REJECT_FOREIGN_SOURCE.value: self.rejected_foreign_source,
            SourceVerdict.REJECT_ADDRESS_FAMILY.value: self.rejected_address_family,
        }

    def set_held(self, held: bool, now: float) -> None:
        """On hold (a=sendonly/inactive) the far end may legitimately fall silent for minutes:
        its silence proves nothing then, so no other source can take over. The silence is
        counted afresh from the unhold."""
        self._held = held
        self._last_heard = max(self._last_heard, now)

    def restart(self, signalled: Address) -> None:
        """New SDP address (re-INVITE): latch afresh on the next packet.

        An unchanged address (a session refresh, hold and back) keeps the latch: starting
        over would open the first-packet race to anyone spraying the port.
        """
        if signalled == self._signalled:
            return
        self._signalled = signalled
        self._latched = None
        self._last_heard = float("-inf")
        self._candidates.clear()

    def check(self, source: Address, packet: RtpPacket, now: float) -> SourceVerdict:
        """Judge one parsed packet by where it came from. Only accepted ones may be used."""
        if source == self._latched:
            # Any packet counts as life (comfort noise too): a live source is never displaced.
            self._last_heard = now
            return SourceVerdict.ACCEPT
        if self._latched is None:
            if not _same_family(source, self._signalled):
                self.rejected_address_family += 1
                return SourceVerdict.REJECT_ADDRESS_FAMILY
            if packet.payload_type not in self._allowed:
                return SourceVerdict.ACCEPT  # not a media packet: it neither latches nor plays
            self._latch(source, now)
            return SourceVerdict.LATCHED
        if not _same_family(source, self._latched):
            self.rejected_address_family += 1
            return SourceVerdict.REJECT_ADDRESS_FAMILY
        if source == self._signalled and packet.payload_type in self._allowed:
            # Where the signalling said: taken back at once. An attacker who won the
            # first-packet race by spraying the port loses it on the caller's first packet
            # (only IP spoofing could fake this source, and then no rule would hold).
            self._latch(source, now)
            self.relatches += 1
            return SourceVerdict.RELATCHED
        if (
            self._extend_run(source, packet, now) >= self._relatch_run
            and not self._held
            and now - self._last_heard >= self._relatch_silence
        ):
            self._latch(source, now)
            self.relatches += 1
            return SourceVerdict.RELATCHED
        self.rejected_foreign_source += 1
        return SourceVerdict.REJECT_FOREIGN_SOURCE

    def _latch(self, source: Address, now: float) -> None:
        self._latched = source
        self._last_heard = now
        self._candidates.clear()

    def _weight(self, source: Address, now: float) -> tuple[int, float]:
        candidate = self._candidates[source]
        live_run = candidate.run if now - candidate.last_at <= _RUN_GAP else 0
        return live_run, candidate.last_at

    def _extend_run(self, source: Address, packet: RtpPacket, now: float) -> int:
        """Length of `source`'s current run of valid in-sequence packets, this one included."""
        if packet.payload_type not in self._allowed:
            self._candidates.pop(source, None)
            return 0
        candidate = self._candidates.get(source)
        if candidate is None:
            if len(self._candidates) >= _MAX_CANDIDATES:
                # Forget the weakest run, so that sprayed single packets cannot push out a
                # real stream that is working towards a re-latch.
                del self._candidates[min(self._candidates, key=lambda a: self._weight(a, now))]
            self._candidates[source] = _Candidate(
                packet.ssrc, packet.sequence, packet.timestamp, now
            )
            return 1
        sequence_step = (packet.sequence - candidate.sequence) % SEQUENCE_MODULO
        in_run = (
            packet.ssrc == candidate.ssrc
            and 1 <= sequence_step <= _MAX_SEQUENCE_STEP
            and (packet.timestamp - candidate.timestamp) % TIMESTAMP_MODULO
            <= sequence_step * _MAX_SAMPLES_PER_STEP
            and now - candidate.last_at <= _RUN_GAP
        )
        candidate.run = candidate.run + 1 if in_run else 1
        candidate.ssrc = packet.ssrc
        candidate.sequence = packet.sequence
        candidate.timestamp = packet.timestamp
        candidate.last_at = now
        return candidate.run

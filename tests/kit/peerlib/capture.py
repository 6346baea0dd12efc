"""Packet capture on loopback (tcpdump) and a pure-Python classic-pcap reader/writer.

    async with Capture(tmp_path / "call.pcap", udp_ports_filter(5060, 40000)) as cap:
        ...  # run the call
    rtp = rtp_packets(cap.datagrams(), dst_port=40000)

tcpdump on Linux ``lo`` writes link type 1 (DLT_EN10MB: a zeroed Ethernet header); the reader
also understands DLT_NULL/LOOP, DLT_RAW, LINUX_SLL and LINUX_SLL2.  IPv4/UDP only.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from .common import end_process, start_process, which

# ---------------------------------------------------------------------------------------------
# pcap format

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
LINKTYPE_NULL = 0
LINKTYPE_EN10MB = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_LINUX_SLL2 = 276

Address = tuple[str, int]


@dataclass(frozen=True)
class Datagram:
    """One captured IPv4/UDP datagram."""

    time: float
    src: Address
    dst: Address
    payload: bytes


def _ipv4_offset(linktype: int, frame: bytes, big_endian_hdr: bool) -> int | None:
    """Offset of the IPv4 header inside a link-layer frame, or None if not IPv4."""
    if linktype == LINKTYPE_EN10MB:
        if len(frame) < 14:
            return None
        offset, ethertype = 14, struct.unpack_from("!H", frame, 12)[0]
        while ethertype in (0x8100, 0x88A8) and len(frame) >= offset + 4:  # VLAN tags
            ethertype = struct.unpack_from("!H", frame, offset + 2)[0]
            offset += 4
        return offset if ethertype == 0x0800 else None
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if len(frame) < 4:
            return None
        fmt = "!I" if (linktype == LINKTYPE_LOOP or big_endian_hdr) else "<I"
        family = struct.unpack_from(fmt, frame, 0)[0]
        if family != socket.AF_INET:
            # DLT_NULL uses host byte order of the *capturing* machine: try the other one
            family = struct.unpack_from("<I" if fmt == "!I" else "!I", frame, 0)[0]
        return 4 if family == socket.AF_INET else None
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4):
        return 0 if frame and frame[0] >> 4 == 4 else None
    if linktype == LINKTYPE_LINUX_SLL:
        if len(frame) < 16:
            return None
        return 16 if struct.unpack_from("!H", frame, 14)[0] == 0x0800 else None
    if linktype == LINKTYPE_LINUX_SLL2:
        if len(frame) < 20:
            return None
        return 20 if struct.unpack_from("!H", frame, 0)[0] == 0x0800 else None
    raise ValueError(f"unsupported pcap link type {linktype}")


def _parse_ipv4_udp(packet: bytes, ts: float) -> Datagram | None:
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    total_len = struct.unpack_from("!H", packet, 2)[0]
    flags_frag = struct.unpack_from("!H", packet, 6)[0]
    if packet[9] != 17 or (flags_frag & 0x1FFF) or (flags_frag & 0x2000):
        return None  # not UDP, or an IP fragment (not reassembled)
    end = min(len(packet), total_len) if total_len else len(packet)
    udp = packet[ihl:end]
    if len(udp) < 8:
        return None
    sport, dport, ulen = struct.unpack_from("!HHH", udp, 0)
    payload = udp[8 : max(8, min(ulen, len(udp)))]
    src = socket.inet_ntoa(packet[12:16])
    dst = socket.inet_ntoa(packet[16:20])
    return Datagram(ts, (src, sport), (dst, dport), bytes(payload))


def read_pcap_linktype(path: Path) -> int:
    """The link type in a classic pcap file's global header."""
    with Path(path).open("rb") as fh:
        header = fh.read(24)
    endian = _endianness(header)
    return int(struct.unpack_from(endian + "I", header, 20)[0] & 0x0FFFFFFF)


def _endianness(header: bytes) -> str:
    if len(header) < 24:
        raise ValueError("not a pcap file (short global header)")
    for endian in ("<", ">"):
        magic = struct.unpack_from(endian + "I", header, 0)[0]
        if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            return endian
    if header[:4] == b"\x0a\x0d\x0d\x0a":
        raise ValueError("pcapng is not supported: capture with tcpdump -w (classic pcap)")
    raise ValueError(f"not a pcap file (magic {header[:4].hex()})")


def read_udp_datagrams(path: Path | str) -> list[Datagram]:
    """All IPv4/UDP datagrams in a classic pcap file, in capture order.

    Tolerates a truncated last record (tcpdump killed mid-write)."""
    data = Path(path).read_bytes()
    endian = _endianness(data)
    magic = struct.unpack_from(endian + "I", data, 0)[0]
    frac = 1e-9 if magic == PCAP_MAGIC_NS else 1e-6
    linktype = struct.unpack_from(endian + "I", data, 20)[0] & 0x0FFFFFFF
    big = endian == ">"
    out: list[Datagram] = []
    pos = 24
    rec = struct.Struct(endian + "IIII")
    while pos + rec.size <= len(data):
        sec, sub, incl, _orig = rec.unpack_from(data, pos)
        pos += rec.size
        if pos + incl > len(data):
            break
        frame = data[pos : pos + incl]
        pos += incl
        offset = _ipv4_offset(linktype, frame, big)
        if offset is None:
            continue
        dgram = _parse_ipv4_udp(frame[offset:], sec + sub * frac)
        if dgram is not None:
            out.append(dgram)
    return out


def _ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def write_udp_pcap(path: Path | str, datagrams: Iterable[Datagram]) -> Path:
    """Write IPv4/UDP ``datagrams`` as a classic pcap (DLT_EN10MB, microsecond stamps) — the
    format ``sipp``'s ``play_pcap_audio`` reads.  UDP checksums are left 0 (SIPp recomputes)."""
    path = Path(path)
    chunks = [struct.pack("<IHHiIII", PCAP_MAGIC_US, 2, 4, 0, 0, 65535, LINKTYPE_EN10MB)]
    for ident, d in enumerate(datagrams):
        udp = struct.pack("!HHHH", d.src[1], d.dst[1], 8 + len(d.payload), 0) + d.payload
        ip = bytearray(
            struct.pack(
                "!BBHHHBBH4s4s",
                0x45, 0, 20 + len(udp), ident & 0xFFFF, 0x4000, 64, 17, 0,
                socket.inet_aton(d.src[0]), socket.inet_aton(d.dst[0]),
            )
        )  # fmt: skip
        struct.pack_into("!H", ip, 10, _ip_checksum(bytes(ip)))
        frame = b"\x00" * 12 + b"\x08\x00" + bytes(ip) + udp
        sec = int(d.time)
        usec = round((d.time - sec) * 1e6)
        if usec >= 1_000_000:
            sec, usec = sec + 1, usec - 1_000_000
        chunks.append(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(chunks))
    return path


# ---------------------------------------------------------------------------------------------
# RTP


@dataclass(frozen=True)
class RtpPacket:
    """A parsed RTP packet (RFC 3550) with where/when it was captured."""

    time: float
    src: Address
    dst: Address
    version: int
    padding: bool
    extension: bool
    marker: bool
    pt: int
    seq: int
    ts: int
    ssrc: int
    csrcs: tuple[int, ...]
    payload: bytes


def parse_rtp(datagram: Datagram) -> RtpPacket | None:
    """Parse ``datagram`` as RTP v2; None if it is not (too short, wrong version, RTCP)."""
    data = datagram.payload
    if len(data) < 12 or data[0] >> 6 != 2:
        return None
    b0, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", data, 0)
    if 200 <= b1 <= 204:  # RTCP SR/RR/SDES/BYE/APP (pt 72..76 with marker) on a muxed port
        return None
    cc = b0 & 0x0F
    offset = 12 + 4 * cc
    if len(data) < offset:
        return None
    csrcs = struct.unpack_from(f"!{cc}I", data, 12) if cc else ()
    if b0 & 0x10:  # header extension
        if len(data) < offset + 4:
            return None
        ext_words = struct.unpack_from("!H", data, offset + 2)[0]
        offset += 4 + 4 * ext_words
    end = len(data)
    if b0 & 0x20 and end > offset:  # padding: last octet is the pad count
        end -= data[-1]
    if end < offset:
        return None
    return RtpPacket(
        time=datagram.time,
        src=datagram.src,
        dst=datagram.dst,
        version=2,
        padding=bool(b0 & 0x20),
        extension=bool(b0 & 0x10),
        marker=bool(b1 & 0x80),
        pt=b1 & 0x7F,
        seq=seq,
        ts=ts,
        ssrc=ssrc,
        csrcs=tuple(csrcs),
        payload=data[offset:end],
    )


def rtp_packets(
    datagrams: Iterable[Datagram],
    *,
    dst_port: int | None = None,
    src_port: int | None = None,
    pt: int | Sequence[int] | None = None,
    ssrc: int | None = None,
) -> list[RtpPacket]:
    """The RTP packets among ``datagrams`` matching every filter given (capture order)."""
    pts = None if pt is None else ({pt} if isinstance(pt, int) else set(pt))
    out = []
    for d in datagrams:
        if dst_port is not None and d.dst[1] != dst_port:
            continue
        if src_port is not None and d.src[1] != src_port:
            continue
        pkt = parse_rtp(d)
        if pkt is None:
            continue
        if pts is not None and pkt.pt not in pts:
            continue
        if ssrc is not None and pkt.ssrc != ssrc:
            continue
        out.append(pkt)
    return out


def rtp_payload(packets: Iterable[RtpPacket], *, order_by_seq: bool = False) -> bytes:
    """Concatenated payloads (optionally re-ordered by extended sequence number)."""
    pkts = list(packets)
    if order_by_seq and pkts:
        ext, last, cycles = [], pkts[0].seq, 0
        for p in pkts:
            if p.seq < last and last - p.seq > 0x8000:
                cycles += 0x10000
            elif p.seq > last and p.seq - last > 0x8000:
                cycles -= 0x10000
            last = p.seq
            ext.append((cycles + p.seq, p))
        pkts = [p for _, p in sorted(ext, key=lambda item: item[0])]
    return b"".join(p.payload for p in pkts)


# ---------------------------------------------------------------------------------------------
# RFC 4733 / 2833 telephone-events

DTMF_EVENTS = "0123456789*#ABCD"


@dataclass(frozen=True)
class DtmfEvent:
    """One telephone-event (all its RTP packets share one RTP timestamp)."""

    digit: str
    ts: int
    duration: int  # timestamp units (1/8000 s)
    ended: bool
    volume: int
    packets: int


def telephone_events(packets: Iterable[RtpPacket], *, pt: int | None = None) -> list[DtmfEvent]:
    """Group RFC 4733 event packets (4-byte payloads; of ``pt`` if given) into events."""
    events: dict[tuple[int, int], dict[str, int]] = {}
    order: list[tuple[int, int]] = []
    for p in packets:
        if (pt is not None and p.pt != pt) or len(p.payload) != 4:
            continue
        event, flags, duration = struct.unpack("!BBH", p.payload)
        if event >= len(DTMF_EVENTS):
            continue
        key = (p.ssrc, p.ts)
        if key not in events:
            events[key] = {"event": event, "duration": 0, "ended": 0, "volume": 0, "n": 0}
            order.append(key)
        e = events[key]
        e["duration"] = max(e["duration"], duration)
        e["ended"] |= flags >> 7
        e["volume"] = flags & 0x3F
        e["n"] += 1
    return [
        DtmfEvent(
            digit=DTMF_EVENTS[events[k]["event"]],
            ts=k[1],
            duration=events[k]["duration"],
            ended=bool(events[k]["ended"]),
            volume=events[k]["volume"],
            packets=events[k]["n"],
        )
        for k in order
    ]


def rfc2833_datagrams(
    digits: str,
    *,
    src: Address = ("127.0.0.1", 10000),
    dst: Address = ("127.0.0.1", 20000),
    pt: int = 101,
    audio_pt: int | None = 0,
    tone_ms: int = 160,
    gap_ms: int = 200,
    lead_ms: int = 400,
    tail_ms: int = 400,
    ssrc: int = 0x5EED2833,
    seq0: int = 1000,
    ts0: int = 160_000,
    volume: int = 10,
) -> list[Datagram]:
    """RTP for ``digits`` as a phone sends it: one SSRC, 20 ms packets, PCMU silence
    (``audio_pt``; None for events only) before, between and after the events; each event
    starts with the marker bit, carries a growing duration and ends with three end packets
    (new sequence numbers, same timestamp and duration, RFC 4733 2.5.1.4)."""
    out: list[Datagram] = []
    seq, ts, t = seq0, ts0, 0.0
    silence = b"\xff" * 160

    def emit(payload_type: int, payload: bytes, *, marker: bool, timestamp: int) -> None:
        nonlocal seq
        header = struct.pack(
            "!BBHII", 0x80, (0x80 if marker else 0) | payload_type, seq & 0xFFFF,
            timestamp & 0xFFFFFFFF, ssrc,
        )  # fmt: skip
        out.append(Datagram(t, src, dst, header + payload))
        seq += 1

    def audio(ms: int) -> None:
        nonlocal ts, t
        for _ in range(ms // 20):
            if audio_pt is not None:
                emit(audio_pt, silence, marker=False, timestamp=ts)
            ts += 160
            t += 0.02

    audio(lead_ms)
    for index, ch in enumerate(digits):
        event = DTMF_EVENTS.index(ch.upper())
        start = ts
        steps = max(1, tone_ms // 20)
        for step in range(1, steps + 1):
            payload = struct.pack("!BBH", event, volume & 0x3F, step * 160)
            emit(pt, payload, marker=step == 1, timestamp=start)
            t += 0.02
        final = struct.pack("!BBH", event, 0x80 | (volume & 0x3F), steps * 160)
        for _ in range(3):
            emit(pt, final, marker=False, timestamp=start)
            t += 0.02
        ts = start + (steps + 3) * 160
        audio(gap_ms if index < len(digits) - 1 else tail_ms)
    return out


def write_dtmf_pcap(path: Path | str, digits: str, **kwargs: Any) -> Path:
    """Write :func:`rfc2833_datagrams` to ``path`` for SIPp ``<exec play_pcap_audio=.../>``
    (SIPp rewrites the addresses/ports to the call's media, keeps the RTP bytes)."""
    return write_udp_pcap(path, rfc2833_datagrams(digits, **kwargs))


# ---------------------------------------------------------------------------------------------
# tcpdump


def udp_ports_filter(*ports: int) -> str:
    """A BPF filter for UDP to or from any of ``ports``."""
    if not ports:
        return "udp"
    return "udp and (" + " or ".join(f"port {p}" for p in sorted(set(ports))) + ")"


class Capture:
    """``tcpdump -i lo -n -U -w PATH FILTER`` for the duration of an ``async with``.

    Entering waits until tcpdump reports "listening on"; leaving waits ``linger`` s for
    in-flight packets, then stops tcpdump with SIGINT so the file is complete."""

    def __init__(
        self,
        path: Path | str,
        bpf_filter: str = "udp",
        *,
        interface: str = "lo",
        linger: float = 0.2,
        start_timeout: float = 10.0,
        buffer_kib: int = 32768,
    ) -> None:
        self.path = Path(path)
        # A kernel buffer this large absorbs the bursts of 100+ concurrent calls (the default
        # 2 MiB dropped a third of a 50-call run's packets while tcpdump was descheduled).
        self.buffer_kib = buffer_kib
        self.bpf_filter = bpf_filter
        self.interface = interface
        self.linger = linger
        self.start_timeout = start_timeout
        self.stderr_path = self.path.with_suffix(self.path.suffix + ".stderr")
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr_lines: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # --immediate-mode: packets are written as they arrive, not when a buffer fills, so
        # stopping tcpdump right after a call loses nothing.
        args = [which("tcpdump"), "-i", self.interface, "-n", "-s", "0", "-U", "--immediate-mode",
                "-B", str(self.buffer_kib), "-w", str(self.path), self.bpf_filter]  # fmt: skip
        self._proc = await start_process(args, stdout=asyncio.subprocess.DEVNULL)
        listening = asyncio.Event()
        assert self._proc.stderr is not None
        stream = self._proc.stderr

        async def read_stderr() -> None:
            while line := await stream.readline():
                text = line.decode(errors="replace")
                self._stderr_lines.append(text)
                if "listening on" in text:
                    listening.set()

        self._reader = asyncio.create_task(read_stderr())
        deadline = time.monotonic() + self.start_timeout
        while not listening.is_set():
            if self._proc.returncode is not None or self._reader.done():
                await self._finish_reader()
                raise RuntimeError(f"tcpdump failed to start: {self.stderr}")
            if time.monotonic() > deadline:
                await self.stop()
                raise TimeoutError(f"tcpdump not listening after {self.start_timeout} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(listening.wait(), 0.05)

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if self.linger > 0:
            await asyncio.sleep(self.linger)
        await end_process(proc, sig=signal.SIGINT)
        await self._finish_reader()
        self.stderr_path.write_text(self.stderr)

    async def _finish_reader(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._reader, 2.0)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr_lines)

    def datagrams(self) -> list[Datagram]:
        """Parse what was captured (call after leaving the ``async with``)."""
        return read_udp_datagrams(self.path)

    def linktype(self) -> int:
        return read_pcap_linktype(self.path)

    async def __aenter__(self) -> Capture:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

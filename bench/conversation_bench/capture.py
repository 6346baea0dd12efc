"""Reading a call's capture: the caller's packets by file frame, the agent's packets in order,
and the inbound audio path (wire -> jitter buffer -> media tick -> fake STT) per frame."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.kit.peerlib.capture import parse_rtp, read_udp_datagrams

FRAME_BYTES = 160
FRAME_S = 0.020
SILENCE = 0xFF


@dataclass
class Packet:
    time: float
    voiced: bool
    payload: bytes
    marker: bool


@dataclass
class CallCapture:
    caller_at: dict[int, float]  # file frame index -> capture time of that caller packet
    caller_mismatch: int  # caller packets whose payload was not the file's frame
    agent: list[Packet]  # the agent's RTP to the caller, capture order
    agent_ports: set[int]
    caller_ts0: int = 0

    def agent_index_after(self, t: float) -> int:
        times = [p.time for p in self.agent]
        return int(np.searchsorted(times, t, side="right"))


def analyse_capture(pcap: Path, media_port: int, script: bytes) -> CallCapture:
    caller: list[Any] = []
    agent: list[Packet] = []
    ports: set[int] = set()
    for d in read_udp_datagrams(pcap):
        pkt = parse_rtp(d)
        if pkt is None or pkt.pt != 0:
            continue
        if d.src[1] == media_port:
            caller.append(pkt)
        elif d.dst[1] == media_port:
            ports.add(d.src[1])
            voiced = any(b != SILENCE for b in pkt.payload)
            agent.append(Packet(d.time, voiced, pkt.payload, pkt.marker))
    caller_at: dict[int, float] = {}
    mismatch = 0
    if caller:
        ts0 = caller[0].ts
        for pkt in caller:
            index = ((pkt.ts - ts0) % 2**32) // FRAME_BYTES
            if pkt.payload != script[index * FRAME_BYTES : (index + 1) * FRAME_BYTES]:
                mismatch += 1
            caller_at.setdefault(index, pkt.time)
    return CallCapture(caller_at, mismatch, agent, ports, caller[0].ts if caller else 0)


def inbound_path(
    cap: CallCapture, fake: dict[int, float], target_delay_s: float, known: float | None = None
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Per caller frame: wire -> fake STT; and, when the agent holds inbound audio for a
    playout delay and hands it on at its media tick, that total split at the due time and
    the tick. An agent that forwards frames on arrival (an "eager" jitter buffer that only
    waits for gaps) does not fit that model: then only the total is returned (`delivery`).

    Playout-delay model: the jitter buffer anchors once per call (its stats say so) on the
    first packet, at the time *it processed* that packet: frame n is due at
    A + n * 20 ms + target delay and is handed on at the first media tick at or after that.
    A tick is visible on the wire as the agent's outgoing packet (the tick sends, then pops
    the inbound frames), and a frame reaches the fake a fraction of a millisecond after its
    tick, so the tick that delivered frame n is the last one before the fake got it. Each
    frame bounds A between two ticks; the A that (nearly) all frames agree on is the
    estimate, known to within the returned uncertainty. `known`: the anchor the agent
    recorded itself (recording mode), used instead when given. A later than the first
    packet's capture time means the agent read that packet late (its loop was busy setting
    the call up) or SIPp sent it late; either way every frame of the call is then held that
    much longer than the target delay."""
    out: dict[str, list[float]] = {"total": [], "buffer": [], "tick_wait": [], "to_stt": []}
    frames = sorted(n for n in cap.caller_at if n in fake)
    if 0 not in cap.caller_at or not cap.agent or not frames:
        return out, {}
    out["total"] = [(fake[n] - cap.caller_at[n]) * 1000 for n in frames]
    ticks = np.asarray([p.time for p in cap.agent])
    bounds: dict[int, tuple[int, float, float]] = {}  # frame -> (tick index, A low, A high)
    for n in frames:
        k = int(np.searchsorted(ticks, fake[n], side="right")) - 1
        if k >= 1:
            base = n * FRAME_S + target_delay_s
            bounds[n] = (k, ticks[k - 1] - base, ticks[k] - base)
    if not bounds:
        return out, {}
    # The A that most frames agree on (a frame the agent was slow to forward, > 1 tick, would
    # otherwise make the intersection empty): sweep over the interval ends.
    events = sorted([(lo, 1) for _, lo, _ in bounds.values()] +
                    [(hi, -1) for _, _, hi in bounds.values()])  # fmt: skip
    depth, best = 0, 0
    for _, step in events:
        depth += step
        best = max(best, depth)
    depth, lo, hi = 0, None, 0.0
    for x, step in events:  # the first stretch over which `best` frames agree
        depth += step
        if lo is None and depth == best:
            lo = x
        elif lo is not None and depth < best:
            hi = x
            break
    lo = hi if lo is None else lo
    estimate = (lo + hi) / 2
    anchor = estimate if known is None else known
    fitting = sum(1 for _, a_lo, a_hi in bounds.values() if a_lo <= anchor <= a_hi)
    first = cap.caller_at[0]
    phase = float(np.median([cap.caller_at[n] - n * FRAME_S for n in frames]))
    tick_model = fitting >= 0.95 * len(bounds)
    for n, (k, a_lo, a_hi) in bounds.items():
        if not tick_model or not a_lo <= anchor <= a_hi:
            continue
        due = anchor + n * FRAME_S + target_delay_s
        out["buffer"].append((due - cap.caller_at[n]) * 1000)
        out["tick_wait"].append((ticks[k] - due) * 1000)
        out["to_stt"].append((fake[n] - ticks[k]) * 1000)
    info = {
        "delivery": "after the playout delay, at the media tick"
        if tick_model
        else "on arrival (does not fit the playout-delay model)",
        "frames_fitting_the_playout_delay_model": f"{fitting}/{len(bounds)}",
        "anchor_source": "agent record" if known is not None else "estimate from the wire",
        "agent_anchor_minus_first_packet_ms": round((anchor - first) * 1000, 2),
        "estimated_anchor_minus_first_packet_ms": round((estimate - first) * 1000, 2),
        "first_packet_minus_stream_phase_ms": round((first - phase) * 1000, 2),
        "anchor_uncertainty_ms": round((hi - lo) * 1000, 2),
        "target_delay_ms": round(target_delay_s * 1000, 2),
    }
    return out, info

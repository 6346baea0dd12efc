#!/usr/bin/env python3
"""Conversation latency benchmark: voice-to-voice, agent overhead and barge-in, from captures.

    python bench/conversation_latency.py                  # both scenarios (under 3 minutes)
    python bench/conversation_latency.py --only v2v --calls 1 --turns 5
    python bench/conversation_latency.py --only barge-in --barge-calls 1
    python bench/conversation_latency.py --agent serve    # the plain `sipagent serve` binary

A real receptionist agent process (``sipagent serve --app receptionist``, peer-to-peer on
loopback) talks to wire-protocol fakes of Deepgram, OpenAI and ElevenLabs that run inside this
process (``tests/fakes``), driven through the real provider SDKs, at the reference design's
latencies: STT final 300 ms after the caller's last voiced audio reached it (``final_latency``
0.3 with ``endpointing_ms`` 300, so the final leaves exactly at endpoint detection), LLM first
token 300 ms after the request, TTS first byte 100 ms after the request. A SIPp UAC
(``tests/peers/sipp/uac_call.xml``) streams a generated mu-law file of espeak-ng utterances
separated by silence. ``tcpdump -i lo --immediate-mode`` records the call's RTP, and every
latency is taken from packet arrival times in that capture.

Scenarios (``--only``; default both):

``v2v``
    ``--calls`` sequential calls of ``--turns`` utterances each; each reply is one short
    sentence (no tools), so the next utterance starts after the reply has finished.
    *caller speech end*: capture time of the caller's last voiced RTP packet of the utterance
    (voiced = the fake Deepgram's own VAD, mean |linear| > 200 over the 20 ms frame; the
    utterance is found by its known position in the file, mapped through the RTP timestamp).
    *voice-to-voice*: from there to the capture time of the agent's first voiced packet (any
    byte other than 0xFF: the agent's silence is all-0xFF frames, the fake TTS never sends 0xFF).
    *provider time*: nominal 700 ms (300 + 300 + 100), and measured from the fakes' own stamps:
    STT = final Result written to the websocket minus arrival at the fake of the utterance's last
    speech frame; LLM = request read -> first SSE chunk written; TTS = request read -> first
    audio chunk written. *agent overhead* = voice-to-voice minus either. The measured overhead
    is split into where it goes (inbound audio path, STT final -> LLM request, LLM first token
    -> TTS request, TTS first byte -> RTP on the wire); these segments add up to it exactly.
``barge-in``
    ``--barge-calls`` calls in which every utterance talks over a long (three sentence) reply,
    the first one over the greeting. *caller onset*: capture time of the first voiced caller
    packet of the interrupting utterance. *onset-to-silence*: to the capture time of the agent's
    last voiced packet before it goes quiet (the PAUSE step: ~100 ms of caller voice, queue
    kept). The INTERRUPT step (flush + cancel, on the STT's first words) and the decisions are
    not on the wire: the agent process records them (see below), giving *onset-to-pause* and
    *onset-to-interrupt* decision times and *decision-to-silence* = the PAUSE decision to the
    capture time of the first silent agent packet after it, plus the number of voiced packets
    the agent sent after deciding (should be 0).

The agent process (``--agent recording``, the default) is ``sipagent serve`` run through its own
command-line entry point (``sipagent.cli.main.app``) in a separate process, with
``sipagent.agent.run_agent`` replaced by an identical copy that, on shutdown, writes each
session's ``TurnTimings`` and barge-in events (agent ``loop.time()`` = CLOCK_MONOTONIC, shared
with this process) to a JSON file. ``--agent serve`` runs the installed ``sipagent`` binary
instead: the same wire numbers, without the agent-side decision times. Fakes stamp
``loop.time()`` too; captures are CLOCK_REALTIME, converted with ``time.time() -
time.monotonic()`` sampled around each scenario.

Results: markdown tables on stdout, JSON in ``bench/results/conversation_latency.json``.
Artifacts (pcaps, caller audio, agent log and dump, SIPp logs) go to a temporary directory, kept
with ``--keep`` or when something looked wrong. Before each scenario the script samples CPU use
for a second and looks for other SIPp/tcpdump/pytest/agent processes; either is an anomaly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import fakes.deepgram_server as dg_fake  # noqa: E402
from benchlib import (  # noqa: E402
    cpu_times,
    free_port,
    machine_info,
    run_benchmark,
    sipagent_command,
)
from fakes.deepgram_server import FakeDeepgramServer, frame_is_speech  # noqa: E402
from fakes.elevenlabs_server import (  # noqa: E402
    MS_PER_CHAR,
    FakeElevenLabsServer,
    audio_duration_ms,
    expected_audio,
)
from fakes.openai_server import FakeOpenAIServer, Reply  # noqa: E402
from peerlib.audio import AudioLibrary  # noqa: E402
from peerlib.capture import Capture, parse_rtp, read_udp_datagrams  # noqa: E402
from peerlib.common import end_process, start_process, wait_udp_bound  # noqa: E402
from peerlib.sipp import Sipp  # noqa: E402

LOOPBACK = "127.0.0.1"
FRAME_BYTES = 160
FRAME_S = 0.020
SILENCE = 0xFF
DEFAULT_OUT = REPO / "bench" / "results" / "conversation_latency.json"
SCENARIOS = ("v2v", "barge-in")
CAPTURE_LINGER_S = 0.5  # --immediate-mode: packets are written as they arrive
IDLE_CPU_BUSY_PCT = 15.0

# The reference design's provider latencies (the numbers).
STT_FINAL_S = 0.3
LLM_FIRST_TOKEN_S = 0.3
TTS_FIRST_BYTE_S = 0.1
NOMINAL_PROVIDER_S = STT_FINAL_S + LLM_FIRST_TOKEN_S + TTS_FIRST_BYTE_S
ENDPOINTING_MS = 300

TARGETS = {
    "v2v_p50_ms": 720.0,
    "overhead_p50_ms": 10.0,
    "overhead_p95_ms": 25.0,
    "onset_to_silence_p50_ms": 200.0,
    "decision_to_silence_ms": 20.0,
}

GREETING_CLEAR_S = 5.0  # the greeting (~3.9 s of audio) is over before the first utterance

V2V_UTTERANCES = (
    "Can I come in on Monday",
    "What time do you open",
    "Do you take new patients",
    "I need a cleaning soon",
    "Is there parking nearby",
    "My tooth has been hurting",
    "Could I bring my son",
    "Do you accept insurance",
)
V2V_REPLIES = ("Sure.", "Okay, got it.", "Of course.", "Yes, we do.", "Right, noted.")
BARGE_UTTERANCES = (
    "Actually I have another question",
    "Sorry but what about Saturday morning",
    "Hold on please let me check",
    "Wait I need something else",
    "Actually make that next week",
    "Sorry could you repeat that",
)
LONG_REPLIES = (
    "We are open from eight in the morning until six in the evening on weekdays. "
    "On Saturdays we open from nine until one in the afternoon. "
    "We are closed on Sundays and on public holidays.",
    "Our earliest appointment for a cleaning is next Tuesday at ten in the morning. "
    "The hygienist usually needs about forty five minutes for it. "
    "Please bring your insurance card with you.",
    "Doctor Patel and Doctor Nguyen both see new patients during the week. "
    "Your first visit includes a full exam and a set of x-rays. "
    "It usually takes a little more than an hour.",
)
BARGE_OFFSETS_S = (0.6, 1.0, 1.4, 0.8, 1.2)  # into the reply, cycled: where the caller cuts in


# ---------------------------------------------------------------------------------------------
# instrumented fakes: the same wire behaviour, plus the timestamps this benchmark needs


class TimedRecogniser(dg_fake.Recogniser):
    """The fake's recogniser, logging onsets and finals with the audio arrival times."""

    log: ClassVar[list[dict[str, Any]]] = []
    # request_id -> [(audio bytes received so far, arrival of that message)]
    arrivals: ClassVar[dict[str, list[tuple[int, float]]]] = {}

    def feed(self, data: bytes, arrival: float) -> list[dg_fake.Outgoing]:
        out = super().feed(data, arrival)
        self.arrivals.setdefault(self.request_id, []).append((self.received, arrival))
        return out

    def _onset(self, t1: float, arrival: float, out: list[dg_fake.Outgoing]) -> None:
        super()._onset(t1, arrival, out)
        self.log.append(
            {"kind": "onset", "request_id": self.request_id, "audio_t": self._utt_start,
             "arrival": arrival}
        )  # fmt: skip

    def _final(
        self,
        t: float,
        due: float,
        out: list[dg_fake.Outgoing],
        *,
        speech_final: bool,
        from_finalize: bool,
    ) -> None:
        speech_end, speech_end_arrival = self._speech_end, self._speech_end_arrival
        super()._final(t, due, out, speech_final=speech_final, from_finalize=from_finalize)
        self.log.append(
            {
                "kind": "final",
                "request_id": self.request_id,
                "speech_end_audio_t": speech_end,
                "speech_end_arrival": speech_end_arrival,
                "due": out[-1].due,
                "speech_final": speech_final,
                "message": out[-1].message,
            }
        )


dg_fake.Recogniser = TimedRecogniser  # type: ignore[misc]  # looked up per connection


class TimedDeepgram(FakeDeepgramServer):
    """Stamps every message when the fake has written it to the websocket."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent_at: dict[int, float] = {}  # id(message dict) -> loop.time() after send
        self._seen: dict[int, int] = {}

    async def _notify(self) -> None:
        # Called right after each `conn.sent.append` (and after each audio message).
        now = asyncio.get_running_loop().time()
        for conn in self.connections:
            seen = self._seen.get(conn.index, 0)
            for message in conn.sent[seen:]:
                self.sent_at[id(message)] = now
            self._seen[conn.index] = len(conn.sent)
        await super()._notify()

    def interims(self) -> list[tuple[float, str]]:
        """(send time, transcript) of every non-final Results message with words."""
        out = []
        for conn in self.connections:
            for message in conn.sent:
                if message.get("type") == "Results" and not message.get("is_final"):
                    text = message["channel"]["alternatives"][0]["transcript"]
                    if text and id(message) in self.sent_at:
                        out.append((self.sent_at[id(message)], text))
        return sorted(out)


class TimedOpenAI(FakeOpenAIServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reply_text: dict[int, str] = {}  # id(request record) -> the reply's text
        self.done_at: dict[int, float] = {}  # id(request record) -> [DONE] written

    def _next_reply(self, body: dict[str, Any]) -> Reply | None:
        reply = super()._next_reply(body)
        if reply is not None:  # called synchronously right after the record was appended
            self.reply_text[id(self.requests[-1])] = reply.text
        return reply

    async def _stream(self, request: Any, resp: Any, rec: Any, body: Any, deltas: Any) -> None:
        await super()._stream(request, resp, rec, body, deltas)
        if rec.completed:
            self.done_at[id(rec)] = asyncio.get_running_loop().time()


class _StampedEvent(asyncio.Event):
    """`first_chunk_sent`, which the fake sets right after writing the first audio chunk."""

    def __init__(self) -> None:
        super().__init__()
        self.at: float | None = None

    def set(self) -> None:
        if self.at is None:
            self.at = asyncio.get_running_loop().time()
        super().set()


class TimedElevenLabs(FakeElevenLabsServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received_at: dict[int, float] = {}  # id(request record) -> body read

    async def _respond(self, request: Any, rec: Any) -> Any:
        self.received_at[id(rec)] = asyncio.get_running_loop().time()
        rec.first_chunk_sent = _StampedEvent()
        return await super()._respond(request, rec)


# ---------------------------------------------------------------------------------------------
# the agent process


def agent_worker(dump_path: Path, cli_args: list[str]) -> int:
    """`sipagent serve CLI_ARGS` through its own CLI, recording sessions to `dump_path`."""
    import sipagent.cli.main as cli
    from sipagent.agent import run_agent
    from sipagent.config import AgentSettings
    from sipagent.media.jitter_buffer import JitterBuffer

    # Observe (only) where each inbound jitter buffer anchors: once per call, a list append.
    anchors: list[dict[str, Any]] = []
    original_anchor = JitterBuffer._anchor

    def recording_anchor(self: JitterBuffer, seq: int, packet: Any, arrival: float) -> None:
        anchors.append({"arrival": arrival, "timestamp": packet.timestamp, "seq": seq})
        original_anchor(self, seq, packet, arrival)

    JitterBuffer._anchor = recording_anchor  # type: ignore[method-assign]

    async def run_agent_recording(
        settings: AgentSettings, *, ready: asyncio.Event | None = None
    ) -> None:
        # sipagent.agent.run_agent, keeping the ended calls' RTP stats and dumping the
        # sessions' timings once the agent has stopped.
        rtp: dict[str, Any] = {}

        def call_ended(call: Any) -> None:
            session = getattr(call, "session", None)
            if session is not None:
                rtp[call.call_id] = dataclasses.asdict(session.stats)

        def dump_sessions(endpoint: Any) -> None:
            sessions = {}
            for call_id, session in getattr(endpoint.app, "sessions", {}).items():
                sessions[call_id] = {
                    "turns": [
                        {"role": t.role, "text": t.text, "heard_text": t.heard_text,
                         "interrupted": t.interrupted, "timings": t.timings.as_dict()}
                        for t in session.turns
                    ],
                    "barge_in_events": [
                        {"action": str(e.action), "at": e.at, "caller_onset": e.caller_onset,
                         "transcript": e.transcript}
                        for e in session.barge_in_events
                    ],
                    "provider_errors": list(session.provider_errors),
                }  # fmt: skip
            dump = {
                "clock": {
                    "loop_minus_monotonic": asyncio.get_running_loop().time() - time.monotonic(),
                    "realtime_minus_monotonic": time.time() - time.monotonic(),
                },
                "sessions": sessions,
                "rtp": rtp,
                "jitter_buffer_anchors": anchors,
            }  # fmt: skip
            dump_path.write_text(json.dumps(dump, default=str))

        await run_agent(settings, ready=ready, on_call_ended=call_ended, on_stopped=dump_sessions)

    cli.run_agent = run_agent_recording  # type: ignore[assignment]
    try:
        cli.app(["serve", *cli_args])
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


# ---------------------------------------------------------------------------------------------
# machine hygiene (as bench/media_timing.py)


async def cpu_busy_percent(seconds: float = 1.0) -> float | None:
    try:
        total0, idle0 = cpu_times()
        await asyncio.sleep(seconds)
        total1, idle1 = cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return round(100.0 * (total - (idle1 - idle0)) / total, 1) if total > 0 else None


def foreign_activity(exclude: str, own_pids: set[int]) -> list[str]:
    """Other peer/test processes running now (not ours): they make the machine non-idle."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in {os.getpid(), *own_pids}:
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = " ".join(a.decode(errors="replace") for a in args if a)
        names = {Path(a.decode(errors="replace")).name for a in args[:3] if a}
        if exclude in text:
            continue
        if names & {"sipp", "tcpdump", "baresip", "kamailio", "sipagent", "pytest"} or (
            ("pytest" in text or "sipagent" in text or "bench/" in text) and "python" in text
        ):
            found.append(text[:160])
    return sorted(found)


def clock_offset() -> float:
    """CLOCK_REALTIME - CLOCK_MONOTONIC, from the tightest of a few back-to-back reads."""
    best: tuple[float, float] | None = None
    for _ in range(50):
        m0 = time.monotonic()
        r = time.time()
        m1 = time.monotonic()
        if best is None or m1 - m0 < best[0]:
            best = (m1 - m0, r - (m0 + m1) / 2)
    assert best is not None
    return best[1]


# ---------------------------------------------------------------------------------------------
# caller audio


@dataclass
class Utterance:
    text: str
    start_frame: int  # first frame of the espeak clip in the file
    voiced_first: int  # first / last voiced frame (the fake Deepgram's VAD), file frame index
    voiced_last: int


@dataclass
class CallerScript:
    path: Path
    frames: int
    utterances: list[Utterance]

    @property
    def seconds(self) -> float:
        return self.frames * FRAME_S


class ScriptBuilder:
    """Raw mu-law: silence and espeak clips, frame-aligned, with each clip's voiced frames."""

    def __init__(self, lib: AudioLibrary) -> None:
        self.lib = lib
        self.data = bytearray()
        self.utterances: list[Utterance] = []

    @property
    def frame(self) -> int:
        return len(self.data) // FRAME_BYTES

    def silence_until(self, frame: int) -> None:
        self.data += bytes([SILENCE]) * max(0, (frame - self.frame) * FRAME_BYTES)

    def say(self, text: str) -> Utterance:
        clip = self.lib.speech_ulaw(text).read_bytes()
        clip += bytes([SILENCE]) * (-len(clip) % FRAME_BYTES)
        start = self.frame
        voiced = [
            i for i in range(len(clip) // FRAME_BYTES)
            if frame_is_speech(clip[i * FRAME_BYTES : (i + 1) * FRAME_BYTES])
        ]  # fmt: skip
        if not voiced:
            raise RuntimeError(f"espeak produced no voiced audio for {text!r}")
        self.data += clip
        utt = Utterance(text, start, start + voiced[0], start + voiced[-1])
        self.utterances.append(utt)
        return utt

    def finish(self, path: Path, tail_s: float) -> CallerScript:
        self.silence_until(self.frame + round(tail_s / FRAME_S))
        path.write_bytes(bytes(self.data))
        return CallerScript(path, self.frame, list(self.utterances))


def frames_of(seconds: float) -> int:
    return round(seconds / FRAME_S)


def v2v_script(lib: AudioLibrary, path: Path, turns: int, gap_s: float) -> CallerScript:
    b = ScriptBuilder(lib)
    b.silence_until(frames_of(GREETING_CLEAR_S))
    for i in range(turns):
        utt = b.say(V2V_UTTERANCES[i % len(V2V_UTTERANCES)])
        # the reply (<= 0.8 s of voice-to-voice + <= 0.72 s of audio) ends within the gap
        b.silence_until(utt.voiced_last + 1 + frames_of(gap_s))
    return b.finish(path, tail_s=0.5)


def barge_script(lib: AudioLibrary, path: Path, count: int, expected_v2v_s: float) -> CallerScript:
    b = ScriptBuilder(lib)
    b.silence_until(frames_of(1.5))  # the first utterance talks over the greeting
    for i in range(count):
        utt = b.say(BARGE_UTTERANCES[i % len(BARGE_UTTERANCES)])
        if i + 1 < count:
            cut_in = expected_v2v_s + BARGE_OFFSETS_S[i % len(BARGE_OFFSETS_S)]
            b.silence_until(utt.voiced_last + 1 + frames_of(cut_in))
    return b.finish(path, tail_s=2.5)


# ---------------------------------------------------------------------------------------------
# capture analysis


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


def fake_frame_arrivals(run: ScenarioRun, cap: CallCapture) -> dict[int, float]:
    """Frame index -> realtime at which the fake Deepgram received that frame, for the STT
    connection of this call (the one whose audio arrived while the call's audio was flowing).
    The agent streams every inbound frame in order from the start of the call, so frame n of
    the connection is frame n of the caller's file."""
    if not cap.caller_at:
        return {}
    lo, hi = min(cap.caller_at.values()), max(cap.caller_at.values()) + 1.0
    for log in TimedRecogniser.arrivals.values():
        first = run.real(log[0][1])
        if first is None or not lo <= first <= hi:
            continue
        frames: dict[int, float] = {}
        done = 0
        for received, arrival in log:
            while (done + 1) * FRAME_BYTES <= received:
                frames[done] = run.real(arrival) or 0.0
                done += 1
        return frames
    return {}


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


def ok(stats: dict[str, Any], key: str, target: float) -> bool | None:
    """Whether stats[key] meets `target`; None when there is nothing to judge."""
    return None if stats[key] is None else bool(stats[key] <= target)


def pct(values: Sequence[float | None]) -> dict[str, Any]:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return {"n": 0, "p50": None, "p95": None, "max": None, "min": None, "mean": None}
    return {
        "n": int(arr.size),
        "p50": round(float(np.percentile(arr, 50)), 2),
        "p95": round(float(np.percentile(arr, 95)), 2),
        "max": round(float(arr.max()), 2),
        "min": round(float(arr.min()), 2),
        "mean": round(float(arr.mean()), 2),
    }


def ms(a: float | None, b: float | None) -> float | None:
    """(b - a) in ms, or None."""
    return None if a is None or b is None else round((b - a) * 1000, 2)


def first_in(items: Sequence[Any], key: Callable[[Any], float], lo: float, hi: float) -> Any:
    candidates = [x for x in items if lo <= key(x) < hi]
    return min(candidates, key=key) if candidates else None


# ---------------------------------------------------------------------------------------------
# orchestration


@dataclass
class ScenarioRun:
    name: str
    deepgram: TimedDeepgram
    openai: TimedOpenAI
    elevenlabs: TimedElevenLabs
    offsets: list[float] = field(default_factory=list)  # realtime - monotonic samples
    calls: list[dict[str, Any]] = field(default_factory=list)  # per call: script, capture...
    agent_dump: dict[str, Any] = field(default_factory=dict)

    def real(self, mono: float | None) -> float | None:
        return None if mono is None else mono + float(np.mean(self.offsets))


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.anomalies: list[str] = []
        self.agent_cmds: list[str] = []
        self.lib = AudioLibrary(workdir / "audio")
        self.own_pids: set[int] = set()  # the agent processes this run started

    # -- machine ---------------------------------------------------------------------------

    async def note_machine(self, name: str) -> dict[str, Any]:
        foreign = foreign_activity(str(self.workdir), self.own_pids)
        busy = await cpu_busy_percent(1.0)
        if foreign:
            self.anomalies.append(
                f"{name}: machine not idle, {len(foreign)} other peer/test process(es) running, "
                f"e.g. {foreign[0]}"
            )
        if busy is not None and busy > IDLE_CPU_BUSY_PCT:
            self.anomalies.append(
                f"{name}: machine not idle, CPUs {busy:.0f}% busy in the second before the run"
            )
        return {"cpu_busy_pct_before": busy, "other_processes": foreign}

    # -- agent -----------------------------------------------------------------------------

    async def start_agent(
        self, run: ScenarioRun, run_dir: Path
    ) -> tuple[asyncio.subprocess.Process, int, Any, Path]:
        port = free_port()
        serve_args = ["--app", "receptionist", "--bind", f"{LOOPBACK}:{port}",
                      "--rtp-ports", self.args.rtp_ports]  # fmt: skip
        dump = run_dir / "agent_sessions.json"
        if self.args.agent == "recording":
            cmd = [sys.executable, str(Path(__file__).resolve()), "--agent-worker", str(dump)]
        else:
            cmd = [*sipagent_command(), "serve"]
        cmd += serve_args
        self.agent_cmds.append(shlex.join(cmd))
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SIPAGENT_", "DEEPGRAM_", "OPENAI_", "ELEVENLABS_"))
        }
        env.update({
            "COLUMNS": "240",
            "SIPAGENT_DEEPGRAM_API_KEY": run.deepgram.api_key,
            "SIPAGENT_DEEPGRAM_URL": run.deepgram.url,
            "SIPAGENT_OPENAI_API_KEY": run.openai.api_key,
            "SIPAGENT_OPENAI_BASE_URL": run.openai.base_url,
            "SIPAGENT_ELEVENLABS_API_KEY": run.elevenlabs.api_key,
            "SIPAGENT_ELEVENLABS_BASE_URL": run.elevenlabs.base_url,
            "SIPAGENT_ENDPOINTING_MS": str(ENDPOINTING_MS),
            "SIPAGENT_BARGE_IN_SENSITIVITY": self.args.barge_in_sensitivity,
            "SIPAGENT_IDLE_REPROMPT_SECONDS": "120",
        })  # fmt: skip
        log_path = run_dir / "agent.log"
        log_fh = log_path.open("wb")
        proc = await start_process(
            cmd, cwd=run_dir, stdout=log_fh, stderr=subprocess.STDOUT, env=env
        )
        self.own_pids.add(proc.pid)
        try:
            deadline = time.monotonic() + 30.0
            while True:
                if proc.returncode is not None:
                    raise RuntimeError(
                        f"agent exited with {proc.returncode}:\n{log_path.read_text('utf-8')}"
                    )
                with contextlib.suppress(TimeoutError):
                    await wait_udp_bound(port, timeout=0.2)
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError("agent did not bind its SIP port within 30 s")
            await asyncio.sleep(0.5)  # bound before its loop serves; let imports settle
        except BaseException:
            await end_process(proc)
            log_fh.close()
            raise
        return proc, port, log_fh, log_path

    async def stop_agent(self, proc: asyncio.subprocess.Process, log_fh: Any, name: str) -> None:
        code = await end_process(proc, sig=signal.SIGTERM, grace=8.0)
        log_fh.close()
        if code not in (0, None):
            self.anomalies.append(f"{name}: agent exited with code {code} on SIGTERM")

    def log_problems(self, log_path: Path, name: str) -> list[str]:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        pattern = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b")
        problems = [line.rstrip() for line in text.splitlines() if pattern.search(line)]
        if problems:
            self.anomalies.append(
                f"{name}: {len(problems)} WARNING/ERROR line(s) in the agent log, first: "
                f"{problems[0][:200]}"
            )
        return problems

    # -- one scenario ----------------------------------------------------------------------

    async def run_scenario(
        self, name: str, scripts: list[CallerScript], transcripts: list[str], llm: Callable
    ) -> ScenarioRun:
        run_dir = self.workdir / name
        run_dir.mkdir(parents=True, exist_ok=True)
        TimedRecogniser.log.clear()
        TimedRecogniser.arrivals.clear()
        async with (
            TimedDeepgram(transcripts, final_latency=STT_FINAL_S) as deepgram,
            TimedOpenAI(llm, first_token_latency=LLM_FIRST_TOKEN_S) as openai,
            TimedElevenLabs(first_byte_latency=TTS_FIRST_BYTE_S, speed=None) as elevenlabs,
        ):
            run = ScenarioRun(name, deepgram, openai, elevenlabs)
            proc, port, log_fh, log_path = await self.start_agent(run, run_dir)
            try:
                run.offsets.append(clock_offset())
                for index, script in enumerate(scripts):
                    machine = await self.note_machine(f"{name} call {index + 1}")
                    if proc.returncode is not None:
                        raise RuntimeError(f"agent died; see {log_path}")
                    run.calls.append(await self.one_call(run_dir, index, port, script, machine))
                run.offsets.append(clock_offset())
            finally:
                await self.stop_agent(proc, log_fh, name)
            problems = self.log_problems(log_path, name)
            dump = run_dir / "agent_sessions.json"
            if self.args.agent == "recording":
                if dump.exists():
                    run.agent_dump = json.loads(dump.read_text())
                else:
                    self.anomalies.append(f"{name}: the agent wrote no session dump")
            run.agent_dump["log_problems"] = problems
            run.agent_dump["log"] = str(log_path)
        return run

    async def one_call(
        self, run_dir: Path, index: int, agent_port: int, script: CallerScript, machine: Any
    ) -> dict[str, Any]:
        call_dir = run_dir / f"call{index + 1}"
        call_dir.mkdir(parents=True, exist_ok=True)
        hold_ms = int(script.seconds * 1000) + 300
        sipp = Sipp(
            call_dir,
            "uac_call.xml",
            remote=f"{LOOPBACK}:{agent_port}",
            service="agent",
            params={"AUDIO": script.path, "HOLD_MS": hold_ms},
            timeout=hold_ms / 1000 + 15.0,  # SIPp's global -timeout must outlast the call
        )
        capture = Capture(
            call_dir / "capture.pcap",
            f"udp and (port {sipp.media_port} or port {agent_port})",
            linger=CAPTURE_LINGER_S,
        )
        async with capture:
            try:
                await sipp.start(wait_bound=False)
                result = await sipp.wait()
            finally:
                await sipp.stop()
        drops = re.search(r"(\d+) packets? dropped by kernel", capture.stderr)
        info = {
            "call": index + 1,
            "sipp_command": shlex.join(sipp.args()),
            "sipp_returncode": result.returncode,
            "caller_audio": str(script.path),
            "caller_audio_s": round(script.seconds, 2),
            "pcap": str(capture.path),
            "tcpdump_dropped": int(drops.group(1)) if drops else None,
            "machine_before": machine,
            "script": script,
            "media_port": sipp.media_port,
        }
        if not result.ok:
            self.anomalies.append(
                f"call {call_dir.name}: SIPp failed (rc={result.returncode}, "
                f"timed_out={result.timed_out}); see {sipp.workdir}"
            )
        if info["tcpdump_dropped"]:
            self.anomalies.append(f"{call_dir}: tcpdump dropped {info['tcpdump_dropped']} packets")
        return info

    # -- v2v -------------------------------------------------------------------------------

    async def scenario_v2v(self) -> dict[str, Any]:
        args = self.args
        scripts = [
            v2v_script(self.lib, self.workdir / f"v2v-caller{i + 1}.ulaw", args.turns, args.gap)
            for i in range(args.calls)
        ]
        transcripts = [u.text + "." for s in scripts for u in s.utterances]

        def llm(body: dict[str, Any]) -> Reply:
            users = sum(1 for m in body.get("messages", []) if m.get("role") == "user")
            return Reply(V2V_REPLIES[(users - 1) % len(V2V_REPLIES)])

        run = await self.run_scenario("v2v", scripts, transcripts, llm)
        return self.analyse_v2v(run)

    def analyse_v2v(self, run: ScenarioRun) -> dict[str, Any]:
        real = run.real
        finals = [e for e in TimedRecogniser.log if e["kind"] == "final"]
        for e in finals:
            e["sent"] = real(run.deepgram.sent_at.get(id(e["message"])))
            e["speech_end_arrival_real"] = real(e["speech_end_arrival"])
        oa = [
            {"received": real(r.received_at), "first": real(r.first_chunk_at),
             "done": real(run.openai.done_at.get(id(r))),
             "text": run.openai.reply_text.get(id(r), "")}
            for r in run.openai.requests
        ]  # fmt: skip
        tts = [
            {"received": real(run.elevenlabs.received_at.get(id(r))),
             "first": real(getattr(r.first_chunk_sent, "at", None)), "text": r.text}
            for r in run.elevenlabs.requests
        ]  # fmt: skip
        agent_turns = self.agent_user_turns(run)
        turns: list[dict[str, Any]] = []
        calls_out = []
        inbound: dict[str, list[float]] = {}
        for call in run.calls:
            script, cap = self.analyse_call("v2v", run, call, inbound)
            for k, utt in enumerate(script.utterances):
                row = self.v2v_turn(run, call, cap, script, k, utt, finals, oa, tts, agent_turns)
                turns.append(row)
            calls_out.append(self._call_info(call, cap))
        summary = self.summarise_v2v(run, turns, calls_out)
        summary["inbound_path_ms"] = {k: pct(v) for k, v in inbound.items()}
        return summary

    def analyse_call(
        self, name: str, run: ScenarioRun, call: dict[str, Any], inbound: dict[str, list[float]]
    ) -> tuple[CallerScript, CallCapture]:
        """Read one call's capture, check the caller's stream, add its inbound-path samples to
        `inbound` and note where its jitter buffer anchored (in `call`)."""
        script: CallerScript = call["script"]
        cap = analyse_capture(Path(call["pcap"]), call["media_port"], script.path.read_bytes())
        self.check_caller_stream(name, call, cap)
        fake = fake_frame_arrivals(run, cap)
        recorded = self.recorded_anchor(run, cap)
        path, anchor = inbound_path(
            cap, fake, self.target_delay(run), recorded.pop("arrival", None)
        )
        for key, values in path.items():
            inbound.setdefault(key, []).extend(values)
        anchor.update(recorded)
        call["jitter_buffer_anchor"] = anchor
        return script, cap

    def check_caller_stream(self, name: str, call: dict[str, Any], cap: CallCapture) -> None:
        if cap.caller_mismatch:
            self.anomalies.append(
                f"{name} call {call['call']}: {cap.caller_mismatch} caller packets differ "
                "from the file"
            )
        expected = call["script"].frames
        if len(cap.caller_at) != expected:
            self.anomalies.append(
                f"{name} call {call['call']}: {len(cap.caller_at)} of {expected} caller "
                "packets captured"
            )

    def recorded_anchor(self, run: ScenarioRun, cap: CallCapture) -> dict[str, Any]:
        """The agent's own record of where this call's jitter buffer anchored (recording mode):
        its read time of that packet minus the packet's capture time."""
        if not cap.caller_at:
            return {}
        lo, hi = min(cap.caller_at.values()), max(cap.caller_at.values())
        for a in run.agent_dump.get("jitter_buffer_anchors", []):
            arrival = run.real(a["arrival"])
            if arrival is None or not lo - 0.5 <= arrival <= hi + 0.5:
                continue
            index = ((a["timestamp"] - cap.caller_ts0) % 2**32) // FRAME_BYTES
            if index in cap.caller_at:
                return {
                    "arrival": arrival - index * FRAME_S,  # as the time base of frame 0
                    "agent_recorded_anchor_frame": index,
                    "agent_recorded_anchor_minus_capture_ms": ms(cap.caller_at[index], arrival),
                }
        return {}

    def target_delay(self, run: ScenarioRun) -> float:
        """The agent's inbound jitter-buffer delay (its stats when recorded; 40 ms default)."""
        stats = [s["jitter"] for s in (run.agent_dump.get("rtp") or {}).values()]
        for s in stats:
            if s["reanchors"] != 1:
                self.anomalies.append(
                    f"{run.name}: the agent's jitter buffer re-anchored {s['reanchors']} times "
                    "in a call (the inbound-path split assumes one anchor)"
                )
        delays = {round(s["target_delay_ms"], 3) for s in stats}
        if len(delays) == 1:
            return delays.pop() / 1000
        return 0.040

    def agent_user_turns(self, run: ScenarioRun) -> list[dict[str, Any]]:
        out = []
        for session in run.agent_dump.get("sessions", {}).values():
            for turn in session["turns"]:
                if turn["role"] == "user":
                    t = {k: run.real(v) for k, v in turn["timings"].items()}
                    out.append(t)
        return out

    def v2v_turn(
        self,
        run: ScenarioRun,
        call: dict[str, Any],
        cap: CallCapture,
        script: CallerScript,
        k: int,
        utt: Utterance,
        finals: list[dict[str, Any]],
        oa: list[dict[str, Any]],
        tts: list[dict[str, Any]],
        agent_turns: list[dict[str, Any]],
    ) -> dict[str, Any]:
        row: dict[str, Any] = {"call": call["call"], "turn": k + 1, "utterance": utt.text}
        end = cap.caller_at.get(utt.voiced_last)
        nxt = script.utterances[k + 1] if k + 1 < len(script.utterances) else None
        horizon = cap.caller_at.get(nxt.voiced_first, float("inf")) if nxt else float("inf")
        if end is None:
            row["error"] = "the caller's last voiced packet is not in the capture"
            self.anomalies.append(f"v2v call {call['call']} turn {k + 1}: {row['error']}")
            return row
        i = cap.agent_index_after(end)
        reply = next((p for p in cap.agent[i:] if p.voiced), None)
        if reply is None or reply.time >= horizon:
            row["error"] = "no agent reply before the next utterance"
            self.anomalies.append(f"v2v call {call['call']} turn {k + 1}: {row['error']}")
            return row
        row["v2v_ms"] = ms(end, reply.time)
        row["overhead_nominal_ms"] = round(row["v2v_ms"] - NOMINAL_PROVIDER_S * 1000, 2)
        final = first_in(finals, lambda e: e["sent"] or 0.0, end, reply.time)
        llm = first_in(oa, lambda r: r["received"] or 0.0, end, reply.time)
        synth = first_in(tts, lambda r: r["received"] or 0.0, end, reply.time)
        if final is None or llm is None or synth is None:
            row["error"] = "provider records for this turn not found"
            self.anomalies.append(f"v2v call {call['call']} turn {k + 1}: {row['error']}")
            return row
        # The fake's VAD found the same last speech frame as this analysis (same VAD, frames
        # aligned): otherwise STT time and the wire speech end would refer to different audio.
        fake_end_frame = round(final["speech_end_audio_t"] / FRAME_S) - 1
        row["fake_speech_end_frame_offset"] = fake_end_frame - utt.voiced_last
        if fake_end_frame != utt.voiced_last:
            self.anomalies.append(
                f"v2v call {call['call']} turn {k + 1}: the fake STT's last speech frame is "
                f"{fake_end_frame}, the file's {utt.voiced_last}"
            )
        expected = expected_audio(synth["text"])[:FRAME_BYTES]
        row["reply"] = llm["text"]
        row["first_packet_is_reply_audio"] = reply.payload[: len(expected)] == expected
        if not row["first_packet_is_reply_audio"]:
            self.anomalies.append(
                f"v2v call {call['call']} turn {k + 1}: the first voiced agent packet is not "
                f"the start of the fake TTS audio for {synth['text']!r}"
            )
        stt_s = final["sent"] - final["speech_end_arrival_real"]
        llm_s = llm["first"] - llm["received"]
        tts_s = synth["first"] - synth["received"]
        row["provider_ms"] = {
            "stt": round(stt_s * 1000, 2),
            "llm": round(llm_s * 1000, 2),
            "tts": round(tts_s * 1000, 2),
            "sum": round((stt_s + llm_s + tts_s) * 1000, 2),
        }
        row["overhead_measured_ms"] = round(row["v2v_ms"] - row["provider_ms"]["sum"], 2)
        # Where the agent's part goes (these four add up to overhead_measured_ms).
        row["segments_ms"] = {
            "inbound_audio": ms(end, final["speech_end_arrival_real"]),
            "stt_final_to_llm_request": ms(final["sent"], llm["received"]),
            "llm_first_chunk_to_tts_request": ms(llm["first"], synth["received"]),
            "tts_first_chunk_to_wire": ms(synth["first"], reply.time),
        }
        row["detail_ms"] = {
            "llm_first_chunk_to_llm_done": ms(llm["first"], llm["done"]),
            "llm_done_to_tts_request": ms(llm["done"], synth["received"]),
            "fake_final_due_to_sent": ms(run.real(final["due"]), final["sent"]),
        }
        # The agent's own stamps, where recorded (agent clock -> realtime).
        at = first_in(agent_turns, lambda t: t.get("stt_final") or 0.0, end, reply.time)
        if at is not None:
            row["agent_ms"] = {
                "final_sent_to_agent_stt_final": ms(final["sent"], at["stt_final"]),
                "agent_stt_final_to_llm_request": ms(at["stt_final"], llm["received"]),
                "llm_first_chunk_to_agent_first_token": ms(llm["first"], at["llm_first_token"]),
                "tts_first_chunk_to_agent_first_byte": ms(synth["first"], at["tts_first_byte"]),
                "agent_first_byte_to_first_packet_sent": ms(
                    at["tts_first_byte"], at["first_reply_packet"]
                ),
                "agent_packet_sent_to_wire": ms(at["first_reply_packet"], reply.time),
                "wire_speech_end_to_agent_vad_speech_end": ms(end, at["caller_speech_end"]),
            }
        return row

    def summarise_v2v(
        self, run: ScenarioRun, turns: list[dict[str, Any]], calls: list[dict[str, Any]]
    ) -> dict[str, Any]:
        good = [t for t in turns if "error" not in t]

        def col(key: str, sub: str | None = None) -> list[float | None]:
            return [(t[key][sub] if sub else t[key]) for t in good if key in t]

        v2v = pct(col("v2v_ms"))
        over_nom = pct(col("overhead_nominal_ms"))
        over_meas = pct(col("overhead_measured_ms"))
        segments = {k: pct(col("segments_ms", k)) for k in good[0]["segments_ms"]} if good else {}
        details = {k: pct(col("detail_ms", k)) for k in good[0]["detail_ms"]} if good else {}
        with_agent = [t for t in good if "agent_ms" in t]
        agent = (
            {k: pct([t["agent_ms"][k] for t in with_agent]) for k in with_agent[0]["agent_ms"]}
            if with_agent
            else {}
        )
        providers = {k: pct(col("provider_ms", k)) for k in ("stt", "llm", "tts", "sum")}

        return {
            "scenario": "v2v",
            "turns_planned": len(turns),
            "turns_measured": len(good),
            "v2v_ms": v2v,
            "provider_ms_measured": providers,
            "provider_ms_nominal": NOMINAL_PROVIDER_S * 1000,
            "overhead_nominal_ms": over_nom,
            "overhead_measured_ms": over_meas,
            "overhead_segments_ms": segments,
            "overhead_detail_ms": details,
            "agent_recorded_ms": agent,
            "meets": {
                "v2v_p50": ok(v2v, "p50", TARGETS["v2v_p50_ms"]),
                "overhead_p50 (measured)": ok(over_meas, "p50", TARGETS["overhead_p50_ms"]),
                "overhead_p95 (measured)": ok(over_meas, "p95", TARGETS["overhead_p95_ms"]),
                "overhead_p50 (nominal)": ok(over_nom, "p50", TARGETS["overhead_p50_ms"]),
                "overhead_p95 (nominal)": ok(over_nom, "p95", TARGETS["overhead_p95_ms"]),
            },
            "calls": calls,
            "agent": {
                "log": run.agent_dump.get("log"),
                "log_problems": run.agent_dump.get("log_problems"),
                "rtp": run.agent_dump.get("rtp"),
            },
            "clock_offsets_s": run.offsets,
            "turns": turns,
        }

    # -- barge-in --------------------------------------------------------------------------

    async def scenario_barge_in(self) -> dict[str, Any]:
        args = self.args
        scripts = [
            barge_script(self.lib, self.workdir / f"barge-caller{i + 1}.ulaw", args.barge_ins, 0.75)
            for i in range(args.barge_calls)
        ]
        transcripts = [u.text + "." for s in scripts for u in s.utterances]

        def llm(body: dict[str, Any]) -> Reply:
            users = sum(1 for m in body.get("messages", []) if m.get("role") == "user")
            return Reply(LONG_REPLIES[(users - 1) % len(LONG_REPLIES)])

        run = await self.run_scenario("barge-in", scripts, transcripts, llm)
        return self.analyse_barge_in(run)

    def analyse_barge_in(self, run: ScenarioRun) -> dict[str, Any]:
        real = run.real
        events: list[dict[str, Any]] = []
        interrupted_turns: list[dict[str, Any]] = []
        for session in run.agent_dump.get("sessions", {}).values():
            for e in session["barge_in_events"]:
                events.append({**e, "at": real(e["at"]), "caller_onset": real(e["caller_onset"])})
            for turn in session["turns"]:
                if turn["role"] == "assistant" and turn["interrupted"]:
                    timings = {k: real(v) for k, v in turn["timings"].items()}
                    interrupted_turns.append({**turn, "timings": timings})
        pauses = [e for e in events if e["action"] == "pause"]
        interrupts = [e for e in events if e["action"] == "interrupt"]
        resumes = [e for e in events if e["action"] == "resume"]
        fake_onsets = [
            {**e, "arrival": real(e["arrival"])}
            for e in TimedRecogniser.log
            if e["kind"] == "onset"
        ]
        interims = [(real(t), text) for t, text in run.deepgram.interims()]
        rows: list[dict[str, Any]] = []
        calls_out = []
        inbound: dict[str, list[float]] = {}
        for call in run.calls:
            script, cap = self.analyse_call("barge-in", run, call, inbound)
            calls_out.append(self._call_info(call, cap))
            for k, utt in enumerate(script.utterances):
                row: dict[str, Any] = {"call": call["call"], "utterance": k + 1, "text": utt.text}
                rows.append(row)
                onset = cap.caller_at.get(utt.voiced_first)
                voiced_end = cap.caller_at.get(utt.voiced_last)
                if onset is None or voiced_end is None:
                    row["error"] = "utterance not in the capture"
                    continue
                i = cap.agent_index_after(onset)
                before = cap.agent[i - 1] if i > 0 else None
                if before is None or not before.voiced:
                    row["error"] = "the agent was not speaking at the caller's onset"
                    continue
                j = next((n for n in range(i, len(cap.agent)) if not cap.agent[n].voiced), None)
                if j is None:
                    row["error"] = "the agent never went quiet"
                    continue
                last_voiced, first_silent = cap.agent[j - 1], cap.agent[j]
                row["what_was_talked_over"] = "greeting" if k == 0 else "reply"
                row["onset_to_silence_ms"] = ms(onset, last_voiced.time)
                row["onset_to_first_silent_packet_ms"] = ms(onset, first_silent.time)
                resumed = [p for p in cap.agent[j:] if p.voiced and p.time < voiced_end]
                row["agent_voiced_again_while_caller_spoke"] = len(resumed)
                fake_onset = first_in(fake_onsets, lambda e: e["arrival"], onset, onset + 1.0)
                words = first_in(interims, lambda x: x[0], onset, onset + 2.0)
                row["onset_to_stt_onset_ms"] = ms(onset, fake_onset and fake_onset["arrival"])
                row["onset_to_stt_first_words_ms"] = ms(onset, words and words[0])
                pause = first_in(pauses, lambda e: e["at"], onset - 0.05, onset + 1.0)
                if pause is None:
                    if run.agent_dump.get("sessions") is not None:
                        row["note"] = "no PAUSE event recorded by the agent"
                    continue
                interrupt = first_in(interrupts, lambda e: e["at"], pause["at"], onset + 2.5)
                row["onset_to_pause_decision_ms"] = ms(onset, pause["at"])
                row["agent_onset_minus_wire_onset_ms"] = ms(onset, pause["caller_onset"])
                after = [p for p in cap.agent if p.time > pause["at"]]
                silent_after = next((p for p in after if not p.voiced), None)
                # Silence starts where the last voiced frame's 20 ms of audio ends; the first
                # silent packet carries that moment onto the wire (one tick later).
                row["decision_to_silence_ms"] = ms(pause["at"], last_voiced.time + FRAME_S)
                row["decision_to_first_silent_packet_ms"] = ms(
                    pause["at"], silent_after and silent_after.time
                )
                row["decision_to_last_voiced_ms"] = ms(pause["at"], last_voiced.time)
                limit = interrupt["at"] + 0.1 if interrupt else voiced_end
                row["voiced_packets_after_decision"] = sum(
                    1 for p in after if p.voiced and p.time <= limit
                )
                row["resumed"] = any(pause["at"] < e["at"] < voiced_end for e in resumes)
                if interrupt is None:
                    row["note"] = "paused but no INTERRUPT recorded"
                    continue
                row["onset_to_interrupt_decision_ms"] = ms(onset, interrupt["at"])
                row["interrupt_transcript"] = interrupt["transcript"]
                turn = first_in(
                    interrupted_turns,
                    lambda t: t["timings"].get("barge_in_decision") or 0.0,
                    interrupt["at"] - 0.001,
                    interrupt["at"] + 0.001,
                )
                if turn is not None:
                    tm = turn["timings"]
                    row["agent_recorded_interrupt_decision_to_last_voiced_ms"] = ms(
                        tm["barge_in_decision"], tm["last_voiced_packet"]
                    )
                    row["heard_text"] = turn["heard_text"]
        for row in rows:
            if "error" in row:
                self.anomalies.append(
                    f"barge-in call {row['call']} utterance {row['utterance']}: {row['error']}"
                )
            if row.get("agent_voiced_again_while_caller_spoke"):
                self.anomalies.append(
                    f"barge-in call {row['call']} utterance {row['utterance']}: the agent spoke "
                    f"again ({row['agent_voiced_again_while_caller_spoke']} packets) before the "
                    "caller finished"
                )
        good = [r for r in rows if "error" not in r]

        def col(key: str) -> list[float | None]:
            return [r.get(key) for r in good]

        stats = {
            key: pct(col(key))
            for key in (
                "onset_to_silence_ms", "onset_to_first_silent_packet_ms",
                "onset_to_pause_decision_ms", "onset_to_interrupt_decision_ms",
                "decision_to_silence_ms", "decision_to_first_silent_packet_ms",
                "decision_to_last_voiced_ms",
                "onset_to_stt_onset_ms", "onset_to_stt_first_words_ms",
                "agent_onset_minus_wire_onset_ms",
                "agent_recorded_interrupt_decision_to_last_voiced_ms",
            )
        }  # fmt: skip
        voiced_after = [
            r["voiced_packets_after_decision"] for r in good if "voiced_packets_after_decision" in r
        ]
        d2s = stats["decision_to_silence_ms"]
        d2p = stats["decision_to_first_silent_packet_ms"]
        return {
            "scenario": "barge-in",
            "barge_ins_planned": len(rows),
            "barge_ins_measured": len(good),
            **stats,
            "voiced_packets_after_decision_total": sum(voiced_after) if voiced_after else None,
            "resumes": sum(1 for r in good if r.get("resumed")),
            "meets": {
                "onset_to_silence_p50": ok(
                    stats["onset_to_silence_ms"], "p50", TARGETS["onset_to_silence_p50_ms"]
                ),
                "decision_to_silence_p50": ok(d2s, "p50", TARGETS["decision_to_silence_ms"]),
                "decision_to_silence_max": ok(d2s, "max", TARGETS["decision_to_silence_ms"]),
                "decision_to_first_silent_packet_p50": ok(
                    d2p, "p50", TARGETS["decision_to_silence_ms"]
                ),
            },
            "inbound_path_ms": {k: pct(v) for k, v in inbound.items()},
            "calls": calls_out,
            "agent": {
                "log": run.agent_dump.get("log"),
                "log_problems": run.agent_dump.get("log_problems"),
                "rtp": run.agent_dump.get("rtp"),
            },
            "clock_offsets_s": run.offsets,
            "rows": rows,
        }

    @staticmethod
    def _call_info(call: dict[str, Any], cap: CallCapture) -> dict[str, Any]:
        info = {k: v for k, v in call.items() if k not in ("script",)}
        info["utterances"] = len(call["script"].utterances)
        info["caller_packets"] = len(cap.caller_at)
        info["caller_packets_not_matching_file"] = cap.caller_mismatch
        info["agent_packets"] = len(cap.agent)
        info["agent_voiced_packets"] = sum(1 for p in cap.agent if p.voiced)
        return info

    async def run(self) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for name, coro_fn in (("v2v", self.scenario_v2v), ("barge-in", self.scenario_barge_in)):
            if name not in self.args.only:
                continue
            try:
                results[name] = await coro_fn()
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as error:
                self.anomalies.append(f"{name}: {type(error).__name__}: {error}")
                traceback.print_exc()
                results[name] = {"scenario": name, "error": f"{type(error).__name__}: {error}"}
            print(f"  done: {name}", file=sys.stderr, flush=True)
        return results


# ---------------------------------------------------------------------------------------------
# report


def _f(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _row(label: str, s: dict[str, Any], target: str = "", verdict: str = "") -> str:
    return (
        f"| {label} | {s['n']} | {_f(s['p50'])} | {_f(s['p95'])} | {_f(s['max'])} | "
        f"{target} | {verdict} |"
    )


def _verdict(flag: bool | None) -> str:
    return "-" if flag is None else ("PASS" if flag else "FAIL")


INBOUND_LABELS = {
    "total": "inbound: wire -> fake STT",
    "buffer": "inbound: wire -> jitter-buffer due time",
    "tick_wait": "inbound: due time -> media tick",
    "to_stt": "inbound: media tick -> fake STT",
}


def markdown(report: dict[str, Any]) -> str:
    out: list[str] = []
    head = ["| metric | n | p50 ms | p95 ms | max ms | target | result |",
            "|---|---:|---:|---:|---:|---|---|"]  # fmt: skip
    r = report["results"].get("v2v")
    if r and "error" not in r:
        m = r["meets"]
        out += [f"### Voice-to-voice ({r['turns_measured']}/{r['turns_planned']} turns, capture "
                "on lo; providers STT 300 + LLM 300 + TTS 100 ms)", "", *head]  # fmt: skip
        out.append(_row("voice-to-voice", r["v2v_ms"], "p50 <= 720", _verdict(m["v2v_p50"])))
        for key, label in (("stt", "STT"), ("llm", "LLM"), ("tts", "TTS"), ("sum", "sum")):
            out.append(_row(f"provider time, measured: {label}", r["provider_ms_measured"][key]))
        out.append(
            _row("agent overhead = v2v - measured providers", r["overhead_measured_ms"],
                 "p50 <= 10, p95 <= 25",
                 "/".join(_verdict(m[f"overhead_{p} (measured)"]) for p in ("p50", "p95")))
        )  # fmt: skip
        out.append(
            _row("agent overhead = v2v - 700 ms nominal", r["overhead_nominal_ms"],
                 "p50 <= 10, p95 <= 25",
                 "/".join(_verdict(m[f"overhead_{p} (nominal)"]) for p in ("p50", "p95")))
        )  # fmt: skip
        out += ["", "Where the measured overhead goes (segments add up to it):", "", *head]
        for key, stats in r["overhead_segments_ms"].items():
            out.append(_row(key.replace("_", " "), stats))
        for key, label in INBOUND_LABELS.items():
            if r["inbound_path_ms"][key]["n"]:
                out.append(_row(f"(every caller frame) {label}", r["inbound_path_ms"][key]))
        anchors = [c.get("jitter_buffer_anchor") or {} for c in r["calls"]]
        if all(a.get("delivery", "").startswith("after") for a in anchors):
            late = [a.get("agent_anchor_minus_first_packet_ms") for a in anchors]
            out.append(
                "| (per call) jitter-buffer anchor minus first caller packet's arrival | "
                + f"{len(late)} | {', '.join(_f(x) for x in late)} | | | | |"
            )
        for key, stats in r["overhead_detail_ms"].items():
            out.append(_row(f"(detail) {key.replace('_', ' ')}", stats))
        for key, stats in r["agent_recorded_ms"].items():
            out.append(_row(f"(agent stamps) {key.replace('_', ' ')}", stats))
    elif r:
        out.append(f"v2v: ERROR {r['error']}")
    b = report["results"].get("barge-in")
    if b and "error" not in b:
        m = b["meets"]
        out += ["", f"### Barge-in ({b['barge_ins_measured']}/{b['barge_ins_planned']} "
                "interruptions; the first of each call over the greeting)", "", *head]  # fmt: skip
        rows = (
            ("caller onset -> agent's last voiced packet (silence, PAUSE step)",
             "onset_to_silence_ms", "p50 <= 200", _verdict(m["onset_to_silence_p50"])),
            ("caller onset -> first silent agent packet", "onset_to_first_silent_packet_ms",
             "", ""),
            ("caller onset -> PAUSE decision (agent)", "onset_to_pause_decision_ms", "", ""),
            ("caller onset -> INTERRUPT decision (agent)", "onset_to_interrupt_decision_ms",
             "", ""),
            ("PAUSE decision -> silence (end of the last voiced frame's audio)",
             "decision_to_silence_ms", "<= 20",
             f"p50 {_verdict(m['decision_to_silence_p50'])}, "
             f"max {_verdict(m['decision_to_silence_max'])}"),
            ("PAUSE decision -> first silent packet on the wire",
             "decision_to_first_silent_packet_ms", "<= 20",
             _verdict(m["decision_to_first_silent_packet_p50"])),
            ("PAUSE decision -> last voiced packet", "decision_to_last_voiced_ms", "", ""),
            ("caller onset -> fake STT onset (audio reached it)", "onset_to_stt_onset_ms", "",
             ""),
            ("caller onset -> first interim words sent", "onset_to_stt_first_words_ms", "", ""),
            ("(agent stamps) INTERRUPT decision -> last voiced packet sent",
             "agent_recorded_interrupt_decision_to_last_voiced_ms", "", ""),
        )  # fmt: skip
        for label, key, target, verdict in rows:
            out.append(_row(label, b[key], target, verdict))
        out.append("")
        out.append(
            f"voiced agent packets after the PAUSE decision: "
            f"{_f(b['voiced_packets_after_decision_total'])}; resumes: {b['resumes']}"
        )
    elif b:
        out.append(f"barge-in: ERROR {b['error']}")
    mach = report["machine"]
    out += [
        "",
        f"machine: nproc={mach['nproc']} ({mach['cpu_model']}), Python {mach['python']}, "
        f"{mach['sipp']}; loadavg start {mach['loadavg_start']} end {mach.get('loadavg_end')}",
        f"command: `{report['command']}`",
        f"agent: `{report['agent_commands'][0] if report['agent_commands'] else '-'}`",
    ]
    if report["anomalies"]:
        out += ["", "anomalies:"] + [f"- {a}" for a in report["anomalies"]]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    p.add_argument("--calls", type=int, default=3, help="v2v: sequential calls (default 3)")
    p.add_argument("--turns", type=int, default=7, help="v2v: utterances per call (default 7)")
    p.add_argument(
        "--gap",
        type=float,
        default=1.9,
        help="v2v: silence after each utterance's last voiced frame, s (default 1.9)",
    )
    p.add_argument("--barge-calls", type=int, default=3, help="barge-in: calls (default 3)")
    p.add_argument(
        "--barge-ins", type=int, default=5, help="barge-in: interruptions per call (default 5)"
    )
    p.add_argument("--barge-in-sensitivity", default="medium", choices=("low", "medium", "high"))
    p.add_argument(
        "--agent",
        choices=("recording", "serve"),
        default="recording",
        help="recording: `sipagent serve` via its CLI with a session dump (default); "
        "serve: the plain sipagent binary (no agent-side decision times)",
    )
    p.add_argument("--rtp-ports", default="23000-23999", help="the agent's RTP port range")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output file")
    p.add_argument("--workdir", type=Path, help="artifacts directory (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the artifacts directory")
    p.add_argument("--time-limit", type=float, default=420.0, help="abort after this, s")
    args = p.parse_args(argv)
    if min(args.calls, args.turns, args.barge_calls, args.barge_ins) < 1:
        p.error("counts must be >= 1")
    reply_s = max(audio_duration_ms(r) for r in V2V_REPLIES) / 1000
    if args.gap < NOMINAL_PROVIDER_S + reply_s + 0.2:
        p.error(f"--gap must leave room for the reply: >= {NOMINAL_PROVIDER_S + reply_s + 0.2}")
    return args


def _jsonable(value: Any) -> Any:
    if isinstance(value, CallerScript):
        return {"path": str(value.path), "frames": value.frames,
                "utterances": [dataclasses.asdict(u) for u in value.utterances]}  # fmt: skip
    if isinstance(value, Path):
        return str(value)
    raise TypeError(type(value).__name__)


async def amain(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if main_task is not None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, main_task.cancel)
    started = time.time()
    report: dict[str, Any] = {
        "benchmark": "conversation_latency",
        "command": shlex.join(["python", os.path.relpath(sys.argv[0], Path.cwd()), *sys.argv[1:]]),
        "cwd": str(Path.cwd()),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": machine_info(),
        "settings": {
            "scenarios": args.only,
            "v2v_calls": args.calls,
            "v2v_turns_per_call": args.turns,
            "v2v_gap_s": args.gap,
            "barge_calls": args.barge_calls,
            "barge_ins_per_call": args.barge_ins,
            "barge_in_sensitivity": args.barge_in_sensitivity,
            "agent": args.agent,
            "rtp_ports": args.rtp_ports,
            "fake_deepgram": {
                "final_latency_s": STT_FINAL_S,
                "endpointing_ms": ENDPOINTING_MS,
                "interim_interval_s": 0.2,
                "vad_threshold": 200,
            },
            "fake_openai": {"first_token_latency_s": LLM_FIRST_TOKEN_S, "inter_token_delay_s": 0},
            "fake_elevenlabs": {
                "first_byte_latency_s": TTS_FIRST_BYTE_S,
                "speed": None,
                "ms_per_char": MS_PER_CHAR,
            },
            "v2v_replies": V2V_REPLIES,
            "barge_in_replies": LONG_REPLIES,
        },
        "targets": TARGETS,
    }
    bench = Bench(args, workdir)
    try:
        report["results"] = await asyncio.wait_for(bench.run(), args.time_limit)
    finally:
        report["agent_commands"] = bench.agent_cmds
        report["anomalies"] = bench.anomalies
        report["machine"]["loadavg_end"] = list(os.getloadavg())
        report["duration_s"] = round(time.time() - started, 1)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--agent-worker"]:
        return agent_worker(Path(argv[1]), argv[2:])
    args = parse_args(argv)
    return run_benchmark(
        args, amain, markdown, workdir_prefix="sipagent-convbench-", json_default=_jsonable
    )


if __name__ == "__main__":
    sys.exit(main())

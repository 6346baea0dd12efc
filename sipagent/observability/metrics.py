"""Prometheus metrics of one agent, folded from its events and read live at scrape time.

Counters and histograms fold the endpoint's events (events.py) as they are emitted, each
exactly once: a call's RTP counters when it ends (its final stats), a turn when its timings
are final. What only exists while it lasts (active calls, conversation states, the RTP of
calls still in progress, registration) is read when scraped (`refresh`). Each agent gets its
own CollectorRegistry so two agents in one process (tests) never share or clash on series.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from sipagent.conversation.barge_in import BargeInAction
from sipagent.observability.events import (
    BargeIn,
    CallAnswered,
    CallEnded,
    CallStarted,
    Event,
    EventBus,
    ProviderFailure,
    ProviderStage,
    TurnCompleted,
)
from sipagent.observability.snapshot import STAGE_NAMES, conversation_sessions, stage_latencies
from sipagent.sip.call import CallState
from sipagent.sip.registration import RegistrationState

if TYPE_CHECKING:
    from sipagent.conversation.turns import Turn
    from sipagent.media.session import RtpSessionStats
    from sipagent.sip.endpoint import SipEndpoint

# Phone latency lives between ~50 ms (one stage) and a few seconds (a slow LLM turn).
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
ANSWER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DURATION_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0)
REGISTRATION_STATES = (*(str(state) for state in RegistrationState), "peer-to-peer")
CONVERSATION_STATES = ("listening", "thinking", "speaking")


@dataclass(slots=True)
class _MediaFolded:
    """A call's RTP counts already added to the counters (read live while it lasts)."""

    packets_in: int = 0
    packets_out: int = 0
    lost: int = 0
    late: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


def loop_time() -> float:
    """The clock of the endpoint's and the conversations' stamps (the event loop's)."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:  # refreshed outside a loop (tests): asyncio's clock is monotonic
        return time.monotonic()


def _delta(new: int, old: int) -> int:
    # A counter that went backwards was reset at the source: all of its new value is new.
    return new - old if new >= old else new


class AgentMetrics:
    """Prometheus series for one agent: `observe` its endpoint's events (see `attach`), and
    `refresh(endpoint)` before each scrape for the live figures."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.calls_active = Gauge(
            "sipagent_calls_active", "Calls in progress (ringing or answered)", registry=r
        )
        self.calls_total = Counter(
            "sipagent_calls", "Inbound calls accepted (INVITEs that got a dialog)", registry=r
        )
        self.call_duration = Histogram(
            "sipagent_call_duration_seconds", "Answered calls: answer to hang-up",
            buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.answer_time = Histogram(
            "sipagent_answer_seconds", "INVITE received to 200 OK sent (includes ring time)",
            buckets=ANSWER_BUCKETS, registry=r,
        )  # fmt: skip
        self.registration_state = Gauge(
            "sipagent_registration_state", "1 for the current registration state",
            ["state"], registry=r,
        )  # fmt: skip
        self.registration_expires = Gauge(
            "sipagent_registration_expires_seconds",
            "Seconds until the registrar binding expires (0 when not registered)", registry=r,
        )  # fmt: skip
        self.registration_failures = Counter(
            "sipagent_registration_failures", "Failed REGISTERs and lost bindings", registry=r
        )
        self.conversations = Gauge(
            "sipagent_conversations", "Active conversations by state", ["state"], registry=r
        )
        self.turn_latency = Histogram(
            "sipagent_turn_latency_seconds",
            "Per-turn latency by stage: stt_final (speech end -> final transcript), "
            "llm_first_token, tts_first_byte, first_packet (-> first RTP packet), "
            "voice_to_voice (caller speech end -> first reply packet), barge_in_decision, "
            "barge_in_onset_to_silence",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.turns = Counter("sipagent_turns", "Conversation turns", ["role"], registry=r)
        self.barge_ins = Counter(
            "sipagent_barge_ins", "Replies interrupted by the caller", registry=r
        )
        self.barge_in_false_alarms = Counter(
            "sipagent_barge_in_false_alarms",
            "Tentative barge-ins (agent paused) that resumed: noise, cough, backchannel",
            registry=r,
        )
        self.rtp_packets = Counter(
            "sipagent_rtp_packets", "RTP packets (in: accepted)", ["direction"], registry=r
        )
        self.rtp_dropped = Counter(
            "sipagent_rtp_dropped", "Inbound datagrams dropped, by reason", ["reason"], registry=r
        )
        self.jitter_lost = Counter(
            "sipagent_jitter_buffer_lost", "Inbound frames never played (lost)", registry=r
        )
        self.jitter_late = Counter(
            "sipagent_jitter_buffer_late", "Inbound packets that came too late", registry=r
        )
        self.jitter_worst = Gauge(
            "sipagent_rtp_jitter_worst_seconds",
            "Highest RFC 3550 interarrival jitter among active calls", registry=r,
        )  # fmt: skip
        self.provider_errors = Counter(
            "sipagent_provider_errors", "STT/LLM/TTS provider failures", ["stage"], registry=r
        )
        self.sip_malformed = Counter(
            "sipagent_sip_malformed", "SIP datagrams dropped as malformed", ["kind"], registry=r
        )
        # Labelled series only appear once used; the known ones start at 0 so rate() works
        # from the first failure on.
        for stage in STAGE_NAMES:
            self.turn_latency.labels(stage)
        for direction in ("in", "out"):
            self.rtp_packets.labels(direction)
        for stage in ProviderStage:
            self.provider_errors.labels(stage)
        for role in ("user", "assistant"):
            self.turns.labels(role)

        # Plain running totals for /status (reading them back from the registry is clumsy).
        self.totals: dict[str, int] = dict.fromkeys(
            (
                "calls", "turns", "barge_ins", "barge_in_false_alarms", "provider_errors",
                "sip_malformed", "rtp_packets_in", "rtp_packets_out", "jitter_lost",
                "jitter_late", "registration_failures",
            ),
            0,
        )  # fmt: skip
        self.rtp_dropped_totals: Tally[str] = Tally()
        # RTP stats of the active calls from the last refresh: computing them sorts a minute
        # of tick samples per call, so /status reuses these instead of asking again.
        self.media_stats: dict[str, RtpSessionStats] = {}
        self.last_refresh: float | None = None
        self._live_media: dict[str, _MediaFolded] = {}  # calls whose CallEnded is to come
        self._sip_malformed_seen: dict[str, int] = {}
        self._registration_failures_seen = 0

    @property
    def rtp_dropped_by_reason(self) -> dict[str, int]:
        return dict(self.rtp_dropped_totals)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """(body, content type) of this agent's registry in the format the scraper accepts.

        Negotiated like prometheus_client's own handler: OpenMetrics or text 1.0.0 when the
        Accept header asks for it, the classic text format 0.0.4 otherwise (curl, old servers).
        """
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    # -- events -----------------------------------------------------------------------------
    def attach(self, events: EventBus) -> Callable[[], None]:
        """Observe an endpoint's events from now on; returns the function that stops it."""
        return events.subscribe(self.observe)

    def observe(self, event: Event) -> None:
        """Fold one event (each is emitted once, when final: nothing is counted twice)."""
        match event:
            case CallStarted():
                self.calls_total.inc()
                self.totals["calls"] += 1
            case CallAnswered(answer_seconds=seconds):
                self.answer_time.observe(seconds)
            case CallEnded(call_id=call_id, duration=duration, media=media):
                if duration is not None:
                    self.call_duration.observe(duration)
                folded = self._live_media.pop(call_id, None)
                if media is not None:
                    self._fold_media(media, folded or _MediaFolded())
            case TurnCompleted(turn=turn):
                self._observe_turn(turn)
            case BargeIn(action=BargeInAction.INTERRUPT):
                self.barge_ins.inc()
                self.totals["barge_ins"] += 1
            case BargeIn(action=BargeInAction.RESUME):
                self.barge_in_false_alarms.inc()
                self.totals["barge_in_false_alarms"] += 1
            case ProviderFailure(stage=stage):
                self.provider_errors.labels(stage).inc()
                self.totals["provider_errors"] += 1

    def _observe_turn(self, turn: Turn) -> None:
        # The caller's turn and the reply to it share one TurnTimings object: the caller's turn
        # contributes the STT stage (known when it is created, and kept even if no reply is
        # ever recorded), the reply everything after it. No stage is counted twice.
        spans = stage_latencies(turn.timings)
        if turn.role == "assistant":
            spans.pop("stt_final", None)
        else:
            spans = {stage: s for stage, s in spans.items() if stage == "stt_final"}
        for stage, seconds in spans.items():
            self.turn_latency.labels(stage).observe(seconds)
        role = turn.role if turn.role in ("user", "assistant") else "other"
        self.turns.labels(role).inc()
        self.totals["turns"] += 1

    # -- live figures, read when scraped ----------------------------------------------------
    def refresh(self, endpoint: SipEndpoint, now: float | None = None) -> None:
        """Read what exists only while it lasts: calls and conversations in progress, their
        RTP so far, registration, and the endpoint's own counters. Idempotent."""
        now = time.time() if now is None else now
        sessions = conversation_sessions(endpoint)
        active = [call for call in endpoint.calls.values() if call.state != CallState.ENDED]
        media_stats: dict[str, RtpSessionStats] = {}
        for call in active:
            if call.rtp is not None:
                stats = media_stats[call.call_id] = call.rtp.stats
                folded = self._live_media.setdefault(call.call_id, _MediaFolded())
                self._fold_media(stats, folded)
        self.media_stats = media_stats

        self.calls_active.set(len(active))
        states = Tally(sessions[c.call_id].state for c in active if c.call_id in sessions)
        for state in CONVERSATION_STATES:
            self.conversations.labels(state).set(states.get(state, 0))
        self.jitter_worst.set(
            max((s.jitter.jitter_ms / 1000 for s in media_stats.values()), default=0.0)
        )
        self._fold_registration(endpoint)
        self._fold_sip_malformed(endpoint)
        self.last_refresh = now

    def refresh_if_stale(self, endpoint: SipEndpoint, max_age: float = 0.2) -> None:
        """Refresh unless one just happened (a dashboard and a scraper may ask at once)."""
        now = time.time()
        last = self.last_refresh
        if last is None or now - last >= max_age or now < last:
            self.refresh(endpoint, now)

    def _fold_media(self, stats: RtpSessionStats, folded: _MediaFolded) -> None:
        """Add what `stats` counts beyond `folded`, and move `folded` up to it."""
        jitter = stats.jitter
        for direction, new, old in (
            ("in", stats.packets_in, folded.packets_in),
            ("out", stats.packets_out, folded.packets_out),
        ):
            if added := _delta(new, old):
                self.rtp_packets.labels(direction).inc(added)
                self.totals[f"rtp_packets_{direction}"] += added
        if added := _delta(jitter.lost, folded.lost):
            self.jitter_lost.inc(added)
            self.totals["jitter_lost"] += added
        if added := _delta(jitter.late, folded.late):
            self.jitter_late.inc(added)
            self.totals["jitter_late"] += added
        for reason, count in stats.dropped.items():
            if added := _delta(count, folded.dropped.get(reason, 0)):
                self.rtp_dropped.labels(reason).inc(added)
                self.rtp_dropped_totals[reason] += added
        folded.packets_in, folded.packets_out = stats.packets_in, stats.packets_out
        folded.lost, folded.late = jitter.lost, jitter.late
        folded.dropped = dict(stats.dropped)

    def _fold_registration(self, endpoint: SipEndpoint) -> None:
        policy = endpoint.registration
        current = str(policy.status.state) if policy is not None else "peer-to-peer"
        for state in REGISTRATION_STATES:
            self.registration_state.labels(state).set(1 if state == current else 0)
        if policy is None:
            self.registration_expires.set(0)
            return
        status = policy.status
        expires_at = status.expires_at
        registered = status.state == RegistrationState.REGISTERED and expires_at is not None
        self.registration_expires.set(
            max(0.0, expires_at - loop_time()) if registered and expires_at else 0.0
        )
        if added := _delta(status.failures, self._registration_failures_seen):
            self.registration_failures.inc(added)
            self.totals["registration_failures"] += added
        self._registration_failures_seen = status.failures

    def _fold_sip_malformed(self, endpoint: SipEndpoint) -> None:
        for kind, count in endpoint.dropped.items():
            if added := _delta(count, self._sip_malformed_seen.get(kind, 0)):
                self.sip_malformed.labels(kind).inc(added)
                self.totals["sip_malformed"] += added
            self._sip_malformed_seen[kind] = count

"""The `/status` document: a JSON-ready snapshot of one agent, built from public attributes.

Pure reads of the endpoint, its calls and (for the receptionist) the conversation sessions;
nothing here changes agent state. Deliberately left out: transcripts and spoken text
(callers say names, phone numbers and health reasons), and anything from the settings that
is secret; provider error messages are passed through `Redactor` because upstream SDKs
sometimes echo request headers or keys back in their errors.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from sipagent.channel import conversations_of
from sipagent.sip.call import Call, CallState

if TYPE_CHECKING:
    from sipagent.conversation.session import ConversationSession
    from sipagent.conversation.turns import Turn, TurnTimings
    from sipagent.media.session import RtpSessionStats
    from sipagent.observability.metrics import AgentMetrics
    from sipagent.sip.endpoint import SipEndpoint

# (stage, from stamp, to stamp) on TurnTimings. The first four add up to voice_to_voice, so a
# slow turn can be blamed on one stage; voice_to_voice is what the caller actually waits.
STAGES: tuple[tuple[str, str, str], ...] = (
    ("stt_final", "caller_speech_end", "stt_final"),
    ("llm_first_token", "stt_final", "llm_first_token"),
    ("tts_first_byte", "llm_first_token", "tts_first_byte"),
    ("first_packet", "tts_first_byte", "first_reply_packet"),
    ("voice_to_voice", "caller_speech_end", "first_reply_packet"),
    ("barge_in_decision", "barge_in_onset", "barge_in_decision"),
    ("barge_in_onset_to_silence", "barge_in_onset", "last_voiced_packet"),
)
STAGE_NAMES: tuple[str, ...] = tuple(stage for stage, _, _ in STAGES)

RECENT_ENDED_CALLS = 20  # ended calls whose turns/errors still show as "recent"
RECENT_TURNS = 10
TURNS_PER_CALL = 5
RECENT_ERRORS = 10
RECENT_BARGE_INS = 5
MAX_ERROR_CHARS = 300


def stage_latencies(timings: TurnTimings) -> dict[str, float]:
    """Seconds per stage for the stages whose both stamps exist.

    Negative spans are dropped rather than clamped: they only arise when a stamp belongs to
    an earlier exchange (e.g. the line was already quiet before the caller's onset), and a
    zero would pull the histograms towards a latency nobody experienced.
    """
    spans: dict[str, float] = {}
    for stage, start_name, end_name in STAGES:
        start = getattr(timings, start_name, None)
        end = getattr(timings, end_name, None)
        if start is not None and end is not None and end >= start:
            spans[stage] = end - start
    return spans


def conversation_sessions(endpoint: SipEndpoint) -> Mapping[str, ConversationSession]:
    """The receptionist's sessions by call id; empty for apps without conversations (echo)."""
    return conversations_of(endpoint.app)


class Redactor:
    """Removes secrets from free text (error messages) before it leaves the process."""

    # (pattern, replacement): the name of what was hidden stays, so the error still reads.
    _PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
        (re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"), "[redacted]"),  # OpenAI-style keys
        (re.compile(r"(?i)\b(bearer|token|basic)\s+[A-Za-z0-9._~+/=\-]{8,}"), r"\1 [redacted]"),
        (
            re.compile(
                r"(?i)\b(api[_-]?key|xi-api-key|authorization|password|secret)(\s*[=:]\s*)\S+"
            ),
            r"\1\2[redacted]",
        ),
    )

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first so a secret containing another is not half-replaced; very short
        # values are skipped because replacing them would mangle ordinary words.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    @classmethod
    def for_endpoint(cls, endpoint: SipEndpoint) -> Redactor:
        settings = endpoint.settings
        values = [settings.password.get_secret_value()]
        for name in ("deepgram_api_key", "openai_api_key", "elevenlabs_api_key"):
            secret = getattr(settings, name, None)
            if secret is not None and hasattr(secret, "get_secret_value"):
                values.append(secret.get_secret_value())
        return cls(values)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        for pattern, replacement in self._PATTERNS:
            text = pattern.sub(replacement, text)
        if len(text) > MAX_ERROR_CHARS:
            text = text[: MAX_ERROR_CHARS - 1] + "…"
        return text


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _turn_summary(index: int, turn: Turn) -> dict[str, Any]:
    return {
        "index": index,
        "role": turn.role,
        "at": round(turn.at, 3),
        "interrupted": turn.interrupted,
        "latency_ms": {
            stage: _ms(seconds) for stage, seconds in stage_latencies(turn.timings).items()
        },
    }


def _assistant_turns(session: ConversationSession) -> list[tuple[int, Turn]]:
    # Assistant turns carry the whole exchange's timings (the caller's turn shares the object).
    return [(i, turn) for i, turn in enumerate(session.turns) if turn.role == "assistant"]


def _media(call: Call, stats: RtpSessionStats | None) -> dict[str, Any] | None:
    if stats is None:
        return None
    jitter = stats.jitter
    expected = jitter.expected
    return {
        "codec": call.media.codec,
        "packets_in": stats.packets_in,
        "packets_out": stats.packets_out,
        "jitter_ms": round(jitter.jitter_ms, 2),
        "lost": jitter.lost,
        "late": jitter.late,
        "expected": expected,
        "loss_pct": round(100.0 * jitter.lost / expected, 2) if expected else 0.0,
        "dropped": dict(stats.dropped),
    }


def _conversation(session: ConversationSession) -> dict[str, Any]:
    assistant = _assistant_turns(session)
    last_v2v = None
    for _, turn in reversed(assistant):
        spans = stage_latencies(turn.timings)
        if "voice_to_voice" in spans:
            last_v2v = _ms(spans["voice_to_voice"])
            break
    return {
        "state": session.state,
        "turns": len(session.turns),
        "barge_ins": sum(1 for e in session.barge_in_events if str(e.action) == "interrupt"),
        "provider_errors": len(session.failures.recent),
        "last_voice_to_voice_ms": last_v2v,
        "recent_turns": [_turn_summary(i, t) for i, t in assistant[-TURNS_PER_CALL:]],
    }


def _call(
    call: Call,
    session: ConversationSession | None,
    stats: RtpSessionStats | None,
    now: float,
) -> dict[str, Any]:
    since = call.answered_at or call.started_at
    conversation = _conversation(session) if session is not None else None
    return {
        "call_id": call.call_id,
        "caller": call.caller,
        "sip_state": str(call.state),
        # What an operator wants to see: the conversation's state once there is one.
        "state": conversation["state"] if conversation else str(call.state),
        "started_at": round(call.started_at, 3),
        "answered_at": None if call.answered_at is None else round(call.answered_at, 3),
        "duration_s": round(max(0.0, now - since), 1),
        "media": _media(call, stats),
        "conversation": conversation,
    }


def _recent_calls(endpoint: SipEndpoint) -> list[Call]:
    return [*endpoint.ended_calls[-RECENT_ENDED_CALLS:], *endpoint.calls.values()]


def build_status(
    endpoint: SipEndpoint,
    metrics: AgentMetrics,
    *,
    redact: Redactor,
    started_at: float,
    now: float | None = None,
    loop_now: float | None = None,
) -> dict[str, Any]:
    """The `/status` document. `now` is wall time, `loop_now` the loop clock of the stamps.

    Call `metrics.refresh(endpoint)` first: media figures come from that refresh's RTP stats.
    """
    now = time.time() if now is None else now
    loop_now = time.monotonic() if loop_now is None else loop_now
    sessions = conversation_sessions(endpoint)
    settings = endpoint.settings

    registration: dict[str, Any]
    if endpoint.registration is not None:
        registration = {"mode": "registrar", **endpoint.registration.status.as_dict(loop_now)}
        registration["reason"] = redact(str(registration.get("reason") or ""))
    else:
        registration = {"mode": "peer-to-peer", "state": "peer-to-peer", "reason": ""}

    active = [
        _call(call, sessions.get(call.call_id), metrics.media_stats.get(call.call_id), now)
        for call in endpoint.calls.values()
        if call.state != CallState.ENDED
    ]

    recent_turns: list[dict[str, Any]] = []
    provider_errors: list[dict[str, Any]] = []
    barge_ins: list[dict[str, Any]] = []
    for call in _recent_calls(endpoint):
        session = sessions.get(call.call_id)
        if session is None:
            continue
        for index, turn in _assistant_turns(session)[-TURNS_PER_CALL:]:
            recent_turns.append(
                {"call_id": call.call_id, "caller": call.caller, **_turn_summary(index, turn)}
            )
        for failure in list(session.failures.recent)[-RECENT_ERRORS:]:
            provider_errors.append(
                {
                    "call_id": call.call_id,
                    "caller": call.caller,
                    "stage": str(failure.stage),
                    "message": redact(str(failure)),
                }
            )
        for event in session.barge_in_events:
            if str(event.action) != "interrupt":
                continue
            onset = event.caller_onset
            barge_ins.append(
                {
                    "call_id": call.call_id,
                    "caller": call.caller,
                    "ago_s": round(max(0.0, loop_now - event.at), 1),
                    "decision_ms": None if onset is None else _ms(event.at - onset),
                }
            )
    recent_turns.sort(key=lambda turn: turn["at"])
    barge_ins.sort(key=lambda event: -event["ago_s"])

    return {
        "agent": {
            "app": settings.app,
            "sip": "{}:{}".format(*endpoint.local_address) if endpoint.transport else None,
            "sip_socket": endpoint.transport_state,
            "user": settings.user,
            "started_at": round(started_at, 3),
            "uptime_s": round(max(0.0, now - started_at), 1),
            "now": round(now, 3),
        },
        "registration": registration,
        "calls": active,
        "recent_turns": recent_turns[-RECENT_TURNS:],
        "barge_ins": {
            "total": metrics.totals["barge_ins"],
            "false_alarms": metrics.totals["barge_in_false_alarms"],
            "recent": barge_ins[-RECENT_BARGE_INS:],
        },
        "errors": {
            "provider": provider_errors[-RECENT_ERRORS:],
            "provider_total": metrics.totals["provider_errors"],
            "sip_malformed": dict(endpoint.dropped),
            "rtp_dropped": metrics.rtp_dropped_by_reason,
        },
        "totals": {**metrics.totals, "calls_active": len(active)},
    }

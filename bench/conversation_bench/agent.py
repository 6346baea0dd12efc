"""The recording agent: `sipagent serve` through its own CLI, in its own process, dumping each
session's timings and barge-in events when it stops."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import Any


def agent_worker(dump_path: Path, cli_args: list[str]) -> int:
    """`sipagent serve CLI_ARGS` through its own CLI, recording sessions to `dump_path`."""
    import sipagent.cli.main as cli
    from sipagent.agent import run_agent
    from sipagent.channel import conversations_of
    from sipagent.config import AgentSettings
    from sipagent.media.jitter_buffer import JitterBuffer
    from sipagent.sip.call import Call
    from sipagent.sip.endpoint import SipEndpoint

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

        def call_ended(call: Call) -> None:
            if call.rtp is not None:
                rtp[call.call_id] = dataclasses.asdict(call.rtp.stats)

        def dump_sessions(endpoint: SipEndpoint) -> None:
            sessions = {}
            for call_id, session in conversations_of(endpoint.app).items():
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

"""Runs one agent process: the SIP endpoint with its app, until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

from sipagent.apps import build_app
from sipagent.channel import drain_call_records
from sipagent.config import AgentSettings
from sipagent.observability.status import start_status_server
from sipagent.sip.call import Call
from sipagent.sip.endpoint import SipEndpoint

log = logging.getLogger("sipagent")

# What each stage's provider is, in words (offline: what runs on this machine).
_PROVIDER_NAMES = {
    ("llm", "offline"): "offline (scripted receptionist, no language model)",
    ("tts", "offline"): "offline (espeak-ng)",
}
_APP_DESCRIPTIONS = {
    "echo": "echo (plays each caller's audio back to them)",
    "player": "player (plays a file, records what callers send)",
    "receptionist": "receptionist",
}


def describe_app(settings: AgentSettings) -> str:
    """'app receptionist: STT deepgram (nova-3), LLM openai (gpt-4o-mini), TTS offline (...)'.

    Raises ValueError when a chosen provider cannot run (e.g. its key is missing)."""
    line = f"app {_APP_DESCRIPTIONS[settings.app]}"
    if settings.app != "receptionist":
        return line
    from sipagent.providers.factory import choose

    choice = choose(settings)
    models = {
        "stt": settings.deepgram_model,
        "llm": settings.openai_model
        + (f" at {settings.openai_base_url}" if settings.openai_base_url else ""),
        "tts": settings.elevenlabs_model,
    }
    # Which offline recogniser was asked for (a Whisper whose weights fail their check falls
    # back to pocketsphinx, and says so in its own log line).
    names = {**_PROVIDER_NAMES, ("stt", "offline"): f"offline ({settings.offline_stt})"}
    stages = []
    for stage in ("stt", "llm", "tts"):
        provider = getattr(choice, stage)
        shown = names.get((stage, provider), f"{provider} ({models[stage]})")
        stages.append(f"{stage.upper()} {shown}")
    return f"{line}: {', '.join(stages)}"


async def run_agent(
    settings: AgentSettings,
    *,
    ready: asyncio.Event | None = None,
    on_call_ended: Callable[[Call], None] | None = None,
    on_stopped: Callable[[SipEndpoint], None] | None = None,
) -> None:
    """`on_call_ended` sees each call as it ends; `on_stopped` the endpoint after shutdown
    (tools such as the benchmarks read the sessions' timings there)."""
    endpoint = SipEndpoint(settings, build_app(settings.app, settings), on_call_ended=on_call_ended)
    await endpoint.start()
    status = await start_status_server(endpoint, settings.status_bind)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("shutting down: hanging up %d call(s)", len(endpoint.calls))
        await endpoint.stop()
        # The hung-up calls' end records must reach the database.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(drain_call_records(endpoint.app), 10)
        if status is not None:  # after the endpoint: a last scrape still sees the hang-ups
            await status.stop()
        if on_stopped is not None:
            on_stopped(endpoint)

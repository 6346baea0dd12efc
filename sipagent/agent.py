"""Runs one agent process: the SIP endpoint with its app, until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from sipagent.apps import build_app
from sipagent.channel import drain_call_records
from sipagent.config import CHOICES, AgentSettings
from sipagent.observability.status import start_status_server
from sipagent.sip.call import Call
from sipagent.sip.endpoint import SipEndpoint

log = logging.getLogger("sipagent")
T = TypeVar("T")

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


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What makes the event loop for `choice` (None: asyncio's own). `auto` is uvloop when it
    is installed. Raises ValueError when uvloop is asked for and missing."""
    if choice not in CHOICES["event_loop"]:
        raise ValueError(f"unknown event loop {choice!r}: {' | '.join(CHOICES['event_loop'])}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "auto":
            return None
        raise ValueError(
            "--loop uvloop: uvloop is not installed (pip install 'sipagent[uvloop]', "
            "or --loop asyncio)"
        ) from None

    class MonotonicTimeUvloop(uvloop.Loop):  # type: ignore[misc, name-defined]
        """uvloop keeping asyncio's clock. uvloop's own loop.time() is libuv's millisecond
        count: every stamp and deadline here is loop.time() (media pacing, a reply's first
        frame sent at once, tick lateness, turn timings), and whole milliseconds made a
        reply on a quiet line wait up to a frame for the next tick. Same epoch
        (CLOCK_MONOTONIC); uvloop's call_at reads the time through this method."""

        def time(self) -> float:
            return time.monotonic()

    return MonotonicTimeUvloop


def run_on_loop(choice: str, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """`asyncio.run(main())` on the chosen event loop (`loop_factory`); `main` is only called
    once the loop exists, so a missing uvloop leaves no coroutine never awaited."""
    factory = loop_factory(choice)
    # asyncio.run(loop_factory=) is 3.12+; the Runner takes one on 3.11.
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


MEDIA_THREAD_SWITCH_INTERVAL = 0.001


def apply_realtime_priority(priority: int) -> bool:
    """Put the calling thread (and the threads it starts later: they inherit it) under SCHED_RR
    at `priority` (0: leave the scheduling alone). A machine that also runs other work then
    gives the media its CPU first: on two cores shared with the capacity benchmark's own load,
    100 calls on two workers kept pacing p99 at 3.77 ms instead of 8.69 ms (bench/capacity.py).
    Without the privilege the agent still runs, at normal scheduling, and says so."""
    if priority <= 0:
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(priority))
    except (AttributeError, OSError) as error:  # no SCHED_RR here, or EPERM
        log.warning(
            "realtime priority %d refused (%s): normal scheduling (it needs root or "
            "CAP_SYS_NICE, or an RLIMIT_RTPRIO of at least %d)",
            priority,
            error,
            priority,
        )
        return False
    log.info("scheduling: SCHED_RR, priority %d", priority)
    return True


def freeze_startup_objects() -> None:
    """Move everything alive after start-up (imported modules, SDK clients, models: ~200,000
    objects) out of the cyclic garbage collector's reach. Each full collection otherwise walks
    all of them while holding the GIL: 70-150 ms pauses in which no call's frame was sent
    (bench/capacity.py saw every stream stall 150-170 ms at once at 25 calls). They are never
    garbage, so freezing them loses nothing; what calls allocate later is still collected."""
    gc.collect()
    gc.freeze()


async def run_agent(
    settings: AgentSettings,
    *,
    ready: asyncio.Event | None = None,
    on_call_ended: Callable[[Call], None] | None = None,
    on_stopped: Callable[[SipEndpoint], None] | None = None,
) -> None:
    """`on_call_ended` sees each call as it ends; `on_stopped` the endpoint after shutdown
    (tools such as the benchmarks read the sessions' timings there)."""
    loop = asyncio.get_running_loop()
    log.info("event loop: %s", "asyncio" if isinstance(loop, asyncio.BaseEventLoop) else "uvloop")
    apply_realtime_priority(settings.realtime_priority)  # before any thread of ours starts
    if settings.media_thread:
        # The media clock's thread waits for the GIL at most this long when the loop's
        # thread is computing (CPython's default is 5 ms: a pacing error of up to 5 ms).
        sys.setswitchinterval(MEDIA_THREAD_SWITCH_INTERVAL)
    # The stop handlers come first: a supervisor may send SIGTERM the instant the SIP port
    # answers, and without them the signal killed the process (no hang-ups, no records).
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    endpoint = SipEndpoint(settings, build_app(settings.app, settings), on_call_ended=on_call_ended)
    await endpoint.start()
    status = await start_status_server(endpoint, settings.status_bind)
    freeze_startup_objects()
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

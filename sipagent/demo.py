"""`sipagent demo`: the embedded default, end to end on loopback with no keys and no trunk.

An agent (offline providers) answers on 127.0.0.1; a simulated caller, a second SIP user agent
in the same process, dials it over real SIP/RTP, speaks its lines with the offline voice (and
types its phone number on the keypad, RFC 4733), listens until the agent stops talking, and
answers what was asked. Then the transcript, the per-turn latency and the stored appointment
are printed.
"""

from __future__ import annotations

import asyncio
import audioop
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from sipagent.apps.echo import EchoApp
from sipagent.apps.receptionist import ReceptionistApp
from sipagent.channel import CallChannel
from sipagent.config import AgentSettings
from sipagent.conversation.session import ConversationSession
from sipagent.conversation.turns import Turn
from sipagent.providers.base import TextToSpeech
from sipagent.providers.offline_tts import EspeakTextToSpeech
from sipagent.sip.call import Call
from sipagent.sip.endpoint import SipEndpoint

AGENT_SILENT_AFTER = 0.8  # seconds of agent silence that end its turn, for the caller
MAX_CALLER_TURNS = 10


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def choose_answer(question: str) -> str:
    """What the simulated caller says to the agent's last words ("#..." = keypad)."""
    asked = question.lower()
    if "anything else" in asked:
        return "No, thanks, goodbye."
    if "phone" in asked or "number" in asked:
        return "#5550123456#"
    if "name" in asked:
        return "My name is David Miller."
    if "what day" in asked or "what time" in asked or "suit you" in asked:
        return "Next Tuesday at three pm."
    if "cleaning, a checkup" in asked:
        return "A cleaning, please."
    return "I'd like to book a cleaning for next Tuesday at three pm."


class SimulatedCaller:
    """A CallApp for the dialling side: listens for the agent to finish, then answers.

    Subclasses change what is said (`next_line`, `say`) and where the agent's audio goes
    (`heard`): `sipagent console --input` plays a recording's utterances this way."""

    def __init__(
        self,
        tts: TextToSpeech | None,
        agent_said: Callable[[], str],
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        self.tts = tts
        self.agent_said = agent_said
        self.on_line = on_line
        self.lines: list[str] = []
        self._agent_voice_at: float | None = None

    def next_line(self) -> str | None:
        """What to say to the agent's last words ("#..." = keypad); None: nothing more."""
        return choose_answer(self.agent_said())

    async def say(self, call: CallChannel, line: str) -> None:
        assert self.tts is not None
        async with contextlib.aclosing(self.tts.synthesize(line)) as audio:
            async for chunk in audio:
                call.play(chunk)

    def heard(self, frame: bytes) -> None:
        """Each 20 ms mu-law frame the agent sent (nothing is done with it here)."""

    async def handle(self, call: CallChannel) -> None:
        loop = asyncio.get_running_loop()
        listener = asyncio.create_task(self._listen(call))
        try:
            for _ in range(MAX_CALLER_TURNS):
                if not await self._agent_turn_done(call):
                    return  # the agent hung up
                line = self.next_line()
                if line is None:
                    break
                self.lines.append(line)
                if self.on_line is not None:
                    self.on_line(line)
                if line.startswith("#"):
                    call.send_digits(line.strip("#") + "#")
                    await asyncio.sleep(0.24 * len(line))
                else:
                    await self.say(call, line)
                    await call.drained()
                self._agent_voice_at = None
                if line.endswith("goodbye."):
                    break
            # Said all it had to: listen until the agent hangs up (or it is time to go).
            deadline = loop.time() + 15
            while loop.time() < deadline and not listener.done():
                await asyncio.sleep(0.1)
        finally:
            listener.cancel()

    async def _listen(self, call: CallChannel) -> None:
        loop = asyncio.get_running_loop()
        async for frame in call.frames():
            self.heard(frame)
            if audioop.rms(audioop.ulaw2lin(frame, 2), 2) > 100:  # mu-law silence decodes to 0
                self._agent_voice_at = loop.time()

    async def _agent_turn_done(self, call: CallChannel) -> bool:
        """Wait for the agent to have spoken and then fallen silent."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while loop.time() < deadline:
            await asyncio.sleep(0.05)
            if call.ended.is_set():
                return False
            heard = self._agent_voice_at
            if heard is not None and loop.time() - heard > AGENT_SILENT_AFTER:
                return True
        return False


@dataclass
class DemoResult:
    turns: list[Turn]
    appointments: list[Any]
    offline: bool
    call_id: str
    stt_engine: str = ""


def receptionist_settings(base: AgentSettings, *, rtp_base: int) -> AgentSettings:
    """`base` as an agent answering on a free loopback port: no registrar, no status server."""
    return base.model_copy(
        update={
            "bind": f"127.0.0.1:{_free_udp_port()}",
            "rtp_ports": f"{rtp_base}-{rtp_base + 99}",
            "app": "receptionist",
            "server": "",
            "status_bind": "",
        }
    )


@contextlib.asynccontextmanager
async def agent_and_phone(
    agent_settings: AgentSettings, *, rtp_base: int
) -> AsyncIterator[tuple[ReceptionistApp, SipEndpoint, SipEndpoint]]:
    """A receptionist answering on loopback and a phone (a second SIP user agent) to call it
    from: (app, agent endpoint, phone endpoint), both stopped on exit."""
    app = ReceptionistApp.from_settings(agent_settings)
    agent = SipEndpoint(agent_settings, app)
    phone_settings = AgentSettings(
        _env_file=None,  # type: ignore[call-arg]
        bind=f"127.0.0.1:{_free_udp_port()}",
        rtp_ports=f"{rtp_base + 100}-{rtp_base + 199}",
        user="caller",
    )
    phone = SipEndpoint(phone_settings, EchoApp())
    await agent.start()
    await phone.start()
    try:
        yield app, agent, phone
    finally:
        await phone.stop()
        await agent.stop()


def last_agent_words(app: ReceptionistApp) -> str:
    session: ConversationSession | None = next(iter(app.sessions.values()), None)
    if session is None:
        return ""
    spoken = [t for t in session.turns if t.role == "assistant"]
    return spoken[-1].text if spoken else ""


async def wait_for_hangup(phone: SipEndpoint, call: Call, timeout: float) -> None:
    """Until either side hangs up; after `timeout` seconds the phone does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while call.call_id in phone.calls and loop.time() < deadline:
        await asyncio.sleep(0.1)
    if call.call_id in phone.calls:
        await phone.hangup(call, "timed out")


async def run_demo(console: Console, *, database_url: str, rtp_base: int = 21600) -> DemoResult:
    """The demo call; bookings and the call record go to `database_url` (migrated already)."""
    agent_settings = AgentSettings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=database_url,
        stt="offline",
        llm="offline",
        tts="offline",
        idle_reprompt_seconds=20.0,
    )
    agent_settings = receptionist_settings(agent_settings, rtp_base=rtp_base)
    async with agent_and_phone(agent_settings, rtp_base=rtp_base) as (app, agent, phone):
        host, port = agent.local_address
        # The caller speaks with a different voice than the agent's (and one the offline
        # recogniser knows well).
        simulated = SimulatedCaller(
            EspeakTextToSpeech(voice="en-us"),
            lambda: last_agent_words(app),
            lambda line: console.print(f"  [cyan]caller[/]: {line}"),
        )
        with console.status(f"dialling sip:agent@{host}:{port} over loopback SIP/RTP ..."):
            call = await phone.dial(f"sip:agent@{host}:{port}", simulated)
        console.print(f"[green]answered[/] ({call.media.codec}); the conversation:")
        await wait_for_hangup(phone, call, 120)
        session = app.sessions.get(call.call_id)
        return DemoResult(
            turns=list(session.turns) if session else [],
            appointments=await _booked_by(app, call.call_id),
            offline=app.providers.choice.offline,
            call_id=call.call_id,
            stt_engine=app.providers.stt_engine,
        )


async def _booked_by(app: ReceptionistApp, call_id: str) -> list[Any]:
    """The appointments as stored in the database, read back (not what the tool returned)."""
    if app.recorder is not None:
        await app.recorder.drain()
    for_call = getattr(app.store, "for_call", None)
    return list(await for_call(call_id)) if for_call is not None else []


def _ms(later: float | None, earlier: float | None) -> str:
    return "-" if later is None or earlier is None else f"{(later - earlier) * 1000:.0f}"


def print_report(console: Console, result: DemoResult) -> None:
    transcript = Table(title="Transcript", show_lines=False)
    transcript.add_column("who")
    transcript.add_column("said")
    for turn in result.turns:
        text = turn.heard_text + " [interrupted]" if turn.interrupted else turn.text
        transcript.add_row("caller" if turn.role == "user" else "agent", text)
    console.print(transcript)

    latency = Table(title="Per-turn latency (ms, from the caller's last voiced frame)")
    for column in ("agent reply", "STT final", "LLM first token", "TTS first byte", "first RTP"):
        latency.add_column(column, justify="right" if column != "agent reply" else "left")
    for turn in result.turns:
        timings = turn.timings
        if turn.role != "assistant" or timings.caller_speech_end is None:
            continue
        start = timings.caller_speech_end
        latency.add_row(
            turn.text if len(turn.text) <= 28 else turn.text[:27] + "…",
            _ms(timings.stt_final, start),
            _ms(timings.llm_first_token, start),
            _ms(timings.tts_first_byte, start),
            _ms(timings.first_reply_packet, start),
        )
    console.print(latency)

    for appointment in result.appointments:
        stored = Table(title=f"Appointment #{appointment.id} as stored", show_header=False)
        stored.add_column("field", style="bold")
        stored.add_column("value")
        for field_name, value in (
            ("patient", appointment.patient_name),
            ("phone", appointment.phone),
            ("when", appointment.start.strftime("%A %Y-%m-%d %H:%M %Z")),
            ("reason", appointment.reason),
            ("duration", f"{appointment.duration_minutes} min"),
            ("call", appointment.call_id),
        ):
            stored.add_row(field_name, str(value))
        console.print(stored)
    if result.offline:
        console.print(
            f"[yellow]offline mode[/]: {result.stt_engine} STT, scripted receptionist, espeak-ng"
        )

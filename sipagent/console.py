"""`sipagent console`: talk to the receptionist from this computer.

The agent answers on loopback and a built-in softphone (a second SIP user agent, the demo's)
calls it over real SIP/RTP. The softphone's audio comes from the microphone and goes to the
speaker (sounddevice/PortAudio), or from/to WAV files: `--input` is a recording of the
caller, played one utterance (split at pauses) each time the agent stops talking, as a
person answering would; `--output` keeps everything the agent said. The transcript and each
reply's latency are printed as the call goes.
"""

from __future__ import annotations

import asyncio
import audioop
import contextlib
import queue
import signal
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from sipagent.apps.receptionist import ReceptionistApp
from sipagent.channel import CallChannel
from sipagent.config import AgentSettings
from sipagent.conversation.turns import Turn
from sipagent.demo import (
    SimulatedCaller,
    agent_and_phone,
    last_agent_words,
    receptionist_settings,
)
from sipagent.sip.call import Call

SAMPLE_RATE = 8000
FRAME_SAMPLES = 160  # 20 ms
FRAME_BYTES = FRAME_SAMPLES * 2  # 16-bit PCM
PAUSE_SECONDS = 0.6  # silence that separates two utterances of an --input recording
SILENCE_RMS = 300  # 16-bit PCM frames quieter than this are a pause
MAX_CALL_SECONDS = 600.0
# The phone's endpoint words reasons as the answering side would.
_END_REASONS = {"caller hung up": "the agent hung up"}


class AudioDeviceError(Exception):
    """No usable microphone/speaker; the message says what to do instead."""


# -- files ----------------------------------------------------------------------------------
def read_wav_as_telephone_pcm(path: Path) -> bytes:
    """Any PCM WAV as 8 kHz mono 16-bit (mixed down and resampled as needed)."""
    try:
        with wave.open(str(path), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            pcm = wav.readframes(wav.getnframes())
    except (OSError, wave.Error, EOFError) as error:
        raise ValueError(f"cannot read {path} as a WAV file: {error}") from error
    if width != 2:
        pcm, width = audioop.lin2lin(pcm, width, 2), 2
    if channels == 2:
        pcm = audioop.tomono(pcm, 2, 0.5, 0.5)
    elif channels != 1:
        raise ValueError(f"{path} has {channels} channels: give a mono or stereo WAV")
    if rate != SAMPLE_RATE:
        pcm, _ = audioop.ratecv(pcm, 2, 1, rate, SAMPLE_RATE, None)
    if not pcm:
        raise ValueError(f"{path} holds no audio")
    return pcm


def split_utterances(pcm: bytes) -> list[bytes]:
    """The recording's utterances: voiced stretches separated by PAUSE_SECONDS of quiet."""
    frames = [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]
    pause_frames = int(PAUSE_SECONDS * 50)
    utterances: list[bytes] = []
    current: list[bytes] = []
    quiet = 0
    for frame in frames:
        voiced = audioop.rms(frame, 2) >= SILENCE_RMS
        if voiced:
            current.append(frame)
            quiet = 0
        elif current:
            current.append(frame)
            quiet += 1
            if quiet >= pause_frames:
                utterances.append(b"".join(current[:-quiet]))
                current, quiet = [], 0
    if current:
        utterances.append(b"".join(current[: len(current) - quiet]))
    return utterances


class WavSink:
    """What the agent says, as an 8 kHz mono 16-bit WAV."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._wav = wave.open(str(path), "wb")  # noqa: SIM115 (closed in close())
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(SAMPLE_RATE)

    def write(self, mulaw: bytes) -> None:
        self._wav.writeframes(audioop.ulaw2lin(mulaw, 2))

    def close(self) -> None:
        self._wav.close()


# -- devices --------------------------------------------------------------------------------
def _sounddevice() -> Any:
    try:
        import sounddevice
    except OSError as error:  # the PortAudio library itself is missing
        raise AudioDeviceError(
            f"no audio support on this machine ({error}): install PortAudio (Debian/Ubuntu: "
            "apt-get install libportaudio2), or use --input FILE.wav --output FILE.wav"
        ) from None
    return sounddevice


def check_device(kind: str) -> None:
    """AudioDeviceError unless a default `kind` ("input" or "output") device exists."""
    sounddevice = _sounddevice()
    try:
        sounddevice.query_devices(kind=kind)
    except (ValueError, sounddevice.PortAudioError):
        what = "microphone" if kind == "input" else "speaker"
        flag = "--input FILE.wav" if kind == "input" else "--output FILE.wav"
        raise AudioDeviceError(
            f"no {what} found (PortAudio sees no {kind} device): connect one, or use {flag}"
        ) from None


class SpeakerSink:
    """The agent's voice on the default output device (a small queue absorbs jitter)."""

    def __init__(self) -> None:
        sounddevice = _sounddevice()
        self._frames: queue.Queue[bytes] = queue.Queue(maxsize=50)
        self._stream = sounddevice.RawOutputStream(
            samplerate=SAMPLE_RATE, channels=1, dtype="int16", blocksize=FRAME_SAMPLES,
            callback=self._fill,
        )  # fmt: skip
        self._stream.start()

    def _fill(self, buffer: Any, frames: int, _time: Any, _status: Any) -> None:
        try:
            data = self._frames.get_nowait()
        except queue.Empty:
            data = b""
        buffer[:] = data.ljust(frames * 2, b"\0")[: frames * 2]

    def write(self, mulaw: bytes) -> None:
        with contextlib.suppress(queue.Full):  # the device stalled: drop rather than lag
            self._frames.put_nowait(audioop.ulaw2lin(mulaw, 2))

    def close(self) -> None:
        self._stream.stop()
        self._stream.close()


class Microphone:
    """20 ms mu-law frames from the default input device, handed to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        sounddevice = _sounddevice()
        self.frames: asyncio.Queue[bytes] = asyncio.Queue()
        self._loop = loop
        self._stream = sounddevice.RawInputStream(
            samplerate=SAMPLE_RATE, channels=1, dtype="int16", blocksize=FRAME_SAMPLES,
            callback=self._captured,
        )  # fmt: skip
        self._stream.start()

    def _captured(self, data: Any, _frames: int, _time: Any, _status: Any) -> None:
        frame = audioop.lin2ulaw(bytes(data), 2)
        self._loop.call_soon_threadsafe(self.frames.put_nowait, frame)

    def close(self) -> None:
        self._stream.stop()
        self._stream.close()


# -- the softphone's side of the call -------------------------------------------------------
class RecordedCaller(SimulatedCaller):
    """Speaks a recording's utterances, one per agent turn; keeps what the agent says."""

    def __init__(
        self,
        utterances: list[bytes],
        agent_said: Callable[[], str],
        sink: WavSink | SpeakerSink,
    ) -> None:
        super().__init__(None, agent_said)
        self.utterances = list(utterances)
        self.sink = sink

    def next_line(self) -> str | None:
        return f"(recording, utterance {len(self.lines) + 1})" if self.utterances else None

    async def say(self, call: CallChannel, line: str) -> None:
        call.play(audioop.lin2ulaw(self.utterances.pop(0), 2))

    def heard(self, frame: bytes) -> None:
        self.sink.write(frame)


class MicrophoneCaller:
    """The person at the keyboard: microphone to the agent, the agent to the sink."""

    def __init__(self, microphone: Microphone, sink: WavSink | SpeakerSink) -> None:
        self.microphone = microphone
        self.sink = sink

    async def handle(self, call: CallChannel) -> None:
        async def speak() -> None:
            while True:
                call.play(await self.microphone.frames.get())

        speaking = asyncio.create_task(speak())
        try:
            async for frame in call.frames():
                self.sink.write(frame)
        finally:
            speaking.cancel()


# -- the transcript -------------------------------------------------------------------------
def _ms(later: float | None, earlier: float | None) -> str:
    return "-" if later is None or earlier is None else f"{(later - earlier) * 1000:.0f}"


def describe_turn(turn: Turn) -> str:
    """One transcript line; an agent reply with its latency after the caller stopped."""
    if turn.role == "user":
        return f"[cyan]you[/]: {turn.text}"
    text = f"{turn.heard_text} [interrupted]" if turn.interrupted else turn.text
    line = f"[magenta]agent[/]: {text}"
    timings = turn.timings
    if timings.caller_speech_end is not None and timings.first_reply_packet is not None:
        start = timings.caller_speech_end
        line += (
            f"  [dim]({_ms(timings.first_reply_packet, start)} ms voice to voice: STT "
            f"{_ms(timings.stt_final, start)}, LLM {_ms(timings.llm_first_token, start)}, "
            f"TTS {_ms(timings.tts_first_byte, start)})[/]"
        )
    return line


async def print_transcript(app: ReceptionistApp, console: Console, stop: asyncio.Event) -> int:
    """Print each turn as it is final; the number printed."""
    printed = 0
    while True:
        turns = [turn for session in app.sessions.values() for turn in session.turns]
        for turn in turns[printed:]:
            console.print(describe_turn(turn))
        printed = len(turns)
        if stop.is_set():
            return printed
        await asyncio.sleep(0.1)


# -- the command's body ---------------------------------------------------------------------
async def run_console(
    settings: AgentSettings,
    console: Console,
    *,
    input_path: Path | None,
    output_path: Path | None,
    rtp_base: int = 22600,
) -> list[Any]:
    """The call, until either side hangs up or Ctrl-C; the appointments it booked."""
    loop = asyncio.get_running_loop()
    utterances = split_utterances(read_wav_as_telephone_pcm(input_path)) if input_path else None
    if utterances is not None and not utterances:
        raise ValueError(f"{input_path} is silent: nothing to say to the agent")
    if input_path is None:
        check_device("input")
    if output_path is None:
        check_device("output")
    sink: WavSink | SpeakerSink = WavSink(output_path) if output_path else SpeakerSink()
    microphone = Microphone(loop) if input_path is None else None
    hung_up = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, hung_up.set)
    agent_settings = receptionist_settings(settings, rtp_base=rtp_base)
    try:
        async with agent_and_phone(agent_settings, rtp_base=rtp_base) as (app, agent, phone):
            host, port = agent.local_address
            caller: RecordedCaller | MicrophoneCaller
            if utterances is not None:
                caller = RecordedCaller(utterances, lambda: last_agent_words(app), sink)
            else:
                assert microphone is not None
                caller = MicrophoneCaller(microphone, sink)
            console.print(f"calling the receptionist at sip:agent@{host}:{port} (Ctrl-C hangs up)")
            if microphone is not None and output_path is None:
                # No echo cancellation here: from the speaker the agent would hear itself.
                console.print("use headphones: the microphone must not hear the agent")
            call = await phone.dial(f"sip:agent@{host}:{port}", caller)
            transcript_done = asyncio.Event()
            transcript = asyncio.create_task(print_transcript(app, console, transcript_done))
            await _until_hangup(phone, call, hung_up)
            console.print(f"call ended: {_END_REASONS.get(call.end_reason, call.end_reason)}")
            if app.recorder is not None:
                await app.recorder.drain()
            transcript_done.set()
            await transcript
            for_call = getattr(app.store, "for_call", None)
            return list(await for_call(call.call_id)) if for_call is not None else []
    finally:
        if microphone is not None:
            microphone.close()
        sink.close()


async def _until_hangup(phone: Any, call: Call, hung_up: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MAX_CALL_SECONDS
    while call.call_id in phone.calls and not hung_up.is_set() and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if call.call_id in phone.calls:
        await phone.hangup(call, "you hung up")

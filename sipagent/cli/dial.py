"""`sipagent call URI`: place one outbound call to test a trunk or a peer.

Either plays a file and records what comes back (the player app), or lets the receptionist
talk (`--agent`). Exit 0 when the call was answered, 1 when it was not (the SIP status is
printed, e.g. "486 Busy Here"), 2 on bad settings or arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import time
import wave
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from sipagent.apps.echo import EchoApp
from sipagent.apps.player import PlayerApp
from sipagent.channel import CallApp, drain_call_records
from sipagent.cli.options import (
    check_startable,
    fail,
    fail_bind,
    open_database_or_fail,
    resolve_or_fail,
    resolve_server_or_fail,
    settings_options,
)
from sipagent.config import AgentSettings
from sipagent.sip.call import Call, CallState
from sipagent.sip.endpoint import DialError, SipEndpoint
from sipagent.sip.uri import UriError, parse_uri

EXIT_ANSWERED = 0
EXIT_NOT_ANSWERED = 1
# A test call answers no calls: an INVITE that reaches its port (a peer dialling the AOR
# directly) just rings here while the real agent answers.
NEVER_ANSWER_SECONDS = 24 * 3600.0
POLL_SECONDS = 0.05
RECORDER_DRAIN_SECONDS = 10.0  # bound on the last database writes after the call
BYTES_PER_SECOND = 8000  # 8 kHz mu-law

out = Console()
err = Console(stderr=True)


class AudioFileError(ValueError):
    """A --play file we cannot turn into 8 kHz mu-law."""


def load_audio(path: Path) -> bytes:
    """Raw mu-law as is; a WAV must be 8 kHz mono 16-bit PCM (converted, never resampled:
    a silent resample would hide that the file is not what the trunk will carry)."""
    try:
        if path.suffix.lower() != ".wav":
            audio = path.read_bytes()
        else:
            with wave.open(str(path), "rb") as wav:
                rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
                if (rate, channels, width) != (8000, 1, 2):
                    raise AudioFileError(
                        f"{path} is {rate} Hz, {channels} channel(s), {8 * width}-bit: need 8000 Hz"
                        f" mono 16-bit (sox {path.name} -r 8000 -c 1 -b 16 out.wav)"
                    )
                pcm = wav.readframes(wav.getnframes())
            import audioop  # late: deprecated stdlib module, only needed for WAV input

            audio = audioop.lin2ulaw(pcm, 2)
    except (OSError, wave.Error, EOFError) as error:
        raise AudioFileError(f"cannot read {path}: {error}") from error
    if not audio:
        raise AudioFileError(f"{path} holds no audio")
    return audio


def target_uri(text: str, settings: AgentSettings) -> str:
    """`sip:100@host`, `100@host`, or just `100` (then at our SIP domain, via --server)."""
    text = text.strip()
    if not re.match(r"^sips?:", text, re.IGNORECASE):
        if "@" not in text:
            server = settings.server_address
            if server is None:
                raise UriError(f"{text!r} has no host: give user@host or set --server")
            domain = settings.sip_domain
            # As REGISTER does: the registrar's port belongs in the URI when it is the domain.
            if not settings.domain and server.port != 5060:
                domain = str(server)
            text = f"{text}@{domain}"
        text = f"sip:{text}"
    parse_uri(text)  # UriError if it is not something we can route
    return text


def _played_out(call: Call, audio: bytes) -> bool:
    return call.sent_audio_ms * BYTES_PER_SECOND / 1000 >= len(audio)


async def _wait_for_end(
    call: Call, stop: asyncio.Event, audio: bytes, hangup_after: float | None
) -> str:
    """Until the far end hangs up, or why we should: the reason for our BYE ("" if none)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + hangup_after if hangup_after is not None else None
    while call.state != CallState.ENDED:
        if stop.is_set():
            return "we hung up (interrupted)"
        if deadline is not None and loop.time() >= deadline:
            return f"we hung up (--hangup-after {hangup_after:g} s)"
        if deadline is None and audio and _played_out(call, audio):
            return "we hung up (file played)"
        await asyncio.sleep(POLL_SECONDS)
    return ""


def _end_reason(call: Call) -> str:
    # The endpoint words reasons for inbound calls: there the far end is the "caller".
    return {"caller hung up": "the far end hung up", "app finished": "the agent hung up"}.get(
        call.end_reason, call.end_reason
    )


async def place_call(
    settings: AgentSettings,
    uri: str,
    app: CallApp,
    *,
    audio: bytes = b"",
    hangup_after: float | None = None,
    record_dir: Path | None = None,
) -> int:
    """Dial `uri` with `app` on the call; print progress; the exit code."""
    # The inbound app is never reached: inbound calls only ring (see NEVER_ANSWER_SECONDS).
    # No REGISTER: a running `sipagent serve` usually holds this AOR's binding, and on
    # single-contact registrars (Asterisk's max_contacts=1, remove_existing=yes) ours would
    # replace it. The INVITE carries digest credentials itself (401/407 answered in `dial`).
    endpoint = SipEndpoint(settings, EchoApp(), register=False)
    await endpoint.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Ctrl-C hangs up (BYE) rather than abandoning a confirmed dialog at the far end.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    try:
        via = f" via {settings.server_address}" if settings.server_address else ""
        out.print(f"dialling {uri}{via} from {settings.advertised_ip}:{endpoint.local_address[1]}")
        dial = asyncio.ensure_future(endpoint.dial(uri, app))
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({dial, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not dial.done():
            # The endpoint cannot send CANCEL yet: the far end rings until its timer expires.
            dial.cancel()
            with contextlib.suppress(asyncio.CancelledError, DialError):
                await dial
            out.print("[red]interrupted while ringing[/]")
            return EXIT_NOT_ANSWERED
        try:
            call = dial.result()
        except DialError as error:
            out.print(f"[red]not answered[/]: {error}")
            return EXIT_NOT_ANSWERED
        media = call.media
        out.print(
            f"[green]answered[/]: {media.codec}, far-end media {media.remote_address}:"
            f"{media.remote_port}, ours {settings.advertised_ip}:{call.rtp_port}"
        )
        reason = await _wait_for_end(call, stop, audio, hangup_after)
        if reason:
            await endpoint.hangup(call, reason)
        seconds = (call.ended_at or time.time()) - (call.answered_at or call.started_at)
        bye = f", BYE answered {call.bye_status}" if call.bye_status else ""
        out.print(f"call ended after {seconds:.1f} s: {_end_reason(call)}{bye}")
        if record_dir is not None:
            _report_recording(record_dir, call)
        return EXIT_ANSWERED
    finally:
        # Signal handlers stay until asyncio.run closes the loop: a second Ctrl-C must not
        # cut the BYE and the unregistration short.
        await endpoint.stop()
        # The receptionist's call records are written in background tasks; leaving now
        # would lose the call's end.
        try:
            await asyncio.wait_for(drain_call_records(app), RECORDER_DRAIN_SECONDS)
        except TimeoutError:
            err.print("[yellow]call record not fully written: the database is slow[/]")


def _report_recording(record_dir: Path, call: Call) -> None:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", call.call_id)  # PlayerApp's file naming
    path = record_dir / f"{stem}.ulaw"
    if path.is_file():
        size = path.stat().st_size
        out.print(f"recorded {size / BYTES_PER_SECOND:.1f} s of raw mu-law to {path}")
    else:
        out.print(f"[yellow]no recording written to {record_dir}[/]")


def _option(help_text: str) -> typer.models.OptionInfo:
    return typer.Option(help=help_text, show_default=False)


@settings_options()
def call_command(
    settings: AgentSettings,
    uri: Annotated[str, typer.Argument(help="whom to call: sip:100@host, 100@host, or 100")],
    play: Annotated[
        Path | None, _option("raw mu-law file (.ulaw) or 8 kHz mono 16-bit .wav to play")
    ] = None,
    agent: Annotated[
        bool, typer.Option("--agent", help="let the receptionist talk on the call")
    ] = False,
    record: Annotated[
        Path | None, _option("directory for what the far end sends (raw mu-law)")
    ] = None,
    hangup_after: Annotated[
        float | None,
        _option(
            "hang up this many seconds after the answer (default: when the --play file has "
            "played; else when the far end or the agent hangs up, or Ctrl-C)"
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
) -> None:
    """Place an outbound call to test a trunk: play a file, or let the receptionist talk.

    --play FILE plays it and --record DIR keeps what the far end sends; --agent runs the
    receptionist on the call. Exit 0 answered, 1 not answered (SIP status printed),
    2 bad settings."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        handlers=[RichHandler(console=err, show_path=False, markup=False)],
    )
    settings = settings.model_copy(update={"ring_seconds": NEVER_ANSWER_SECONDS})
    if agent and (play is not None or record is not None):
        # The receptionist speaks and listens itself; its transcript is in `sipagent calls`.
        fail("--agent cannot be combined with --play or --record")
    if hangup_after is not None and hangup_after <= 0:
        fail(f"--hangup-after {hangup_after:g}: must be positive")
    try:
        uri = target_uri(uri, settings)
        audio = load_audio(play) if play is not None else b""
    except ValueError as error:  # UriError, AudioFileError
        fail(str(error))
    if settings.server_address is not None:
        resolve_server_or_fail(settings)
    else:
        resolve_or_fail(parse_uri(uri).destination[0], "the callee's host", f"check {uri}")
    app: CallApp
    if agent:
        from sipagent.apps.receptionist import ReceptionistApp

        check_startable(settings.model_copy(update={"app": "receptionist"}))
        open_database_or_fail(settings.database_url, create=True)
        app = ReceptionistApp.from_settings(settings)
    else:
        app = PlayerApp(audio, record)
    try:
        code = asyncio.run(
            place_call(
                settings, uri, app, audio=audio, hangup_after=hangup_after, record_dir=record
            )
        )
    except OSError as error:  # the SIP socket could not be bound: a settings problem here
        fail_bind(error, settings)
    raise typer.Exit(code)

"""The `sipagent` command line."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer
from pydantic import SecretStr, ValidationError
from rich.console import Console
from rich.logging import RichHandler

from sipagent.agent import run_agent
from sipagent.cli.dial import call_command
from sipagent.cli.doctor import doctor
from sipagent.cli.monitor import monitor
from sipagent.cli.records import appointments_app, calls_app
from sipagent.config import AgentSettings
from sipagent.logcontext import CallIdFilter

app = typer.Typer(help="sipagent: an AI phone receptionist that is a real SIP/RTP endpoint.")
console = Console(stderr=True)


def _setup_logging(verbose: bool) -> None:
    # Rich on a terminal; one plain line per record when piped (log files, supervisors).
    handler: logging.Handler
    if console.is_terminal:
        handler = RichHandler(console=console, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(name)s [%(call_id)s]: %(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(call_id)s]: %(message)s")
        )
    handler.addFilter(CallIdFilter())
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


def _option(help_text: str) -> typer.models.OptionInfo:
    return typer.Option(help=help_text, show_default=False)


# The SIP account options `serve` and `register` share.
UserOption = Annotated[str | None, _option("SIP user")]
PasswordOption = Annotated[str | None, _option("SIP password (prefer SIPAGENT_PASSWORD)")]
AuthUserOption = Annotated[str | None, _option("digest username if not the SIP user")]
DomainOption = Annotated[str | None, _option("SIP domain (default: server host)")]
BindOption = Annotated[str | None, _option("local SIP host:port (default 0.0.0.0:5060)")]
PublicIpOption = Annotated[str | None, _option("address advertised in Contact/SDP")]


@app.command()
def serve(
    server: Annotated[str | None, _option("registrar host[:port]; empty: peer-to-peer")] = None,
    user: UserOption = None,
    password: PasswordOption = None,
    auth_user: AuthUserOption = None,
    domain: DomainOption = None,
    bind: BindOption = None,
    public_ip: PublicIpOption = None,
    rtp_ports: Annotated[str | None, _option("RTP port range, e.g. 20000-20999")] = None,
    app_name: Annotated[
        str | None, typer.Option("--app", help="echo | player | receptionist")
    ] = None,
    register_expires: Annotated[int | None, _option("requested registration lifetime, s")] = None,
    keepalive_interval: Annotated[float | None, _option("registration probe interval, s")] = None,
    ring_seconds: Annotated[float | None, _option("ring this long before answering")] = None,
    max_calls: Annotated[int | None, _option("concurrent calls before 486 Busy")] = None,
    allowed_sources: Annotated[
        str | None, _option("CIDRs allowed to INVITE us, comma-separated; others get 403")
    ] = None,
    status_bind: Annotated[
        str | None, _option('status/metrics HTTP host:port (default 127.0.0.1:8089; "" = off)')
    ] = None,
    player_file: Annotated[str | None, _option("player app: raw mu-law file to play")] = None,
    record_dir: Annotated[str | None, _option("player app: recordings dir")] = None,
    record_calls_dir: Annotated[
        str | None, _option("save each call as a stereo WAV (caller left, agent right)")
    ] = None,
    stt: Annotated[str | None, _option("receptionist STT: auto | deepgram | offline")] = None,
    llm: Annotated[str | None, _option("receptionist LLM: auto | openai | offline")] = None,
    tts: Annotated[str | None, _option("receptionist TTS: auto | elevenlabs | offline")] = None,
    openai_model: Annotated[
        str | None, _option("chat model (any OpenAI-compatible server)")
    ] = None,
    transfer_uri: Annotated[str | None, _option("SIP URI transfer_to_human REFERs to")] = None,
    barge_in_sensitivity: Annotated[str | None, _option("low | medium | high")] = None,
    clinic_file: Annotated[str | None, _option("clinic TOML: persona, hours, services")] = None,
    persona: Annotated[str | None, _option("receptionist's name")] = None,
    clinic: Annotated[str | None, _option("clinic name")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
) -> None:
    """Run the agent: register when a server is set, answer calls with the chosen app."""
    _setup_logging(verbose)
    overrides = {
        "server": server, "user": user, "auth_user": auth_user, "domain": domain,
        "bind": bind, "public_ip": public_ip, "rtp_ports": rtp_ports, "app": app_name,
        "register_expires": register_expires, "keepalive_interval": keepalive_interval,
        "ring_seconds": ring_seconds, "max_calls": max_calls, "player_file": player_file,
        "allowed_sources": allowed_sources, "record_calls_dir": record_calls_dir,
        "record_dir": record_dir, "stt": stt, "llm": llm, "tts": tts,
        "openai_model": openai_model, "transfer_uri": transfer_uri,
        "barge_in_sensitivity": barge_in_sensitivity, "persona": persona, "clinic": clinic,
        "clinic_file": clinic_file,
        "status_bind": status_bind,
        "password": SecretStr(password) if password is not None else None,
    }  # fmt: skip
    try:
        settings = AgentSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as error:
        console.print(f"[red]invalid settings:[/red] {error}")
        raise typer.Exit(2) from error
    try:
        asyncio.run(run_agent(settings))
    except ValueError as error:  # e.g. a provider chosen without its key
        console.print(f"[red]cannot start:[/red] {error}")
        raise typer.Exit(2) from error
    except OSError as error:
        console.print(f"[red]cannot start:[/red] {error}")
        raise typer.Exit(1) from error


@app.command()
def register(
    server: Annotated[str, typer.Option(help="registrar/trunk host[:port]")],
    user: UserOption = None,
    password: PasswordOption = None,
    auth_user: AuthUserOption = None,
    domain: DomainOption = None,
    bind: BindOption = None,
    public_ip: PublicIpOption = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the outcome")] = 8.0,
) -> None:
    """Register once, print the outcome with diagnostics, unregister. Exit 0 registered,
    1 rejected (auth/forbidden/unknown user), 2 bad settings, 3 registrar unreachable."""
    from sipagent.cli.register import EXIT_BAD_SETTINGS, check_registration

    overrides = {
        "server": server, "user": user, "auth_user": auth_user, "domain": domain, "bind": bind,
        "public_ip": public_ip, "password": SecretStr(password) if password is not None else None,
    }  # fmt: skip
    try:
        settings = AgentSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as error:
        console.print(f"[red]invalid settings:[/red] {error}")
        raise typer.Exit(EXIT_BAD_SETTINGS) from error
    out = Console()
    try:
        outcome = asyncio.run(check_registration(settings, timeout))
    except OSError as error:
        console.print(f"[red]cannot bind {settings.bind}:[/red] {error}")
        raise typer.Exit(EXIT_BAD_SETTINGS) from error
    status = outcome.status
    colour = "green" if outcome.exit_code == 0 else "red"
    out.print(f"[{colour}]{status.state}[/]: {status.reason or 'OK'}")
    out.print(f"  registrar   {status.registrar}")
    out.print(f"  AOR         sip:{settings.user}@{settings.sip_domain}")
    out.print(f"  contact     {outcome.contact} (advertised {outcome.advertised})")
    if status.seen_from:
        out.print(f"  seen from   {status.seen_from}")
    if status.granted_expires:
        out.print(f"  expires     {status.granted_expires} s (unregistered again on exit)")
    if outcome.nat_warning:
        out.print(f"[yellow]warning[/]: {outcome.nat_warning}")
    raise typer.Exit(outcome.exit_code)


app.add_typer(calls_app, name="calls")
app.add_typer(appointments_app, name="appointments")
db_app = typer.Typer(help="Database schema (Alembic migrations).")
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Option(help="target revision")] = "head",
) -> None:
    """Migrate the database at SIPAGENT_DATABASE_URL / DATABASE_URL (default sqlite:///sipagent.db)."""
    from sqlalchemy.engine import make_url

    from sipagent.storage import current_revision, upgrade

    url = AgentSettings().database_url
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        upgrade(url, revision)
    except Exception as error:
        console.print(f"[red]upgrade of {shown} failed:[/red] {error}")
        raise typer.Exit(1) from error
    Console().print(f"{shown} is at revision {current_revision(url)}")


@app.command()
def demo(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="agent logs too")] = False,
) -> None:
    """The embedded default: an offline agent and a simulated caller talk over loopback SIP/RTP;
    prints the transcript, per-turn latency and the stored appointment."""
    from sipagent.demo import print_report, run_demo

    out = Console()
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        handlers=[RichHandler(console=console, show_path=False, markup=False)],
    )
    out.print("[bold]sipagent demo[/]: offline receptionist + simulated caller on 127.0.0.1")
    try:
        result = asyncio.run(run_demo(out))
    except OSError as error:
        console.print(f"[red]cannot start:[/red] {error}")
        raise typer.Exit(1) from error
    print_report(out, result)
    if not result.appointments:
        console.print("[red]no appointment was booked[/red]")
        raise typer.Exit(1)


app.command()(monitor)
app.command(name="doctor")(doctor)
app.command(name="call")(call_command)


@app.callback()
def main() -> None:
    """sipagent command line."""


if __name__ == "__main__":
    app()

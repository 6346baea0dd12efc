"""The `sipagent` command line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler

from sipagent.agent import run_agent, run_on_loop
from sipagent.cli.dial import call_command
from sipagent.cli.doctor import doctor
from sipagent.cli.monitor import monitor
from sipagent.cli.options import (
    check_startable,
    fail,
    fail_bind,
    open_database_or_fail,
    resolve_server_or_fail,
    settings_options,
)
from sipagent.cli.records import appointments_app, calls_app
from sipagent.config import AgentSettings
from sipagent.logcontext import CallIdFilter
from sipagent.storage import current_revision, shown_url
from sipagent.workers.plan import host_port_text, worker_count

app = typer.Typer(help="sipagent: an AI phone receptionist that is a real SIP/RTP endpoint.")
console = Console(stderr=True)
log = logging.getLogger("sipagent")


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
    # Alembic narrates every migration check at INFO; the start-up line says the revision.
    logging.getLogger("alembic").setLevel(logging.DEBUG if verbose else logging.WARNING)


@app.command()
@settings_options()
def serve(
    settings: AgentSettings,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
    supervised: Annotated[
        bool,
        typer.Option(
            "--supervised", hidden=True, help="a worker of `serve --workers K`: stop on stdin EOF"
        ),
    ] = False,
) -> None:
    """Run the agent: register when a server is set, answer calls with the chosen app."""
    _setup_logging(verbose)
    what = check_startable(settings)
    resolve_server_or_fail(settings)
    log.info("sipagent serve: %s", what)
    if settings.server and not settings.password.get_secret_value():
        log.warning(
            "no SIP password set (--password / SIPAGENT_PASSWORD): a registrar that asks for "
            "one will refuse the REGISTER"
        )
    if settings.app == "receptionist":
        revision = open_database_or_fail(settings.database_url, create=True)
        log.info("database %s (revision %s)", shown_url(settings.database_url), revision)
    else:
        log.info("database: not used by the %s app", settings.app)
    count = worker_count(settings.workers, os.cpu_count(), registering=bool(settings.server))
    if count > 1 and not supervised:
        _supervise(settings, count, verbose)
    if supervised:
        _stop_when_the_supervisor_is_gone()
    try:
        run_on_loop(settings.event_loop, lambda: run_agent(settings))
    except OSError as error:  # the SIP socket: the only one whose failure stops the agent
        fail_bind(error, settings)
    except ValueError as error:  # what check_startable cannot foresee, said as plainly
        fail(f"cannot start: {error}")


def _stop_when_the_supervisor_is_gone() -> None:
    """A worker holds the read end of a pipe whose other end only its supervisor has: EOF means
    the supervisor is gone (even by SIGKILL, which it cannot forward), and the worker then
    stops itself the usual way, SIGTERM: hang up, write the call records, exit."""

    def watch() -> None:
        while sys.stdin.buffer.read(4096):
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


def _supervise(settings: AgentSettings, count: int, verbose: bool) -> NoReturn:
    """`serve` with several workers: this process only supervises them (see sipagent.workers)."""
    from sipagent.workers.supervisor import (
        WORKER_COMMAND,
        Finaliser,
        Supervisor,
        plan_for,
        unbindable_sip_port,
    )

    try:
        specs = plan_for(settings, count)
    except ValueError as error:
        fail(str(error))
    if busy := unbindable_sip_port(specs):
        spec, error = busy
        fail_bind(error, settings.model_copy(update={"bind": host_port_text(spec.sip)}))
    finalise: Finaliser | None = None
    if settings.app == "receptionist":  # the only app that records calls
        from sipagent.storage import finalise_calls_of_dead_worker, make_engine, worker_name

        engine = make_engine(settings.database_url)

        async def end_open_calls(pid: int) -> int:
            return await asyncio.to_thread(finalise_calls_of_dead_worker, engine, worker_name(pid))

        finalise = end_open_calls

    log.info(
        "%d workers: SIP %s..%d, RTP %s split %d ways (%d even ports each)",
        count, settings.bind, specs[-1].sip.port, settings.rtp_ports, count,
        specs[0].rtp_capacity,
    )  # fmt: skip
    command = [*WORKER_COMMAND, "--supervised", *(["--verbose"] if verbose else [])]
    supervisor = Supervisor(settings, specs, command=command, finalise=finalise)
    raise typer.Exit(asyncio.run(supervisor.run()))


@app.command()
@settings_options()
def register(
    settings: AgentSettings,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the outcome")] = 8.0,
) -> None:
    """Register once with --server, print the outcome with diagnostics, unregister.

    Exit 0 registered, 1 rejected (auth/forbidden/unknown user), 2 bad settings, 3
    unreachable."""
    from sipagent.cli.register import check_registration

    if settings.server_address is None:
        fail("register needs a registrar: --server HOST[:PORT] (or SIPAGENT_SERVER)")
    # The outcome is printed below with its diagnostics; the endpoint's own log lines would
    # only repeat it (in words meant for a running agent).
    logging.getLogger("sipagent").setLevel(logging.CRITICAL)
    resolve_server_or_fail(settings)
    out = Console()
    try:
        outcome = asyncio.run(check_registration(settings, timeout))
    except OSError as error:
        fail_bind(error, settings)
    status = outcome.status
    if status.last_status_code in (401, 407) and not settings.password.get_secret_value():
        fail(
            f"{status.registrar} asks for a password ({status.last_status_code}) and none is set: "
            "--password or SIPAGENT_PASSWORD"
        )
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
@settings_options(["database_url"])
def db_upgrade(
    settings: AgentSettings,
    revision: Annotated[str, typer.Option(help="target revision")] = "head",
) -> None:
    """Create or migrate the database (--database-url, else SIPAGENT_DATABASE_URL /
    DATABASE_URL, else sipagent.db in the user data directory)."""
    from sipagent.storage import upgrade

    shown = shown_url(settings.database_url)
    open_database_or_fail(settings.database_url, create=revision == "head")
    if revision != "head":
        try:
            upgrade(settings.database_url, revision)
        except Exception as error:  # alembic: unknown revision and the like
            fail(f"cannot upgrade {shown} to {revision!r}: {error}")
    Console().print(f"{shown} is at revision {current_revision(settings.database_url)}")


@app.command()
def demo(
    database_url: Annotated[
        str | None,
        typer.Option(
            help="book into this database instead of a throwaway one (e.g. to show it off in "
            "`sipagent calls list` afterwards)",
            show_default=False,
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="agent logs too")] = False,
) -> None:
    """The embedded default: an offline agent and a simulated caller on loopback SIP/RTP.

    Prints the transcript, per-turn latency and the stored appointment. Uses its own throwaway
    database unless --database-url is given."""
    from sipagent.demo import print_report, run_demo

    out = Console()
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        handlers=[RichHandler(console=console, show_path=False, markup=False)],
    )
    with contextlib.ExitStack() as stack:
        if database_url is None:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="sipagent-demo-"))
            url = f"sqlite:///{Path(folder) / 'demo.db'}"
            where = f"a throwaway database, {shown_url(url)} (deleted afterwards)"
        else:
            url, where = database_url, shown_url(database_url)
        open_database_or_fail(url, create=True)
        out.print("[bold]sipagent demo[/]: offline receptionist + simulated caller on 127.0.0.1")
        out.print(f"booking into {where}")
        try:
            result = asyncio.run(run_demo(out, database_url=url))
        except OSError as error:
            fail(f"cannot start the demo's SIP/RTP on 127.0.0.1: {error}")
        print_report(out, result)
    if not result.appointments:
        fail("no appointment was booked (see the transcript above)", code=1)


@app.command("console")
@settings_options()
def console_command(
    settings: AgentSettings,
    input_path: Annotated[
        Path | None,
        typer.Option(
            "--input",
            help="a WAV recording of the caller instead of the microphone (played one "
            "utterance per agent turn)",
            show_default=False,
        ),
    ] = None,
    output_path: Annotated[
        Path | None,
        typer.Option(
            "--output",
            help="write the agent's voice to this WAV instead of the speaker",
            show_default=False,
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="agent logs too")] = False,
) -> None:
    """Talk to the receptionist from this computer, with your microphone and speaker.

    The agent and a built-in softphone call each other over loopback SIP/RTP (--input and
    --output replace the devices with WAV files). Prints the transcript and each reply's
    latency; Ctrl-C hangs up."""
    from sipagent.console import AudioDeviceError, run_console

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        handlers=[RichHandler(console=console, show_path=False, markup=False)],
    )
    what = check_startable(settings.model_copy(update={"app": "receptionist"}))
    open_database_or_fail(settings.database_url, create=True)
    out = Console(highlight=False, soft_wrap=True)
    out.print(f"sipagent console: {what}")
    out.print(f"database {shown_url(settings.database_url)}")
    try:
        booked = asyncio.run(
            run_console(settings, out, input_path=input_path, output_path=output_path)
        )
    except (AudioDeviceError, ValueError) as error:
        fail(str(error))
    except OSError as error:
        fail(f"cannot start the agent and softphone on 127.0.0.1: {error}")
    for appointment in booked:
        out.print(
            f"[green]booked[/] #{appointment.id}: {appointment.patient_name}, "
            f"{appointment.start:%A %Y-%m-%d %H:%M}, {appointment.reason}, {appointment.phone}"
        )
    if output_path is not None:
        out.print(f"the agent's voice is in {output_path}")


app.command()(monitor)
app.command(name="doctor")(doctor)
app.command(name="call")(call_command)


@app.callback()
def main() -> None:
    """sipagent command line."""


if __name__ == "__main__":
    app()

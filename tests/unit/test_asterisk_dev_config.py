"""asterisk-dev/ can't run here (no Docker engine), so its configuration is parsed and checked:
against its own README walk-through, sipagent's settings and SDP, and the Kamailio rig that
stands in for Asterisk in CI (same agent credentials, so CI exercises what a developer types).

Each check is a function returning a list of problems; the tests assert the list is empty for
the real files and, for a few deliberate mismatches, that it is not (the checks can fail).
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sipagent.config import AgentSettings, parse_host_port
from sipagent.sip.sdp import SUPPORTED_AUDIO

ROOT = Path(__file__).resolve().parents[2]
ASTERISK_DEV = ROOT / "asterisk-dev"
CONFIG_DIR = ASTERISK_DEV / "config"
README = ASTERISK_DEV / "README.md"
COMPOSE = ASTERISK_DEV / "docker-compose.yml"
KAMAILIO_SUBSCRIBERS = ROOT / "tests" / "peers" / "kamailio" / "db" / "subscriber"

# Asterisk codec names -> SDP encoding names (what sipagent's sdp.py calls them).
ASTERISK_CODECS = {"ulaw": "PCMU", "alaw": "PCMA", "g722": "G722", "gsm": "GSM", "g729": "G729"}


# -- a parser for Asterisk's INI-ish .conf format --------------------------------------------
class ConfError(ValueError):
    pass


@dataclass
class Section:
    name: str
    options: list[tuple[str, str]] = field(default_factory=list)
    templates: tuple[str, ...] = ()

    def get(self, key: str, default: str | None = None) -> str | None:
        """The last value of `key` (later lines override earlier ones, as in Asterisk)."""
        values = self.getall(key)
        return values[-1] if values else default

    def getall(self, key: str) -> list[str]:
        return [value for k, value in self.options if k == key]


def _strip_comment(line: str) -> str:
    """Drop a `;` comment; `\\;` is a literal semicolon."""
    out = []
    index = 0
    while index < len(line):
        char = line[index]
        if char == "\\" and index + 1 < len(line) and line[index + 1] == ";":
            out.append(";")
            index += 2
            continue
        if char == ";":
            break
        out.append(char)
        index += 1
    return "".join(out).strip()


def parse_conf(text: str) -> list[Section]:
    """`[section]` / `[section](template,...)`, `key=value`, `key => value`, `;` comments and
    `;-- block --;` comments. Section names may repeat (pjsip: endpoint and aor `[agent]`).
    `same => ...` lines stay as options; `parse_dialplan` gives them their extension."""
    sections: list[Section] = []
    in_block_comment = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw
        if in_block_comment:
            if "--;" not in line:
                continue
            line = line.split("--;", 1)[1]
            in_block_comment = False
        if ";--" in line:
            before, _, after = line.partition(";--")
            if "--;" in after:
                line = before + after.split("--;", 1)[1]
            else:
                line, in_block_comment = before, True
        line = _strip_comment(line)
        if not line:
            continue
        header = re.fullmatch(r"\[([^\]]+)\]\s*(?:\(([^)]*)\))?", line)
        if header:
            templates = tuple(t.strip() for t in (header.group(2) or "").split(",") if t.strip())
            sections.append(Section(header.group(1).strip(), templates=templates))
            continue
        if line.startswith("#"):  # #include / #exec: not used here, refuse to guess
            raise ConfError(f"line {number}: unsupported directive {line!r}")
        key, arrow, value = line.partition("=>")
        if not arrow:
            key, equals, value = line.partition("=")
            if not equals:
                raise ConfError(f"line {number}: neither key=value nor section: {line!r}")
        if not sections:
            raise ConfError(f"line {number}: option before any [section]")
        sections[-1].options.append((key.strip().lower(), value.strip()))
    return sections


def sections_of_type(sections: list[Section], kind: str) -> dict[str, Section]:
    """pjsip objects by name for one `type=` (endpoint, aor, auth, transport...)."""
    found: dict[str, Section] = {}
    for section in sections:
        if section.get("type") == kind:
            if section.name in found:
                raise ConfError(f"two [{section.name}] sections of type={kind}")
            found[section.name] = section
    return found


@dataclass(frozen=True)
class Step:
    priority: str
    app: str
    args: str


def parse_app(text: str) -> tuple[str, str]:
    match = re.fullmatch(r"\s*([A-Za-z_][\w]*)\s*(?:\((.*)\))?\s*", text)
    if not match:
        raise ConfError(f"not an application call: {text!r}")
    return match.group(1), match.group(2) or ""


def parse_dialplan(sections: list[Section]) -> dict[str, dict[str, list[Step]]]:
    """context -> extension -> steps, from `exten => ext,prio,App(args)` and `same => ...`."""
    plan: dict[str, dict[str, list[Step]]] = {}
    for section in sections:
        if section.name in ("general", "globals"):
            continue
        context = plan.setdefault(section.name, {})
        current: str | None = None
        for key, value in section.options:
            if key == "exten":
                parts = value.split(",", 2)
                if len(parts) != 3:
                    raise ConfError(f"[{section.name}] bad exten {value!r}")
                current, priority, app_text = (p.strip() for p in parts)
            elif key == "same":
                if current is None:
                    raise ConfError(f"[{section.name}] 'same' before any 'exten'")
                parts = value.split(",", 1)
                if len(parts) != 2:
                    raise ConfError(f"[{section.name}] bad same {value!r}")
                priority, app_text = (p.strip() for p in parts)
            else:
                continue
            app, args = parse_app(app_text)
            context.setdefault(current, []).append(Step(priority, app, args))
    return plan


# -- the README walk-through -------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    subcommand: str
    options: dict[str, str]
    env: dict[str, str]


def readme_commands(readme: str) -> list[Command]:
    """Every `sipagent <subcommand> ...` in the README's sh code blocks, with its --options
    and leading VAR=value assignments."""
    commands = []
    for block in re.findall(r"```(?:sh|bash|shell|console)?\n(.*?)```", readme, re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block)  # line continuations
        for line in joined.splitlines():
            tokens = shlex.split(line, comments=True)
            if "sipagent" not in tokens:
                continue
            start = tokens.index("sipagent")
            env = dict(t.split("=", 1) for t in tokens[:start] if re.match(r"^\w+=", t))
            args = tokens[start + 1 :]
            if not args:
                continue
            options: dict[str, str] = {}
            index = 1
            while index < len(args):
                token = args[index]
                if token.startswith("--"):
                    name, equals, value = token[2:].partition("=")
                    if not equals:
                        has_value = index + 1 < len(args) and not args[index + 1].startswith("-")
                        value = args[index + 1] if has_value else ""
                        index += has_value
                    options[name] = value
                index += 1
            commands.append(Command(args[0], options, env))
    return commands


# -- the Kamailio rig's db_text subscriber table ----------------------------------------------
def parse_db_text(text: str) -> list[dict[str, str]]:
    """Kamailio db_text: a header of `name(type)` columns, then `:`-separated rows."""
    lines = [line for line in text.splitlines() if line.strip()]
    columns = [re.sub(r"\(.*\)$", "", column) for column in lines[0].split()]
    rows = []
    for line in lines[1:]:
        values = [v.replace("\\:", ":") for v in re.split(r"(?<!\\):", line)]
        if len(values) != len(columns):
            raise ConfError(f"db_text row with {len(values)} fields, want {len(columns)}: {line}")
        rows.append(dict(zip(columns, values, strict=True)))
    return rows


# -- the checks --------------------------------------------------------------------------------
@dataclass
class Setup:
    pjsip: list[Section]
    extensions: list[Section]
    rtp: list[Section]
    readme: str
    compose: str
    subscribers: str
    config_files: list[str]
    sipagent_defaults: AgentSettings


def load_setup() -> Setup:
    def read(name: str) -> str:
        return (CONFIG_DIR / name).read_text()

    return Setup(
        pjsip=parse_conf(read("pjsip.conf")),
        extensions=parse_conf(read("extensions.conf")),
        rtp=parse_conf(read("rtp.conf")),
        readme=README.read_text(),
        compose=COMPOSE.read_text(),
        subscribers=KAMAILIO_SUBSCRIBERS.read_text(),
        config_files=sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_file()),
        sipagent_defaults=_sipagent_defaults(),
    )


def _sipagent_defaults() -> AgentSettings:
    """sipagent's built-in defaults, whatever SIPAGENT_* or .env this test runs with."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("SIPAGENT_")}
    try:
        return AgentSettings(_env_file=None)  # type: ignore[call-arg]
    finally:
        os.environ.update(saved)


def agent_endpoint_name(setup: Setup) -> str:
    """The endpoint sipagent registers as: the one whose auth username is sipagent's user."""
    auths = sections_of_type(setup.pjsip, "auth")
    user = readme_agent_user(setup)
    for name, endpoint in sections_of_type(setup.pjsip, "endpoint").items():
        auth = auths.get(endpoint.get("auth", "") or "")
        if auth is not None and auth.get("username") == user:
            return name
    raise AssertionError(f"no pjsip endpoint authenticates user {user!r}")


def agent_commands(setup: Setup) -> list[Command]:
    return [c for c in readme_commands(setup.readme) if c.subcommand in ("register", "serve")]


def readme_agent_user(setup: Setup) -> str:
    users = {c.options.get("user", setup.sipagent_defaults.user) for c in agent_commands(setup)}
    assert len(users) == 1, f"README's sipagent commands use different users: {users}"
    return users.pop()


def endpoint_auth(setup: Setup, endpoint: str) -> Section:
    section = sections_of_type(setup.pjsip, "endpoint")[endpoint]
    return sections_of_type(setup.pjsip, "auth")[section.get("auth") or ""]


def walkthrough_problems(setup: Setup) -> list[str]:
    commands = readme_commands(setup.readme)
    subcommands = {c.subcommand for c in commands}
    problems = [
        f"README walk-through lacks `sipagent {name}`"
        for name in ("register", "serve", "monitor")
        if name not in subcommands
    ]
    if not any(c.options.get("app") == "receptionist" for c in commands if c.subcommand == "serve"):
        problems.append("README's `sipagent serve` does not run --app receptionist")
    return problems


def credential_problems(setup: Setup) -> list[str]:
    problems = []
    endpoint = agent_endpoint_name(setup)
    auth = endpoint_auth(setup, endpoint)
    if auth.get("auth_type", "userpass") != "userpass":
        problems.append(f"agent auth_type={auth.get('auth_type')}, want userpass")
    password = auth.get("password")
    for command in agent_commands(setup):
        given = command.options.get("password", command.env.get("SIPAGENT_PASSWORD"))
        if given != password:
            problems.append(
                f"README `sipagent {command.subcommand}` uses password {given!r}, "
                f"pjsip.conf has {password!r}"
            )
    # The CI stand-in must hold the very same account.
    rows = [r for r in parse_db_text(setup.subscribers) if r["username"] == auth.get("username")]
    if not rows:
        problems.append(f"Kamailio subscriber table has no user {auth.get('username')!r}")
    elif rows[0]["password"] != password:
        problems.append(
            f"Kamailio's {auth.get('username')} password {rows[0]['password']!r} "
            f"differs from pjsip.conf's {password!r}"
        )
    # The softphone account the README tells people to type.
    softphones = [n for n in sections_of_type(setup.pjsip, "endpoint") if n != endpoint]
    for name in softphones:
        soft = endpoint_auth(setup, name)
        for value in (soft.get("username"), soft.get("password")):
            if f"`{value}`" not in setup.readme:
                problems.append(f"README does not give the {name} credential `{value}`")
    return problems


def transport_problems(setup: Setup) -> list[str]:
    problems = []
    endpoint = sections_of_type(setup.pjsip, "endpoint")[agent_endpoint_name(setup)]
    transport = sections_of_type(setup.pjsip, "transport").get(endpoint.get("transport") or "")
    if transport is None:
        return [f"agent endpoint's transport {endpoint.get('transport')!r} is not defined"]
    if transport.get("protocol") != "udp":
        problems.append(f"transport protocol {transport.get('protocol')!r}, want udp")
    listen = parse_host_port(transport.get("bind") or "", 5060)
    for command in agent_commands(setup):
        server = command.options.get("server")
        if not server:
            problems.append(f"README `sipagent {command.subcommand}` has no --server")
            continue
        target = parse_host_port(server, 5060)
        if target.port != listen.port:
            problems.append(f"--server {server} but Asterisk listens on port {listen.port}")
        if listen.host not in ("0.0.0.0", "::") and target.host != listen.host:
            problems.append(f"--server {server} but Asterisk binds {listen.host}")
        bind = parse_host_port(command.options.get("bind", setup.sipagent_defaults.bind), 5060)
        if bind.port == listen.port:
            problems.append(f"sipagent --bind {bind} collides with Asterisk's {listen}")
    return problems


def endpoint_problems(setup: Setup) -> list[str]:
    problems = []
    name = agent_endpoint_name(setup)
    endpoint = sections_of_type(setup.pjsip, "endpoint")[name]
    if endpoint.get("disallow") != "all":
        problems.append("agent endpoint must `disallow=all` before allowing codecs")
    allowed = [c.strip() for v in endpoint.getall("allow") for c in v.split(",") if c.strip()]
    unknown = [c for c in allowed if c not in ASTERISK_CODECS]
    offered = {ASTERISK_CODECS[c] for c in allowed if c in ASTERISK_CODECS}
    if unknown or offered != set(SUPPORTED_AUDIO.values()):
        problems.append(
            f"agent codecs {allowed} but sipagent's SDP speaks {sorted(SUPPORTED_AUDIO.values())}"
        )
    if endpoint.get("dtmf_mode") != "rfc4733":
        problems.append(f"agent dtmf_mode={endpoint.get('dtmf_mode')}, want rfc4733")
    for key, want in (
        ("rtp_symmetric", "yes"),
        ("force_rport", "yes"),
        ("rewrite_contact", "yes"),
        ("direct_media", "no"),
    ):
        if endpoint.get(key) != want:
            problems.append(f"agent {key}={endpoint.get(key)}, want {want}")
    aors = sections_of_type(setup.pjsip, "aor")
    aor = aors.get(endpoint.get("aors") or "")
    if aor is None:
        problems.append(f"agent aors={endpoint.get('aors')!r} names no aor section")
    else:
        if aor.get("max_contacts") != "1":
            problems.append(f"agent aor max_contacts={aor.get('max_contacts')}, want 1")
        if int(aor.get("qualify_frequency", "0") or "0") <= 0:
            problems.append("agent aor does not qualify its contact (qualify_frequency)")
    return problems


def _rtp_range(setup: Setup) -> tuple[int, int]:
    general = next(s for s in setup.rtp if s.name == "general")
    return int(general.get("rtpstart") or "0"), int(general.get("rtpend") or "0")


def rtp_problems(setup: Setup) -> list[str]:
    problems = []
    asterisk_first, asterisk_last = _rtp_range(setup)
    ranges = {setup.sipagent_defaults.rtp_port_range}
    for command in agent_commands(setup):
        if "rtp-ports" in command.options:
            first, _, last = command.options["rtp-ports"].partition("-")
            ranges.add((int(first), int(last or first)))
    for first, last in sorted(ranges):
        if first <= asterisk_last and asterisk_first <= last:
            problems.append(
                f"Asterisk RTP {asterisk_first}-{asterisk_last} overlaps sipagent's {first}-{last}"
            )
    # Every port range the README quotes is one of the two.
    known = {(asterisk_first, asterisk_last), *ranges}
    for first, last in re.findall(r"\b(\d{4,5})-(\d{4,5})\b", setup.readme):
        if (int(first), int(last)) not in known:
            problems.append(f"README quotes RTP range {first}-{last}, which nothing uses")
    return problems


def dialplan_problems(setup: Setup) -> list[str]:
    problems = []
    plan = parse_dialplan(setup.extensions)
    endpoints = sections_of_type(setup.pjsip, "endpoint")
    for name, endpoint in endpoints.items():
        if endpoint.get("context") not in plan:
            problems.append(f"endpoint {name}'s context {endpoint.get('context')!r} is missing")
    agent = agent_endpoint_name(setup)
    callers = [n for n in endpoints if n != agent]
    for caller in callers:
        context = plan.get(endpoints[caller].get("context") or "", {})
        dials = [
            s.args.split(",")[0].strip() for s in context.get("100", []) if s.app.lower() == "dial"
        ]
        if f"PJSIP/{agent}" not in dials:
            problems.append(f"{caller}'s extension 100 dials {dials}, not PJSIP/{agent}")
        if not any(s.app.lower() == "echo" for s in context.get("600", [])):
            problems.append(f"{caller}'s extension 600 does not run Echo()")
    return problems


def compose_problems(setup: Setup) -> list[str]:
    problems = []
    image = re.search(r"^\s*image:\s*(\S+)", setup.compose, re.MULTILINE)
    if not image or not re.search(r":20(\.|$)", image.group(1)):
        problems.append(f"compose image {image and image.group(1)!r} is not Asterisk 20")
    mounts = dict(re.findall(r"-\s*\./config/([^:\s]+):(/etc/asterisk/[^:\s]+)", setup.compose))
    for name in setup.config_files:
        if name not in mounts:
            problems.append(f"config/{name} is not mounted by docker-compose.yml")
        elif mounts[name] != f"/etc/asterisk/{name}":
            problems.append(f"config/{name} is mounted at {mounts[name]}")
    for name in mounts:
        if name not in setup.config_files:
            problems.append(f"docker-compose.yml mounts config/{name}, which does not exist")
    return problems


CHECKS = [
    walkthrough_problems,
    credential_problems,
    transport_problems,
    endpoint_problems,
    rtp_problems,
    dialplan_problems,
    compose_problems,
]


# -- tests ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup() -> Setup:
    return load_setup()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_asterisk_dev_is_consistent(setup: Setup, check) -> None:
    assert check(setup) == []


def test_parser_reads_repeated_sections_comments_and_dialplan() -> None:
    sections = parse_conf(
        "[a]\ntype=endpoint ; inline\nallow=ulaw\nallow=alaw\n;-- block\nx=1\n--;\n"
        "[a]\ntype=aor\npass=semi\\;colon\n[ctx]\nexten => 100,1,NoOp(x, y)\n"
        " same => n,Dial(PJSIP/agent,30)\n"
    )
    assert [s.name for s in sections] == ["a", "a", "ctx"]
    assert sections[0].getall("allow") == ["ulaw", "alaw"] and sections[0].get("x") is None
    assert sections_of_type(sections, "aor")["a"].get("pass") == "semi;colon"
    steps = parse_dialplan(sections)["ctx"]["100"]
    assert [(s.app, s.args) for s in steps] == [("NoOp", "x, y"), ("Dial", "PJSIP/agent,30")]
    with pytest.raises(ConfError):
        parse_conf("key=value before any section\n")


def test_readme_commands_join_continuations_and_env() -> None:
    readme = (
        "```sh\nSIPAGENT_PASSWORD=pw sipagent serve --server 1.2.3.4:5060 \\\n"
        "    --bind=127.0.0.1:5062 --app echo  # trailing comment\n```\n"
    )
    [command] = readme_commands(readme)
    assert command == Command(
        "serve",
        {"server": "1.2.3.4:5060", "bind": "127.0.0.1:5062", "app": "echo"},
        {"SIPAGENT_PASSWORD": "pw"},
    )


def _source(setup: Setup, name: str) -> str:
    texts = {"readme": setup.readme, "subscribers": setup.subscribers, "compose": setup.compose}
    return texts[name] if name in texts else (CONFIG_DIR / f"{name}.conf").read_text()


def _with(setup: Setup, name: str, text: str) -> Setup:
    changed = dict(setup.__dict__)
    changed[name] = parse_conf(text) if name in ("pjsip", "extensions", "rtp") else text
    return Setup(**changed)


@pytest.mark.parametrize(
    ("check", "source", "old", "new"),
    [
        (credential_problems, "readme", "--password agentpw ", "--password agentpw2 "),
        (credential_problems, "subscribers", ":agentpw:", ":otherpw:"),
        (credential_problems, "pjsip", "password=agentpw", "password=changed"),
        (credential_problems, "readme", "`softphonepw`", "`softphone-pw`"),
        (transport_problems, "pjsip", "bind=127.0.0.1:5060", "bind=127.0.0.1:5070"),
        (transport_problems, "readme", "--bind 127.0.0.1:5062", "--bind 127.0.0.1:5060"),
        (endpoint_problems, "pjsip", "allow=ulaw,alaw ", "allow=ulaw,alaw,g722 "),
        (endpoint_problems, "pjsip", "dtmf_mode=rfc4733 ", "dtmf_mode=inband "),
        (endpoint_problems, "pjsip", "direct_media=no ", "direct_media=yes "),
        (rtp_problems, "rtp", "rtpend=10999", "rtpend=20010"),
        (dialplan_problems, "extensions", "Dial(PJSIP/agent,30)", "Dial(PJSIP/softphone,30)"),
        (dialplan_problems, "extensions", "Echo()", "Playback(beep)"),
        (compose_problems, "compose", "- ./config/rtp.conf:/etc/asterisk/rtp.conf:ro\n", ""),
        (walkthrough_problems, "readme", "--app receptionist", "--app echo"),
    ],
    ids=lambda value: getattr(value, "__name__", None),
)
def test_checks_catch_drift(setup: Setup, check, source: str, old: str, new: str) -> None:
    """Change one side of an agreement and the matching check reports it."""
    original = _source(setup, source)
    assert original.count(old) >= 1, f"{old!r} not in {source}"
    assert check(setup) == []
    assert check(_with(setup, source, original.replace(old, new))) != []

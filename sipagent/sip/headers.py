"""Strict parsing of the header values the agent acts on (RFC 3261 20, 25.1): Via, From/To/
Contact name-addr, hosts and ports.

Every address the agent may send to is checked here, when the message is parsed: a port out
of 1-65535 or a host that is not a host made `sendto` raise inside asyncio, which closes the
SIP socket for good (one datagram silenced the agent). What fails here is a `HeaderError`;
the parser turns it into "drop" (top Via: no way to answer) or "400 Bad Request".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address

from sipagent.sip.uri import SipUri, UriError, parse_uri

TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.!%*_+`'~")
_HOSTNAME = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?$"
)
_IPV4_SHAPE = re.compile(r"^[0-9.]+$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")
_UNQUOTED_DISPLAY_FORBIDDEN = frozenset('"<>,;\\')


class HeaderError(ValueError):
    """A header value that does not follow the grammar, or names an unusable address."""


def validate_host(host: str) -> str:
    """An IPv4 literal, a bracketed IPv6 reference or a hostname; returned as given."""
    if not host or len(host) > 255:
        raise HeaderError(f"bad host {host[:40]!r}")
    if host.startswith("["):
        if not host.endswith("]"):
            raise HeaderError(f"bad IPv6 reference {host[:40]!r}")
        try:
            IPv6Address(host[1:-1])
        except ValueError as error:
            raise HeaderError(f"bad IPv6 reference {host[:40]!r}") from error
        return host
    if _IPV4_SHAPE.match(host):
        try:
            IPv4Address(host)
        except ValueError as error:
            raise HeaderError(f"bad IPv4 address {host[:40]!r}") from error
        return host
    if not _HOSTNAME.match(host):
        raise HeaderError(f"bad host {host[:40]!r}")
    return host


def parse_port(text: str) -> int:
    if not text.isdigit() or len(text) > 5 or not 0 < int(text) < 65536:
        raise HeaderError(f"bad port {text[:24]!r}")
    return int(text)


def is_ip_literal(host: str) -> bool:
    try:
        ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def split_host_port(text: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]` or `[v6]:port`, validated."""
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[: end + 1], text[end + 1 :]
        if end < 0 or (rest and not rest.startswith(":")):
            raise HeaderError(f"bad host:port {text[:40]!r}")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_or_empty = text.partition(":")
        port_text = port_text_or_empty if colon else None
    return validate_host(host), (parse_port(port_text) if port_text is not None else None)


def _parse_params(text: str) -> dict[str, str | None]:
    """`;name=value;flag` after an address (values may be quoted)."""
    params: dict[str, str | None] = {}
    if not text.strip():
        return params
    if not text.lstrip().startswith(";"):
        raise HeaderError(f"junk after the address: {text[:40]!r}")
    for item in text.strip()[1:].split(";"):
        name, sep, value = item.partition("=")
        value = value.strip()
        name = name.strip()
        if not name or not set(name) <= TOKEN_CHARS:
            raise HeaderError(f"bad parameter {item[:40]!r}")
        value = value.strip()
        if sep and value.startswith('"'):
            if len(value) < 2 or not value.endswith('"'):
                raise HeaderError(f"unterminated quoted parameter {item[:40]!r}")
        elif sep and (not value or not set(value) <= TOKEN_CHARS | set(":[]")):
            raise HeaderError(f"bad parameter value {item[:40]!r}")
        params[name.lower()] = value.strip('"') if sep else None
    return params


@dataclass(frozen=True, slots=True)
class Via:
    transport: str
    host: str
    port: int | None
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def branch(self) -> str:
        return self.params.get("branch") or ""


def parse_via(value: str, *, allow_other_version: bool = False) -> Via:
    """One via-parm: `SIP / 2.0 / UDP host[:port] *(;param)` with LWS allowed around `/`."""
    match = re.match(
        r"^\s*SIP\s*/\s*(\d+\.\d+)\s*/\s*([A-Za-z0-9-]+)\s+([^;\s]+)\s*(.*)$", value, re.S
    )
    if not match:
        raise HeaderError(f"bad Via {value[:60]!r}")
    version, transport, sent_by, tail = match.groups()
    if version != "2.0" and not allow_other_version:
        raise HeaderError(f"Via of SIP/{version}")
    host, port = split_host_port(sent_by)
    params = _parse_params(tail)
    if params.get("received") is not None and not is_ip_literal(params["received"] or ""):
        raise HeaderError(f"bad received= in Via {value[:60]!r}")
    rport = params.get("rport")
    if rport:
        parse_port(rport)
    if "branch" in params and not params["branch"]:
        raise HeaderError(f"empty branch in Via {value[:60]!r}")
    return Via(transport.upper(), host, port, params)


@dataclass(frozen=True, slots=True)
class NameAddr:
    display_name: str
    uri: str
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        return self.uri.partition(":")[0].lower()


def _check_uri(uri: str) -> SipUri | None:
    """Any absolute URI; a sip:/sips: one is parsed and its host checked (else None)."""
    scheme, colon, rest = uri.partition(":")
    if not colon or not _SCHEME.match(scheme) or not rest:
        raise HeaderError(f"bad URI {uri[:60]!r}")
    if any(char.isspace() or ord(char) < 32 or char in '<>"' for char in uri):
        raise HeaderError(f"bad character in URI {uri[:60]!r}")
    if scheme.lower() not in ("sip", "sips"):
        return None
    try:
        parsed = parse_uri(uri)
    except UriError as error:
        raise HeaderError(str(error)) from error
    validate_host(parsed.host)
    return parsed


def check_request_uri(uri: str) -> SipUri | None:
    """The Request-URI: an absolute URI (its scheme is judged by the endpoint: 416)."""
    return _check_uri(uri)


def parse_name_addr(value: str) -> NameAddr:
    """`"Display" <uri>;params`, `token token <uri>;params` or `uri;params` (addr-spec)."""
    text = value.strip()
    display = ""
    if text.startswith('"'):
        index = 1
        while index < len(text) and text[index] != '"':
            index += 2 if text[index] == "\\" else 1
        if index >= len(text):
            raise HeaderError(f"unterminated quoted display name in {value[:60]!r}")
        display = text[1:index]
        text = text[index + 1 :].lstrip()
        if not text.startswith("<"):
            raise HeaderError(f"no <URI> after the display name in {value[:60]!r}")
    elif "<" in text:
        display = text[: text.index("<")].strip()
        # RFC 3261 wants tokens here; phones send UTF-8 names unquoted, which we take. A
        # comma, quote or semicolon would change the header's meaning: those must be quoted.
        if any(char in _UNQUOTED_DISPLAY_FORBIDDEN or ord(char) < 32 for char in display):
            raise HeaderError(f"display name must be quoted in {value[:60]!r}")
        text = text[text.index("<") :]
    if text.startswith("<"):
        end = text.find(">")
        if end < 0:
            raise HeaderError(f"unterminated <URI> in {value[:60]!r}")
        uri, tail = text[1:end], text[end + 1 :]
    else:
        # addr-spec: a URI with `,`, `?` or `;` must be in <> (RFC 3261 20.10); `;` here
        # starts the header parameters.
        uri, _, params_text = text.partition(";")
        uri = uri.strip()  # LWS before the header parameters (RFC 4475 3.1.1.1 wsinv)
        tail = ";" + params_text if params_text else ""
        if "?" in uri or "," in uri:
            raise HeaderError(f"URI with ',' or '?' must be enclosed in <> in {value[:60]!r}")
    _check_uri(uri)  # inside <> as given: spaces there are an error (RFC 4475 3.1.2.14)
    return NameAddr(display, uri, _parse_params(tail))


def parse_cseq(value: str) -> tuple[int, str]:
    parts = value.split()
    if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) >= 2**31:
        raise HeaderError(f"bad CSeq {value[:40]!r}")
    if not set(parts[1]) <= TOKEN_CHARS:
        raise HeaderError(f"bad CSeq method {value[:40]!r}")
    return int(parts[0]), parts[1]

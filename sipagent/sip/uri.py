"""Small, strict helpers for SIP URIs and header values (RFC 3261 19.1, 20)."""

from __future__ import annotations

import re
from dataclasses import dataclass

# The user part may hold ; ? / , (RFC 3261 25.1 user-unreserved) but never an unescaped @.
_URI = re.compile(
    r"^(?P<scheme>sips?):(?:(?P<user>[^@<>\s]+)@)?(?P<host>\[[^\]]+\]|[^:;?>@]+)"
    r"(?::(?P<port>\d+))?(?P<params>[^?]*)(?:\?(?P<headers>.*))?$",
    re.IGNORECASE | re.DOTALL,
)


class UriError(ValueError):
    """Not a SIP URI we can route to."""


@dataclass(frozen=True, slots=True)
class SipUri:
    scheme: str
    user: str | None
    host: str
    port: int | None
    params: dict[str, str | None]
    headers: str = ""  # the ?name=value&... part

    @property
    def destination(self) -> tuple[str, int]:
        """Where to send a request for this URI (no DNS SRV: hosts are addresses or A names)."""
        maddr = self.params.get("maddr")
        return (maddr or self.host.strip("[]"), self.port or 5060)

    @property
    def loose_routing(self) -> bool:
        return "lr" in self.params


def parse_uri(text: str) -> SipUri:
    match = _URI.match(text.strip())
    if not match:
        raise UriError(f"not a SIP URI: {text!r}")
    params: dict[str, str | None] = {}
    for item in match.group("params").split(";"):
        if item:
            name, sep, value = item.partition("=")
            params[name.lower()] = value if sep else None
    port = int(match.group("port")) if match.group("port") else None
    if port is not None and not 0 < port < 65536:
        raise UriError(f"port out of range in {text!r}")
    return SipUri(
        match.group("scheme").lower(),
        match.group("user"),
        match.group("host"),
        port,
        params,
        match.group("headers") or "",
    )


def split_header_values(value: str) -> list[str]:
    """Split a comma-separated header into elements, respecting quotes and <...>."""
    items: list[str] = []
    depth = 0
    quoted = False
    start = 0
    index = 0
    while index < len(value):
        char = value[index]
        if char == "\\" and quoted:
            index += 2
            continue
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "<":
            depth += 1
        elif not quoted and char == ">":
            depth = max(0, depth - 1)
        elif not quoted and depth == 0 and char == ",":
            items.append(value[start:index].strip())
            start = index + 1
        index += 1
    items.append(value[start:].strip())
    return [item for item in items if item]


def name_addr_uri(value: str) -> str:
    """The URI inside `"Name" <sip:...>;params` or a bare `sip:...;params` header value."""
    start = value.find("<")
    if start >= 0:
        end = value.find(">", start)
        if end < 0:
            raise UriError(f"unterminated <...> in {value!r}")
        return value[start + 1 : end]
    return value.strip().split(";")[0]


def header_params(value: str) -> dict[str, str | None]:
    """The header parameters after the address (e.g. tag, expires), lower-cased names."""
    end = value.find(">")
    tail = value[end + 1 :] if end >= 0 else value.partition(";")[2]
    params: dict[str, str | None] = {}
    for item in tail.split(";"):
        item = item.strip()
        if item:
            name, sep, param_value = item.partition("=")
            params[name.strip().lower()] = param_value.strip().strip('"') if sep else None
    return params

"""HTTP digest authentication for SIP (RFC 3261 22, RFC 2617, RFC 7616/8760 algorithms)."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field

_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]+)\s*,?')

_HASHES = {
    "MD5": hashlib.md5,
    "SHA-256": hashlib.sha256,
    "SHA-512-256": lambda data: hashlib.new("sha512_256", data),
}


class DigestError(ValueError):
    """A challenge we cannot answer (unknown algorithm, missing realm/nonce, not digest)."""


@dataclass(frozen=True, slots=True)
class DigestChallenge:
    realm: str
    nonce: str
    algorithm: str = "MD5"
    opaque: str | None = None
    qop_options: tuple[str, ...] = ()
    stale: bool = False
    proxy: bool = False  # 407 Proxy-Authenticate rather than 401 WWW-Authenticate

    @property
    def reply_header(self) -> str:
        return "Proxy-Authorization" if self.proxy else "Authorization"


def parse_challenge(header_value: str, *, proxy: bool = False) -> DigestChallenge:
    scheme, _, rest = header_value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise DigestError(f"unsupported auth scheme {scheme!r}")
    params: dict[str, str] = {}
    for match in _PARAM.finditer(rest):
        value = match.group(2)
        if value.startswith('"'):
            value = value[1:-1].replace('\\"', '"')
        params[match.group(1).lower()] = value
    if "realm" not in params or "nonce" not in params:
        raise DigestError("digest challenge without realm or nonce")
    algorithm = params.get("algorithm", "MD5").upper()
    base_algorithm = algorithm.removesuffix("-SESS")
    if base_algorithm not in _HASHES:
        raise DigestError(f"unsupported digest algorithm {algorithm}")
    qop_options = tuple(
        option.strip().lower() for option in params.get("qop", "").split(",") if option.strip()
    )
    return DigestChallenge(
        realm=params["realm"],
        nonce=params["nonce"],
        algorithm=algorithm,
        opaque=params.get("opaque"),
        qop_options=qop_options,
        stale=params.get("stale", "").lower() == "true",
        proxy=proxy,
    )


@dataclass(slots=True)
class DigestCredentials:
    """Answers challenges; keeps the nonce count per nonce as RFC 2617 3.2.2 requires."""

    username: str
    password: str
    _nonce_counts: dict[str, int] = field(default_factory=dict, repr=False)

    def authorization(
        self, challenge: DigestChallenge, method: str, uri: str, *, cnonce: str | None = None
    ) -> str:
        """The value of the Authorization/Proxy-Authorization header for this request."""
        algorithm = challenge.algorithm
        hash_name = algorithm.removesuffix("-SESS")

        def digest(text: str) -> str:
            return _HASHES[hash_name](text.encode("utf-8")).hexdigest()

        cnonce = cnonce or secrets.token_hex(8)
        ha1 = digest(f"{self.username}:{challenge.realm}:{self.password}")
        if algorithm.endswith("-SESS"):
            ha1 = digest(f"{ha1}:{challenge.nonce}:{cnonce}")
        ha2 = digest(f"{method}:{uri}")
        parts = [
            f'username="{self.username}"',
            f'realm="{challenge.realm}"',
            f'nonce="{challenge.nonce}"',
            f'uri="{uri}"',
        ]
        if "auth" in challenge.qop_options:
            count = self._nonce_counts.get(challenge.nonce, 0) + 1
            self._nonce_counts[challenge.nonce] = count
            nc = f"{count:08x}"
            response = digest(f"{ha1}:{challenge.nonce}:{nc}:{cnonce}:auth:{ha2}")
            parts += [f'response="{response}"', "qop=auth", f"nc={nc}", f'cnonce="{cnonce}"']
        else:
            response = digest(f"{ha1}:{challenge.nonce}:{ha2}")
            parts.append(f'response="{response}"')
        parts.append(f"algorithm={algorithm}")
        if challenge.opaque is not None:
            parts.append(f'opaque="{challenge.opaque}"')
        return "Digest " + ", ".join(parts)

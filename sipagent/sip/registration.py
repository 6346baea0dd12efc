"""Registration policy (RFC 3261 10): states, refresh times, retry back-off, failure reasons.

Pure: the endpoint sends and receives, this decides. Times are monotonic seconds passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sipagent.sip.uri import header_params, name_addr_uri


class RegistrationState(StrEnum):
    UNREGISTERED = "unregistered"
    REGISTERING = "registering"
    REGISTERED = "registered"
    FAILED = "failed"


@dataclass(slots=True)
class RegistrationStatus:
    state: RegistrationState = RegistrationState.UNREGISTERED
    reason: str = ""
    registrar: str = ""
    contact: str = ""
    granted_expires: int | None = None
    expires_at: float | None = None
    last_status_code: int | None = None
    successes: int = 0
    failures: int = 0
    seen_from: str = ""  # our address as the registrar saw it (Via received/rport)

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "state": str(self.state),
            "reason": self.reason,
            "registrar": self.registrar,
            "contact": self.contact,
            "granted_expires": self.granted_expires,
            "expires_in": None if self.expires_at is None else round(self.expires_at - now, 1),
            "last_status_code": self.last_status_code,
            "successes": self.successes,
            "failures": self.failures,
            "seen_from": self.seen_from,
        }


_REJECTION_HINTS = {
    401: "authentication failed: wrong user or password",
    407: "proxy authentication failed: wrong user or password",
    403: "forbidden: wrong password, or this user may not register from here",
    404: "not found: the user does not exist in this registrar's domain",
    420: "bad extension required by the registrar",
    480: "temporarily unavailable",
    489: "bad event",
    503: "registrar unavailable",
}


class RegistrationPolicy:
    """What to do after each REGISTER outcome, and when."""

    def __init__(
        self,
        requested_expires: int,
        *,
        registrar: str,
        contact: str,
        unreachable_retry: float = 1.0,
        rejected_retry: tuple[float, ...] = (5.0, 10.0, 20.0, 40.0, 60.0),
    ) -> None:
        self.requested_expires = requested_expires
        self.unreachable_retry = unreachable_retry
        self.rejected_retry = rejected_retry
        self.status = RegistrationStatus(registrar=registrar, contact=contact)
        self._consecutive_rejections = 0

    def attempt_started(self) -> None:
        # A failed registration stays "failed" (with its reason) while we retry.
        if self.status.state == RegistrationState.UNREGISTERED:
            self.status.state = RegistrationState.REGISTERING

    def registered(self, now: float, granted_expires: int) -> float:
        """Record success; returns the delay until the refresh (well before expiry)."""
        self._consecutive_rejections = 0
        status = self.status
        status.state = RegistrationState.REGISTERED
        status.reason = ""
        status.granted_expires = granted_expires
        status.expires_at = now + granted_expires
        status.last_status_code = 200
        status.successes += 1
        return self.refresh_delay(granted_expires)

    @staticmethod
    def refresh_delay(granted_expires: int) -> float:
        # Half the lifetime, but never closer than 5 s to expiry nor sooner than 1 s.
        return max(1.0, min(granted_expires / 2, granted_expires - 5))

    def rejected(self, status_code: int, reason_phrase: str) -> float:
        """A final error response; returns the delay before trying again."""
        hint = _REJECTION_HINTS.get(status_code, "registrar refused the registration")
        self._fail(f"{status_code} {reason_phrase}: {hint}", status_code)
        index = min(self._consecutive_rejections, len(self.rejected_retry) - 1)
        self._consecutive_rejections += 1
        return self.rejected_retry[index]

    def unreachable(self, detail: str) -> float:
        self._fail(f"no answer from registrar {self.status.registrar} ({detail})", None)
        return self.unreachable_retry

    def binding_lost(self, status_code: int) -> None:
        """The registrar no longer knows our contact (e.g. it restarted): register again now."""
        self._fail(f"binding lost (probe answered {status_code}); re-registering", status_code)

    def unregistered(self) -> None:
        self.status.state = RegistrationState.UNREGISTERED
        self.status.reason = "unregistered"
        self.status.expires_at = None

    def _fail(self, reason: str, status_code: int | None) -> None:
        status = self.status
        status.state = RegistrationState.FAILED
        status.reason = reason
        status.expires_at = None
        status.last_status_code = status_code
        status.failures += 1


def granted_expires(
    contact_values: list[str], expires_header: str | None, our_contact_uri: str, requested: int
) -> int:
    """The lifetime the registrar granted our binding (RFC 3261 10.2.4)."""
    for value in contact_values:
        try:
            if name_addr_uri(value) == our_contact_uri:
                expires = header_params(value).get("expires")
                if expires and expires.isdigit():
                    return int(expires)
        except ValueError:
            continue
    if expires_header and expires_header.strip().isdigit():
        return int(expires_header.strip())
    return requested


class ProbeMode(StrEnum):
    """How the binding is checked between refreshes (see `BindingProbe`)."""

    UNKNOWN = "unknown"  # no OPTIONS has come back to us yet
    SUSPECT = "suspect"  # the first probe after the last REGISTER said "no binding"
    OPTIONS = "options"  # an OPTIONS to our AOR reaches us through the registrar
    BINDING_QUERY = "binding query"  # the registrar answers it itself: REGISTER queries


class ProbeVerdict(StrEnum):
    KEEP = "keep"  # nothing learned against the binding: keep the refresh schedule
    LOST = "lost"  # register again now


class BindingProbe:
    """Reads the answers to the OPTIONS we send to our own AOR through the registrar.

    While the binding exists the registrar routes that OPTIONS back to us (we answer 200); a
    404/410/480 means it lost the binding (a restart). Registrars that answer such an OPTIONS
    themselves cannot show a lost binding that way: Asterisk challenges it (401/407), some
    trunks say 404 even right after a REGISTER succeeded (when the first probe after two
    successive REGISTERs both say so and none ever came back to us). Against those the probe
    becomes a binding query instead (a REGISTER without Contact, RFC 3261 10.2.3).
    """

    def __init__(self) -> None:
        self.mode = ProbeMode.UNKNOWN

    @property
    def uses_binding_query(self) -> bool:
        return self.mode == ProbeMode.BINDING_QUERY

    def options_answered(self, status_code: int, *, first_after_register: bool) -> ProbeVerdict:
        if status_code in (401, 407):
            self.mode = ProbeMode.BINDING_QUERY
        elif status_code == 200:
            self.mode = ProbeMode.OPTIONS
        elif status_code in (404, 410, 480) and self.mode != ProbeMode.BINDING_QUERY:
            if self.mode == ProbeMode.OPTIONS:
                return ProbeVerdict.LOST
            if self.mode == ProbeMode.SUSPECT and first_after_register:
                # Twice, each time right after a successful REGISTER: not a lost binding.
                self.mode = ProbeMode.BINDING_QUERY
                return ProbeVerdict.KEEP
            self.mode = ProbeMode.SUSPECT if first_after_register else ProbeMode.UNKNOWN
            return ProbeVerdict.LOST
        return ProbeVerdict.KEEP

"""Registration as it runs (RFC 3261 10): REGISTER, refresh, probe the binding, unregister.

The asyncio side of `sip.registration`: its `RegistrationPolicy` decides states, delays and
reasons, its `BindingProbe` reads the liveness probes; this sends through the endpoint's
transaction layer and sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from sipagent.config import AgentSettings
from sipagent.sip.digest import DigestChallenge, DigestError, parse_challenge
from sipagent.sip.factory import MessageFactory
from sipagent.sip.message import OutgoingRequest, SipMessage
from sipagent.sip.registration import (
    BindingProbe,
    ProbeVerdict,
    RegistrationPolicy,
    RegistrationState,
    granted_expires,
)
from sipagent.sip.transaction_layer import TransactionTimeout
from sipagent.sip.uri import UriError, name_addr_uri

log = logging.getLogger("sipagent.sip")

REGISTER_TIMEOUT = 4.0  # shorter than Timer F: a dead registrar is reported within seconds
REGISTER_MAX_INTERVAL = 1.0  # retransmit at least every second (Timer E's cap)
BINDING_QUERY_INTERVAL = 5.0  # the least time between binding queries (each is a REGISTER)
UNREGISTER_TIMEOUT = 3.0

# The endpoint's `request`: a non-INVITE client transaction through its transaction layer.
SendRequest = Callable[..., Awaitable[SipMessage]]


class RegistrationClient:
    """Keeps our contact registered with one registrar until `stop()`."""

    def __init__(
        self, settings: AgentSettings, messages: MessageFactory, send_request: SendRequest
    ) -> None:
        server = settings.server_address
        assert server is not None, "registration needs a server"
        self.settings = settings
        self.messages = messages
        self.send_request = send_request
        self.registrar = (server.host, server.port)
        self.policy = RegistrationPolicy(
            settings.register_expires, registrar=str(server), contact=messages.contact
        )
        self.probe = BindingProbe()
        self._last_logged: tuple[str, str] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop refreshing; remove the binding (Expires: 0) if we hold one."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.policy.status.state == RegistrationState.REGISTERED:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.register_once(expires=0), UNREGISTER_TIMEOUT)
            self.policy.unregistered()

    async def _request(self, outgoing: OutgoingRequest, *, timeout: float) -> SipMessage:
        return await self.send_request(
            outgoing, self.registrar, timeout=timeout, max_interval=REGISTER_MAX_INTERVAL
        )

    async def register_once(self, expires: int, *, query: bool = False) -> SipMessage:
        """REGISTER (or a binding query), answering up to two digest challenges (401/407)."""
        challenges: dict[str, DigestChallenge] = {}
        for _ in range(3):
            outgoing = self.messages.register_request(
                expires, tuple(challenges.values()), query=query
            )
            response = await self._request(outgoing, timeout=REGISTER_TIMEOUT)
            self._note_seen_from(response)
            if response.status_code not in (401, 407):
                return response
            header = "WWW-Authenticate" if response.status_code == 401 else "Proxy-Authenticate"
            try:
                challenge = parse_challenge(
                    response.first(header) or "", proxy=response.status_code == 407
                )
            except DigestError as error:
                log.error("registrar sent a challenge we cannot answer: %s", error)
                return response
            previous = challenges.get(header)
            if previous is not None and not challenge.stale and previous.realm == challenge.realm:
                return response  # our credentials were refused
            challenges[header] = challenge
        return response

    def _note_seen_from(self, response: SipMessage) -> None:
        """NAT diagnostics: the registrar's view of our address, from our Via (RFC 3581)."""
        host, port = response.seen_from
        if host or port:
            host = host or self.messages.advertised_ip
            self.policy.status.seen_from = f"{host}:{port or '?'}"

    async def _run(self) -> None:
        policy = self.policy
        loop = asyncio.get_running_loop()
        while True:
            policy.attempt_started()
            try:
                response = await self.register_once(self.settings.register_expires)
            except (TransactionTimeout, UriError) as error:
                delay = policy.unreachable(str(error))
                self._log_change()
                await asyncio.sleep(delay)
                continue
            if 200 <= response.status_code < 300:
                granted = granted_expires(
                    response.values("Contact"),
                    response.first("Expires"),
                    name_addr_uri(self.messages.contact),
                    self.settings.register_expires,
                )
                if granted <= 0:
                    await asyncio.sleep(policy.rejected(500, "registrar granted no lifetime"))
                    continue
                refresh_at = loop.time() + policy.registered(loop.time(), granted)
                self._log_change(f"registered as {self.messages.aor} for {granted} s")
                await self._watch_binding(refresh_at)
                self._log_change()
            elif response.status_code == 423 and (response.first("Min-Expires") or "").isdigit():
                self.settings.register_expires = int(response.first("Min-Expires") or "0")
            else:
                delay = policy.rejected(response.status_code, response.reason)
                self._log_change()
                await asyncio.sleep(delay)

    def _log_change(self, registered_line: str = "") -> None:
        """One log line per change of registration state or reason, not one per retry."""
        status = self.policy.status
        key = (str(status.state), status.reason)
        if key == self._last_logged:
            return
        self._last_logged = key
        if status.state == RegistrationState.REGISTERED:
            log.info("%s", registered_line or "registered")
        else:
            log.error("not registered: %s (retrying)", status.reason)

    async def _watch_binding(self, refresh_at: float) -> None:
        """Until the refresh is due, probe that the registrar still has our binding (see
        `BindingProbe`); return early, to register again at once, when it is lost or the
        registrar stops answering."""
        loop = asyncio.get_running_loop()
        interval = self.settings.keepalive_interval
        first_after_register = True
        while (remaining := refresh_at - loop.time()) > 0:
            querying = self.probe.uses_binding_query
            wait = max(interval, BINDING_QUERY_INTERVAL) if querying else interval
            await asyncio.sleep(min(wait, remaining))
            if refresh_at - loop.time() <= 0:
                return
            if querying:
                if not await self._binding_listed():
                    return
                continue
            options = self.messages.options_request(self.messages.aor)
            try:
                answer = await self._request(options, timeout=max(2.0, interval))
            except (TransactionTimeout, UriError) as error:
                self.policy.unreachable(f"liveness probe: {error}")
                return
            verdict = self.probe.options_answered(
                answer.status_code, first_after_register=first_after_register
            )
            if self.probe.uses_binding_query:
                how = "challenges" if answer.status_code in (401, 407) else "answers itself"
                log.info("the registrar %s OPTIONS for our AOR (%d): probing the binding with "
                         "REGISTER queries", how, answer.status_code)  # fmt: skip
            if verdict == ProbeVerdict.LOST:
                self.policy.binding_lost(answer.status_code)
                return
            first_after_register = False

    async def _binding_listed(self) -> bool:
        """A binding query: False (and the registration marked lost) when our contact is gone
        or the registrar does not answer."""
        try:
            answer = await self.register_once(0, query=True)
        except (TransactionTimeout, UriError) as error:
            self.policy.unreachable(f"binding query: {error}")
            return False
        if not 200 <= answer.status_code < 300:
            return True  # no query support: nothing learned, keep the refresh schedule
        ours = name_addr_uri(self.messages.contact)
        listed = []
        for value in answer.values("Contact"):
            with contextlib.suppress(UriError):
                listed.append(name_addr_uri(value))
        if ours in listed:
            return True
        log.warning("our contact is no longer bound to %s (now: %s): registering again",
                    self.messages.aor, ", ".join(listed) or "none")  # fmt: skip
        self.policy.binding_lost(answer.status_code)
        return False

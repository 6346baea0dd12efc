"""The SIP user agent on the event loop: the thin asyncio adapter that wires the SIP layers.

    UdpTransport (transport.py) -> SipMessage (message.py) -> TransactionLayer
    (transaction_layer.py, driving the RFC 3261 17 machines of transaction.py) -> the
    transaction users: UserAgentServer (uas.py), UserAgentClient (uac.py), RegistrationClient
    (registration_client.py); confirmed calls run in CallLifecycle (lifecycle.py).

Replaces pyVoIP's receive thread and blocking pacing (see pyvoip_compat D2, D5): everything
runs on the event loop, every datagram is handled to completion or logged and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from sipagent.channel import CallApp, SaysFarewell
from sipagent.config import AgentSettings
from sipagent.logcontext import current_call_id
from sipagent.media.ports import RtpPortAllocator
from sipagent.observability.events import EventBus
from sipagent.sip.call import Call, CallState
from sipagent.sip.factory import MessageFactory
from sipagent.sip.lifecycle import CallLifecycle
from sipagent.sip.message import OutgoingRequest, SipMessage, SipMessageError
from sipagent.sip.registration import RegistrationPolicy
from sipagent.sip.registration_client import RegistrationClient
from sipagent.sip.resolver import HostResolver
from sipagent.sip.transaction_layer import TransactionLayer
from sipagent.sip.transport import UdpTransport
from sipagent.sip.uac import DialError as DialError  # where `sipagent call` and tests find it
from sipagent.sip.uac import UserAgentClient
from sipagent.sip.uas import UserAgentServer

log = logging.getLogger("sipagent.sip")


class SipEndpoint:
    """A SIP UA that registers (when a server is set) and answers calls with an app."""

    def __init__(
        self,
        settings: AgentSettings,
        app: CallApp,
        *,
        on_call_ended: Callable[[Call], None] | None = None,
        register: bool = True,
    ) -> None:
        """`register=False`: use the server as outbound proxy only (digest on the INVITE), never
        REGISTER: a test call must not replace the binding a serving agent holds."""
        self.settings = settings
        self.app = app
        self.on_call_ended = on_call_ended
        self.register = register
        self.calls: dict[str, Call] = {}
        self.ended_calls: list[Call] = []
        # Calls, turns, barge-ins and provider failures as they happen (metrics observe).
        self.events = EventBus()
        self.dropped: Counter[str] = Counter()
        self.udp = UdpTransport(self._on_datagram, dropped=self.dropped)
        self.transactions = TransactionLayer(self.udp)
        self.resolver = HostResolver()
        # Built by start(), once the SIP port (in Contact and Via) is known:
        self.messages: MessageFactory | None = None
        self.lifecycle: CallLifecycle | None = None
        self.uas: UserAgentServer | None = None
        self.uac: UserAgentClient | None = None
        self.registration_client: RegistrationClient | None = None
        self._stop_watching_load: Callable[[], None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def local_address(self) -> tuple[str, int]:
        return self.udp.local_address

    @property
    def registration(self) -> RegistrationPolicy | None:
        """Registration state for status and metrics (None: not registering)."""
        client = self.registration_client
        return client.policy if client is not None else None

    @property
    def transport(self) -> asyncio.DatagramTransport | None:
        """The SIP socket's asyncio transport (None while it is being re-opened)."""
        return self.udp.datagram_transport

    @property
    def transport_losses(self) -> int:
        return self.udp.losses

    @property
    def transport_state(self) -> dict[str, Any]:
        return self.udp.state

    async def start(self) -> None:
        bind = self.settings.bind_address
        await self.udp.open(bind.host, bind.port)
        port = self.local_address[1]
        advertised = self.settings.advertised_ip
        server = self.settings.server_address
        messages = self.messages = MessageFactory(
            user=self.settings.user,
            password=self.settings.password.get_secret_value(),
            auth_user=self.settings.auth_user,
            domain=self.settings.sip_domain,
            server=(server.host, server.port) if server else None,
            advertised_ip=advertised,
            sip_port=port,
        )
        rtp_bind = bind.host if bind.host not in ("", "::") else "0.0.0.0"
        first, last = self.settings.rtp_port_range
        rtp_ports = RtpPortAllocator(first, last, rtp_bind)
        lifecycle = self.lifecycle = CallLifecycle(
            self.settings, self.app, calls=self.calls, ended_calls=self.ended_calls,
            messages=messages, transactions=self.transactions, rtp_ports=rtp_ports,
            send_request=self.request, spawn=self._spawn, on_call_ended=self.on_call_ended,
            events=self.events,
        )  # fmt: skip
        self.uac = UserAgentClient(
            self.settings, calls=self.calls, messages=messages, transactions=self.transactions,
            rtp_ports=rtp_ports, resolver=self.resolver, lifecycle=lifecycle,
            send_request=self.request,
        )  # fmt: skip
        self.uas = UserAgentServer(
            self.settings, calls=self.calls, messages=messages, transactions=self.transactions,
            rtp_ports=rtp_ports, lifecycle=lifecycle, transfer=self.uac.transfer,
            spawn=self._spawn, dropped=self.dropped,
        )  # fmt: skip
        self._stop_watching_load = self.uas.watch_load()
        log.info("SIP listening on %s:%d, advertising %s:%d", bind.host, port, advertised, port)
        if server is not None and not self.register:
            log.info("calls go through %s; not registering", server)
        elif server is not None:
            self.registration_client = RegistrationClient(self.settings, messages, self.request)
            self.registration_client.start()
        else:
            log.info("peer-to-peer mode: call sip:%s@%s:%d", self.settings.user, advertised, port)

    async def stop(self, farewell_timeout: float = 8.0) -> None:
        # Callers hear a goodbye before the BYE when the app has one to say.
        app = self.app
        confirmed = [c for c in self.calls.values() if c.state == CallState.CONFIRMED]
        if isinstance(app, SaysFarewell) and confirmed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(
                        *(app.farewell(call) for call in confirmed), return_exceptions=True
                    ),
                    farewell_timeout,
                )
        for call in list(self.calls.values()):
            await self.hangup(call, "agent shutting down")
        if self.registration_client is not None:
            await self.registration_client.stop()
        tasks = [task for task in self._tasks if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        # Cancelled tasks still run their clean-up: wait for it, or it races the shutdown.
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._stop_watching_load is not None:
            self._stop_watching_load()
        self.transactions.close()
        await self.udp.close()

    def _spawn(self, coroutine: Any, call_id: str | None = None) -> asyncio.Task[Any]:
        # Tasks copy the current context: everything a call's tasks log carries its Call-ID.
        token = current_call_id.set(call_id) if call_id else None
        try:
            task = asyncio.create_task(coroutine)
        finally:
            if token is not None:
                current_call_id.reset(token)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- datagram entry point ---------------------------------------------------------------
    def _on_datagram(self, data: bytes, source: tuple[str, int]) -> None:
        if not data.strip(b"\r\n\x00 "):
            return  # keep-alive (RFC 5626 CRLF) or padding
        try:
            message = SipMessage(data, source)
        except SipMessageError as error:
            self.dropped[error.kind] += 1
            log.warning("dropped malformed SIP from %s:%d: %s", *source, error)
            return
        except Exception as error:  # a parser bug must not take the agent down
            self.dropped["parser error"] += 1
            log.warning("dropped unparseable SIP from %s:%d: %r", *source, error)
            return
        if message.defects and not message.is_request:
            self.dropped["malformed response"] += 1
            log.warning("dropped malformed response from %s:%d: %s", *source, message.defects[0])
            return
        try:
            if not message.is_request:
                self._handle_response(message)
            elif not self.transactions.receive_request(message) and self.uas is not None:
                try:  # not a retransmission (the transaction layer answered those)
                    self.uas.handle_request(message)
                finally:
                    self.transactions.settle(message)
        except Exception:
            self.dropped["handler error"] += 1
            log.exception("error handling %s from %s:%d", message.heading[:80], *source)

    def _handle_response(self, response: SipMessage) -> None:
        if self.transactions.receive_response(response):
            return
        if self.uac is not None and self.uac.answer_retransmitted(response):
            return
        log.debug("stray response %s for %s", response.status_code, response.cseq_method)

    async def request(
        self,
        outgoing: OutgoingRequest,
        destination: tuple[str, int],
        *,
        timeout: float | None = None,
        max_interval: float | None = None,
    ) -> SipMessage:
        """Non-INVITE client transaction (RFC 3261 17.1.2): its final response, or
        TransactionTimeout. A host name in `destination` is resolved first, off the loop
        (UriError if it fails)."""
        destination = await self.resolver.resolve(*destination)
        return await self.transactions.request(
            outgoing, destination, timeout=timeout, max_interval=max_interval
        )

    # -- calls ------------------------------------------------------------------------------
    async def dial(
        self, target_uri: str, app: CallApp | None = None, *, ring_timeout: float = 60.0
    ) -> Call:
        """Call `target_uri` (see `UserAgentClient.dial`); DialError if not answered."""
        assert self.uac is not None, "start() first"
        return await self.uac.dial(target_uri, app, ring_timeout=ring_timeout)

    async def transfer(self, call: Call, target_uri: str) -> bool:
        """Blind transfer with REFER (see `UserAgentClient.transfer`)."""
        return self.uac is not None and await self.uac.transfer(call, target_uri)

    async def hangup(self, call: Call, reason: str, *, wait_for_app: bool = True) -> None:
        """Our side ends the call: BYE through the dialog's route set (see `CallLifecycle`)."""
        if self.lifecycle is not None:
            await self.lifecycle.hangup(call, reason, wait_for_app=wait_for_app)

    async def app_hangup(self, call: Call, reason: str) -> None:
        """An app hanging up its own call: do not wait for that app to finish first."""
        await self.hangup(call, reason, wait_for_app=False)

    # -- status -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        now = asyncio.get_running_loop().time()
        return {
            "sip": f"{self.local_address[0]}:{self.local_address[1]}" if self.transport else None,
            "sip_socket": self.transport_state,
            "registration": self.registration.status.as_dict(now) if self.registration else None,
            "calls": [call.describe() for call in self.calls.values()],
            "dropped_sip": dict(self.dropped),
        }

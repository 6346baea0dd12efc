"""The asyncio driver of the transaction machines (`sip.transaction`): matching, timers, I/O.

It matches each received message to its transaction (RFC 3261 17.1.3, 17.2.3), runs the
machines' actions through a `SipTransport`, and arms one loop timer per machine at its
`next_deadline()`. The endpoint, `sipagent register` (through the endpoint) and
`sipagent doctor` all send through it: there is no second retransmission loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sipagent.sip.message import OutgoingRequest, SipMessage
from sipagent.sip.transaction import (
    RFC3261_TIMERS,
    Action,
    ClientInviteTransaction,
    ClientTransaction,
    Deliver,
    Send,
    ServerInviteTransaction,
    ServerTransaction,
    TimedOut,
    Timers,
)
from sipagent.sip.transport import Address, SipTransport

log = logging.getLogger("sipagent.sip")

ClientMachine = ClientTransaction | ClientInviteTransaction
ServerMachine = ServerTransaction | ServerInviteTransaction
# Answered non-INVITE requests kept for Timer J. Beyond this (a flood), the oldest are
# forgotten: a late retransmission of one is then handled again, never a memory problem.
MAX_SERVER_TRANSACTIONS = 4096


class TransactionTimeout(Exception):
    """No final response before Timer B/F (or our shorter deadline, or the ring timeout)."""


class TransportFailure(Exception):
    """The transport reported an error for our request (`fail_pending`)."""


@dataclass(eq=False)
class _ClientEntry:
    machine: ClientMachine
    key: tuple[str, str]  # (branch, method): RFC 3261 17.1.3
    on_event: Callable[[Deliver | TimedOut], None] | None = None
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


@dataclass(eq=False)
class _ServerEntry:
    machine: ServerMachine
    key: tuple[str, str]  # (transaction key, method; INVITE for its ACK): RFC 3261 17.2.3
    on_event: Callable[[Deliver | TimedOut], None] | None = None
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


_Entry = _ClientEntry | _ServerEntry


class TransactionLayer:
    """Client and server transactions of one transport, on the running event loop."""

    def __init__(self, transport: SipTransport, *, timers: Timers = RFC3261_TIMERS) -> None:
        self.transport = transport
        self.timers = timers
        self._clients: dict[tuple[str, str], _ClientEntry] = {}
        self._servers: dict[tuple[str, str], _ServerEntry] = {}
        self._waiters: set[asyncio.Future[SipMessage]] = set()

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    # -- client transactions ----------------------------------------------------------------
    async def request(
        self,
        outgoing: OutgoingRequest,
        destination: Address,
        *,
        timeout: float | None = None,
        max_interval: float | None = None,
    ) -> SipMessage:
        """A non-INVITE request: its final response, or TransactionTimeout (Timer F)."""
        machine = ClientTransaction(
            outgoing.data, destination, self._now(), timers=self.timers, timeout=timeout,
            max_interval=max_interval, reliable=self.transport.reliable,
        )  # fmt: skip
        seconds = timeout if timeout is not None else self.timers.transaction_timeout
        return await self._run_client(
            machine, (outgoing.branch, outgoing.method), f"{outgoing.method} timed out after "
            f"{seconds:.0f} s", machine.start(),
        )  # fmt: skip

    async def invite(
        self,
        outgoing: OutgoingRequest,
        destination: Address,
        *,
        ring_timeout: float,
        ack_for: Callable[[SipMessage], bytes],
    ) -> SipMessage:
        """An INVITE: its final response (a non-2xx one already ACKed with `ack_for`), or
        TransactionTimeout (Timer B, or `ring_timeout` after the first provisional)."""
        machine = ClientInviteTransaction(
            outgoing.data, destination, self._now(), ring_timeout=ring_timeout,
            timers=self.timers, reliable=self.transport.reliable,
        )  # fmt: skip

        def acknowledge(response: SipMessage) -> list[Action]:
            return machine.acknowledge(ack_for(response)) if response.status_code >= 300 else []

        return await self._run_client(
            machine, (outgoing.branch, "INVITE"), "INVITE not answered", machine.start(),
            after_final=acknowledge,
        )  # fmt: skip

    async def _run_client(
        self,
        machine: ClientMachine,
        key: tuple[str, str],
        timeout_text: str,
        first_actions: list[Action],
        after_final: Callable[[SipMessage], list[Action]] | None = None,
    ) -> SipMessage:
        future: asyncio.Future[SipMessage] = asyncio.get_running_loop().create_future()
        self._waiters.add(future)

        def on_event(event: Deliver | TimedOut) -> None:
            if future.done():
                return
            if isinstance(event, TimedOut):
                future.set_exception(TransactionTimeout(timeout_text))
            elif event.message.status_code >= 200:
                future.set_result(event.message)
                if after_final is not None:
                    self._apply(entry, after_final(event.message))

        entry = _ClientEntry(machine, key, on_event)
        self._clients[key] = entry
        self._apply(entry, first_actions)
        try:
            return await future
        finally:
            self._waiters.discard(future)
            if not machine.terminated and key in self._clients and future.cancelled():
                self._forget(entry)  # the caller gave up: stop retransmitting

    def receive_response(self, response: SipMessage) -> bool:
        """Hand a response to its client transaction; False if none is waiting for it."""
        entry = self._clients.get((response.top_via_branch, response.cseq_method))
        if entry is None:
            return False
        self._apply(entry, entry.machine.receive(response, self._now()))
        return True

    def fail_pending(self, error: Exception) -> None:
        """The transport failed (e.g. `doctor` cannot send at all): every waiting request
        fails with TransportFailure now rather than at its timeout."""
        for future in list(self._waiters):
            if not future.done():
                reason = error.strerror if isinstance(error, OSError) else None
                future.set_exception(TransportFailure(reason or str(error)))

    # -- server transactions ----------------------------------------------------------------
    def receive_request(self, request: SipMessage) -> bool:
        """True when the request belongs to a transaction we already have (a retransmission,
        the ACK of our non-2xx): it was answered here and the TU must not see it. Else the
        transaction is created and the TU answers it through `respond`."""
        method = "INVITE" if request.method == "ACK" else request.method
        key = (request.transaction_key, method)
        entry = self._servers.get(key)
        if entry is not None and request.method == "ACK":
            actions = entry.machine.receive_request(request, self._now())
            self._apply(entry, actions)
            return not any(isinstance(action, Deliver) for action in actions)
        if request.method == "ACK":
            return False  # the ACK of a 2xx: a request of its own, for the dialog
        if entry is not None and entry.machine.request.raw == request.raw:
            self._apply(entry, entry.machine.receive_request(request, self._now()))
            return True
        if entry is not None and method == "INVITE":
            return True  # a different INVITE reusing a live transaction's key: ignored
        machine: ServerMachine
        if method == "INVITE":
            machine = ServerInviteTransaction(
                request, request.response_destination, timers=self.timers,
                reliable=self.transport.reliable,
            )  # fmt: skip
        else:
            machine = ServerTransaction(
                request, request.response_destination, timers=self.timers,
                reliable=self.transport.reliable,
            )  # fmt: skip
            if entry is not None:
                self._forget(entry)
            while len(self._servers) >= MAX_SERVER_TRANSACTIONS:
                self._forget(next(iter(self._servers.values())))
        self._servers[key] = _ServerEntry(machine, key)
        return False

    def respond(
        self,
        request: SipMessage,
        response: bytes,
        status_code: int,
        *,
        on_timeout: Callable[[], None] | None = None,
    ) -> None:
        """Send a response through the request's server transaction (or straight to the Via
        when it has none: a request not read through `receive_request`). `on_timeout`: an
        INVITE's final got no ACK within Timer H."""
        method = "INVITE" if request.method == "ACK" else request.method
        entry = self._servers.get((request.transaction_key, method))
        if entry is None or entry.machine.request is not request:
            self.transport.send(response, request.response_destination)
            return
        if on_timeout is not None:
            entry.on_event = lambda event: on_timeout() if isinstance(event, TimedOut) else None
        self._apply(entry, entry.machine.respond(response, status_code, self._now()))

    def server_invite(self, request: SipMessage) -> ServerInviteTransaction | None:
        """The INVITE server transaction created for `request` (by `receive_request`)."""
        entry = self._servers.get((request.transaction_key, "INVITE"))
        if entry is None or not isinstance(entry.machine, ServerInviteTransaction):
            return None
        return entry.machine if entry.machine.request is request else None

    def acknowledged(self, machine: ServerInviteTransaction) -> None:
        """The dialog got the ACK for the 2xx `machine` sent: stop retransmitting it."""
        machine.acknowledged()
        self._refresh(machine)

    def stop(self, machine: ServerInviteTransaction) -> None:
        """The call is gone: nothing more to send or to time out for its INVITE."""
        machine.stop()
        self._refresh(machine)

    def settle(self, request: SipMessage) -> None:
        """After the TU handled `request`: a server transaction it never answered (ignored,
        or a handler bug) is dropped, so nothing lingers that no timer would end."""
        method = "INVITE" if request.method == "ACK" else request.method
        entry = self._servers.get((request.transaction_key, method))
        if entry is None or entry.machine.request is not request:
            return
        if not entry.machine.last_response:
            self._forget(entry)

    def _refresh(self, machine: ServerInviteTransaction) -> None:
        entry = self._servers.get((machine.key, "INVITE"))
        if entry is not None and entry.machine is machine:
            self._apply(entry, [])

    @property
    def server_transaction_count(self) -> int:
        return len(self._servers)

    # -- driving ----------------------------------------------------------------------------
    def _apply(self, entry: _Entry, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.transport.send(action.data, action.destination)
            elif entry.on_event is not None:
                entry.on_event(action)
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        if entry.machine.terminated:
            self._forget(entry)
            return
        deadline = entry.machine.next_deadline()
        if deadline is not None:
            entry.timer = asyncio.get_running_loop().call_at(deadline, self._fire, entry)

    def _fire(self, entry: _Entry) -> None:
        entry.timer = None
        try:
            self._apply(entry, entry.machine.on_timer(self._now()))
        except Exception:  # a TU callback's bug must not stop every other transaction
            log.exception("transaction timer failed")

    def _forget(self, entry: _Entry) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        for table in (self._clients, self._servers):
            if table.get(entry.key) is entry:
                del table[entry.key]

    def close(self) -> None:
        for entry in [*self._clients.values(), *self._servers.values()]:
            self._forget(entry)

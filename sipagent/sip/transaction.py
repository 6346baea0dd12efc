"""RFC 3261 17 transactions as pure state machines: no socket, no clock of their own.

Each machine is told what happened (a message, a response to send, `now` in seconds) and
answers with actions: `Send` bytes, `Deliver` a message to the transaction user, `TimedOut`.
The adapter (`sip.transaction_layer`) calls `on_timer(now)` at `next_deadline()`.

Where each RFC 3261 timer lives (T1 = 500 ms RTT estimate, T2 = 4 s cap, T4 = 5 s):
  ClientTransaction, non-INVITE (17.1.2.2): E retransmits the request (T1, doubling up to T2;
      every T2 once a provisional came), F gives up (64*T1), K absorbs retransmitted finals
      (T4; 0 on a reliable transport).
  ClientInviteTransaction (17.1.1.2): A retransmits the INVITE (T1, doubling, until a
      provisional), B gives up (64*T1); after a provisional the TU's ring timeout bounds the
      wait; D absorbs retransmitted non-2xx finals, ACKing each again (32 s; 0 reliable).
  ServerInviteTransaction (17.2.1): G retransmits a non-2xx final (T1, doubling up to T2),
      H gives up waiting for the ACK (64*T1), I absorbs the ACK's retransmissions (T4). A 2xx
      is retransmitted on the same schedule until the dialog's ACK (13.3.1.4, the TU's duty in
      RFC 3261, kept here so one clock drives both), and its ACK, a request of its own, is
      delivered to the TU rather than absorbed.
  ServerTransaction, non-INVITE (17.2.2): J answers retransmitted requests with the final
      response again (64*T1; 0 reliable).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from sipagent.sip.message import SipMessage

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Timers:
    """RFC 3261 17.1.1.1 / table 4 values; tests and `doctor` may shorten them."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0

    @property
    def transaction_timeout(self) -> float:
        """Timers B, F, H and J: 64*T1."""
        return 64 * self.t1

    @property
    def invite_completed_wait(self) -> float:
        """Timer D on an unreliable transport: at least 32 s (RFC 3261 17.1.1.2)."""
        return max(32.0, self.transaction_timeout)


RFC3261_TIMERS = Timers()


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes
    destination: Address


@dataclass(frozen=True, slots=True)
class Deliver:
    """A message for the transaction user: a response to our request, or a request that is
    not a retransmission (the ACK of a 2xx)."""

    message: SipMessage


@dataclass(frozen=True, slots=True)
class TimedOut:
    timer: str  # "B", "F", "H", or "ring" (the TU's bound on a ringing INVITE)


Action = Send | Deliver | TimedOut


class TransactionState(StrEnum):
    CALLING = "calling"  # client INVITE, nothing heard yet
    TRYING = "trying"  # client or server non-INVITE, no response yet
    PROCEEDING = "proceeding"  # a provisional response was received or sent
    ACCEPTED = "accepted"  # server INVITE: 2xx sent, retransmitted until the dialog's ACK
    COMPLETED = "completed"  # final response received or sent
    CONFIRMED = "confirmed"  # server INVITE: ACK for our non-2xx received
    TERMINATED = "terminated"


_ABSORBING_TIMERS = frozenset({"D", "I", "J", "K"})


class _Machine:
    """Shared timer bookkeeping: one retransmission timer, one end-of-state timer."""

    initial_state: ClassVar[TransactionState] = TransactionState.TRYING

    def __init__(self, timers: Timers, reliable: bool) -> None:
        self.timers = timers
        self.reliable = reliable
        self.state = self.initial_state
        self._retransmit_at: float | None = None
        self._interval = timers.t1
        self._end_at: float | None = None
        self._end_timer = ""  # the timer `_end_at` stands for: "B", "F", "H", "K", ...

    @property
    def terminated(self) -> bool:
        return self.state == TransactionState.TERMINATED

    def next_deadline(self) -> float | None:
        deadlines = [t for t in (self._retransmit_at, self._end_at) if t is not None]
        return min(deadlines) if deadlines else None

    def _terminate(self) -> None:
        self.state = TransactionState.TERMINATED
        self._retransmit_at = self._end_at = None

    def _end_in(self, now: float, seconds: float, timer: str) -> None:
        self._end_at, self._end_timer = now + seconds, timer

    def _due(self, deadline: float | None, now: float) -> bool:
        return deadline is not None and now >= deadline

    def _end_if_due(self, now: float) -> list[Action] | None:
        """The state's end timer, if due: the machine terminates, reporting a timeout unless
        the timer only absorbed retransmissions (D, I, J, K). None while not due."""
        if not self._due(self._end_at, now):
            return None
        timer = self._end_timer
        self._terminate()
        return [] if timer in _ABSORBING_TIMERS else [TimedOut(timer)]


class ClientTransaction(_Machine):
    """A non-INVITE request we sent (RFC 3261 17.1.2): REGISTER, OPTIONS, BYE, REFER."""

    def __init__(
        self,
        request: bytes,
        destination: Address,
        now: float,
        *,
        timers: Timers = RFC3261_TIMERS,
        timeout: float | None = None,
        max_interval: float | None = None,
        reliable: bool = False,
    ) -> None:
        """`timeout` (Timer F) and `max_interval` (the T2 cap of Timer E) default to RFC
        3261's; the registration uses shorter ones to notice a dead registrar sooner."""
        super().__init__(timers, reliable)
        self.request = request
        self.destination = destination
        self._max_interval = timers.t2 if max_interval is None else max_interval
        self._end_in(now, timers.transaction_timeout if timeout is None else timeout, "F")
        if not reliable:
            self._retransmit_at = now + self._interval

    def start(self) -> list[Action]:
        return [Send(self.request, self.destination)]

    def receive(self, response: SipMessage, now: float) -> list[Action]:
        if self.state in (TransactionState.COMPLETED, TransactionState.TERMINATED):
            return []  # a retransmitted final: absorbed (Timer K)
        if response.status_code < 200:
            self.state = TransactionState.PROCEEDING
            return []
        self.state = TransactionState.COMPLETED
        self._retransmit_at = None
        if self.reliable:
            self._terminate()
        else:
            self._end_in(now, self.timers.t4, "K")
        return [Deliver(response)]

    def on_timer(self, now: float) -> list[Action]:
        if (ended := self._end_if_due(now)) is not None:
            return ended
        if self._due(self._retransmit_at, now):
            if self.state == TransactionState.PROCEEDING:
                self._interval = self._max_interval  # 17.1.2.2: every T2 once proceeding
            else:
                self._interval = min(self._interval * 2, self._max_interval)
            self._retransmit_at = now + self._interval
            return [Send(self.request, self.destination)]
        return []


class ClientInviteTransaction(_Machine):
    """An INVITE we sent (RFC 3261 17.1.1)."""

    initial_state = TransactionState.CALLING

    def __init__(
        self,
        invite: bytes,
        destination: Address,
        now: float,
        *,
        ring_timeout: float,
        timers: Timers = RFC3261_TIMERS,
        reliable: bool = False,
    ) -> None:
        super().__init__(timers, reliable)
        self.invite = invite
        self.destination = destination
        self.ring_timeout = ring_timeout
        self.ack = b""  # our ACK for a non-2xx final, sent again for each retransmission
        self._end_in(now, timers.transaction_timeout, "B")
        if not reliable:
            self._retransmit_at = now + self._interval

    def start(self) -> list[Action]:
        return [Send(self.invite, self.destination)]

    def receive(self, response: SipMessage, now: float) -> list[Action]:
        if self.state == TransactionState.COMPLETED:
            if response.status_code >= 300 and self.ack:
                return [Send(self.ack, self.destination)]  # our ACK was lost: again
            return []
        if self.state == TransactionState.TERMINATED:
            return []
        if response.status_code < 200:
            if self.state == TransactionState.CALLING:
                self.state = TransactionState.PROCEEDING
                self._retransmit_at = None
                self._end_in(now, self.ring_timeout, "ring")
            return [Deliver(response)]
        if response.status_code < 300:
            self._terminate()  # the 2xx and its ACK belong to the dialog (13.2.2.4)
            return [Deliver(response)]
        self.state = TransactionState.COMPLETED
        self._retransmit_at = None
        if self.reliable:
            self._end_at = None
        else:
            self._end_in(now, self.timers.invite_completed_wait, "D")
        return [Deliver(response)]

    def acknowledge(self, ack: bytes) -> list[Action]:
        """The TU's ACK for the non-2xx final it was delivered (RFC 3261 17.1.1.3)."""
        if self.state != TransactionState.COMPLETED:
            return []
        self.ack = ack
        actions: list[Action] = [Send(ack, self.destination)]
        if self.reliable:
            self._terminate()
        return actions

    def on_timer(self, now: float) -> list[Action]:
        if (ended := self._end_if_due(now)) is not None:
            return ended
        if self._due(self._retransmit_at, now):
            self._interval *= 2  # Timer A is not capped at T2 (RFC 3261 17.1.1.2)
            self._retransmit_at = now + self._interval
            return [Send(self.invite, self.destination)]
        return []


class _ServerMachine(_Machine):
    """A request we are answering, and where its responses go."""

    def __init__(
        self,
        request: SipMessage,
        destination: Address,
        *,
        timers: Timers = RFC3261_TIMERS,
        reliable: bool = False,
    ) -> None:
        super().__init__(timers, reliable)
        self.request = request
        self.key = request.transaction_key
        self.destination = destination
        self.last_response = b""


class ServerInviteTransaction(_ServerMachine):
    """An INVITE we are answering (RFC 3261 17.2.1, and 13.3.1.4 for its 2xx)."""

    initial_state = TransactionState.PROCEEDING  # our 100 Trying goes out at once

    def respond(self, response: bytes, status_code: int, now: float) -> list[Action]:
        if self.state not in (TransactionState.PROCEEDING, TransactionState.ACCEPTED):
            return []  # final already sent: nothing else may follow it
        self.last_response = response
        if status_code >= 200:
            self.state = (
                TransactionState.ACCEPTED if status_code < 300 else TransactionState.COMPLETED
            )
            self._interval = self.timers.t1
            # A 2xx is the TU's to retransmit even on reliable transports (13.3.1.4).
            if status_code < 300 or not self.reliable:
                self._retransmit_at = now + self._interval
            self._end_in(now, self.timers.transaction_timeout, "H")
        return [Send(response, self.destination)]

    def receive_request(self, request: SipMessage, now: float) -> list[Action]:
        """A request with this transaction's key: a retransmitted INVITE or an ACK."""
        if request.method == "ACK":
            if self.state == TransactionState.COMPLETED:
                self.state = TransactionState.CONFIRMED
                self._retransmit_at = None
                if self.reliable:
                    self._terminate()
                else:
                    self._end_in(now, self.timers.t4, "I")
                return []
            if self.state in (TransactionState.CONFIRMED, TransactionState.TERMINATED):
                return []  # the ACK again: absorbed (Timer I)
            return [Deliver(request)]  # an ACK for a 2xx (reusing the branch): the dialog's
        if self.last_response and self.state != TransactionState.CONFIRMED:
            return [Send(self.last_response, self.destination)]
        return []

    def acknowledged(self) -> None:
        """The dialog received the ACK for our 2xx: stop retransmitting it."""
        if self.state == TransactionState.ACCEPTED:
            self._terminate()

    def stop(self) -> None:
        """The call is gone: its 2xx is no longer retransmitted, no timeout is reported. A
        non-2xx final (the 487 after a CANCEL) still runs to its ACK: it is the caller's
        only word that the INVITE failed."""
        if self.state in (TransactionState.PROCEEDING, TransactionState.ACCEPTED):
            self._terminate()

    def on_timer(self, now: float) -> list[Action]:
        if (ended := self._end_if_due(now)) is not None:
            return ended
        if self._due(self._retransmit_at, now):
            self._interval = min(self._interval * 2, self.timers.t2)
            self._retransmit_at = now + self._interval
            return [Send(self.last_response, self.destination)]
        return []


class ServerTransaction(_ServerMachine):
    """A non-INVITE request we are answering (RFC 3261 17.2.2)."""

    def respond(self, response: bytes, status_code: int, now: float) -> list[Action]:
        if self.state in (TransactionState.COMPLETED, TransactionState.TERMINATED):
            return []
        self.last_response = response
        if status_code < 200:
            self.state = TransactionState.PROCEEDING
        elif self.reliable:
            self._terminate()
        else:
            self.state = TransactionState.COMPLETED
            self._end_in(now, self.timers.transaction_timeout, "J")
        return [Send(response, self.destination)]

    def receive_request(self, request: SipMessage, now: float) -> list[Action]:
        """A retransmission: answered with the last response, never handled twice."""
        if self.last_response and not self.terminated:
            return [Send(self.last_response, self.destination)]
        return []

    def on_timer(self, now: float) -> list[Action]:
        return self._end_if_due(now) or []

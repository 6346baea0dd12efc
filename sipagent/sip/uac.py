"""The user agent client (RFC 3261 8.1, 13.2; RFC 3515): calls we place, transfers we ask for.

`dial` sends the INVITE through the transaction layer (which ACKs a failure inside its
transaction), answers digest challenges, ACKs the 2xx itself (its ACK is a transaction of its
own, sent again when the 2xx is) and hands the confirmed call to `lifecycle`. `transfer`
sends a REFER in a call's dialog and waits for the NOTIFY that says how it went.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import Any

from sipagent.channel import CallApp
from sipagent.config import AgentSettings
from sipagent.media.ports import RtpPortAllocator
from sipagent.sip.call import Call, CallState
from sipagent.sip.digest import DigestChallenge, DigestError, parse_challenge
from sipagent.sip.factory import MessageFactory
from sipagent.sip.lifecycle import CallLifecycle, SendRequest
from sipagent.sip.message import SipMessage
from sipagent.sip.resolver import HostResolver
from sipagent.sip.sdp import (
    NegotiatedMedia,
    NoCommonCodec,
    SdpError,
    build_offer,
    negotiate,
    parse_audio_offer,
)
from sipagent.sip.transaction_layer import TransactionLayer, TransactionTimeout
from sipagent.sip.uri import UriError, parse_uri

log = logging.getLogger("sipagent.sip")

TRANSFER_NOTIFY_WAIT = 5.0  # after 202 Accepted, how long a failure NOTIFY may take to arrive
REFER_TIMEOUT = 8.0


class DialError(Exception):
    """An outbound call was not answered: busy, declined, not found, unreachable."""

    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(f"{status_code} {reason}" if status_code else reason)
        self.status_code = status_code
        self.reason = reason


class UserAgentClient:
    """Outbound calls and REFER; the calls it confirms run in `lifecycle`."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        calls: dict[str, Call],
        messages: MessageFactory,
        transactions: TransactionLayer,
        rtp_ports: RtpPortAllocator,
        resolver: HostResolver,
        lifecycle: CallLifecycle,
        send_request: SendRequest,
    ) -> None:
        self.settings = settings
        self.calls = calls
        self.messages = messages
        self.transactions = transactions
        self.rtp_ports = rtp_ports
        self.resolver = resolver
        self.lifecycle = lifecycle
        self.send_request = send_request
        self._answer_acks: dict[str, tuple[bytes, tuple[str, int]]] = {}  # Call-ID: our ACK
        lifecycle.on_forget.append(lambda call: self._answer_acks.pop(call.call_id, None))

    def answer_retransmitted(self, response: SipMessage) -> bool:
        """A 2xx to our INVITE after its transaction ended: our ACK was lost, send it again
        (RFC 3261 13.2.2.4). False if it is no answer of ours."""
        if response.cseq_method != "INVITE" or not 200 <= response.status_code < 300:
            return False
        ack = self._answer_acks.get(response.call_id)
        if ack is not None:
            self.transactions.transport.send(*ack)
        return True

    async def dial(
        self, target_uri: str, app: CallApp | None = None, *, ring_timeout: float = 60.0
    ) -> Call:
        """Call `target_uri` (RFC 3261 UAC): offer PCMU/PCMA/telephone-event, answer digest
        challenges, ACK the 2xx, start media and the app. Raises DialError if not answered."""
        target = parse_uri(target_uri)
        server = self.settings.server_address
        # With a registrar/trunk configured it is our outbound proxy; else go straight there.
        try:
            destination = await self.resolver.resolve(
                *((server.host, server.port) if server else target.destination)
            )
        except UriError as error:
            raise DialError(0, str(error)) from error
        rtp_socket = self.rtp_ports.allocate()
        rtp_port = rtp_socket.getsockname()[1]
        call_id, from_tag = self.messages.new_call_id(), self.messages.new_tag()
        session_id = int(time.time())
        offer = build_offer(
            local_address=self.messages.advertised_ip, local_port=rtp_port, session_id=session_id
        )
        challenges: dict[str, DigestChallenge] = {}
        try:
            for cseq in range(1, 4):
                invite = self.messages.invite_request(
                    target_uri, offer, call_id=call_id, from_tag=from_tag, cseq=cseq,
                    authorization=tuple(challenges.values()),
                )  # fmt: skip
                response = await self.transactions.invite(
                    invite, destination, ring_timeout=ring_timeout,
                    ack_for=partial(self.messages.ack_for_failure, invite, target_uri=target_uri),
                )  # fmt: skip
                if response.status_code in (401, 407):
                    header = (
                        "WWW-Authenticate" if response.status_code == 401 else "Proxy-Authenticate"
                    )
                    challenge = parse_challenge(
                        response.first(header) or "", proxy=response.status_code == 407
                    )
                    if header in challenges and not challenge.stale:
                        raise DialError(response.status_code, "credentials refused")
                    challenges[header] = challenge
                    continue
                break
            if not 200 <= response.status_code < 300:
                raise DialError(response.status_code, response.reason)
        except (TransactionTimeout, DigestError, SdpError) as error:
            rtp_socket.close()
            self.rtp_ports.release(rtp_port)
            raise DialError(0, str(error)) from error
        except DialError:
            rtp_socket.close()
            self.rtp_ports.release(rtp_port)
            raise
        return await self._confirm(response, from_tag, rtp_socket, app, session_id)

    async def _confirm(
        self,
        answer: SipMessage,
        from_tag: str,
        rtp_socket: Any,
        app: CallApp | None,
        session_id: int,
    ) -> Call:
        dialog = self.messages.new_uac_dialog(answer, from_tag)
        ack = self.messages.ack_for_answer(dialog, answer.cseq)
        try:
            ack_destination = await self.resolver.resolve(
                *parse_uri(dialog.next_hop_uri).destination
            )
        except UriError as error:
            log.warning("outbound call %s: cannot send the ACK: %s", answer.call_id, error)
            ack_destination = ("0.0.0.0", 0)  # unsendable: the BYE below ends the call
        self.transactions.transport.send(ack.data, ack_destination)
        self._answer_acks[answer.call_id] = (ack.data, ack_destination)
        try:
            media = negotiate(parse_audio_offer(answer.content))
        except (SdpError, NoCommonCodec) as error:
            log.warning("outbound call %s: unusable answer SDP: %s", answer.call_id, error)
            media = None
        call = Call(
            call_id=answer.call_id,
            caller=dialog.remote_party,
            dialog=dialog,
            media=media or NegotiatedMedia("0.0.0.0", 0, 0, "PCMU", None, "inactive"),
            invite=None,
            rtp_port=rtp_socket.getsockname()[1],
            hangup_callback=self.lifecycle.app_hangup,
            transfer_callback=self.transfer,
            sdp_session_id=session_id,
            events=self.lifecycle.events,
        )
        self.lifecycle.admit(call)
        if media is None:
            # The 2xx is ACKed: the dialog is confirmed whatever its body says, so it ends with
            # a BYE (RFC 3261 13.2.2.4). Left RINGING, hangup() took it for an unanswered call
            # and ended it without one, leaving the callee in the call.
            call.state = CallState.CONFIRMED
            call.rtp_socket = rtp_socket  # never opened as media: the hang-up closes it
            await self.lifecycle.hangup(call, "no usable media in the answer")
            raise DialError(488, "answer had no codec we offered")
        await self.lifecycle.open_media(call, rtp_socket, media)
        call.state = CallState.CONFIRMED
        call.answered_at = time.time()
        log.info("outbound call %s answered: %s", call.call_id, media.codec)
        if app is not None:
            self.lifecycle.start_app(call, app, start_media=False)
        return call

    async def transfer(self, call: Call, target_uri: str) -> bool:
        """Blind transfer with REFER (RFC 3515). True once the caller has been handed over
        (then we hang up); False if the far end refused or failed, so the app can say so."""
        if call.state != CallState.CONFIRMED:
            return False
        refer = self.messages.in_dialog_request(
            call.dialog,
            "REFER",
            extra_headers=f"Refer-To: <{target_uri}>\r\nReferred-By: {self.messages.contact}\r\n",
        )
        call.transfer_result = asyncio.get_running_loop().create_future()
        try:
            destination = parse_uri(call.dialog.next_hop_uri).destination
            response = await self.send_request(refer, destination, timeout=REFER_TIMEOUT)
        except (TransactionTimeout, UriError) as error:
            log.warning("call %s: REFER failed: %s", call.call_id, error)
            return False
        if not 200 <= response.status_code < 300:
            log.info("call %s: REFER refused with %d", call.call_id, response.status_code)
            return False
        try:
            final = await asyncio.wait_for(call.transfer_result, TRANSFER_NOTIFY_WAIT)
        except TimeoutError:
            final = 200  # accepted and no failure reported: the caller is on their way
        if final >= 300:
            log.info("call %s: transfer failed (NOTIFY %d)", call.call_id, final)
            return False
        await self.lifecycle.hangup(call, f"transferred to {target_uri}")
        return True

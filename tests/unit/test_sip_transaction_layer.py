"""The transaction layer's matching and timer driving, over a recording fake transport."""

from __future__ import annotations

import asyncio

import pytest

from sipagent.sip.message import OutgoingRequest, SipMessage
from sipagent.sip.transaction import Timers
from sipagent.sip.transaction_layer import (
    TransactionLayer,
    TransactionTimeout,
    TransportFailure,
)

FAST = Timers(t1=0.01, t2=0.04, t4=0.05)
PEER = ("192.0.2.7", 5060)


class RecordingTransport:
    reliable = False

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def send(self, data: bytes, destination: tuple[str, int]) -> None:
        self.sent.append((data, destination))


def wire(start_line: str, method: str, branch: str, cseq: int = 1) -> bytes:
    return (
        f"{start_line}\r\nVia: SIP/2.0/UDP 192.0.2.7:5060;branch={branch}\r\n"
        "From: <sip:a@192.0.2.7>;tag=1\r\nTo: <sip:b@192.0.2.8>\r\n"
        f"Call-ID: c1\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def outgoing(method: str = "OPTIONS", branch: str = "z9hG4bKout") -> OutgoingRequest:
    return OutgoingRequest(wire(f"{method} sip:b SIP/2.0", method, branch), method, branch, "c1", 1)


def answer(status: int, method: str = "OPTIONS", branch: str = "z9hG4bKout") -> SipMessage:
    return SipMessage(wire(f"SIP/2.0 {status} X", method, branch), PEER)


def incoming(method: str, branch: str = "z9hG4bKin") -> SipMessage:
    return SipMessage(wire(f"{method} sip:b SIP/2.0", method, branch), PEER)


async def test_request_retransmits_until_its_final_and_absorbs_repeats():
    transport = RecordingTransport()
    layer = TransactionLayer(transport, timers=FAST)
    pending = asyncio.create_task(layer.request(outgoing(), PEER))
    await asyncio.sleep(0.045)  # sent at 0, then 0.01 and 0.03 (later on a loaded machine)
    assert len(transport.sent) >= 3
    assert not layer.receive_response(answer(200, branch="z9hG4bKother"))  # not ours
    assert not layer.receive_response(answer(200, method="BYE"))  # same branch, other method
    assert layer.receive_response(answer(200))
    sent_before_the_final = len(transport.sent)
    response = await pending
    assert response.status_code == 200
    assert layer.receive_response(answer(200))  # a repeat: absorbed during Timer K
    await asyncio.sleep(0.08)
    assert not layer.receive_response(answer(200))  # Timer K over: the transaction is gone
    assert len(transport.sent) == sent_before_the_final  # no retransmission after the final


async def test_request_times_out_with_timer_f():
    layer = TransactionLayer(RecordingTransport(), timers=FAST)
    with pytest.raises(TransactionTimeout, match="OPTIONS timed out"):
        await layer.request(outgoing(), PEER, timeout=0.05)


async def test_transport_failure_ends_waiting_requests_at_once():
    layer = TransactionLayer(RecordingTransport(), timers=FAST)
    pending = asyncio.create_task(layer.request(outgoing(), PEER))
    await asyncio.sleep(0)
    layer.fail_pending(OSError(101, "Network is unreachable"))
    with pytest.raises(TransportFailure, match="Network is unreachable"):
        await pending


async def test_invite_acks_a_failure_through_its_transaction():
    transport = RecordingTransport()
    layer = TransactionLayer(transport, timers=FAST)
    pending = asyncio.create_task(
        layer.invite(outgoing("INVITE"), PEER, ring_timeout=1.0, ack_for=lambda r: b"ACK")
    )
    await asyncio.sleep(0)
    layer.receive_response(answer(180, "INVITE"))
    busy = answer(486, "INVITE")
    layer.receive_response(busy)
    assert (await pending).status_code == 486
    layer.receive_response(busy)  # retransmitted: ACKed again (Timer D)
    assert [data for data, _ in transport.sent].count(b"ACK") == 2


async def test_server_transactions_answer_retransmissions_and_keep_the_tu_out():
    transport = RecordingTransport()
    layer = TransactionLayer(transport, timers=FAST)
    bye = incoming("BYE")
    assert not layer.receive_request(bye)  # new: for the TU
    layer.respond(bye, b"200 for BYE", 200)
    assert layer.receive_request(incoming("BYE"))  # the same bytes again: a retransmission
    assert [data for data, _ in transport.sent] == [b"200 for BYE", b"200 for BYE"]
    changed = SipMessage(bye.raw.replace(b"Content-Length: 0", b"Subject: x\r\nContent-Length: 0"))
    assert not layer.receive_request(changed)  # same key, other bytes: handled as new


async def test_invite_error_is_retransmitted_until_its_ack_which_the_tu_never_sees():
    transport = RecordingTransport()
    layer = TransactionLayer(transport, timers=FAST)
    invite = incoming("INVITE")
    assert not layer.receive_request(invite)
    layer.respond(invite, b"486", 486)
    await asyncio.sleep(0.035)
    sent = [data for data, _ in transport.sent]
    assert len(sent) >= 3 and set(sent) == {b"486"}  # Timer G: 0, 0.01, 0.03, ...
    assert layer.receive_request(incoming("ACK"))  # same key: absorbed
    await asyncio.sleep(0.05)
    assert len(transport.sent) == len(sent)  # the ACK stopped Timer G


async def test_2xx_ack_goes_to_the_tu_and_timer_h_reports_a_missing_one():
    layer = TransactionLayer(RecordingTransport(), timers=FAST)
    invite = incoming("INVITE")
    layer.receive_request(invite)
    timed_out: list[bool] = []
    layer.respond(invite, b"200", 200, on_timeout=lambda: timed_out.append(True))
    assert not layer.receive_request(incoming("ACK"))  # an ACK of a 2xx is the dialog's
    await asyncio.sleep(0.7)  # 64 * T1 = 0.64 s
    assert timed_out == [True]


async def test_unanswered_requests_leave_nothing_behind():
    layer = TransactionLayer(RecordingTransport(), timers=FAST)
    ignored = incoming("INVITE")
    layer.receive_request(ignored)
    layer.settle(ignored)  # the TU chose not to answer
    assert layer.server_transaction_count == 0
    answered = incoming("OPTIONS", branch="z9hG4bKo")
    layer.receive_request(answered)
    layer.respond(answered, b"200", 200)
    layer.settle(answered)
    assert layer.server_transaction_count == 1
    layer.close()
    assert layer.server_transaction_count == 0

"""RFC 3261 17 transaction machines on an injected clock: no socket, no sleep."""

from __future__ import annotations

import pytest

from sipagent.sip.message import SipMessage
from sipagent.sip.transaction import (
    ClientInviteTransaction,
    ClientTransaction,
    Deliver,
    Send,
    ServerInviteTransaction,
    ServerTransaction,
    TimedOut,
    Timers,
    TransactionState,
)

PEER = ("192.0.2.7", 5060)


def message(start_line: str, method: str = "INVITE", branch: str = "z9hG4bKabc") -> SipMessage:
    return SipMessage(
        (
            f"{start_line}\r\n"
            f"Via: SIP/2.0/UDP 192.0.2.7:5060;branch={branch}\r\n"
            "From: <sip:a@192.0.2.7>;tag=1\r\nTo: <sip:b@192.0.2.8>\r\n"
            f"Call-ID: c1\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
        ).encode(),
        PEER,
    )


def response(status: int, method: str = "INVITE") -> SipMessage:
    return message(f"SIP/2.0 {status} Whatever", method)


def request(method: str) -> SipMessage:
    return message(f"{method} sip:b@192.0.2.8 SIP/2.0", method)


def run_until(machine, end: float) -> list[tuple[float, object]]:
    """Fire the machine's timers in order up to `end`: (time, action) pairs."""
    fired = []
    while (deadline := machine.next_deadline()) is not None and deadline <= end:
        fired += [(deadline, action) for action in machine.on_timer(deadline)]
    return fired


def send_times(fired) -> list[float]:
    return [time for time, action in fired if isinstance(action, Send)]


# -- client non-INVITE: Timers E, F, K ------------------------------------------------------
def test_timer_e_doubles_from_t1_to_the_t2_cap_and_timer_f_gives_up():
    machine = ClientTransaction(b"OPTIONS", PEER, 0.0)
    assert machine.start() == [Send(b"OPTIONS", PEER)]
    fired = run_until(machine, 100.0)
    # T1 = 0.5 doubling: 0.5, 1.5, 3.5, then every T2 = 4 s until 64*T1 = 32 s.
    assert send_times(fired) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert fired[-1] == (32.0, TimedOut("F"))
    assert machine.terminated and machine.next_deadline() is None


def test_shorter_timeout_and_cap_as_the_registration_uses():
    machine = ClientTransaction(b"REGISTER", PEER, 10.0, timeout=4.0, max_interval=1.0)
    fired = run_until(machine, 100.0)
    assert send_times(fired) == [10.5, 11.5, 12.5, 13.5]
    assert fired[-1] == (14.0, TimedOut("F"))


def test_a_provisional_moves_timer_e_to_t2_and_the_final_is_delivered_once():
    machine = ClientTransaction(b"BYE", PEER, 0.0)
    run_until(machine, 0.6)  # one retransmission at 0.5, next due at 1.5
    assert machine.receive(response(100, "BYE"), 0.7) == []
    assert machine.state == TransactionState.PROCEEDING
    assert send_times(run_until(machine, 10.0)) == [1.5, 5.5, 9.5]
    final = response(200, "BYE")
    assert machine.receive(final, 10.0) == [Deliver(final)]
    assert machine.state == TransactionState.COMPLETED
    # Timer K: retransmissions of the final are absorbed for T4, then the machine ends.
    assert machine.receive(final, 12.0) == []
    assert machine.next_deadline() == 15.0
    assert run_until(machine, 20.0) == [] and machine.terminated


def test_reliable_transport_never_retransmits_and_ends_at_the_final():
    machine = ClientTransaction(b"BYE", PEER, 0.0, reliable=True)
    assert machine.next_deadline() == 32.0  # Timer F only
    final = response(486, "BYE")
    assert machine.receive(final, 1.0) == [Deliver(final)] and machine.terminated


# -- client INVITE: Timers A, B, D ----------------------------------------------------------
def test_timer_a_doubles_without_cap_until_timer_b():
    machine = ClientInviteTransaction(b"INVITE", PEER, 0.0, ring_timeout=60.0)
    assert machine.start() == [Send(b"INVITE", PEER)]
    fired = run_until(machine, 100.0)
    assert send_times(fired) == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert fired[-1] == (32.0, TimedOut("B"))


def test_a_provisional_stops_timer_a_and_the_ring_timeout_bounds_the_wait():
    machine = ClientInviteTransaction(b"INVITE", PEER, 0.0, ring_timeout=60.0)
    ringing = response(180)
    assert machine.receive(ringing, 0.2) == [Deliver(ringing)]
    fired = run_until(machine, 100.0)
    assert fired == [(60.2, TimedOut("ring"))]


def test_a_2xx_ends_the_transaction_its_ack_is_the_dialogs():
    machine = ClientInviteTransaction(b"INVITE", PEER, 0.0, ring_timeout=60.0)
    ok = response(200)
    assert machine.receive(ok, 1.0) == [Deliver(ok)] and machine.terminated
    assert machine.acknowledge(b"ACK") == []  # not ours to send


def test_non_2xx_final_is_acked_again_for_each_retransmission_until_timer_d():
    machine = ClientInviteTransaction(b"INVITE", PEER, 0.0, ring_timeout=60.0)
    busy = response(486)
    assert machine.receive(busy, 1.0) == [Deliver(busy)]
    assert machine.acknowledge(b"ACK") == [Send(b"ACK", PEER)]
    assert machine.receive(busy, 2.0) == [Send(b"ACK", PEER)]  # our ACK was lost
    assert machine.next_deadline() == 33.0  # Timer D: 32 s
    assert run_until(machine, 40.0) == [] and machine.terminated


# -- server INVITE: Timers G, H, I; the 2xx (13.3.1.4) --------------------------------------
def test_non_2xx_final_timer_g_doubles_to_t2_until_the_ack_then_timer_i_absorbs():
    invite = request("INVITE")
    machine = ServerInviteTransaction(invite, PEER)
    assert machine.respond(b"100", 100, 0.0) == [Send(b"100", PEER)]
    assert machine.next_deadline() is None  # provisionals are not retransmitted
    assert machine.respond(b"486", 486, 1.0) == [Send(b"486", PEER)]
    assert send_times(run_until(machine, 9.0)) == [1.5, 2.5, 4.5, 8.5]
    assert machine.receive_request(invite, 9.0) == [Send(b"486", PEER)]  # INVITE again
    ack = request("ACK")
    assert machine.receive_request(ack, 9.2) == []
    assert machine.state == TransactionState.CONFIRMED
    assert machine.receive_request(ack, 10.0) == []  # absorbed, never reaches the TU
    assert machine.next_deadline() == pytest.approx(14.2)  # Timer I: T4
    assert run_until(machine, 20.0) == [] and machine.terminated


def test_timer_h_reports_a_missing_ack():
    machine = ServerInviteTransaction(request("INVITE"), PEER)
    machine.respond(b"503", 503, 0.0)
    fired = run_until(machine, 100.0)
    assert send_times(fired) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert fired[-1] == (32.0, TimedOut("H")) and machine.terminated


def test_2xx_retransmitted_until_the_dialogs_ack_which_is_delivered_not_absorbed():
    invite = request("INVITE")
    machine = ServerInviteTransaction(invite, PEER)
    machine.respond(b"180", 180, 0.0)
    assert machine.respond(b"200", 200, 0.1) == [Send(b"200", PEER)]
    assert machine.state == TransactionState.ACCEPTED
    assert machine.receive_request(invite, 0.3) == [Send(b"200", PEER)]
    assert send_times(run_until(machine, 2.0)) == [0.6, 1.6]
    ack = request("ACK")  # an ACK reusing the INVITE's branch: still the dialog's
    assert machine.receive_request(ack, 2.0) == [Deliver(ack)]
    machine.acknowledged()
    assert machine.terminated and machine.next_deadline() is None


def test_2xx_without_ack_times_out_and_reliable_transport_still_retransmits_it():
    machine = ServerInviteTransaction(request("INVITE"), PEER, reliable=True)
    machine.respond(b"200", 200, 0.0)
    fired = run_until(machine, 40.0)
    assert send_times(fired)[:3] == [0.5, 1.5, 3.5]
    assert fired[-1] == (32.0, TimedOut("H"))
    reliable_error = ServerInviteTransaction(request("INVITE"), PEER, reliable=True)
    reliable_error.respond(b"486", 486, 0.0)
    assert send_times(run_until(reliable_error, 40.0)) == []  # no Timer G over TCP


def test_nothing_follows_a_final_and_stop_silences_a_2xx_but_not_an_error():
    cancelled = ServerInviteTransaction(request("INVITE"), PEER)
    cancelled.respond(b"487", 487, 0.0)
    assert cancelled.respond(b"200", 200, 0.1) == []
    cancelled.stop()  # the call ended: its 487 still goes out until the ACK
    assert send_times(run_until(cancelled, 2.0)) == [0.5, 1.5]
    answered = ServerInviteTransaction(request("INVITE"), PEER)
    answered.respond(b"200", 200, 0.0)
    answered.stop()
    assert run_until(answered, 100.0) == [] and answered.terminated


def test_custom_timers_scale_every_schedule():
    timers = Timers(t1=0.1, t2=0.4, t4=1.0)
    machine = ClientTransaction(b"OPTIONS", PEER, 0.0, timers=timers)
    fired = run_until(machine, 10.0)
    assert send_times(fired)[:4] == pytest.approx([0.1, 0.3, 0.7, 1.1])
    assert fired[-1][0] == pytest.approx(6.4) and fired[-1][1] == TimedOut("F")


# -- server non-INVITE: Timer J --------------------------------------------------------------
def test_timer_j_answers_retransmissions_with_the_same_response():
    bye = request("BYE")
    machine = ServerTransaction(bye, PEER)
    assert machine.receive_request(bye, 0.0) == []  # not answered yet: nothing to repeat
    assert machine.respond(b"200", 200, 0.0) == [Send(b"200", PEER)]
    assert machine.receive_request(bye, 5.0) == [Send(b"200", PEER)]
    assert machine.respond(b"481", 481, 5.0) == []  # one final only
    assert machine.next_deadline() == 32.0
    run_until(machine, 40.0)
    assert machine.terminated and machine.receive_request(bye, 41.0) == []


def test_timer_j_is_zero_on_a_reliable_transport():
    machine = ServerTransaction(request("OPTIONS"), PEER, reliable=True)
    machine.respond(b"200", 200, 0.0)
    assert machine.terminated

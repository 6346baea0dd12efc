"""Registration and calls through a real Kamailio registrar/proxy with digest auth."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest
from test_agent_calls import assert_same_frames, recording

from sipagent.sip.call import CallState
from sipagent.sip.registration import ProbeMode, RegistrationState
from tests.kit.agentlib import free_sip_port, running_agent, wait_until
from tests.kit.peerlib.capture import write_dtmf_pcap

pytestmark = [pytest.mark.peers]


def registered(agent) -> bool:
    return agent.registration.status.state == RegistrationState.REGISTERED


@pytest.mark.parametrize(
    ("qop", "proxy_auth"),
    [(True, False), (False, False), (True, True)],
    ids=["qop", "no-qop", "407"],
)
async def test_registers_with_digest(kamailio, qop, proxy_auth):
    kam = await kamailio(qop=qop, proxy_auth=proxy_auth)
    async with running_agent(server=kam.address, password="agentpw") as agent:
        await wait_until(lambda: registered(agent), 5, "registered")
        contacts = await kam.registered_contacts("agent")
        assert contacts == [f"sip:agent@{agent.local_address[0]}:{agent.local_address[1]}"]
        status = agent.status()["registration"]
        assert status["state"] == "registered" and 0 < status["expires_in"] <= 300
    assert await kam.registered_contacts("agent") == []  # unregistered on shutdown


async def test_wrong_password_is_reported_as_auth_failure(kamailio):
    kam = await kamailio(qop=True)
    async with running_agent(server=kam.address, password="not-the-password") as agent:
        await wait_until(
            lambda: agent.registration.status.state == RegistrationState.FAILED, 5, "failure"
        )
        status = agent.registration.status
        assert status.last_status_code in (401, 403) and "password" in status.reason
        assert "not-the-password" not in repr(agent.status())


async def test_unreachable_registrar_is_reported(caplog):
    async with running_agent(server="127.0.0.1:9", password="x") as agent:
        await wait_until(
            lambda: agent.registration.status.state == RegistrationState.FAILED, 8, "failure"
        )
        assert "no answer from registrar 127.0.0.1:9" in agent.registration.status.reason
        failures = agent.registration.status.failures
        await wait_until(lambda: agent.registration.status.failures > failures, 8, "a retry")
    # In the log too, once per change of state, not once per retry.
    lines = [r.getMessage() for r in caplog.records if "not registered" in r.getMessage()]
    assert len(lines) == 1 and "no answer from registrar 127.0.0.1:9" in lines[0], lines


async def test_reregisters_after_registrar_restart(kamailio):
    kam = await kamailio(qop=True)
    async with running_agent(server=kam.address, password="agentpw") as agent:
        await wait_until(lambda: registered(agent), 5, "registered")
        # A quick restart loses the in-memory location table: the liveness probe notices.
        await kam.restart()
        await wait_until(lambda: agent.registration.status.successes >= 2, 5, "re-registered")
        assert await kam.registered_contacts("agent")
        # A longer outage: the probe times out, the agent reports it and keeps trying.
        await kam.stop()
        await wait_until(
            lambda: agent.registration.status.state == RegistrationState.FAILED, 6, "noticed"
        )
        await asyncio.sleep(1.0)
        successes = agent.registration.status.successes
        await kam.start()
        came_back = time.monotonic()
        await wait_until(
            lambda: agent.registration.status.successes > successes, 5, "registered again"
        )
        recovery = time.monotonic() - came_back
        assert await kam.registered_contacts("agent")
        print(f"re-registered {recovery:.2f} s after the registrar came back")


@pytest.mark.parametrize("record_route", [False, True], ids=["plain", "record-route"])
async def test_call_through_registrar_both_hangups(
    kamailio, sipp, audio_dir, tmp_path, record_route
):
    kam = await kamailio(qop=True, record_route=record_route)
    pattern = (audio_dir / "pattern.ulaw").read_bytes()
    record_dir = tmp_path / "rec"
    async with running_agent(
        server=kam.address, password="agentpw", record_dir=record_dir,
        player_file=str(audio_dir / "agent.ulaw"),
    ) as agent:  # fmt: skip
        await wait_until(lambda: registered(agent), 5, "registered")
        # 1) the caller hangs up: BYE comes through the proxy
        caller = sipp("uac_call.xml", remote=kam.address, service="agent",
                      params={"AUDIO": audio_dir / "pattern.ulaw",
                              "HOLD_MS": len(pattern) // 8 + 1000})  # fmt: skip
        (await caller.run()).check()
        await wait_until(lambda: len(agent.ended_calls) == 1, 5, "first call ended")
        assert agent.ended_calls[0].end_reason == "caller hung up"
        assert_same_frames(recording(record_dir), pattern)
        if record_route:
            assert agent.ended_calls[0].dialog.route_set, "Record-Route not kept"
        # 2) the agent hangs up: our BYE must reach SIPp and its 200 must come back to us
        caller = sipp("uac_call.xml", remote=kam.address, service="agent",
                      params={"AUDIO": audio_dir / "pattern.ulaw", "HOLD_MS": 10000})  # fmt: skip
        await caller.start(wait_bound=False)
        await wait_until(
            lambda: any(c.state == CallState.CONFIRMED for c in agent.calls.values()), 5, "up"
        )
        call = next(iter(agent.calls.values()))
        await agent.hangup(call, "test hangs up")
        result = (await caller.wait()).check()
        assert "BYE" in result.received_requests()
        bye = next(m for m in result.received() if m.method == "BYE")
        # Our own Via only (plus the proxy's when it record-routes), never the INVITE's.
        assert len(bye.headers("Via")) == (2 if record_route else 1)
        assert f"127.0.0.1:{agent.local_address[1]};" in bye.headers("Via")[-1]
        if record_route:
            # It came through the proxy (2 Vias); SIPp answers to the proxy, which routes the
            # 200 back to us by our Via.
            await wait_until(lambda: call.bye_status == 200, 3, "200 OK for our BYE")


async def test_cancel_before_answer_gets_487(kamailio, sipp):
    kam = await kamailio(qop=True)
    async with running_agent(server=kam.address, password="agentpw", ring_seconds=5) as agent:
        await wait_until(lambda: registered(agent), 5, "registered")
        result = (await sipp("uac_cancel.xml", remote=kam.address, service="agent").run()).check()
        assert 487 in result.received_statuses("INVITE")
        assert 200 in result.received_statuses("CANCEL")
        await wait_until(lambda: not agent.calls, 3, "call gone")
        assert agent.ended_calls[-1].end_reason == "caller cancelled"


async def test_unsupported_codec_gets_488(kamailio, sipp):
    kam = await kamailio(qop=True)
    async with running_agent(server=kam.address, password="agentpw") as agent:
        await wait_until(lambda: registered(agent), 5, "registered")
        runner = sipp("uac_unsupported_codec.xml", remote=kam.address, service="agent")
        result = (await runner.run()).check()
        assert 488 in result.received_statuses("INVITE")
        assert not agent.calls and not agent.ended_calls


async def test_dtmf_digits_reach_the_app_once_each(sipp, tmp_path):
    record_dir = tmp_path / "rec"
    async with running_agent(record_dir=record_dir) as agent:
        host, port = agent.local_address
        pcap = write_dtmf_pcap(tmp_path / "dtmf.pcap", "15550123#*", pt=101)
        runner = sipp("uac_dtmf.xml", remote=f"{host}:{port}", service="agent",
                      params={"DTMF_PCAP": pcap, "HOLD_MS": 9000})  # fmt: skip
        (await runner.run()).check()
        await wait_until(lambda: bool(agent.ended_calls), 5, "call ended")
    digits = next(record_dir.glob("*.digits")).read_text()
    assert digits == "15550123#*"


async def run_cli(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sipagent.cli.main", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode or 0, output.decode()


@pytest.mark.parametrize(
    ("password", "exit_code", "expected"),
    [("agentpw", 0, "registered: OK"), ("wrong-pass", 1, "authentication failed")],
)
async def test_register_command(kamailio, password, exit_code, expected):
    kam = await kamailio(qop=True)
    code, text = await run_cli(
        "register", "--server", kam.address, "--password", password,
        "--bind", f"127.0.0.1:{free_sip_port()}",
    )  # fmt: skip
    assert code == exit_code, text
    assert expected in text and "contact     <sip:agent@127.0.0.1:" in text
    assert password not in text
    assert await kam.registered_contacts("agent") == []  # unregistered on exit


async def test_register_command_unreachable():
    code, text = await run_cli(
        "register", "--server", "127.0.0.1:9", "--bind", f"127.0.0.1:{free_sip_port()}",
        "--timeout", "6",
    )  # fmt: skip
    assert code == 3, text
    assert "no answer from registrar 127.0.0.1:9" in text


async def test_a_registrar_answering_options_itself_is_not_hammered():
    """Some registrars answer an OPTIONS to our AOR themselves (404) instead of routing it to
    us: after two tries the agent stops reading that as a lost binding."""
    from sipagent.sip.message import SipMessage

    loop = asyncio.get_running_loop()
    registers = 0

    class Registrar(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            nonlocal registers
            request = SipMessage(data, addr)
            registers += request.method == "REGISTER"
            code, extra = (200, f"Contact: {request.first('Contact')};expires=300\r\n")
            if request.method == "OPTIONS":
                code, extra = 404, ""
            vias = "".join(f"Via: {via}\r\n" for via in request.values("Via"))
            response = (
                f"SIP/2.0 {code} {'OK' if code == 200 else 'Not Found'}\r\n{vias}"
                f"From: {request.first('From')}\r\nTo: {request.first('To')};tag=reg\r\n"
                f"Call-ID: {request.call_id}\r\nCSeq: {request.first('CSeq')}\r\n{extra}"
                "Content-Length: 0\r\n\r\n"
            )
            self.transport.sendto(response.encode(), addr)

    transport, _ = await loop.create_datagram_endpoint(Registrar, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        async with running_agent(server=f"127.0.0.1:{port}", keepalive_interval=0.2) as agent:
            await asyncio.sleep(3.0)  # 15 probes
            assert agent.registration.status.state == RegistrationState.REGISTERED
            assert registers <= 3, registers
    finally:
        transport.close()


async def test_a_replaced_binding_on_a_single_contact_aor_is_restored(kamailio, sipp):
    """Asterisk-style AORs (max_contacts=1, remove_existing=yes; OPTIONS challenged by the
    registrar): another UA registering our AOR silently removed our contact, and the OPTIONS
    probe could not tell. The binding query notices and the agent registers again."""
    kam = await kamailio(qop=True, single_contact=True)
    async with running_agent(server=kam.address, password="agentpw",
                             keepalive_interval=0.5) as agent:  # fmt: skip
        ours = f"sip:agent@{agent.local_address[0]}:{agent.local_address[1]}"
        client = agent.registration_client
        assert client is not None

        def probing_by_query() -> bool:
            return client.probe.mode == ProbeMode.BINDING_QUERY

        await wait_until(lambda: registered(agent), 5, "registered")
        # The first probe is challenged: from then on the binding is checked by query.
        await wait_until(probing_by_query, 5, "challenge seen")
        successes = agent.registration.status.successes
        intruder = sipp("register.xml", remote=kam.address, service="agent",
                        auth=("agent", "agentpw"))  # fmt: skip
        (await intruder.run()).check()
        assert ours not in await kam.registered_contacts("agent")  # replaced
        await wait_until(
            lambda: agent.registration.status.successes > successes, 12, "registered again"
        )
        assert await kam.registered_contacts("agent") == [ours]

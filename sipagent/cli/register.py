"""`sipagent register`: one REGISTER round trip with diagnostics, then unregister."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sipagent.apps.echo import EchoApp
from sipagent.config import AgentSettings
from sipagent.sip.endpoint import SipEndpoint
from sipagent.sip.registration import RegistrationState, RegistrationStatus

EXIT_REGISTERED = 0
EXIT_REJECTED = 1  # auth failure, forbidden, unknown user
EXIT_BAD_SETTINGS = 2
EXIT_UNREACHABLE = 3


@dataclass(frozen=True, slots=True)
class RegisterOutcome:
    exit_code: int
    status: RegistrationStatus
    contact: str
    advertised: str
    nat_warning: str


async def check_registration(settings: AgentSettings, timeout: float) -> RegisterOutcome:
    endpoint = SipEndpoint(settings, EchoApp())
    await endpoint.start()
    try:
        assert endpoint.registration is not None and endpoint.messages is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        status = endpoint.registration.status
        while status.state not in (RegistrationState.REGISTERED, RegistrationState.FAILED):
            if loop.time() > deadline:
                break
            await asyncio.sleep(0.05)
        snapshot = RegistrationStatus(**{f: getattr(status, f) for f in status.__slots__})
        advertised = f"{endpoint.messages.advertised_ip}:{endpoint.messages.sip_port}"
        contact = endpoint.messages.contact
    finally:
        await endpoint.stop()  # removes the binding again (Expires: 0)
    nat_warning = ""
    if snapshot.seen_from and snapshot.seen_from.split(":")[0] != advertised.split(":")[0]:
        nat_warning = (
            f"the registrar sees us as {snapshot.seen_from} but we advertise {advertised}: "
            "behind NAT, set --public-ip to the public address (and forward SIP/RTP ports)"
        )
    if snapshot.state == RegistrationState.REGISTERED:
        code = EXIT_REGISTERED
    elif snapshot.last_status_code is None:
        code = EXIT_UNREACHABLE
    else:
        code = EXIT_REJECTED
    return RegisterOutcome(code, snapshot, contact, advertised, nat_warning)

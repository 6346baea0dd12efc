"""The issue-9 corpus against an in-process SipEndpoint (echo app), one message at a time.

Each message is sent from a UDP socket, then an OPTIONS from a fresh socket checks that SIP is
still answered; log records carrying a traceback (the endpoint's own `log.exception`, asyncio's
"Fatal write error on datagram transport", a task's unretrieved exception) are collected and
charged to the message just sent. A dead transport is charged the same way and the endpoint is
started again, so one killer does not hide the rest. Used by the time-boxed mutation test and,
run as a script, to list every failure of the corpus:

    python -m tests.kit.sip_inprocess            # the 1,194 messages
    python -m tests.kit.sip_inprocess 12         # ... with fuzz seed 12
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sipagent.sip.endpoint import SipEndpoint
from tests.kit.agentlib import running_agent
from tests.kit.hostile_input import SDP_PCMU, Dialog, SipCase, build_request
from tests.kit.peerlib.sip_blaster import CorpusSender, judge, peer_host, probe_options
from tests.kit.sip_corpus import FUZZ_SEED, addressed, full_corpus


class ErrorLog(logging.Handler):
    """Every log record that carries a traceback, and asyncio's errors."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

        self.drops: list[logging.LogRecord] = []  # "dropped malformed SIP ...": the reason

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or (record.name == "asyncio" and record.levelno >= logging.ERROR):
            self.records.append(record)
        elif record.getMessage().startswith("dropped "):
            self.drops.append(record)

    @staticmethod
    def describe(record: logging.LogRecord) -> str:
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            frames = traceback.extract_tb(error.__traceback__)
            where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
            return f"{record.getMessage()[:80]!r}: {type(error).__name__}: {error}"[:240] + where
        return record.getMessage()[:200]


@contextlib.contextmanager
def catching_errors() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(min(level, logging.WARNING))  # ERROR records must reach the handler
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@dataclass
class Outcome:
    name: str
    statuses: list[int] = field(default_factory=list)
    tracebacks: list[str] = field(default_factory=list)
    transport_died: bool = False
    problem: str | None = None  # the answer judged against the case's expectation
    dropped: str = ""  # why the agent dropped it, if it did

    def failure(self) -> str | None:
        parts = []
        if self.transport_died:
            parts.append("TRANSPORT DIED")
        parts += [f"traceback: {t}" for t in self.tracebacks]
        if self.problem:
            parts.append(self.problem + (f" [agent: {self.dropped}]" if self.dropped else ""))
        return "; ".join(parts) or None


@contextlib.asynccontextmanager
async def echo_agent() -> AsyncIterator[SipEndpoint]:
    async with running_agent(app="echo", keepalive_interval=30.0) as endpoint:
        yield endpoint


def transport_dead(endpoint: SipEndpoint) -> bool:
    return endpoint.transport is None or endpoint.transport.is_closing()


async def send_one(
    endpoint: SipEndpoint, sender: CorpusSender, case: SipCase, errors: ErrorLog
) -> Outcome:
    """Send one message; charge it with the tracebacks logged and a transport death."""
    before, drops_before = len(errors.records), len(errors.drops)
    sender.send(addressed(case, endpoint.local_address, sender.address))
    await asyncio.sleep(0)
    alive = not transport_dead(endpoint) and await probe_options(endpoint.local_address, 1.0)
    outcome = Outcome(case.name, transport_died=not alive or transport_dead(endpoint))
    outcome.tracebacks = [ErrorLog.describe(r) for r in errors.records[before:]]
    drops = [r.getMessage().split(": ", 1)[-1] for r in errors.drops[drops_before:]]
    outcome.dropped = "; ".join(drops)[:160]
    return outcome


async def open_dialog(endpoint: SipEndpoint, sender: CorpusSender, name: str) -> Dialog | str:
    """A clean INVITE / 200 / ACK from the sender's socket: a confirmed call to fuzz inside
    (the sender ACKs the 200 and every later re-INVITE's final answer, and sends no BYE)."""
    host, port = sender.address
    agent_host, agent_port = endpoint.local_address
    call_id = f"unusual-{name}@127.0.0.1"  # what build_request names it
    sender.ack_only.add(call_id)
    invite = build_request("INVITE", name, target=f"sip:agent@{agent_host}:{agent_port}",
                      body=SDP_PCMU, via=f"SIP/2.0/UDP {host}:{port};branch=z9hG4bK-{name};rport",
                      contact=f"<sip:caller@{host}:{port}>")  # fmt: skip
    sender.send(invite)
    for _ in range(200):
        final = next((a for a in sender.answers_for(invite) if a.status >= 200), None)
        if final is not None:
            break
        await asyncio.sleep(0.01)
    else:
        return f"no final answer to a clean INVITE ({name})"
    if final.status != 200:
        states = Counter(
            f"{call.source_ip or '?'} {call.state.name}" for call in endpoint.calls.values()
        )
        return (
            f"a clean INVITE ({name}) answered {final.text.split(chr(13))[0]!r} "
            f"{final.header('Warning') or ''}; the agent's calls: {dict(states)}"
        )
    contact = final.header("Contact") or ""
    target = contact[contact.find("<") + 1 : contact.find(">")] if "<" in contact else contact
    remote_tag = (final.header("To") or "").split("tag=")[-1].split(";")[0]
    return Dialog(call_id, f"f-{name}", remote_tag, target, f"{host}:{port}", 2)


async def hang_up_all(endpoint: SipEndpoint) -> None:
    """End every call while the sender can still answer the BYEs (no 8 s BYE timeouts)."""
    for call in list(endpoint.calls.values()):
        await endpoint.hangup(call, "test over")


async def judge_each(cases: Sequence[SipCase], settle: float = 1.0) -> list[Outcome]:
    """Every case through an in-process agent, restarted whenever a message killed SIP. A
    classified case comes from a loopback address of its own (a fresh peer, see `peer_host`);
    the fuzz from one shared socket."""
    outcomes: list[Outcome] = []
    index = 0
    with catching_errors() as errors:
        while index < len(cases):
            async with contextlib.AsyncExitStack() as stack:
                endpoint = await stack.enter_async_context(echo_agent())
                agent = endpoint.local_address
                shared = await stack.enter_async_context(CorpusSender(agent))
                used: list[CorpusSender] = []
                start = index
                while index < len(cases):
                    case = cases[index]
                    sender = shared
                    if case.expect is not None:
                        sender = await stack.enter_async_context(
                            CorpusSender(agent, peer_host(index))
                        )
                    used.append(sender)
                    outcomes.append(await send_one(endpoint, sender, case, errors))
                    index += 1
                    if outcomes[-1].transport_died:
                        break
                await asyncio.sleep(settle)  # late answers (an INVITE's 200 comes from a task)
                if not transport_dead(endpoint):
                    await hang_up_all(endpoint)
                for case, outcome, sender in zip(
                    cases[start:index], outcomes[start:index], used, strict=True
                ):
                    answers = sender.answers_for(addressed(case, agent, sender.address))
                    outcome.statuses = sorted({a.status for a in answers})
                    if not outcome.transport_died:
                        outcome.problem = judge(case, answers)
    return outcomes


async def _main(seed: int) -> int:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().handlers[0].setLevel(logging.CRITICAL)  # quiet; ErrorLog sees all
    outcomes = await judge_each(full_corpus(seed))
    failed = [(o.name, o.failure()) for o in outcomes if o.failure()]
    for name, what in failed:
        print(f"{name}: {what}")
    print(f"{len(failed)} of {len(outcomes)} messages failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_main(int(sys.argv[1]) if len(sys.argv) > 1 else FUZZ_SEED)))

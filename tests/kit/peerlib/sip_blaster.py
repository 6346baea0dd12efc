"""Send a SIP corpus at an agent from one UDP socket and collect what it answers.

    async with CorpusSender(agent) as sender:
        report = await sender.blast(cases, rate=300, probe_every=50)
    report.failures(cases)   # message name -> what went wrong

Answers are matched to messages by Call-ID (by top Via branch where a message has none).
The sender completes what the agent starts: every final answer to an INVITE is ACKed (the
agent stops retransmitting it), and a 2xx is followed by a BYE (no call is left up). Every
`probe_every` messages an OPTIONS from a fresh socket checks that SIP is still answered.
Used by tests/integration/test_sip_torture.py and bench/sip_soak.py.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import socket
import struct
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

from .capture import rtp_packets

Address = tuple[str, int]

_CALL_ID = re.compile(rb"(?im)^(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$")
_BRANCH = re.compile(rb"(?i)branch[ \t]*=[ \t]*([^;,\s]+)")
_VIA = re.compile(rb"(?im)^(?:via|v)[ \t]*:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)")
_counter = itertools.count(1)
OWN_BRANCHES = ("z9hG4bKcorpus-ack", "z9hG4bKcorpus-bye")  # the sender's own ACKs and BYEs


class Case(Protocol):
    """What the sender needs of a corpus message (tests/kit/hostile_input.py SipCase)."""

    name: str
    data: bytes
    expect: frozenset[int] | None
    headers: tuple[str, ...]


@dataclass(frozen=True)
class Answer:
    """One response the agent sent to the sender's socket."""

    status: int
    call_id: str
    branch: str
    cseq_method: str
    cseq_number: int
    text: str  # the whole response, CRLF-separated

    def header(self, name: str) -> str | None:
        for line in self.text.split("\r\n\r\n")[0].split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


def parse_answer(data: bytes) -> Answer | None:
    """A response from the agent, or None if the datagram is not one."""
    head = data.split(b"\r\n\r\n", 1)[0]
    first = head.split(b"\r\n", 1)[0].split(b" ")
    if len(first) < 2 or first[0] != b"SIP/2.0" or not first[1].isdigit():
        return None
    call_id = _CALL_ID.search(head)
    via = _VIA.search(head)
    branch = _BRANCH.search(via.group(1)) if via else None
    cseq = re.search(rb"(?im)^cseq[ \t]*:[ \t]*(\d+)[ \t]+(\S+)", head)
    return Answer(
        status=int(first[1]),
        call_id=call_id.group(1).decode(errors="replace") if call_id else "",
        branch=branch.group(1).decode(errors="replace") if branch else "",
        cseq_method=cseq.group(2).decode(errors="replace") if cseq else "",
        cseq_number=int(cseq.group(1)) if cseq else 0,
        text=data.decode(errors="replace"),
    )


def message_keys(data: bytes) -> tuple[set[str], str]:
    """The Call-IDs of a message (several in RFC 4475 multi01) and its top Via branch."""
    call_ids = {m.decode(errors="replace") for m in _CALL_ID.findall(data.split(b"\r\n\r\n")[0])}
    via = _VIA.search(data)
    branch = _BRANCH.search(via.group(1)) if via else None
    return {c for c in call_ids if c}, branch.group(1).decode(errors="replace") if branch else ""


@dataclass
class BlastReport:
    sent: int = 0
    seconds: float = 0.0
    probes: list[tuple[int, bool]] = field(default_factory=list)  # (after message i, answered)
    answers: dict[int, list[Answer]] = field(default_factory=dict)  # case index -> answers
    invites_completed: int = 0  # 2xx answers ACKed and BYEd

    @property
    def transport_dead_after(self) -> int | None:
        """Index of the last message sent before the first unanswered probe."""
        return next((index for index, ok in self.probes if not ok), None)

    def failures(self, cases: Sequence[Case], offset: int = 0) -> dict[str, str]:
        """name -> what went wrong (see `judge`). Once the transport is dead nothing more can be
        judged message by message: the rest is one line."""
        out: dict[str, str] = {}
        dead_after = self.transport_dead_after
        last_alive = max((i for i, ok in self.probes if ok and i < (dead_after or 0)), default=-1)
        unanswered_in_window: list[str] = []
        for index, case in enumerate(cases, offset):
            if dead_after is not None and index > dead_after:
                out["(after the transport died)"] = (
                    f"{len(cases) + offset - index} messages, from {case.name}, not judged"
                )
                break
            problem = judge(case, self.answers.get(index, []))
            if (
                problem
                and dead_after is not None
                and index > last_alive
                and (problem.startswith("no final response"))
            ):
                unanswered_in_window.append(case.name)  # the killer, or killed by it
            elif problem:
                out[case.name] = problem
        if unanswered_in_window:
            out["(SIP died in this window)"] = (
                f"{len(unanswered_in_window)} unanswered between messages {last_alive + 1} and "
                f"{dead_after} ({unanswered_in_window[0]} .. {unanswered_in_window[-1]}): the "
                "killer is among them, tests/kit/sip_inprocess.py names it"
            )
        return out


def judge(case: Case, answers: Sequence[Answer]) -> str | None:
    """What is wrong with the agent's answers to one message, or None: a classified message
    answered other than allowed (or without a required header), a must-not-answer message
    answered, any INVITE left with a provisional answer and no final one."""
    answers = [a for a in answers if not a.branch.startswith(OWN_BRANCHES)]
    finals = [a for a in answers if a.status >= 200]
    statuses = sorted({a.status for a in finals})
    seen = sorted({a.status for a in answers})
    if case.expect is None:
        if answers and not finals and any(a.cseq_method == "INVITE" for a in answers):
            return f"INVITE got {seen}, no final response"
        return None
    if not case.expect:
        return f"answered {seen}, must not be answered" if answers else None
    if not finals:
        return f"no final response (expected {sorted(case.expect)}" + (
            f", got only {seen})" if seen else ")"
        )
    if not set(statuses) <= case.expect:
        return f"answered {statuses}, expected {sorted(case.expect)}"
    missing = [h for h in case.headers if not any(h in a.text for a in finals)]
    return f"answered {statuses} without {missing}" if missing else None


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, Address], None]) -> None:
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors for the agent's odd destinations are not ours to judge


async def probe_options(agent: Address, timeout: float = 2.0, *, tries: int = 2) -> bool:
    """An OPTIONS from a fresh socket: True if the agent answers it at all (a second OPTIONS,
    twice as patient, before calling SIP dead: a loaded machine is not a dead transport)."""
    for attempt in range(tries):
        if await _probe_once(agent, timeout * (attempt + 1)):
            return True
    return False


async def _probe_once(agent: Address, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    answered = loop.create_future()
    call_id = f"probe-{next(_counter)}-{time.monotonic_ns()}@127.0.0.1"

    def on_datagram(data: bytes, _addr: Address) -> None:
        answer = parse_answer(data)
        if answer is not None and answer.call_id == call_id and not answered.done():
            answered.set_result(answer.status)

    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Endpoint(on_datagram), local_addr=("127.0.0.1", 0), family=socket.AF_INET
    )
    try:
        port = transport.get_extra_info("sockname")[1]
        transport.sendto(options_request(agent, ("127.0.0.1", port), call_id), agent)
        try:
            await asyncio.wait_for(answered, timeout)
            return True
        except TimeoutError:
            return False
    finally:
        transport.close()


def options_request(agent: Address, sender: Address, call_id: str) -> bytes:
    host, port = sender
    return (
        f"OPTIONS sip:agent@{agent[0]}:{agent[1]} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{call_id.split('@')[0]};rport\r\n"
        f"From: <sip:probe@{host}:{port}>;tag=probe\r\nTo: <sip:agent@{agent[0]}>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


class CorpusSender:
    """One UDP socket that sends corpus messages to `agent` and keeps every answer."""

    def __init__(self, agent: Address, host: str = "127.0.0.1") -> None:
        self.agent = agent
        self.host = host  # any 127.0.0.0/8 address: a peer of its own for per-source limits
        self.address: Address = (host, 0)
        self.answers: dict[str, list[Answer]] = defaultdict(list)  # Call-ID or branch -> answers
        self._transport: asyncio.DatagramTransport | None = None
        self._completed: set[tuple[str, int]] = set()
        self.invites_completed = 0
        self.ack_only: set[str] = set()  # Call-IDs of calls the caller keeps up: ACK, no BYE

    async def __aenter__(self) -> CorpusSender:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Endpoint(self._on_datagram), local_addr=(self.host, 0),
            family=socket.AF_INET,
        )  # fmt: skip
        self._transport = transport
        self.address = (self.host, int(transport.get_extra_info("sockname")[1]))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._transport is not None:
            self._transport.close()

    def send(self, data: bytes) -> bool:
        assert self._transport is not None
        try:
            self._transport.sendto(data, self.agent)
            return True
        except (OSError, ValueError):
            return False  # > 65507 bytes: the kernel refuses it

    def _on_datagram(self, data: bytes, addr: Address) -> None:
        answer = parse_answer(data)
        if answer is None:
            self._answer_request(data, addr)
            return
        self.answers[answer.call_id].append(answer)
        if answer.branch:
            self.answers[f"branch:{answer.branch}"].append(answer)
        if answer.cseq_method == "INVITE" and answer.status >= 200:
            self._complete_invite(answer)

    def _answer_request(self, data: bytes, addr: Address) -> None:
        """The agent's own requests to a corpus Contact (its BYE at shutdown): 200 OK."""
        head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        if not head or head[0].startswith(b"ACK ") or not head[0].endswith(b" SIP/2.0"):
            return
        names = (b"via", b"v", b"from", b"f", b"to", b"t", b"call-id", b"i", b"cseq")
        copied = [line for line in head[1:] if line.split(b":", 1)[0].strip().lower() in names]
        response = b"\r\n".join([b"SIP/2.0 200 OK", *copied, b"Content-Length: 0", b"", b""])
        if self._transport is not None:
            self._transport.sendto(response, addr)

    def _complete_invite(self, answer: Answer) -> None:
        """ACK every final answer to an INVITE (once); BYE after a 2xx."""
        key = (answer.call_id, answer.cseq_number)
        if key in self._completed or not answer.call_id:
            return
        self._completed.add(key)
        ok = 200 <= answer.status < 300
        host, port = self.address
        from_ = answer.header("From") or "<sip:corpus@127.0.0.1>"
        to = answer.header("To") or "<sip:agent@127.0.0.1>"
        uri = f"sip:agent@{self.agent[0]}:{self.agent[1]}"
        contact = re.search(r"<([^>]+)>", answer.header("Contact") or "")
        target = contact.group(1) if ok and contact else uri
        # ACK for a non-2xx reuses the INVITE's branch (RFC 3261 17.1.1.3); a 2xx ACK is new.
        branch = answer.branch if not ok else f"{OWN_BRANCHES[0]}{next(_counter)}"

        def request(method: str, cseq: int, branch: str) -> bytes:
            return (
                f"{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {host}:{port};branch={branch}\r\n"
                f"From: {from_}\r\nTo: {to}\r\nCall-ID: {answer.call_id}\r\n"
                f"CSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            ).encode()

        self.send(request("ACK", answer.cseq_number, branch))
        if ok and answer.call_id not in self.ack_only:
            self.send(request("BYE", answer.cseq_number + 1, f"{OWN_BRANCHES[1]}{next(_counter)}"))
            self.invites_completed += 1

    def answers_for(self, data: bytes) -> list[Answer]:
        call_ids, branch = message_keys(data)
        found: list[Answer] = []
        for call_id in call_ids:
            found += self.answers.get(call_id, [])
        if not call_ids and branch:
            found += self.answers.get(f"branch:{branch}", [])
        return found

    async def exchange(self, data: bytes, timeout: float = 1.0) -> list[Answer]:
        """Send one message and wait (at most `timeout`) for a final answer to it."""
        self.send(data)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            answers = self.answers_for(data)
            if any(a.status >= 200 and not a.branch.startswith(OWN_BRANCHES) for a in answers):
                break
            await asyncio.sleep(0.005)
        return self.answers_for(data)

    async def blast(
        self,
        wire: Sequence[bytes],
        *,
        rate: float = 300.0,
        probe_every: int = 50,
        settle: float = 1.0,
        offset: int = 0,
        report: BlastReport | None = None,
    ) -> BlastReport:
        """Send `wire` (already addressed) at `rate` messages/s; probe SIP every
        `probe_every` messages; wait `settle` s for the last answers."""
        report = report or BlastReport()
        started = time.monotonic()
        interval = 1.0 / rate
        next_at = started
        for index, data in enumerate(wire):
            if self.send(data):
                report.sent += 1
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)
            dead = report.transport_dead_after is not None  # once dead, no more waiting
            if probe_every and (index + 1) % probe_every == 0 and not dead:
                report.probes.append((offset + index, await probe_options(self.agent)))
                next_at = time.monotonic()
        if report.transport_dead_after is None:
            report.probes.append((offset + len(wire) - 1, await probe_options(self.agent)))
        await asyncio.sleep(settle)
        for index, data in enumerate(wire):
            report.answers[offset + index] = self.answers_for(data)
        report.seconds += time.monotonic() - started
        report.invites_completed = self.invites_completed
        return report


def tracebacks(log_text: str) -> list[str]:
    """Each traceback in a log, with the log line before it (what the agent was doing)."""
    lines = log_text.splitlines()
    out = []
    for index, line in enumerate(lines):
        if line.startswith("Traceback"):
            end = index + 1
            while end < len(lines) and (lines[end].startswith((" ", "\t")) or not lines[end]):
                end += 1
            context = lines[index - 1] if index else ""
            error = lines[end] if end < len(lines) else ""
            out.append(f"{context.strip()} => {error.strip()}")
    return out


def numbered_frames(count: int, call: int = 0) -> bytes:
    """mu-law audio whose every 20 ms frame is unique (call and frame number up front)."""
    return b"".join(
        struct.pack("!HI", call, i) + bytes((i + j + call) % 256 for j in range(154))
        for i in range(count)
    )


def echo_check(datagrams: Sequence[Any], caller_port: int) -> dict[str, Any]:
    """Did an echo call stay intact? Every PCMU frame the caller sent came back, in order, to
    the end (the last half second may still be in flight at the BYE; 2% may be lost)."""
    sent = [p.payload for p in rtp_packets(datagrams, src_port=caller_port, pt=0)]
    echoed = [p.payload for p in rtp_packets(datagrams, dst_port=caller_port, pt=0)]
    position = {frame: i for i, frame in enumerate(sent)}
    order = [position[frame] for frame in echoed if frame in position]
    settled = set(sent[:-25])
    missing = len(settled - set(echoed))
    problems = []
    if len(sent) < 50:
        problems.append(f"the caller sent only {len(sent)} RTP packets")
    if missing > len(settled) // 50:
        problems.append(f"{missing} of {len(settled)} frames never echoed")
    if order != sorted(order):
        problems.append("echo out of order")
    if not order or order[-1] < len(sent) - 50:
        problems.append(f"echo stopped at frame {order[-1] if order else None} of {len(sent)}")
    return {"sent": len(sent), "echoed": len(echoed), "missing": missing,
            "intact": not problems, "problems": problems}  # fmt: skip


def peer_host(index: int) -> str:
    """A loopback address of its own for the `index`-th classified message (127.0.1.1 on): each
    is judged as a fresh peer, untouched by per-source INVITE limits the corpus trips."""
    return f"127.0.{1 + index // 250}.{1 + index % 250}"


async def exchange_each(
    cases: Sequence[Case],
    wire_for: Callable[[Case, Address], bytes],
    agent: Address,
    report: BlastReport,
) -> None:
    """Each case from a peer address of its own, one at a time, waiting for its final answer
    (`wire_for(case, sender_address)` addresses it), then an OPTIONS probe: answers go to
    `report.answers[i]`, and a dead transport is charged to the very message that killed it."""
    started = time.monotonic()
    for index, case in enumerate(cases):
        dead = report.transport_dead_after is not None
        async with CorpusSender(agent, peer_host(index)) as sender:
            wire = wire_for(case, sender.address)
            # Waits only until the final answer: a long limit costs nothing when answered.
            patience = 3.0 if case.expect and not dead else 0.3
            report.answers[index] = await sender.exchange(wire, patience)
            report.sent += 1
        if not dead:
            report.probes.append((index, await probe_options(agent)))
    report.seconds += time.monotonic() - started

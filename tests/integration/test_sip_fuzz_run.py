"""Issue 9: a time-boxed mutation run against the parser and request handling, in-process.

Fresh mutations are sent one by one to a SipEndpoint (echo app) on loopback for
SIP_FUZZ_SECONDS (default 15), each followed by an OPTIONS from a fresh socket: every
other one a mutation of a valid INVITE/OPTIONS/BYE/ACK/CANCEL/REGISTER (tests/kit/hostile_input.py
`fuzzed_sip_message`), the others requests inside a call the run set up itself (re-INVITEs with
broken SDP, hostile hosts, hold; INFO, NOTIFY, BYE, CANCEL, ACK, UPDATE, REFER:
`in_dialog_message`). No exception may escape (no log record with a traceback, no asyncio fatal
error), SIP must stay answered, and no INVITE may be left with a provisional answer only.
The seed is printed and taken from SIP_FUZZ_SEED to reproduce a failure:

    SIP_FUZZ_SEED=123 PYTHONPATH=. python -m pytest -q tests/integration/test_sip_fuzz_run.py
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random

from tests.kit.hostile_input import Dialog, SipCase, fuzzed_sip_message, in_dialog_message
from tests.kit.peerlib.sip_blaster import CorpusSender, judge, peer_host
from tests.kit.sip_inprocess import (
    catching_errors,
    echo_agent,
    hang_up_all,
    open_dialog,
    send_one,
    transport_dead,
)

FUZZ_SECONDS = float(os.environ.get("SIP_FUZZ_SECONDS", "15"))


def fuzz_seed() -> int:
    text = os.environ.get("SIP_FUZZ_SEED", "").strip()
    return int(text) if text else random.SystemRandom().randrange(1, 2**31)


async def test_time_boxed_mutation_run():
    seed = fuzz_seed()
    print(f"SIP_FUZZ_SEED={seed}")  # shown with -s, and in the failure message below
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FUZZ_SECONDS
    failures: list[str] = []
    sent: list[tuple[SipCase, CorpusSender]] = []
    dialog: Dialog | None = None
    with catching_errors() as errors:
        async with contextlib.AsyncExitStack() as stack:
            endpoint = await stack.enter_async_context(echo_agent())
            agent = endpoint.local_address
            fuzzer = await stack.enter_async_context(CorpusSender(agent))
            caller = fuzzer
            while loop.time() < deadline and not transport_dead(endpoint):
                index, in_dialog = divmod(len(sent), 2)
                if not in_dialog:
                    label, data = fuzzed_sip_message(seed, index)
                    keep_addresses = label.startswith(("host/", "multi/"))
                    case = SipCase(f"fuzz/{seed}/{index}/{label}", data, None, "fuzz",
                                   keep_addresses)  # fmt: skip
                else:
                    if dialog is None or index % 25 == 0:
                        previous = endpoint.calls.get(dialog.call_id) if dialog else None
                        if previous is not None:  # one fuzzed call at a time: max_calls stays far
                            await endpoint.hangup(previous, "fuzzed enough")
                        # Each call to fuzz inside comes from a peer of its own: the fuzz trips
                        # the per-source INVITE limits on purpose; a clean caller must not be
                        # refused for it.
                        caller = await stack.enter_async_context(
                            CorpusSender(agent, peer_host(index))
                        )
                        opened = await open_dialog(endpoint, caller, f"dlg-{seed}-{index}")
                        if isinstance(opened, str):
                            failures.append(opened)
                            break
                        dialog = opened
                    label, data = in_dialog_message(seed, index, dialog)
                    case = SipCase(f"in-dialog/{seed}/{index}/{label}", data, None, "fuzz", True)
                    dialog = None if label.startswith("bye/") else (
                        dataclasses.replace(dialog, cseq=dialog.cseq + 1))  # fmt: skip
                sender = caller if in_dialog else fuzzer
                sent.append((case, sender))
                outcome = await send_one(endpoint, sender, case, errors)
                if outcome.failure():
                    failures.append(f"{outcome.name}: {outcome.failure()}")
                if outcome.transport_died:
                    break
            charged = len(errors.records)
            await asyncio.sleep(0.5)  # late answers (an INVITE's 200 comes from a task)
            for case, sender in sent:
                problem = judge(case, sender.answers_for(case.data))
                if problem:
                    failures.append(f"{case.name}: {problem}")
            if not transport_dead(endpoint):
                await hang_up_all(endpoint)
            failures += [f"after the run: {errors.describe(r)}" for r in errors.records[charged:]]
    assert not failures, (
        f"SIP_FUZZ_SEED={seed}: {len(failures)} of {len(sent)} mutations failed "
        "(fuzz/SEED/I: fuzzed_sip_message(SEED, I); in-dialog/SEED/I: in_dialog_message):\n"
        + "\n".join(failures[:40])
    )
    assert len(sent) >= 100, f"only {len(sent)} mutations in {FUZZ_SECONDS} s"

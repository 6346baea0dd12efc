"""Every message of the issue-9 corpus through the parser: SipMessageError or a clean parse."""

from __future__ import annotations

import pytest

from sipagent.sip.message import SipMessage, SipMessageError
from tests.kit.hostile_input import SipCase, legal_unusual_messages
from tests.kit.sip_corpus import CORPUS_SIZE, RFC4475, addressed, full_corpus, is_response

CORPUS = full_corpus()
AGENT, SENDER = ("127.0.0.1", 5060), ("127.0.0.1", 40000)


def test_corpus_has_every_rfc4475_message_and_1194_in_all():
    names = [case.name for case in CORPUS]
    assert len(CORPUS) == CORPUS_SIZE
    assert len(set(names)) == CORPUS_SIZE
    assert len(RFC4475) == 49 and all(f"rfc4475/{name}" in names for name in RFC4475)
    assert len({case.data for case in CORPUS}) == CORPUS_SIZE


def test_fuzz_corpus_is_deterministic_per_seed():
    again = full_corpus()
    assert [c.data for c in again] == [c.data for c in CORPUS]
    fixed = sum(1 for case in CORPUS if case.verdict != "fuzz")
    assert fixed == len(RFC4475) + len(legal_unusual_messages())
    other = full_corpus(seed=10)
    assert [c.data for c in other[:fixed]] == [c.data for c in CORPUS[:fixed]]
    assert all(a.data != b.data for a, b in zip(other[fixed:], CORPUS[fixed:], strict=True))


def test_addressing_keeps_the_rfc_bytes_but_the_addresses():
    by_name = {case.name: case for case in CORPUS}
    wsinv = addressed(by_name["rfc4475/wsinv"], AGENT, SENDER)
    assert wsinv.startswith(b"INVITE sip:vivekg@127.0.0.1:5060;unknownparam SIP/2.0\r\n")
    assert b"Via  : SIP  /   2.0\r\n /UDP\r\n    127.0.0.1:40000;branch=390skdjuw\r\n" in wsinv
    assert b"c=IN IP4 127.0.0.4\r\n" in wsinv and b"@example.com> ; newparam" not in wsinv
    original = by_name["rfc4475/wsinv"].data
    assert wsinv.split(b"\r\n\r\n")[1] == original.split(b"\r\n\r\n")[1].replace(
        b"192.0.2.4", b"127.0.0.4"
    )
    for name in ("noreason", "unreason", "bigcode", "scalarlg", "bcast"):
        case = by_name[f"rfc4475/{name}"]
        assert is_response(case.data) and addressed(case, AGENT, SENDER) == case.data
    via_case = by_name["unusual/via-port-65536"]
    assert b"127.0.0.1:65536" in addressed(via_case, AGENT, SENDER)


def _parse(case: SipCase, data: bytes) -> SipMessage | None:
    try:
        return SipMessage(data, SENDER)
    except SipMessageError as error:
        assert str(error), f"{case.name}: rejected without a reason"
        return None


@pytest.mark.parametrize("wire", [False, True], ids=["as-stored", "addressed"])
def test_parser_never_raises_anything_but_sip_message_error(wire):
    failures = []
    for case in CORPUS:
        data = addressed(case, AGENT, SENDER) if wire else case.data
        try:
            _parse(case, data)
        except Exception as error:  # the point: list every escape
            failures.append(f"{case.name}: {type(error).__name__}: {error}"[:200])
    assert not failures, f"{len(failures)} messages escaped the parser:\n" + "\n".join(failures)


def test_valid_rfc4475_requests_parse():
    """RFC 4475 calls these well-formed: a parser that rejects one cannot give its answer."""
    rejected = []
    for case in CORPUS:
        if case.verdict == "valid" and case.name.startswith("rfc4475/"):
            data = addressed(case, AGENT, SENDER)
            try:
                SipMessage(data, SENDER)
            except SipMessageError as error:
                rejected.append(f"{case.name}: {error}"[:160])
    assert not rejected, "valid RFC 4475 messages rejected:\n" + "\n".join(rejected)

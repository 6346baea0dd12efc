"""The issue-9 SIP corpus: 49 RFC 4475 torture messages + legal-unusual + seeded fuzz = 1,194.

`RFC4475` is the verdict table the tests read: for each message of RFC 4475 sections 3.1-3.4
(stored byte-exact in tests/data/sip_torture/rfc4475/NAME.dat), whether the RFC calls it valid
or invalid and which final responses an endpoint like ours may send. The agent is a UAS: not a
proxy, not a registrar. So: a valid INVITE gets a final answer (200 here, the offers are PCMU),
OPTIONS 200, REGISTER 405, an unknown method 501; an invalid request 400 (the RFC's 505 for a
bad version); the section 3.3 cases their RFC 3261 answer (416, 420 + Unsupported, 415, 406);
a response (noreason, unreason, bigcode, scalarlg, bcast) is never answered.

`addressed()` makes a message reach the agent and its answer reach the sender; see
tests/data/sip_torture/README.md for exactly what it rewrites (never the files).
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.kit.hostile_input import SipCase, fuzzed_sip_messages, legal_unusual_messages

RFC4475_DIR = Path(__file__).resolve().parents[1] / "data" / "sip_torture" / "rfc4475"
CORPUS_SIZE = 1194
FUZZ_SEED = 9

OK = frozenset({200})
BAD = frozenset({400})
NOT_REGISTRAR = frozenset({405})
NONE = frozenset[int]()

# name -> (RFC section, verdict, allowed final statuses, headers the answer must carry, note)
RFC4475: dict[str, tuple[str, str, frozenset[int], tuple[str, ...], str]] = {
    # 3.1.1 valid messages
    "wsinv": (
        "3.1.1.1",
        "valid",
        frozenset({200, 481}),
        (),
        "short tortuous INVITE; its To has a tag: 481 (no such dialog) or 200 (RFC 3261 12.2.2)",
    ),
    "intmeth": ("3.1.1.2", "valid", frozenset({501}), ("Allow:",), "unknown method: 501 + Allow"),
    "esc01": ("3.1.1.3", "valid", OK, (), "valid use of % escaping"),
    "escnull": ("3.1.1.4", "valid", NOT_REGISTRAR, (), "escaped NULs in URIs (REGISTER)"),
    "esc02": ("3.1.1.5", "valid", frozenset({501}), (), "RE%47IST%45R is an unknown method"),
    "lwsdisp": ("3.1.1.6", "valid", OK, (), "no LWS between display name and <"),
    "longreq": ("3.1.1.7", "valid", OK, (), "long values, 34 Vias"),
    "dblreq": ("3.1.1.8", "valid", NOT_REGISTRAR, (), "extra octets after the REGISTER"),
    "semiuri": ("3.1.1.9", "valid", OK, (), "semicolon in the URI user part"),
    "transports": ("3.1.1.10", "valid", OK, (), "Vias with unknown transports"),
    "mpart01": ("3.1.1.11", "valid", frozenset({405, 501}), (), "multipart MESSAGE, binary"),
    "unreason": ("3.1.1.12", "valid", NONE, (), "a response (UTF-8 reason): never answered"),
    "noreason": ("3.1.1.13", "valid", NONE, (), "a response (empty reason): never answered"),
    # 3.1.2 invalid messages
    "badinv01": ("3.1.2.1", "invalid", BAD, (), "extraneous header separators"),
    "clerr": ("3.1.2.2", "invalid", BAD, (), "Content-Length larger than the body"),
    "ncl": ("3.1.2.3", "invalid", BAD, (), "negative Content-Length"),
    "scalar02": ("3.1.2.4", "invalid", BAD, (), "scalar fields overflowing"),
    "scalarlg": ("3.1.2.5", "invalid", NONE, (), "a response with huge scalars: never answered"),
    "quotbal": ("3.1.2.6", "invalid", BAD, (), "unterminated quoted string"),
    "ltgtruri": ("3.1.2.7", "invalid", BAD, (), "<> around the Request-URI"),
    "lwsruri": ("3.1.2.8", "invalid", BAD, (), "LWS inside the Request-URI"),
    "lwsstart": ("3.1.2.9", "invalid", BAD, (), "several SPs in the Request-Line"),
    "trws": ("3.1.2.10", "invalid", BAD, (), "SP at the end of the Request-Line"),
    "escruri": ("3.1.2.11", "invalid", BAD, (), "escaped headers in the Request-URI"),
    "baddate": (
        "3.1.2.12",
        "invalid",
        frozenset({200, 400}),
        (),
        "non-GMT Date: 400, or 200 by an endpoint that ignores Date",
    ),
    "regbadct": (
        "3.1.2.13",
        "invalid",
        frozenset({400, 405}),
        (),
        "Contact URI with ? not in <>: 400 (405: we are not a registrar)",
    ),
    "badaspec": ("3.1.2.14", "invalid", BAD, (), "spaces inside <> of an addr-spec"),
    "baddn": ("3.1.2.15", "invalid", BAD, (), "unquoted display name with a comma"),
    "badvers": ("3.1.2.16", "invalid", frozenset({505}), (), "SIP/7.0: 505"),
    "mismatch01": ("3.1.2.17", "invalid", BAD, (), "CSeq method differs from the method"),
    "mismatch02": ("3.1.2.18", "invalid", frozenset({400, 501}), (), "unknown method, CSeq INVITE"),
    "bigcode": ("3.1.2.19", "invalid", NONE, (), "a response with a huge status: never answered"),
    # 3.2 transaction layer
    "badbranch": ("3.2.1", "valid", OK, (), "branch is just the magic cookie"),
    # 3.3 application layer
    "insuf": ("3.3.1", "invalid", BAD, (), "no To, From, Call-ID, Max-Forwards"),
    "unkscm": ("3.3.2", "valid", frozenset({416}), (), "unknown Request-URI scheme"),
    "novelsc": ("3.3.3", "valid", frozenset({416}), (), "unknown Request-URI scheme"),
    "unksm2": ("3.3.4", "valid", NOT_REGISTRAR, (), "unknown schemes in To/From/Contact"),
    "bext01": (
        "3.3.5",
        "valid",
        frozenset({420}),
        ("Unsupported: nothingSupportsThis, nothingSupportsThisEither",),
        "unknown Require: 420 listing it",
    ),
    "invut": ("3.3.6", "valid", frozenset({415}), ("Accept:",), "unknown Content-Type"),
    "regaut01": ("3.3.7", "valid", NOT_REGISTRAR, (), "unknown Authorization scheme"),
    "multi01": ("3.3.8", "invalid", BAD, (), "repeated single-valued headers"),
    "mcl01": ("3.3.9", "invalid", BAD, (), "two Content-Lengths"),
    "bcast": ("3.3.10", "valid", NONE, (), "a response with a broadcast Via: never answered"),
    "zeromf": ("3.3.11", "valid", OK, (), "Max-Forwards 0 at the UAS"),
    "cparam01": ("3.3.12", "valid", NOT_REGISTRAR, (), "Contact parameter, no <>"),
    "cparam02": ("3.3.13", "valid", NOT_REGISTRAR, (), "Contact parameter in <>"),
    "regescrt": ("3.3.14", "valid", NOT_REGISTRAR, (), "escaped header in a Contact"),
    "sdp01": ("3.3.15", "valid", frozenset({406}), (), "Accept excludes application/sdp"),
    # 3.4 backward compatibility
    "inv2543": ("3.4.1", "valid", OK, (), "RFC 2543 INVITE: no branch, no tags"),
}


def rfc4475_messages() -> list[SipCase]:
    """The 49 messages, in RFC order, with their verdicts."""
    cases = []
    for name, (section, verdict, expect, headers, note) in RFC4475.items():
        data = (RFC4475_DIR / f"{name}.dat").read_bytes()
        cases.append(SipCase(f"rfc4475/{name}", data, expect, verdict, False, headers,
                             f"RFC 4475 {section}: {note}"))  # fmt: skip
    return cases


def full_corpus(seed: int = FUZZ_SEED) -> list[SipCase]:
    """RFC 4475 + legal-unusual + enough seeded fuzz to make 1,194 messages."""
    fixed = rfc4475_messages() + legal_unusual_messages()
    return fixed + fuzzed_sip_messages(seed, CORPUS_SIZE - len(fixed))


# -- addressing: what is rewritten on the wire, never in the files -----------------------------

_LWS = rb"(?:[ \t]|\r\n[ \t])*"
_REQUEST_LINE = re.compile(rb"^(\S+ +<?(?i:sips?):(?:[^@\s>]*@)?)([^;?>\s]+)")
_TOP_VIA = re.compile(
    rb"(?im)^(?:via|v)[ \t]*:" + _LWS + rb"SIP" + _LWS + rb"/" + _LWS + rb"[^/\s]+" + _LWS
    + rb"/" + _LWS + rb"[A-Za-z]+" + _LWS + rb"([^;,\s]+)"
)  # fmt: skip
_DIALOG_URI_HEADER = re.compile(
    rb"(?im)^(?:contact|m|record-route)[ \t]*:[^\r\n]*(?:\r\n[ \t][^\r\n]*)*"
)
_SIP_URI_HOST = re.compile(rb"((?i:sips?):(?:[^@\s>;,]*@)?)([^;?>\s,]+)")
_SDP_TEST_NET = re.compile(rb"(?m)^(c=IN IP4 )192\.0\.2\.(\d{1,3})")


def is_response(data: bytes) -> bool:
    return data.lstrip(b"\r\n").startswith(b"SIP/")


def addressed(case: SipCase, agent: tuple[str, int], sender: tuple[str, int]) -> bytes:
    """``case.data`` as sent: the Request-URI to the agent, the top Via sent-by to the sender
    and the Contact/Record-Route hosts of an INVITE to the sender (unless the case tests its
    own addresses),
    SDP test-net addresses to loopback. Responses go as they are. Never raises."""
    data = case.data
    if is_response(data):
        return data
    agent_hostport = f"{agent[0]}:{agent[1]}".encode()
    sender_hostport = f"{sender[0]}:{sender[1]}".encode()
    head, separator, body = data.partition(b"\r\n\r\n")
    head = _REQUEST_LINE.sub(lambda m: m.group(1) + agent_hostport, head, count=1)
    if not case.keep_addresses:
        match = _TOP_VIA.search(head)
        if match:
            head = head[: match.start(1)] + sender_hostport + head[match.end(1) :]
    if head.split(b" ", 1)[0] == b"INVITE" and not case.keep_addresses:
        head = _DIALOG_URI_HEADER.sub(
            lambda m: _SIP_URI_HOST.sub(lambda u: u.group(1) + sender_hostport, m.group(0)), head
        )
    body = _SDP_TEST_NET.sub(rb"\g<1>127.0.0.\2", body)
    return head + separator + body

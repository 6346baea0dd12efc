"""What sipagent still takes from pyVoIP 1.6.8, and what we found wrong with pyVoIP.

Used from pyVoIP, here and nowhere else: the status reason phrases (`SIPStatus`), the Via
branch generator and the instance UUID generator (`SIPClient.gen_branch`, `gen_urn_uuid`).
Everything else is sipagent's own: the parser (`sip.message`), the message factory
(`sip.factory`), dialogs, transactions, transport, registration. pyVoIP's receive thread,
`time.sleep` pacing, thread per call and 8-bit audio path are not used (`sip.endpoint` and
`sipagent.media` replace them).

Defects of pyVoIP, each pinned by a test in tests/unit/test_sip_pyvoip_compat.py that shows the
stock behaviour beside ours where that is cheap, and where sipagent fixes it:
  D1  BYE copies the INVITE's Via headers instead of its own Via, so its 200 OK goes astray
      (`factory.MessageFactory.bye`).
  D2  Every response is sent to the configured server, never to the Via/source
      (RFC 3261 18.2.2, RFC 3581 rport): a direct INVITE gets no answer
      (`message.SipMessage.response_destination`, `factory.MessageFactory.response`).
  D3  Default myIP="0.0.0.0" ends up in Contact and SDP c=: the peer sends RTP nowhere.
  D4  Digest is MD5 without qop/cnonce/nc; 407 Proxy-Authenticate is not handled; the digest
      uri is "sip:SERVER;transport=UDP" instead of the Request-URI (`sip.digest`).
  D5  No 100 Trying, ~1 s sleep between 180 and 200, 200 never retransmitted (`sip.uas`,
      `sip.transaction`).
  D6  Record-Route is not copied into responses nor used as the dialog's route set.
  D7  The SDP answer lists every compatible payload type of the offer (`sip.sdp`: one codec).
  D8  Only INVITE/ACK/BYE/CANCEL parse at all: OPTIONS, REGISTER responses aside, raise.
  D9  The parser keeps only the first of repeated headers (Record-Route, Route), ignores
      compact forms and header-name case, splits the body at every blank line, and does not
      validate Content-Length or the CSeq method (`sip.message`).
  D10 Call-IDs are sha256 of a counter starting at 1: identical across process restarts.
  D11 A new To-tag is generated for every response (gen_ok), breaking the dialog.
  D12 A Via with an IPv6 sent-by (`[2001:db8::1]:5070`) is split at its first colon: host
      `[2001`, port `db8` (`message.SipMessage.response_destination` reads our own Via).
  D13 Tags are remembered for ever: `SIPClient.tags` and `tagLibrary` grow by one entry per
      tag and per call (our tags are random and kept by the dialog that uses them).
"""

from __future__ import annotations

import pyVoIP.VoIP  # noqa: F401  # pyVoIP.SIP alone is a circular import; VoIP loads it first
from pyVoIP.SIP import SIPClient, SIPStatus

# Only for its stateless generators: never started, so it opens no socket and no thread.
_GENERATORS = SIPClient("", 0, "", "", phone=None, myIP="127.0.0.1")  # type: ignore[arg-type]


def reason_phrase(status_code: int) -> str:
    """The RFC 3261 reason phrase pyVoIP knows for a status code, else "Unknown"."""
    try:
        return str(SIPStatus(status_code).phrase)
    except ValueError:
        return "Unknown"


def new_branch() -> str:
    """A Via branch with the RFC 3261 magic cookie, unique per transaction (8.1.1.7)."""
    return str(_GENERATORS.gen_branch())


def new_instance_id() -> str:
    """A UUID for the +sip.instance Contact parameter (RFC 5626 4.1)."""
    return str(_GENERATORS.gen_urn_uuid())

"""Each pyVoIP defect listed in sipagent.sip.pyvoip_compat, pinned (D1..D13), and what we
still take from pyVoIP.

Where it is cheap, the stock pyVoIP behaviour is shown too, so the test documents the defect.
"""

import pytest
import pyVoIP.VoIP  # noqa: F401  (import order: pyVoIP.SIP alone is circular)
from pyVoIP.SIP import SIPClient, SIPMessage, SIPParseError

from sipagent.sip.digest import parse_challenge
from sipagent.sip.factory import MessageFactory
from sipagent.sip.message import SipMessage, SipMessageError
from sipagent.sip.pyvoip_compat import new_branch, new_instance_id, reason_phrase
from sipagent.sip.sdp import build_answer, negotiate, parse_audio_offer

SDP = (
    "v=0\r\no=c 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 30000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
)


def invite(extra: str = "", via_port: int = 5070) -> bytes:
    return (
        "INVITE sip:agent@127.0.0.1:5062 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:25060;branch=z9hG4bKproxy;rport\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{via_port};branch=z9hG4bKcaller\r\n"
        "Record-Route: <sip:127.0.0.1:25060;lr>\r\n"
        "Record-Route: <sip:10.9.9.9;lr>\r\n"
        'From: "Caller" <sip:caller@127.0.0.1>;tag=fromtag\r\n'
        "To: <sip:agent@127.0.0.1>\r\n"
        "Call-ID: call-1@127.0.0.1\r\n"
        "CSeq: 7 INVITE\r\n"
        f"Contact: <sip:caller@127.0.0.1:{via_port}>\r\n"
        f"{extra}"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(SDP)}\r\n\r\n{SDP}"
    ).encode()


def client(**kwargs) -> MessageFactory:
    settings = {
        "user": "agent", "password": "agentpw", "auth_user": "", "domain": "",
        "server": ("127.0.0.1", 25060), "advertised_ip": "127.0.0.1", "sip_port": 5062,
    }  # fmt: skip
    settings.update(kwargs)
    return MessageFactory(**settings)


def header_lines(data: bytes, name: str) -> list[str]:
    head = data.split(b"\r\n\r\n")[0].decode()
    return [line for line in head.split("\r\n") if line.lower().startswith(name.lower() + ":")]


def test_d1_bye_carries_our_own_via_not_the_invites():
    agent = client()
    request = SipMessage(invite(), ("127.0.0.1", 25060))
    dialog = agent.new_uas_dialog(request)
    stock = SIPClient("127.0.0.1", 25060, "agent", "pw", phone=None, myIP="127.0.0.1")  # type: ignore[arg-type]
    stock_request = SIPMessage(invite())
    stock.tagLibrary[stock_request.headers["Call-ID"]] = "totag"
    stock_bye = stock.gen_bye(stock_request)  # stock: the INVITE's Via headers
    assert "z9hG4bKcaller" in stock_bye
    bye = agent.bye(dialog).data
    vias = header_lines(bye, "Via")
    assert len(vias) == 1 and vias[0].startswith("Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK")
    assert b"z9hG4bKcaller" not in bye and b"z9hG4bKproxy" not in bye


def test_d2_responses_go_to_the_via_source_with_rport():
    agent = client(server=None)
    request = SipMessage(invite(), ("127.0.0.1", 40123))
    assert request.response_destination == ("127.0.0.1", 40123)  # rport: source port
    ringing = agent.ringing(request, agent.new_uas_dialog(request))
    assert header_lines(ringing, "Via")[0].endswith(";rport=40123;received=127.0.0.1")
    no_rport = invite().replace(b";branch=z9hG4bKproxy;rport", b";branch=z9hG4bKproxy")
    request = SipMessage(no_rport, ("127.0.0.1", 40123))
    assert request.response_destination == ("127.0.0.1", 25060)  # sent-by port


def test_d3_never_advertises_0_0_0_0():
    stock = SIPClient("127.0.0.1", 5060, "agent", "pw", phone=None)  # type: ignore[arg-type]
    assert stock.myIP == "0.0.0.0"
    with pytest.raises(ValueError):
        client(advertised_ip="0.0.0.0")
    assert client().contact == "<sip:agent@127.0.0.1:5062>"


def test_d4_qop_and_proxy_authorization_use_the_request_uri():
    agent = client()
    www = parse_challenge('Digest realm="127.0.0.1", nonce="n1", qop="auth"')
    proxy = parse_challenge('Digest realm="127.0.0.1", nonce="n2"', proxy=True)
    register = agent.register_request(300, (www, proxy)).data.decode()
    assert 'Authorization: Digest username="agent"' in register
    assert "qop=auth" in register and "nc=00000001" in register and "cnonce=" in register
    assert 'Proxy-Authorization: Digest username="agent"' in register
    assert 'uri="sip:127.0.0.1:25060"' in register and "transport=UDP" not in register


def test_d6_record_route_copied_and_used_as_route_set():
    agent = client()
    request = SipMessage(invite(), ("127.0.0.1", 25060))
    stock = SIPMessage(invite())
    assert stock.headers["Record-Route"] == "<sip:127.0.0.1:25060;lr>"  # the second one is lost
    dialog = agent.new_uas_dialog(request)
    ringing = agent.ringing(request, dialog)
    assert header_lines(ringing, "Record-Route") == [
        "Record-Route: <sip:127.0.0.1:25060;lr>",
        "Record-Route: <sip:10.9.9.9;lr>",
    ]
    bye = agent.bye(dialog).data
    assert header_lines(bye, "Route") == [
        "Route: <sip:127.0.0.1:25060;lr>",
        "Route: <sip:10.9.9.9;lr>",
    ]
    assert bye.startswith(b"BYE sip:caller@127.0.0.1:5070 SIP/2.0")
    assert dialog.next_hop_uri == "sip:127.0.0.1:25060;lr"


def test_d7_answer_has_exactly_one_audio_codec():
    media = negotiate(parse_audio_offer(SDP))
    answer = build_answer(media, local_address="127.0.0.1", local_port=20000, session_id=1,
                          session_version=1)  # fmt: skip
    assert "m=audio 20000 RTP/AVP 0 101\r\n" in answer


def test_d8_options_and_other_methods_parse():
    raw = invite().replace(b"INVITE sip:", b"OPTIONS sip:").replace(b"7 INVITE", b"7 OPTIONS")
    with pytest.raises(SIPParseError):
        SIPMessage(raw)
    assert SipMessage(raw).method == "OPTIONS"


def test_d9_compact_forms_case_and_body_with_blank_lines():
    raw = (
        b"BYE sip:agent@127.0.0.1 SIP/2.0\r\nv: SIP/2.0/UDP 1.2.3.4:5060;branch=z9hG4bKa\r\n"
        b"f: <sip:a@b>;tag=1\r\nt: <sip:c@d>;TAG=2\r\ni: abc\r\nCSEQ: 2 BYE\r\n"
        b"l: 6\r\n\r\nab\r\n\r\ncd"
    )
    message = SipMessage(raw)
    assert message.call_id == "abc" and message.to_tag == "2" and message.cseq == 2
    assert message.content == b"ab\r\n\r\n"[:6]


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (invite().replace(b"CSeq: 7 INVITE", b"CSeq: 7 BYE"), "CSeq method"),
        (invite().replace(b"Content-Length: ", b"Content-Length: 9"), "Content-Length"),
        (invite().replace(b"Call-ID: call-1", b"Call-ID: a\r\nCall-ID: b"), "duplicated"),
        (invite().replace(b"To: <sip:agent@127.0.0.1>\r\n", b""), "missing To"),
    ],
)
def test_d9_inconsistent_requests_are_marked_for_400(raw, why):
    # A request whose Via can be answered is kept, with its defects: the endpoint answers 400.
    message = SipMessage(raw)
    assert any(why in defect for defect in message.defects), message.defects
    if why == "CSeq method":
        return  # a response's CSeq names the request's method, not its own
    response = raw.replace(b"INVITE sip:agent@127.0.0.1:5062 SIP/2.0", b"SIP/2.0 200 OK", 1)
    assert any(why in defect for defect in SipMessage(response).defects)  # endpoint drops


def test_d9_unroutable_top_via_is_dropped():
    for bad in (b"127.0.0.1:65536", b"127.0.0.1:00000000000000000005060", b"[2001:db8::1"):
        raw = invite().replace(b"127.0.0.1:25060;branch", bad + b";branch", 1)
        with pytest.raises(SipMessageError, match="unroutable top Via"):
            SipMessage(raw)


def test_d12_ipv6_via_sent_by_is_one_host_and_its_port():
    raw = invite().replace(b"127.0.0.1:25060;branch", b"[2001:db8::1]:5070;branch", 1)
    stock = SIPMessage(raw)
    assert stock.headers["Via"][0]["address"] == ("[2001", "db8")  # split at the first colon
    message = SipMessage(raw)
    assert (message.via[0].host, message.via[0].port) == ("[2001:db8::1]", 5070)
    # Where a response goes with no packet source to go by: an address sendto takes.
    assert message.response_destination == ("2001:db8::1", 5070)
    no_port = SipMessage(raw.replace(b"[2001:db8::1]:5070;", b"[2001:db8::1];", 1))
    assert no_port.response_destination == ("2001:db8::1", 5060)
    received = SipMessage(raw.replace(b";rport", b";received=[2001:db8::2];rport", 1))
    assert received.response_destination == ("2001:db8::2", 5070)


def test_d10_call_ids_unique_across_instances():
    stock_a = SIPClient("s", 5060, "u", "p", phone=None, myIP="127.0.0.1")  # type: ignore[arg-type]
    stock_b = SIPClient("s", 5060, "u", "p", phone=None, myIP="127.0.0.1")  # type: ignore[arg-type]
    assert stock_a.gen_call_id() == stock_b.gen_call_id()
    assert client().new_call_id() != client().new_call_id()


def _held_entries(factory: object) -> int:
    """Entries in every container the object holds: what grows if it remembers calls."""
    return sum(len(value) for value in vars(factory).values() if hasattr(value, "__len__"))


def test_d13_no_tag_or_call_is_remembered_by_the_factory():
    stock = SIPClient("s", 5060, "u", "p", phone=None, myIP="127.0.0.1")  # type: ignore[arg-type]
    tags_before = len(stock.tags)
    for _ in range(3):
        stock.gen_tag()
    assert len(stock.tags) == tags_before + 3  # stock: every tag ever made, for ever
    agent = client()
    before = _held_entries(agent)
    for number in range(200):
        request = SipMessage(invite().replace(b"call-1@", f"call-{number}@".encode()))
        dialog = agent.new_uas_dialog(request)
        agent.ringing(request, dialog)
        agent.bye(dialog)
    assert _held_entries(agent) == before


def test_what_we_still_take_from_pyvoip():
    assert reason_phrase(486) == "Busy Here" and reason_phrase(299) == "Unknown"
    branches = {new_branch() for _ in range(100)}
    assert len(branches) == 100 and all(b.startswith("z9hG4bK") for b in branches)
    assert new_instance_id() != new_instance_id()


def test_d11_to_tag_is_stable_across_the_dialogs_responses():
    agent = client()
    request = SipMessage(invite(), ("127.0.0.1", 25060))
    dialog = agent.new_uas_dialog(request)
    sdp = build_answer(negotiate(parse_audio_offer(SDP)), local_address="127.0.0.1",
                       local_port=20000, session_id=1, session_version=1)  # fmt: skip
    tags = {
        header_lines(response, "To")[0].rsplit("tag=", 1)[1]
        for response in (agent.ringing(request, dialog), agent.answer(request, dialog, sdp))
    }
    assert tags == {dialog.local_tag}

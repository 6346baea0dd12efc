"""Every hostile SIP datagram is either rejected with SipMessageError or parses cleanly."""

from sipagent.sip.message import SipMessage, SipMessageError
from tests.kit.hostile_input import hostile_sip_messages


def test_corpus_is_large_and_varied():
    corpus = hostile_sip_messages()
    assert len(corpus) >= 200
    assert len(set(corpus)) >= 200


def test_parser_never_raises_anything_but_a_clear_error():
    rejected = 0
    for index, data in enumerate(hostile_sip_messages()):
        try:
            message = SipMessage(data, ("127.0.0.1", 39999))
        except SipMessageError as error:
            assert str(error), f"corpus[{index}] rejected without a reason"
            rejected += 1
            continue
        # What parses is either marked for 400 or internally consistent for the endpoint.
        assert message.via, f"corpus[{index}]"
        if message.defects:
            rejected += 1
        else:
            assert message.call_id and message.cseq_method, f"corpus[{index}]"
    assert rejected >= 150

import pytest

from sipagent.sip.sdp import NoCommonCodec, SdpError, build_answer, negotiate, parse_audio_offer

OFFER = (
    "v=0\r\no=caller 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 9 8 0 101\r\na=rtpmap:9 G722/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"
    "a=sendrecv\r\n"
)


def test_prefers_pcmu_and_keeps_one_telephone_event():
    media = negotiate(parse_audio_offer(OFFER))
    assert (media.payload_type, media.codec, media.telephone_event_pt) == (0, "PCMU", 101)
    assert (media.remote_address, media.remote_port) == ("10.0.0.5", 40000)
    answer = build_answer(
        media, local_address="192.0.2.7", local_port=20000, session_id=5, session_version=1
    )
    assert "m=audio 20000 RTP/AVP 0 101\r\n" in answer
    assert "c=IN IP4 192.0.2.7" in answer and "PCMA" not in answer and "G722" not in answer


def test_pcma_when_no_pcmu():
    offer = OFFER.replace(" 0 101", " 101").replace("a=rtpmap:0 PCMU/8000\r\n", "")
    assert negotiate(parse_audio_offer(offer)).codec == "PCMA"


def test_static_payload_types_without_rtpmap():
    offer = "v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 8\r\n"
    assert negotiate(parse_audio_offer(offer)).payload_type == 8


def test_no_common_codec():
    offer = "v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 9 3\r\na=rtpmap:9 G722/8000\r\n"
    with pytest.raises(NoCommonCodec):
        negotiate(parse_audio_offer(offer))


def test_media_level_connection_and_direction():
    offer = (
        "v=0\r\nc=IN IP4 1.1.1.1\r\nm=video 5000 RTP/AVP 96\r\nc=IN IP4 9.9.9.9\r\n"
        "m=audio 4000 RTP/AVP 0\r\nc=IN IP4 2.2.2.2\r\na=sendonly\r\n"
    )
    media = negotiate(parse_audio_offer(offer))
    assert media.remote_address == "2.2.2.2" and media.direction == "recvonly"


@pytest.mark.parametrize(
    "body",
    ["", "v=0\r\nm=audio 4000 RTP/AVP 0\r\n", "v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio x RTP/AVP 0\r\n"],
)
def test_unreadable_sdp(body):
    with pytest.raises(SdpError):
        parse_audio_offer(body)

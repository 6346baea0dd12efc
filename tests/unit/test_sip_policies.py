"""Pure SIP policies of the hardening work: header grammar, INVITE admission, host resolution."""

from __future__ import annotations

import asyncio
import time

import pytest

from sipagent.sip.admission import AdmissionLimits, InviteAdmission
from sipagent.sip.headers import HeaderError, parse_name_addr, parse_via, validate_host
from sipagent.sip.resolver import HostResolver
from sipagent.sip.sdp import SdpError, UnusableAddress, parse_audio_offer
from sipagent.sip.uri import UriError


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "[2001:db8::1]", "sip.example.com", "example.com.", "a-b.c1.org"]
)
def test_hosts_that_are_hosts(host):
    assert validate_host(host) == host


@pytest.mark.parametrize(
    "host",
    ["", "127.0.0.\x001", "256.1.1.1", "1.2.3", "[2001:db8::1", "[zz::1]", "bad_host.com",
     "-a.com", "a" * 300, "exa mple.com", "1.2.3.4.5"],
)  # fmt: skip
def test_hosts_that_are_not(host):
    with pytest.raises(HeaderError):
        validate_host(host)


def test_via_with_lws_ipv6_and_params():
    via = parse_via(
        "SIP  /   2.0\t/ UDP [2001:db8::9]:5070;branch=z9hG4bK1;rport;received=10.1.1.1"
    )
    assert (via.transport, via.host, via.port, via.branch) == ("UDP", "[2001:db8::9]", 5070,
                                                               "z9hG4bK1")  # fmt: skip
    assert "rport" in via.params and via.params["received"] == "10.1.1.1"


@pytest.mark.parametrize(
    "value",
    ["SIP/2.0/UDP 127.0.0.1:65536", "SIP/2.0/UDP 127.0.0.1:0", "SIP/2.0/UDP host:99999999999",
     "SIP/2.0/UDP 127.0.0.1;received=evil.com", "SIP/2.0/UDP 127.0.0.1;rport=70000",
     "SIP/3.0/UDP 127.0.0.1", "SIP/2.0/UDP", "SIP/2.0/UDP 192.0.2.15;;"],
)  # fmt: skip
def test_vias_that_cannot_be_answered(value):
    with pytest.raises(HeaderError):
        parse_via(value)


@pytest.mark.parametrize(
    ("value", "display", "uri", "tag"),
    [
        ('"Bob \\"B\\"" <sip:bob@example.com>;tag=1', 'Bob \\"B\\"', "sip:bob@example.com", "1"),
        ("Bob Smith <sips:bob@example.com>;tag=2", "Bob Smith", "sips:bob@example.com", "2"),
        ("<tel:+15551234567;phone-context=x>", "", "tel:+15551234567;phone-context=x", None),
        ("sip:bob@example.com;tag=3", "", "sip:bob@example.com", "3"),
        ("<isbn:2983792873>", "", "isbn:2983792873", None),
        ("José Núñez <sip:jose@example.com>;tag=4", "José Núñez", "sip:jose@example.com", "4"),
    ],
)
def test_name_addr_forms(value, display, uri, tag):
    parsed = parse_name_addr(value)
    assert (parsed.display_name, parsed.uri, parsed.params.get("tag")) == (display, uri, tag)


@pytest.mark.parametrize(
    "value",
    ['"Mr. J. User <sip:j.user@example.com>', "Bell, Alexander <sip:a@b.com>",
     "sip:user@example.com?Route=%3Csip:x%3E", "<sip:user@exa mple.com>", "<sip:a@b.com",
     "<nocolon>", "<sip:a@127.0.0.\x001>"],
)  # fmt: skip
def test_name_addrs_the_rfc_refuses(value):
    with pytest.raises(HeaderError):
        parse_name_addr(value)


def sdp(connection: str = "c=IN IP4 127.0.0.1", media: str = "m=audio 4000 RTP/AVP 0") -> str:
    return f"v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\n{connection}\r\nt=0 0\r\n{media}\r\n"


@pytest.mark.parametrize("connection", ["c=IN IP6 fd00::2", "c=IN IP4 slow.example.com",
                                        "c=IN IP4 127.0.\x00.1"])  # fmt: skip
def test_media_addresses_must_be_ipv4_literals(connection):
    with pytest.raises(UnusableAddress):
        parse_audio_offer(sdp(connection))


@pytest.mark.parametrize(
    "media",
    ["m=audio 4000 RTP/AVP 0 128", "m=audio 4000 RTP/AVP -1", "m=audio 70000 RTP/AVP 0",
     "m=audio 4000 RTP/AVP 4294967296"],
)  # fmt: skip
def test_payload_types_and_ports_out_of_range(media):
    with pytest.raises(SdpError):
        parse_audio_offer(sdp(media=media))


def test_ptime_junk_is_ignored():
    assert parse_audio_offer(sdp() + "a=ptime:inf\r\n").ptime is None
    assert parse_audio_offer(sdp() + "a=ptime:30\r\n").ptime == 30


def limits(**overrides) -> AdmissionLimits:
    values = {"max_calls": 3, "max_unconfirmed_per_source": 2, "invites_per_second": 5.0,
              "invite_burst": 10}  # fmt: skip
    values.update(overrides)
    return AdmissionLimits(**values)


def test_admission_counts_confirmed_calls_and_half_open_per_source():
    admission = InviteAdmission(limits())
    decide = admission.decide
    assert decide("10.0.0.1", 0.0, confirmed_calls=0, unconfirmed_from_source=1) is None
    half_open = decide("10.0.0.1", 0.0, confirmed_calls=0, unconfirmed_from_source=2)
    assert half_open is not None and half_open.status_code == 503 and half_open.retry_after
    # Another address is not hurt by the first one's half-open dialogs.
    assert decide("10.0.0.2", 0.0, confirmed_calls=2, unconfirmed_from_source=0) is None
    busy = decide("10.0.0.2", 0.0, confirmed_calls=3, unconfirmed_from_source=0)
    assert busy is not None and busy.status_code == 486
    assert admission.refused == {503: 1, 486: 1}


def test_admission_rate_limits_each_source_with_a_token_bucket():
    admission = InviteAdmission(limits(max_unconfirmed_per_source=100))
    results = [admission.decide("10.0.0.1", 0.0, confirmed_calls=0, unconfirmed_from_source=0)
               for _ in range(12)]  # fmt: skip
    assert [r is None for r in results] == [True] * 10 + [False] * 2  # the burst
    assert admission.decide("10.0.0.9", 0.0, confirmed_calls=0, unconfirmed_from_source=0) is None
    # 0.2 s at 5/s refills one token.
    assert admission.decide("10.0.0.1", 0.2, confirmed_calls=0, unconfirmed_from_source=0) is None
    refused = admission.decide("10.0.0.1", 0.2, confirmed_calls=0, unconfirmed_from_source=0)
    assert refused is not None and refused.status_code == 503


async def test_a_silent_resolver_never_blocks_the_loop(monkeypatch):
    """A name that takes 3 s to resolve: the loop keeps ticking, the caller gets a clear error
    after the timeout, and the failure is remembered (not asked again per retransmission)."""
    loop = asyncio.get_running_loop()
    calls = 0

    def slow_getaddrinfo(*args, **kwargs):
        nonlocal calls
        calls += 1
        time.sleep(3.0)  # a blocking resolver, as the C library's is
        raise OSError("no answer")

    async def in_executor(*args, **kwargs):
        return await loop.run_in_executor(None, lambda: slow_getaddrinfo(*args, **kwargs))

    monkeypatch.setattr(loop, "getaddrinfo", in_executor)
    resolver = HostResolver(timeout=0.5)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.02)
            ticks += 1

    task = asyncio.create_task(ticker())
    with pytest.raises(UriError, match="timed out"):
        await resolver.resolve("slow.example.com", 5060)
    with pytest.raises(UriError, match="timed out"):
        await resolver.resolve("SLOW.example.com", 5060)  # cached failure
    task.cancel()
    assert calls == 1
    assert ticks >= 10  # the loop ran all along (0.5 s at 20 ms)
    assert await resolver.resolve("127.0.0.1", 5070) == ("127.0.0.1", 5070)
    with pytest.raises(UriError, match="IPv6"):
        await resolver.resolve("[::1]", 5060)


# -- overload guard ---------------------------------------------------------------------------


def test_overload_guard_trips_on_a_share_of_late_passes_and_recovers_after_quiet():
    from sipagent.sip.admission import OverloadGuard

    guard = OverloadGuard(late_after=0.010, late_share=0.05, window=2.0, recover_after=3.0,
                          min_samples=50)  # fmt: skip
    t = 0.0
    for _ in range(200):  # 4 s of on-time passes every 20 ms, one 30 ms hiccup among them
        t += 0.02
        guard.observe(t, 0.030 if abs(t - 1.0) < 0.01 else 0.001)
        assert not guard.overloaded(t)
    for n in range(20):  # then every other pass late: 50 % of the window's last 20
        t += 0.02
        guard.observe(t, 0.015 if n % 2 else 0.002)
    assert guard.overloaded(t) and guard.episodes == 1
    for _ in range(149):  # on time again: still refusing for 3 s after the last late pass
        t += 0.02
        guard.observe(t, 0.001)
    assert guard.overloaded(t)
    t += 0.1
    guard.observe(t, 0.001)
    assert not guard.overloaded(t)


def test_overload_guard_needs_enough_samples_before_judging():
    from sipagent.sip.admission import OverloadGuard

    guard = OverloadGuard(min_samples=50)
    for n in range(10):  # the first passes of the first call, all late (process start)
        guard.observe(n * 0.02, 0.050)
    assert not guard.overloaded(0.2)


def test_overload_guard_forgives_one_stall_of_a_few_calls():
    from sipagent.sip.admission import OverloadGuard

    guard = OverloadGuard(late_after=0.020, late_share=0.05, window=2.0, min_late=10)
    t = 0.0
    for _ in range(100):  # one call on time: 100 passes in 2 s
        guard.observe(t, 0.001)
        t += 0.02
    for n in range(6):  # a first call's set-up stalls the loop: 6 late passes, 5.7 %
        guard.observe(t + n * 0.001, 0.060 - n * 0.005)
        assert not guard.overloaded(t)
    for _ in range(10):  # late passes that keep coming are overload
        t += 0.02
        guard.observe(t, 0.025)
    assert guard.overloaded(t)

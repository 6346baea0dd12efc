import pytest

from sipagent.sip.digest import DigestChallenge, DigestCredentials, DigestError, parse_challenge


def test_rfc2617_qop_auth_vector():
    challenge = parse_challenge(
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    assert challenge.qop_options == ("auth", "auth-int")
    header = DigestCredentials("Mufasa", "Circle Of Life").authorization(
        challenge, "GET", "/dir/index.html", cnonce="0a4f113b"
    )
    assert 'response="6629fae49393a05397450978507c4ef1"' in header
    assert "nc=00000001" in header and 'cnonce="0a4f113b"' in header and "qop=auth" in header
    assert 'opaque="5ccc069c403ebaf9f0171e9517f40e41"' in header


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_vectors(algorithm, expected):
    challenge = parse_challenge(
        f'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={algorithm}, '
        'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
        'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    header = DigestCredentials("Mufasa", "Circle of Life").authorization(
        challenge, "GET", "/dir/index.html", cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
    )
    assert f'response="{expected}"' in header


def test_nonce_count_increments_per_nonce():
    challenge = DigestChallenge(realm="r", nonce="n1", qop_options=("auth",))
    credentials = DigestCredentials("u", "p")
    first = credentials.authorization(challenge, "REGISTER", "sip:x")
    second = credentials.authorization(challenge, "REGISTER", "sip:x")
    assert "nc=00000001" in first and "nc=00000002" in second


def test_no_qop_is_rfc2069_style():
    challenge = parse_challenge('Digest realm="asterisk", nonce="abc"')
    header = DigestCredentials("agent", "pw").authorization(challenge, "REGISTER", "sip:pbx")
    assert "qop" not in header and "nc=" not in header


def test_proxy_challenge_answers_with_proxy_authorization():
    challenge = parse_challenge('Digest realm="r", nonce="n"', proxy=True)
    assert challenge.reply_header == "Proxy-Authorization"


@pytest.mark.parametrize(
    "value", ['Basic realm="x"', 'Digest nonce="n"', 'Digest realm="r", nonce="n", algorithm=FOO']
)
def test_unanswerable_challenges_are_clear_errors(value):
    with pytest.raises(DigestError):
        parse_challenge(value)

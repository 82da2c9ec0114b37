import pytest

from meshauth import RevocationConfig, Verifier, VerifyError

from conftest import FakeHTTP
from helpers import ISSUER, Clock, Issuer

JWKS, FEED = "https://v/v1/meshauth/jwks", "https://v/v1/meshauth/revocations"


def make(iss, clock, feed=None, **kw):
    state = {"jwks": iss.jwks(), "jwks_status": 200, "feed": feed, "feed_status": 200, "etag": ""}

    def jwks(_):
        if state["jwks_status"] != 200:
            raise ConnectionError("vault down")
        return 200, {"Cache-Control": "max-age=60"}, state["jwks"]

    def revocations(h):
        if state["feed_status"] != 200:
            raise ConnectionError("vault down")
        if state["etag"] and h.get("If-None-Match") == state["etag"]:
            return 304, {"Cache-Control": "max-age=5"}, b""
        return 200, {"Cache-Control": "max-age=5", "ETag": state["etag"]}, state["feed"].encode()

    http = FakeHTTP({JWKS: jwks, FEED: revocations})
    rev = RevocationConfig(max_staleness=10) if feed is not None else None
    v = Verifier(jwks_url=JWKS, issuer=ISSUER, audience="payments", http=http, clock=clock,
                 min_refetch_interval=1, max_staleness=120, revocations=rev, **kw)
    return v, state, http


def reason(v, tok, **kw):
    try:
        v.verify(tok, **kw)
        return ""
    except VerifyError as e:
        return e.reason


def test_audience_required():
    with pytest.raises(ValueError):
        Verifier(jwks_url=JWKS, issuer=ISSUER, http=FakeHTTP({}))


def test_unknown_kid_fetches_at_most_once_per_interval():
    iss, clock = Issuer(), Clock()
    v, state, http = make(iss, clock)
    n = len(http.calls)
    for i in range(50):
        assert reason(v, iss.token(kid="k1", jti="x%d" % i)) == ""
    iss.add("k2")
    for _ in range(20):
        assert reason(v, iss.token(kid="k2")) == "unknown_key"  # the fetch may serve the old set
    assert len(http.calls) - n <= 1
    state["jwks"] = iss.jwks()
    clock.t += 1.5
    assert reason(v, iss.token(kid="k2")) == ""


def test_removed_key_is_forgotten_and_cached_tokens_with_it():
    iss, clock = Issuer(), Clock()
    iss.add("k2")
    v, state, _ = make(iss, clock)
    tok = iss.token(kid="k1")
    assert reason(v, tok) == ""
    assert reason(v, tok) == ""  # from the verified-token cache
    state["jwks"] = iss.jwks(["k2"])
    clock.t += 61  # past max-age: a background refetch, the old set answers meanwhile
    reason(v, tok)
    v._keys_fetch._running and v._keys_fetch._running.wait(2)
    assert reason(v, tok) == "unknown_key"


def test_stale_keys_fail_closed_then_recover():
    iss, clock = Issuer(), Clock()
    v, state, _ = make(iss, clock)
    tok = iss.token(exp=int(clock.t) + 10000)
    assert reason(v, tok) == ""
    state["jwks_status"] = 500
    clock.t += 100  # past max-age (60), within max_staleness (120): last good set
    assert reason(v, tok) == ""
    clock.t += 100
    with pytest.raises(VerifyError) as e:
        v.verify(tok)
    assert e.value.reason == "keys_stale" and e.value.status == 503
    state["jwks_status"] = 200
    clock.t += 2
    assert reason(v, tok) == ""


def test_binding():
    iss, clock = Issuer(), Clock()
    v, _, _ = make(iss, clock)
    tok = iss.token(cnf={"x5t#S256": "abc"})
    assert reason(v, tok, thumbprint="abc") == ""
    assert reason(v, tok, thumbprint="abd") == "certificate_mismatch"
    assert reason(v, tok) == "certificate_missing"
    v2, _, _ = make(iss, clock, require_binding=True)
    assert reason(v2, iss.token()) == "not_bound"


def test_feed_revocations_rollback_and_staleness():
    iss, clock = Issuer(), Clock()
    now = int(clock.t)
    v, state, _ = make(iss, clock, feed=iss.feed(iat=now))
    ok, revoked = iss.token(jti="a"), iss.token(jti="b")
    assert reason(v, ok) == "" and reason(v, revoked) == ""
    state["feed"] = iss.feed(iat=now + 3, tokens={"b": now + 600}, services={"orders": {"gen": "g9", "exp": now + 600}})
    clock.t += 6
    reason(v, ok)
    v._feed_fetch._running and v._feed_fetch._running.wait(2)
    assert reason(v, revoked) == "revoked"
    assert reason(v, iss.token(gen="g9")) == ""
    assert reason(v, iss.token(gen="g8")) == "revoked"
    # An older feed (rolled back by anyone on the path) is refused.
    state["feed"] = iss.feed(iat=now + 1)
    clock.t += 6
    reason(v, ok)
    v._feed_fetch._running and v._feed_fetch._running.wait(2)
    assert reason(v, revoked) == "revoked"
    # Staleness counts from iat: past 10s of the newest feed, 503.
    state["feed_status"] = 500
    clock.t = now + 3 + 11
    with pytest.raises(VerifyError) as e:
        v.verify(ok)
    assert e.value.reason == "revocations_stale" and e.value.status == 503


def test_feed_lists_keys_disabled_and_certificates():
    iss, clock = Issuer(), Clock()
    now = int(clock.t)
    v, _, _ = make(iss, clock, feed=iss.feed(keys={"k1": now + 600}))
    assert reason(v, iss.token()) == "revoked"
    v, _, _ = make(iss, clock, feed=iss.feed(disabled={"orders": now + 600}))
    assert reason(v, iss.token()) == "revoked"
    v, _, _ = make(iss, clock, feed=iss.feed(certificates={"abc": now + 600}))
    assert reason(v, iss.token(cnf={"x5t#S256": "abc"}), thumbprint="abc") == "revoked"


def test_feed_of_another_issuer_or_type_refused():
    iss, clock = Issuer(), Clock()
    with pytest.raises(ValueError):
        make(iss, clock, feed=iss.sign("k1", {"iss": "other", "iat": 1}, typ="meshauth-revocations+jwt"))
    with pytest.raises(ValueError):
        make(iss, clock, feed=iss.token())


def test_discovery_stays_on_its_host():
    iss = Issuer()
    disc = "https://v/v1/meshauth/.well-known/openid-configuration"

    def http(jwks_uri):
        return FakeHTTP({disc: (200, {}, ('{"issuer":"%s","jwks_uri":"%s"}' % (ISSUER, jwks_uri)).encode()),
                         JWKS: (200, {}, iss.jwks())})

    v = Verifier(discovery_url=disc, audience="payments", http=http("/v1/meshauth/jwks"))
    assert v.jwks_url == JWKS and v.issuer == ISSUER
    with pytest.raises(ValueError):
        Verifier(discovery_url=disc, audience="payments", http=http("https://elsewhere/jwks"))


def test_garbage_only_ever_refused():
    import base64
    import random
    iss, clock = Issuer(), Clock()
    v, _, _ = make(iss, clock)
    rng = random.Random(21)
    good = iss.token()
    h, p, s = good.split(".")
    payload = base64.urlsafe_b64decode(p + "==")
    for _ in range(2000):
        b = bytearray(payload)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        tok = iss.sign("k1", bytes(b)) if rng.random() < 0.8 else good[:rng.randrange(len(good))] + chr(rng.randrange(32, 127))
        try:
            v.verify(tok)
        except VerifyError:
            pass


def test_exchanged_token_actors_and_derived_revocation():
    iss, clock = Issuer(), Clock()
    now = int(clock.t)
    v, state, _ = make(iss, clock, feed=iss.feed(iat=now))
    tok = iss.token(jti="x", act={"sub": "ledger", "act": {"sub": "payments"}}, meshauth_derived_from=["orig", "hop"])
    c = v.verify(tok)
    assert c.actors == ("ledger", "payments") and c.derived_from == ("orig", "hop")
    assert "act" not in c.extra()
    assert reason(v, iss.token(act={"sub": "payments"})) == "malformed"  # no derived_from
    v2, _, _ = make(iss, clock, max_delegation_depth=1)
    assert reason(v2, tok) == "delegation_not_allowed"
    v3, _, _ = make(iss, clock, allowed_actors=["ledger"])
    assert reason(v3, tok) == "delegation_not_allowed"
    v4, _, _ = make(iss, clock, allowed_actors=["ledger", "payments"], max_delegation_depth=-1)
    assert reason(v4, tok) == "delegation_not_allowed" and reason(v4, iss.token()) == ""
    # Revoking the original ends the exchanged token through the feed.
    state["feed"] = iss.feed(iat=now + 3, tokens={"orig": now + 600})
    clock.t += 6
    reason(v, tok)
    v._feed_fetch._running and v._feed_fetch._running.wait(2)
    assert reason(v, tok) == "revoked"

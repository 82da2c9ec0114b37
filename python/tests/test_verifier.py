import hashlib
import json
import time

import pytest

from meshauth import RevocationConfig, Verifier, VerifyError

from conftest import FakeHTTP
from helpers import ISSUER, Clock, Issuer
from meshauth.token import b64encode

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
    if feed is not None:
        kw["revocations"] = RevocationConfig(max_staleness=10)
    else:
        kw.setdefault("skip_revocations", True)
    v = Verifier(jwks_url=JWKS, issuer=ISSUER, audience="payments", http=http, clock=clock,
                 min_refetch_interval=1, max_staleness=120, **kw)
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


# Two well-spelled x5t#S256 thumbprints (43 base64url characters of 32 bytes).
T1, T2 = b64encode(hashlib.sha256(b"one").digest()), b64encode(hashlib.sha256(b"two").digest())


def test_binding():
    iss, clock = Issuer(), Clock()
    v, _, _ = make(iss, clock)
    tok = iss.token(cnf={"x5t#S256": T1})
    assert reason(v, tok, thumbprint=T1) == ""
    assert reason(v, tok, thumbprint=T2) == "certificate_mismatch"
    assert reason(v, tok) == "certificate_missing"
    # Regression: a cnf that is not one well-spelled x5t#S256 used to be
    # accepted when its thumbprint matched as text (and an empty one was
    # unknown_confirmation); meshtoken refuses every such cnf alike.
    for cnf in ({"x5t#S256": "abc"}, {}, {"x5t#S256": None}, {"jkt": T1}, {"x5t#S256": T1 + "="}):
        assert reason(v, iss.token(cnf=cnf), thumbprint=cnf.get("x5t#S256") or T1) == "unsupported_confirmation", cnf
    v2, _, _ = make(iss, clock, require_binding=True)
    assert reason(v2, iss.token()) == "unbound_token"


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
    v, _, _ = make(iss, clock, feed=iss.feed(certificates={T1: now + 600}))
    assert reason(v, iss.token(cnf={"x5t#S256": T1}), thumbprint=T1) == "revoked"
    assert reason(v, iss.token(cnf={"x5t#S256": T2}), thumbprint=T2) == ""


def test_feed_without_iat_refused():
    # Regression: a feed without iat used to be accepted, its staleness
    # counted from the fetch, so a replayed old feed looked fresh.
    iss, clock = Issuer(), Clock()
    for iat in (None, 0, -5, "1", 1.5):
        doc = {"iss": ISSUER, "tokens": {}}
        if iat is not None:
            doc["iat"] = iat
        with pytest.raises(ValueError, match="feed refused"):
            make(iss, clock, feed=iss.sign("k1", doc, typ="meshauth-revocations+jwt"))


def test_feed_rollback_refused_and_stale_from_iat():
    iss, clock = Issuer(), Clock()
    now = int(clock.t)
    v, state, _ = make(iss, clock, feed=iss.feed(iat=now, tokens={"b": now + 600}))
    state["feed"] = iss.feed(iat=now - 1)
    with pytest.raises(ValueError, match="older than one already accepted"):
        v._fetch_feed(clock())
    assert reason(v, iss.token(jti="b")) == "revoked" and v.revocations_age() == clock() - now
    # An earlier render of the same step (same iat, without the revocation)
    # is refused too; a later one that covers the accepted feed is taken.
    state["feed"] = iss.feed(iat=now)
    with pytest.raises(ValueError, match="earlier render of the same step"):
        v._fetch_feed(clock())
    assert reason(v, iss.token(jti="b")) == "revoked"
    state["feed"] = iss.feed(iat=now, tokens={"b": now + 600, "c": now + 600})
    v._fetch_feed(clock())
    assert reason(v, iss.token(jti="c")) == "revoked"
    # A feed whose iat is already past max_staleness is stale at once,
    # however recently it was fetched.
    state["feed"] = iss.feed(iat=now + 1)
    clock.t = now + 12
    v._fetch_feed(clock())
    with pytest.raises(VerifyError) as e:
        v.verify(iss.token())
    assert e.value.reason == "revocations_stale"


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

    v = Verifier(discovery_url=disc, audience="payments", http=http("/v1/meshauth/jwks"), skip_revocations=True)
    assert v.jwks_url == JWKS and v.issuer == ISSUER
    with pytest.raises(ValueError):
        Verifier(discovery_url=disc, audience="payments", http=http("https://elsewhere/jwks"), skip_revocations=True)


def discovery(iss, feed, **members):
    disc = "https://v/v1/meshauth/.well-known/openid-configuration"
    doc = {"issuer": ISSUER, "jwks_uri": "/v1/meshauth/jwks"}
    doc.update(members)
    docs = {disc: (200, {}, json.dumps(doc).encode()), JWKS: (200, {}, iss.jwks())}
    for url in ("https://v/v1/meshauth/revocations", "https://v/v1/meshauth/feed"):
        docs[url] = (200, {"Cache-Control": "max-age=5"}, feed.encode())
    return disc, FakeHTTP(docs)


def test_revocations_checked_by_default():
    # Regression: revocations=None used to mean no feed at all, so a revoked
    # token passed a Verifier built with the defaults.
    iss = Issuer()
    now = int(time.time())
    disc, http = discovery(iss, iss.feed(tokens={"gone": now + 600}))
    v = Verifier(discovery_url=disc, audience="payments", http=http)
    assert "https://v/v1/meshauth/revocations" in http.calls
    assert reason(v, iss.token(jti="gone")) == "revoked"
    assert reason(v, iss.token(jti="kept")) == ""
    # The explicit opt-out, as meshtoken's SkipRevocations.
    disc, http = discovery(iss, iss.feed(tokens={"gone": now + 600}))
    v = Verifier(discovery_url=disc, audience="payments", http=http, skip_revocations=True)
    assert all("revocations" not in u for u in http.calls)
    assert reason(v, iss.token(jti="gone")) == ""
    with pytest.raises(ValueError, match="contradict"):
        Verifier(discovery_url=disc, audience="payments", http=http, skip_revocations=True,
                 revocations=RevocationConfig())


def test_default_feed_is_required_to_start():
    # Checked by default means a Verifier that cannot read the feed does not
    # start (as meshtoken's NewVerifier), rather than silently not checking.
    iss = Issuer()
    http = FakeHTTP({JWKS: (200, {}, iss.jwks()), FEED: (404, {}, b"")})
    with pytest.raises(ValueError, match="revocations"):
        Verifier(jwks_url=JWKS, issuer=ISSUER, audience="payments", http=http)


def test_feed_from_discovery_revocation_endpoint():
    iss = Issuer()
    now = int(time.time())
    feed = iss.feed(tokens={"gone": now + 600})
    disc, http = discovery(iss, feed, revocation_endpoint="/v1/meshauth/feed")
    v = Verifier(discovery_url=disc, audience="payments", http=http)
    assert "https://v/v1/meshauth/feed" in http.calls and FEED not in http.calls
    assert reason(v, iss.token(jti="gone")) == "revoked"
    # An explicit url wins over discovery's.
    disc, http = discovery(iss, feed, revocation_endpoint="/v1/meshauth/feed")
    Verifier(discovery_url=disc, audience="payments", http=http, revocations=RevocationConfig(url=FEED))
    assert FEED in http.calls and "https://v/v1/meshauth/feed" not in http.calls
    # The same-scheme-and-host rule as jwks_uri.
    for bad in ("https://elsewhere/v1/meshauth/revocations", "http://v/v1/meshauth/revocations",
                "https://v:8443/v1/meshauth/revocations", "//elsewhere/revocations"):
        disc, http = discovery(iss, feed, revocation_endpoint=bad)
        with pytest.raises(ValueError, match="revocation_endpoint"):
            Verifier(discovery_url=disc, audience="payments", http=http)
    disc, http = discovery(iss, feed, revocation_endpoint=7)
    with pytest.raises(ValueError, match="revocation_endpoint"):
        Verifier(discovery_url=disc, audience="payments", http=http)


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


ORDERS_X5T = "A" * 43


def test_exchanged_token_ends_with_callers_revoked_certificate():
    # Revoking the caller's certificate ends the token exchanged from its
    # token, though the exchanged token's cnf is the actor's certificate.
    iss, clock = Issuer(), Clock()
    now = int(clock.t)
    v, state, _ = make(iss, clock, feed=iss.feed(iat=now), max_delegation_depth=1)
    tok = iss.token(jti="x", act={"sub": "payments"}, meshauth_derived_from=["orig"],
                    meshauth_derived_cnf=[ORDERS_X5T])
    assert reason(v, tok) == ""
    state["feed"] = iss.feed(iat=now + 3, certificates={ORDERS_X5T: now + 600})
    clock.t += 6
    reason(v, tok)
    v._feed_fetch._running and v._feed_fetch._running.wait(2)
    assert reason(v, tok) == "revoked"


def test_exchanged_token_actors_and_derived_revocation():
    iss, clock = Issuer(), Clock()
    now = int(clock.t)
    v, state, _ = make(iss, clock, feed=iss.feed(iat=now), max_delegation_depth=2)
    tok = iss.token(jti="x", act={"sub": "ledger", "act": {"sub": "payments"}}, meshauth_derived_from=["orig", "hop"],
                    meshauth_derived_cnf=["", ORDERS_X5T])
    # Secure by default: a verifier that does not opt in refuses act, even
    # with every actor allowed.
    v0, _, _ = make(iss, clock)
    assert reason(v0, tok) == "delegation_not_allowed" and reason(v0, iss.token()) == ""
    v0, _, _ = make(iss, clock, allowed_actors=["ledger", "payments"])
    assert reason(v0, tok) == "delegation_not_allowed"
    c = v.verify(tok)
    assert c.actors == ("ledger", "payments") and c.derived_from == ("orig", "hop")
    assert c.derived_cnf == ("", ORDERS_X5T)
    one = {"act": {"sub": "payments"}, "meshauth_derived_from": ["orig"]}
    assert reason(v, iss.token(**one)) == "malformed"  # no derived_cnf
    assert reason(v, iss.token(meshauth_derived_cnf=["orders"], **one)) == "malformed"  # not an x5t#S256
    assert reason(v, iss.token(meshauth_derived_cnf=["", ""], **one)) == "malformed"  # one per actor
    assert "act" not in c.extra()
    assert reason(v, iss.token(act={"sub": "payments"})) == "malformed"  # no derived_from
    v2, _, _ = make(iss, clock, max_delegation_depth=1)
    assert reason(v2, tok) == "delegation_not_allowed"
    v3, _, _ = make(iss, clock, allowed_actors=["ledger"], max_delegation_depth=2)
    assert reason(v3, tok) == "delegation_not_allowed"
    v4, _, _ = make(iss, clock, allowed_actors=["ledger", "payments"], max_delegation_depth=-1)
    assert reason(v4, tok) == "delegation_not_allowed" and reason(v4, iss.token()) == ""
    # Revoking the original ends the exchanged token through the feed.
    state["feed"] = iss.feed(iat=now + 3, tokens={"orig": now + 600})
    clock.t += 6
    reason(v, tok)
    v._feed_fetch._running and v._feed_fetch._running.wait(2)
    assert reason(v, tok) == "revoked"


def test_extra_claims_objects_lists_numbers_intact():
    # claims_template renders objects, lists and numbers (with UseNumber, so
    # integers beyond 2**53 stay exact in the token).
    import decimal
    iss, clock = Issuer(), Clock()
    v, _, _ = make(iss, clock)
    big = "1" + "0" * 5000
    body = ('{"iss":"%s","sub":"orders","aud":"payments","iat":%d,"nbf":%d,"exp":%d,"jti":"x1",'
            '"team":"pay","ctx":{"env":"prod","tier":2,"tags":["a",{"b":[1,2.5,-0,1e3]}],"none":null,"ok":true},'
            '"ids":[9007199254740993,-12345678901234567890123],"ratio":0.1,"huge":1e400,"long":%s,"e":[]}'
            % (ISSUER, clock.t, clock.t, clock.t + 600, big))
    tok = iss.sign("k1", body.encode())
    c = v.verify(tok)
    x = c.extra()
    assert set(x) == {"team", "ctx", "ids", "ratio", "huge", "long", "e"}
    assert x["team"] == "pay" and x["e"] == []
    assert x["ctx"] == {"env": "prod", "tier": 2, "tags": ["a", {"b": [1, 2.5, 0, 1000.0]}], "none": None, "ok": True}
    assert type(x["ctx"]["tier"]) is int and type(x["ctx"]["tags"][1]["b"][1]) is float
    assert x["ids"] == [9007199254740993, -12345678901234567890123] and all(type(i) is int for i in x["ids"])
    assert x["ratio"] == 0.1 and type(x["ratio"]) is float
    assert x["huge"] == decimal.Decimal("1e400")
    assert x["long"] == decimal.Decimal(big)
    # Numbers are numbers, not their literal text.
    assert not isinstance(x["ctx"]["tier"], str)
    # Regression: extra() handed out the cached claims' own nested objects,
    # so a caller changing them changed what the next request saw.
    x["ctx"]["env"] = "dev"
    x["ctx"]["tags"].append("z")
    again = v.verify(tok).extra()
    assert again["ctx"]["env"] == "prod" and again["ctx"]["tags"][-1] != "z"


def test_extra_of_deeply_nested_arrays():
    # Arrays are not depth-bounded (objects are, at 32, as in meshtoken):
    # extra() must not hit Python's recursion limit.
    iss, clock = Issuer(), Clock()
    v, _, _ = make(iss, clock)
    body = ('{"iss":"%s","sub":"orders","aud":"payments","iat":%d,"nbf":%d,"exp":%d,"jti":"d1","deep":%s1%s}'
            % (ISSUER, clock.t, clock.t, clock.t + 600, "[" * 3000, "]" * 3000))
    x = v.verify(iss.sign("k1", body.encode())).extra()["deep"]
    n = 0
    while isinstance(x, list):
        x, n = x[0], n + 1
    assert n == 3000 and x == 1 and type(x) is int

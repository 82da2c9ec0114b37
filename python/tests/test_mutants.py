"""The vectors catch a deliberately broken Python check: each mutant below
weakens one rule, and the shared vectors (and the differential corpus) must
then disagree with meshtoken."""

import time

from meshauth import VerifyError, _json

from conftest import cert_der, verifier_for


def disagreements(doc):
    v = verifier_for(doc)
    n = 0
    for case in doc["cases"]:
        try:
            v.verify(case["token"], cert_der(doc, case.get("certificate", "")))
            got = ""
        except VerifyError as e:
            got = e.reason
        n += got != case["reason"]
    return n


def test_keeping_the_last_duplicate_is_caught(vectors, differential, monkeypatch):
    orig = _json._read_key

    def last_wins(s, i, frame):
        # Python's json module: a duplicate silently replaces the first.
        saved = dict(frame[0])
        frame[0].clear()
        try:
            return orig(s, i, frame)
        finally:
            frame[0].update(saved)

    monkeypatch.setattr(_json, "_read_key", last_wins)
    assert disagreements(vectors) > 0
    assert disagreements(differential) > 0


def test_ascii_only_folding_is_caught(vectors, monkeypatch):
    monkeypatch.setattr(_json, "folds_to", lambda name, reserved: next((r for r in reserved if r == name.lower()), None))
    assert disagreements(vectors) > 0


def test_naive_time_arithmetic_is_caught(differential, monkeypatch):
    import math

    from meshauth import token
    # Python's own integers: no int64 conversion, no wrap of Go's internal
    # seconds. The corpus's time claims at the edges must tell.
    monkeypatch.setattr(token, "numeric_date", lambda f: (math.floor(f) + token._UNIX_TO_INTERNAL, 0))
    assert disagreements(differential) > 0


def test_feed_without_iat_accepted_is_caught(vectors, monkeypatch):
    from meshauth import token

    from test_vectors import feed_disagreements
    # The old rule: a feed without iat passed (its age counted from the fetch).
    orig = token._int64
    monkeypatch.setattr(token, "_int64", lambda v: orig(v) if v is not None else 1)
    assert feed_disagreements(vectors)


def test_any_cnf_accepted_is_caught(vectors, differential, monkeypatch):
    from meshauth import token
    # The old rule: a cnf with any x5t#S256 text passed, compared as text.
    monkeypatch.setattr(token, "is_thumbprint", lambda s: s != "")
    assert disagreements(vectors) > 0


def test_expired_before_identity_is_caught(vectors, differential, monkeypatch):
    from meshauth import token
    # The old order: expired reported before a wrong issuer or audience.
    def window_first(c, issuer, audience, leeway, now=None):
        t = token.go_now(time.time() if now is None else now)
        reason = token._window(c, t, int(round(leeway * 1e9))) or token._identity(c, issuer, audience)
        if reason:
            raise token.TokenError(reason)

    monkeypatch.setattr(token, "validate", window_first)
    assert disagreements(vectors) > 0
    assert disagreements(differential) > 0

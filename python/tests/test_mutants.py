"""The vectors catch a deliberately broken Python check: each mutant below
weakens one rule, and the shared vectors (and the differential corpus) must
then disagree with meshtoken."""

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

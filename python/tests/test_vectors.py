"""The shared vectors and the differential corpus: Python must reach
meshtoken's verdict (and reason) on every token."""

from meshauth import VerifyError

from conftest import cert_der, verifier_for


def verdict(v, doc, case):
    try:
        v.verify(case["token"], cert_der(doc, case.get("certificate", "")))
        return ""
    except VerifyError as e:
        return e.reason


def test_vectors(vectors):
    v = verifier_for(vectors)
    wrong = []
    for case in vectors["cases"]:
        got = verdict(v, vectors, case)
        if got != case["reason"]:
            wrong.append("%s: got %r, want %r" % (case["name"], got, case["reason"]))
    assert not wrong, "\n".join(wrong)
    assert len(vectors["cases"]) > 50


def test_differential(differential):
    v = verifier_for(differential)
    wrong = []
    for i, case in enumerate(differential["cases"]):
        got = verdict(v, differential, case)
        if got != case["reason"]:
            wrong.append("#%d: python %r, meshtoken %r: %s" % (i, got, case["reason"], case["token"][:120]))
    assert not wrong, "%d disagreements:\n%s" % (len(wrong), "\n".join(wrong[:20]))
    assert len(differential["cases"]) >= 2000

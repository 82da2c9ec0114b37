"""The shared vectors and the differential corpus: Python must reach
meshtoken's verdict (and reason) on every token, and hand back the same extra
claims from every accepted one."""

import decimal
import json
import math
import sys

import pytest

from meshauth import VerifyError

from conftest import cert_der, verifier_for


def verdict(v, doc, case):
    try:
        v.verify(case["token"], cert_der(doc, case.get("certificate", "")))
        return ""
    except VerifyError as e:
        return e.reason


@pytest.fixture(autouse=True)
def deep_recursion():
    # A vector nests arrays 2000 deep; json.loads and as_go recurse.
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 20000))
    yield
    sys.setrecursionlimit(old)


def as_go(x):
    """x as meshtoken's Extra() has it: every number a float64. Python keeps
    integers exact (int), so a literal beyond 2**53 differs from Go's only by
    that rounding; a number beyond float64 makes Go's Extra() fail (None)."""
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, (int, float, decimal.Decimal)):
        f = float(x)
        if math.isinf(f):
            raise OverflowError
        return f
    if isinstance(x, dict):
        return {k: as_go(v) for k, v in x.items()}
    return [as_go(v) for v in x]


def extra_disagreement(v, doc, case):
    if "extra" not in case:
        return None
    c = v.verify(case["token"], cert_der(doc, case.get("certificate", "")))
    try:
        got = as_go(c.extra())
    except OverflowError:
        got = None
    if got != as_go(json.loads(case["extra"])):
        return "python %r, meshtoken %r" % (c.extra(), case["extra"])
    return None


def test_vectors(vectors):
    v = verifier_for(vectors)
    wrong = []
    for case in vectors["cases"]:
        got = verdict(v, vectors, case)
        if got != case["reason"]:
            wrong.append("%s: got %r, want %r" % (case["name"], got, case["reason"]))
        elif not got and not case.get("go_pending"):
            d = extra_disagreement(v, vectors, case)
            if d:
                wrong.append("%s: extra claims: %s" % (case["name"], d))
    assert not wrong, "\n".join(wrong)
    assert len(vectors["cases"]) > 50


def test_differential(differential):
    v = verifier_for(differential)
    wrong = []
    for i, case in enumerate(differential["cases"]):
        got = verdict(v, differential, case)
        if got != case["reason"]:
            wrong.append("#%d: python %r, meshtoken %r: %s" % (i, got, case["reason"], case["token"][:120]))
        elif not got:
            d = extra_disagreement(v, differential, case)
            if d:
                wrong.append("#%d: extra claims: %s" % (i, d))
    assert not wrong, "%d disagreements:\n%s" % (len(wrong), "\n".join(wrong[:20]))
    assert len(differential["cases"]) >= 2000
    assert sum(1 for c in differential["cases"] if c.get("extra")) >= 50


def test_vectors_extra_exact(vectors):
    # Python keeps what Go rounds: the integer beyond 2**53 stays exact.
    v = verifier_for(vectors)
    case = next(c for c in vectors["cases"] if c["name"] == "extra claims: objects, lists and numbers")
    x = v.verify(case["token"]).extra()
    assert x["ids"] == [1, 9007199254740993, -12345678901234567890123]
    assert x["ctx"]["tags"][1] == {"b": [1, -2.5, 1000.0, 0]} and type(x["ctx"]["tier"]) is int

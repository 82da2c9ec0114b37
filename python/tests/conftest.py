import base64
import json
import os

import pytest

from meshauth import Verifier, RevocationConfig

VECTORS = os.path.join(os.path.dirname(__file__), "..", "..", "testdata", "vectors")


class FakeHTTP:
    """Serves fixed documents to a Verifier: url -> (status, headers, body)."""

    def __init__(self, docs):
        self.docs = docs
        self.calls = []

    def get(self, url, limit, headers=None):
        self.calls.append(url)
        d = self.docs[url]
        if callable(d):
            d = d(headers or {})
        if isinstance(d, Exception):
            raise d
        return d


def load(name):
    with open(os.path.join(VECTORS, name)) as f:
        return json.load(f)


def verifier_for(doc, **kw):
    http = FakeHTTP({
        "https://v/jwks": (200, {"Cache-Control": "max-age=3600"}, json.dumps(doc["jwks"]).encode()),
        "https://v/revocations": (200, {"Cache-Control": "max-age=3600"}, doc["feed"].encode()),
    })
    kw.setdefault("revocations", RevocationConfig(max_staleness=10 ** 9))
    # The vectors' verdicts on tokens with act are those of a verifier that
    # opts in to delegated tokens.
    kw.setdefault("max_delegation_depth", doc.get("max_delegation_depth", 0))
    return Verifier(jwks_url="https://v/jwks", issuer=doc["issuer"], audience=doc["audience"], http=http,
                    max_cached_tokens=0, **kw)


def cert_der(doc, name):
    return base64.b64decode(doc["certificates"][name]) if name else None


@pytest.fixture(scope="session")
def vectors():
    return load("vectors.json")


@pytest.fixture(scope="session")
def differential():
    return load("differential.json")

"""A small issuer for unit tests: Ed25519 keys, tokens, JWKS and feeds."""

import json
import time

from cryptography.hazmat.primitives.asymmetric import ed25519

from meshauth.jwk import public_jwk
from meshauth.token import b64encode

ISSUER = "https://vault.test/v1/meshauth"


class Issuer:
    def __init__(self):
        self.keys = {}
        self.add("k1")

    def add(self, kid):
        self.keys[kid] = ed25519.Ed25519PrivateKey.generate()

    def jwks(self, kids=None):
        kids = self.keys if kids is None else kids
        return json.dumps({"keys": [public_jwk(self.keys[k].public_key(), "EdDSA", k) for k in kids]}).encode()

    def sign(self, kid, payload, typ="JWT"):
        h = b64encode(json.dumps({"alg": "EdDSA", "kid": kid, "typ": typ}).encode())
        p = b64encode(json.dumps(payload).encode() if not isinstance(payload, bytes) else payload)
        sig = self.keys[kid].sign((h + "." + p).encode())
        return h + "." + p + "." + b64encode(sig)

    def token(self, kid="k1", **claims):
        now = int(time.time())
        c = {"iss": ISSUER, "sub": "orders", "aud": "payments", "iat": now, "nbf": now, "exp": now + 600, "jti": "j-%d" % id(claims)}
        c.update(claims)
        return self.sign(kid, {k: v for k, v in c.items() if v is not None})

    def feed(self, kid="k1", iat=None, **members):
        doc = {"iss": ISSUER, "iat": int(time.time()) if iat is None else iat,
               "tokens": {}, "services": {}, "disabled": {}, "keys": {}}
        doc.update(members)
        return self.sign(kid, doc, typ="meshauth-revocations+jwt")


class Clock:
    def __init__(self):
        self.t = time.time()

    def __call__(self):
        return self.t

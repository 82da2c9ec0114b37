"""Verify cost of meshauth's Verifier beside PyJWT alone (Debian's 2.6.0).

    /usr/bin/python3 python/bench.py [-n 3000]

Cold: every token is new (parse, member checks, signature, claims). Repeated:
the same token again (meshauth answers from its verified-token cache and
re-checks time, audience, binding and the revocation feed; PyJWT has no
cache and does everything again). Both check ES256 signatures with
cryptography (OpenSSL) and the same iss/aud/exp/nbf/iat. Prints microseconds
per verification and the ratio meshauth / PyJWT.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

import json  # noqa: E402

import jwt  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from meshauth import Verifier  # noqa: E402
from meshauth.jwk import public_jwk  # noqa: E402

ISSUER = "https://vault.bench/v1/meshauth"


class _HTTP:
    def __init__(self, jwks):
        self.jwks = jwks

    def get(self, url, limit, headers=None):
        return 200, {"Cache-Control": "max-age=3600"}, self.jwks


def tokens(key, n):
    now = int(time.time())
    out = []
    for i in range(n):
        claims = {"iss": ISSUER, "sub": "orders", "aud": "payments", "iat": now, "nbf": now, "exp": now + 600,
                  "jti": "jti-%06d-%s" % (i, os.urandom(8).hex()), "cnf": {"x5t#S256": "A" * 43}, "team": "checkout"}
        out.append(jwt.encode(claims, key, algorithm="ES256", headers={"kid": "k1", "typ": "JWT"}))
    return out


def per_op(fn, items):
    start = time.perf_counter()
    for t in items:
        fn(t)
    return (time.perf_counter() - start) / len(items) * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=3000)
    n = ap.parse_args().n
    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key()
    jwks = json.dumps({"keys": [public_jwk(pub, "ES256", "k1")]}).encode()
    toks = tokens(key, n)
    v = Verifier(jwks_url="https://vault.bench/v1/meshauth/jwks", issuer=ISSUER, audience="payments",
                 http=_HTTP(jwks), max_cached_tokens=10 * n, skip_revocations=True)

    def pyjwt(t):
        jwt.decode(t, pub, algorithms=["ES256"], audience="payments", issuer=ISSUER,
                   options={"require": ["exp", "iat", "nbf", "sub", "jti"]})

    def mesh(t):
        v.verify(t, thumbprint="A" * 43)

    pyjwt(toks[0])
    mesh(toks[-1])
    py_cold = per_op(pyjwt, toks)
    mesh_cold = per_op(mesh, toks[:-1])
    same = [toks[0]] * n
    py_rep = per_op(pyjwt, same)
    mesh_rep = per_op(mesh, same)
    print("ES256, %d tokens, %s" % (n, sys.version.split()[0]))
    print("%-10s %14s %14s %8s" % ("", "PyJWT us/op", "meshauth us/op", "ratio"))
    print("%-10s %14.1f %14.1f %8.2f" % ("cold", py_cold, mesh_cold, mesh_cold / py_cold))
    print("%-10s %14.1f %14.1f %8.2f" % ("repeated", py_rep, mesh_rep, mesh_rep / py_rep))


if __name__ == "__main__":
    main()

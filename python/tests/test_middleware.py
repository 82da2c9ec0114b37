import asyncio
import base64
import hashlib
import urllib.parse

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshauth import ASGIMiddleware, HEADER_CLIENT_CERT, TrustedProxies, WSGIMiddleware
from meshauth.forwarded import ForwardedCertError, parse_client_cert, parse_xfcc

from conftest import load
from helpers import Clock, Issuer
from test_verifier import make

VEC = load("vectors.json")
ORDERS = base64.b64decode(VEC["certificates"]["orders"])
THIEF = base64.b64decode(VEC["certificates"]["thief"])


def x5t(der):
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def pem(der):
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()


def xfcc(der):
    return 'By=spiffe://mesh/p;Hash=%s;Cert="%s"' % (hashlib.sha256(der).hexdigest(), urllib.parse.quote(pem(der), safe=""))


def test_parse_forwarded():
    assert parse_xfcc(xfcc(ORDERS)) == x5t(ORDERS)
    assert parse_xfcc("Hash=" + hashlib.sha256(ORDERS).hexdigest()) == x5t(ORDERS)
    assert parse_xfcc(xfcc(THIEF) + "," + xfcc(ORDERS)) == x5t(ORDERS)  # the nearest proxy's element
    assert parse_xfcc("By=x") == ""
    for bad in ['Hash=zz', 'Cert="unterminated', 'Hash=%s;Hash=%s' % ((hashlib.sha256(ORDERS).hexdigest(),) * 2),
                'Hash=%s;Cert="%s"' % (hashlib.sha256(THIEF).hexdigest(), urllib.parse.quote(pem(ORDERS), safe="")), "a"]:
        with pytest.raises(ForwardedCertError):
            parse_xfcc(bad)
    assert parse_client_cert(":%s:" % base64.b64encode(ORDERS).decode()) == x5t(ORDERS)
    with pytest.raises(ForwardedCertError):
        parse_client_cert(base64.b64encode(ORDERS).decode())


def wsgi_call(app, environ):
    out = {}

    def start_response(status, headers):
        out["status"], out["headers"] = status, headers

    body = b"".join(app(environ, start_response))
    return int(out["status"][:3]), body


def inner_app(environ, start_response):
    start_response("200 OK", [])
    seen = environ.get("HTTP_X_FORWARDED_CLIENT_CERT", "-")
    assert environ["HTTP_AUTHORIZATION"] == "Bearer " + environ["meshauth.token"]
    return [("%s %s" % (environ["meshauth.claims"].subject, seen[:4])).encode()]


@pytest.fixture
def setup():
    iss, clock = Issuer(), Clock()
    proxies = TrustedProxies(networks=["127.0.0.0/8", "::1/128"])
    v, state, _ = make(iss, clock, trusted_proxies=proxies)
    tok = iss.token(cnf={"x5t#S256": x5t(ORDERS)}, exp=int(clock.t) + 10000)
    return iss, clock, v, state, tok


def test_wsgi(setup):
    iss, clock, v, state, tok = setup
    app = WSGIMiddleware(inner_app, v)
    auth = {"HTTP_AUTHORIZATION": "Bearer " + tok}
    # From the trusted proxy, the forwarded certificate.
    assert wsgi_call(app, dict(auth, REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_CLIENT_CERT=xfcc(ORDERS))) == (200, b"orders By=s")
    assert wsgi_call(app, dict(auth, REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_CLIENT_CERT=xfcc(THIEF)))[0] == 401
    assert wsgi_call(app, dict(auth, REMOTE_ADDR="127.0.0.1"))[0] == 401
    assert wsgi_call(app, dict(auth, REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_CLIENT_CERT="Cert=\"x"))[0] == 400
    # From anyone else, the header is ignored and removed; the connection's
    # own certificate counts.
    assert wsgi_call(app, dict(auth, REMOTE_ADDR="10.1.2.3", HTTP_X_FORWARDED_CLIENT_CERT=xfcc(ORDERS)))[0] == 401
    assert wsgi_call(app, dict(auth, REMOTE_ADDR="10.1.2.3", SSL_CLIENT_CERT=pem(ORDERS), HTTP_X_FORWARDED_CLIENT_CERT=xfcc(THIEF))) == (200, b"orders -")
    assert wsgi_call(app, {"REMOTE_ADDR": "127.0.0.1"})[0] == 401
    state["jwks_status"] = 500
    clock.t += 1000
    assert wsgi_call(app, dict(auth, REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_CLIENT_CERT=xfcc(ORDERS)))[0] == 503


def asgi_call(app, headers, client=("127.0.0.1", 5000), tls=None):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "headers": [(k.lower().encode(), v.encode()) for k, v in headers], "client": client}
    if tls:
        scope["extensions"] = {"tls": {"client_cert_chain": [tls]}}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def inner_asgi(scope, receive, send):
    fwd = [v for k, v in scope["headers"] if k == b"client-cert"]
    assert (b"authorization", b"Bearer " + scope["meshauth.token"].encode()) in scope["headers"]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": ("%s %d" % (scope["meshauth.claims"].subject, len(fwd))).encode()})


def test_asgi(setup):
    iss, clock, v, state, tok = setup
    v.trusted_proxies = TrustedProxies(networks=["127.0.0.1/32"], header=HEADER_CLIENT_CERT)
    app = ASGIMiddleware(inner_asgi, v)
    cc = ":%s:" % base64.b64encode(ORDERS).decode()
    auth = ("Authorization", "Bearer " + tok)
    assert asgi_call(app, [auth, ("Client-Cert", cc)]) == (200, b"orders 1")
    assert asgi_call(app, [auth, ("Client-Cert", cc), ("Client-Cert", cc)])[0] == 400
    assert asgi_call(app, [auth, ("Client-Cert", cc)], client=("10.0.0.9", 1))[0] == 401
    assert asgi_call(app, [auth, ("Client-Cert", cc)], client=("10.0.0.9", 1), tls=pem(ORDERS)) == (200, b"orders 0")
    assert asgi_call(app, [("Authorization", "Basic x")])[0] == 401

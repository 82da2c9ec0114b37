"""WSGI and ASGI middleware: a valid meshauth bearer token on every request,
bound to the request's client certificate when the token says so.

The client certificate is the TLS connection's where the server hands it to
the application (WSGI: environ "SSL_CLIENT_CERT" as PEM, as mod_wsgi and
gunicorn with a TLS config give it, or "meshauth.peer_cert_der"; ASGI: the
"tls" extension's client_cert_chain). Behind a sidecar that terminates mutual
TLS, it is read from the forwarded-certificate header the verifier's
TrustedProxies names, and ONLY when the direct peer is one of them; from
anyone else, both forwarded-certificate headers are removed before the
application sees the request.

Answers: 401 (with an RFC 6750 WWW-Authenticate) for a missing or bad token,
saying nothing about why; 503 while the key set or the revocation feed is
past its staleness (the verifier fails closed, not the caller's fault); 400
for a forwarded-certificate header from a trusted proxy that does not read
as one certificate. The verified Claims are in environ["meshauth.claims"]
(WSGI) or scope["meshauth.claims"] (ASGI), and the verified token itself in
"meshauth.token", for TokenSource.exchange (calling onward on the caller's
behalf); never forward it to another service.
"""

import asyncio
import ssl

from .forwarded import HEADER_CLIENT_CERT, HEADER_XFCC, ForwardedCertError
from .token import thumbprint_of_der
from .verifier import VerifyError

_WSGI_FORWARDED = ("HTTP_X_FORWARDED_CLIENT_CERT", "HTTP_CLIENT_CERT")
_ASGI_FORWARDED = (HEADER_XFCC.lower().encode(), HEADER_CLIENT_CERT.lower().encode())


def _pem_to_der(pem):
    try:
        return ssl.PEM_cert_to_DER_cert(pem.strip() + "\n")
    except ValueError:
        return None


def authenticate(verifier, authorization, peer_der, peer_addr, forwarded_values):
    """The shared core of both middlewares: returns (status, claims); status
    200 with the claims, or 400/401/503. forwarded_values(name) returns the
    lines of a header; it is read only for a trusted proxy."""
    if not authorization or not authorization.startswith("Bearer ") or authorization == "Bearer ":
        return 401, None
    token = authorization[len("Bearer "):]
    proxies = verifier.trusted_proxies
    trusted = proxies is not None and proxies.trusts(peer_der, peer_addr)
    try:
        if trusted:
            thumb = proxies.peer_thumbprint(True, peer_der, forwarded_values(proxies.header))
        else:
            thumb = thumbprint_of_der(peer_der) if peer_der else ""
    except ForwardedCertError:
        return 400, None
    try:
        claims = verifier.verify(token, thumbprint=thumb)
    except VerifyError as e:
        return (503 if e.status == 503 else 401), None
    return 200, claims


_BODIES = {400: b"unreadable forwarded client certificate\n", 401: b"invalid token\n",
           503: b"token verification unavailable\n"}
_STATUS = {400: "400 Bad Request", 401: "401 Unauthorized", 503: "503 Service Unavailable"}


def _challenge(status, authorization):
    if status != 401:
        return []
    if authorization and authorization.startswith("Bearer ") and authorization != "Bearer ":
        return [("WWW-Authenticate", 'Bearer realm="meshauth", error="invalid_token"')]
    return [("WWW-Authenticate", 'Bearer realm="meshauth"')]


class WSGIMiddleware:
    """Wraps a WSGI application."""

    def __init__(self, app, verifier):
        self.app, self.verifier = app, verifier

    def __call__(self, environ, start_response):
        peer_der = environ.get("meshauth.peer_cert_der")
        if peer_der is None and environ.get("SSL_CLIENT_CERT"):
            peer_der = _pem_to_der(environ["SSL_CLIENT_CERT"])
        addr = environ.get("REMOTE_ADDR")
        proxies = self.verifier.trusted_proxies
        trusted = proxies is not None and proxies.trusts(peer_der, addr)
        if not trusted:
            # Whatever an untrusted peer claims about certificates, nothing
            # after this middleware may read it as a proxy's word.
            for k in _WSGI_FORWARDED:
                environ.pop(k, None)

        def lines(name):
            # WSGI joins repeated header lines with ", ": a second line
            # reads as a second XFCC element, and only the last (the
            # nearest proxy's) is used.
            v = environ.get("HTTP_" + name.upper().replace("-", "_"))
            return [v] if v is not None else []

        authorization = environ.get("HTTP_AUTHORIZATION", "")
        status, claims = authenticate(self.verifier, authorization, peer_der, addr, lines)
        if status != 200:
            body = _BODIES[status]
            start_response(_STATUS[status], [("Content-Type", "text/plain; charset=utf-8"),
                                             ("Content-Length", str(len(body)))] + _challenge(status, authorization))
            return [body]
        environ["meshauth.claims"] = claims
        environ["meshauth.token"] = authorization[len("Bearer "):]
        return self.app(environ, start_response)


class ASGIMiddleware:
    """Wraps an ASGI application (HTTP; other scope types pass through)."""

    def __init__(self, app, verifier):
        self.app, self.verifier = app, verifier

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        headers = list(scope.get("headers") or [])
        peer_der = None
        tls = (scope.get("extensions") or {}).get("tls") or {}
        chain = tls.get("client_cert_chain") or []
        if chain:
            peer_der = _pem_to_der(chain[0])
        client = scope.get("client")
        addr = client[0] if client else None
        proxies = self.verifier.trusted_proxies
        trusted = proxies is not None and proxies.trusts(peer_der, addr)
        if not trusted:
            headers = [(k, v) for k, v in headers if k.lower() not in _ASGI_FORWARDED]
        authorization = ""
        for k, v in headers:
            if k.lower() == b"authorization":
                authorization = v.decode("latin-1")
                break

        def lines(name):
            want = name.lower().encode()
            return [v.decode("latin-1") for k, v in headers if k.lower() == want]

        # Verification may wait for a key fetch: keep it off the event loop.
        status, claims = await asyncio.get_running_loop().run_in_executor(
            None, authenticate, self.verifier, authorization, peer_der, addr, lines)
        if status != 200:
            body = _BODIES[status]
            hdrs = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
            hdrs += [(k.lower().encode(), v.encode()) for k, v in _challenge(status, authorization)]
            await send({"type": "http.response.start", "status": status, "headers": hdrs})
            await send({"type": "http.response.body", "body": body})
            return
        scope = dict(scope, headers=headers)
        scope["meshauth.claims"] = claims
        scope["meshauth.token"] = authorization[len("Bearer "):]
        return await self.app(scope, receive, send)

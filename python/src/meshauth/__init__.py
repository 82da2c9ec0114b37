"""meshauth for Python services: log in (TokenSource), verify offline
(Verifier) with certificate binding and the revocation feed, and WSGI/ASGI
middleware; the same rules and reasons as the Go package meshtoken."""

from .forwarded import HEADER_CLIENT_CERT, HEADER_XFCC, ForwardedCertError, TrustedProxies
from .middleware import ASGIMiddleware, WSGIMiddleware
from .token import Claims, TokenError
from .tokensource import (AppRoleAuth, KubernetesAuth, LoginError, LoginLocked, LoginRefused, MeshauthAuth, StaticToken,
                          TokenSource, VaultPermissionDenied)
from .verifier import RevocationConfig, Verifier, VerifyError

__all__ = [
    "ASGIMiddleware", "AppRoleAuth", "Claims", "ForwardedCertError", "HEADER_CLIENT_CERT", "HEADER_XFCC",
    "KubernetesAuth", "LoginError", "LoginLocked", "LoginRefused", "MeshauthAuth", "RevocationConfig", "StaticToken", "TokenError",
    "TokenSource", "TrustedProxies", "VaultPermissionDenied", "Verifier", "VerifyError", "WSGIMiddleware",
]

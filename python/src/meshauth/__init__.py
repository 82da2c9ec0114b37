"""meshauth for Python services: log in (TokenSource), verify offline
(Verifier) with certificate binding and the revocation feed, and WSGI/ASGI
middleware, and unwrap_api_key for response-wrapped API keys; the same rules
and reasons as the Go packages meshtoken and client."""

from .forwarded import HEADER_CLIENT_CERT, HEADER_XFCC, ForwardedCertError, TrustedProxies
from .middleware import ASGIMiddleware, WSGIMiddleware
from .token import Claims, TokenError
from .tokensource import (AppRoleAuth, KubernetesAuth, LoginError, LoginLocked, LoginRefused, MeshauthAuth, StaticToken,
                          TokenSource, VaultPermissionDenied)
from .unwrap import APIKey, UnwrapError, WrappingTokenUsed, WrongCreationPath, unwrap_api_key
from .verifier import RevocationConfig, Verifier, VerifyError

__all__ = [
    "APIKey", "ASGIMiddleware", "AppRoleAuth", "Claims", "ForwardedCertError", "HEADER_CLIENT_CERT", "HEADER_XFCC",
    "KubernetesAuth", "LoginError", "LoginLocked", "LoginRefused", "MeshauthAuth", "RevocationConfig", "StaticToken", "TokenError",
    "TokenSource", "TrustedProxies", "UnwrapError", "VaultPermissionDenied", "Verifier", "VerifyError",
    "WSGIMiddleware", "WrappingTokenUsed", "WrongCreationPath", "unwrap_api_key",
]

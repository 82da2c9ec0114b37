"""unwrap_api_key: read an API key Vault delivered response-wrapped
(config api_key_wrap_ttl, or a request made with -wrap-ttl); the Python
counterpart of client.UnwrapAPIKey (client/unwrap.go).

Following Vault's practice for AppRole secret IDs it looks the wrapping token
up first (sys/wrapping/lookup, which does not use it up), checks that it was
created by this service's registration or key rotation, and only then unwraps.
The wrapping token is the only credential sent; it and the API key never
appear in a message or a log line.
"""

import requests

__all__ = ["APIKey", "UnwrapError", "WrappingTokenUsed", "WrongCreationPath", "unwrap_api_key"]

# Bounds what is read of Vault's answers (an API key answer is small).
_MAX_ANSWER_BYTES = 1 << 20


class UnwrapError(Exception):
    """unwrap_api_key failed. .status is Vault's HTTP status (None without one)."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class WrappingTokenUsed(UnwrapError):
    """Vault does not know the wrapping token: it was already unwrapped, it
    expired, or it never existed. A wrapping token is single-use, so if nobody
    on your side unwrapped it, someone else may hold the API key."""


class WrongCreationPath(UnwrapError):
    """The wrapping token was created by a request other than the registration
    or key rotation of the expected service; it was left unwrapped."""


USED_MESSAGE = ("meshauth unwrap: the wrapping token is not valid (already unwrapped, expired, or never issued); "
                "if you did not unwrap it, treat the API key as intercepted: rotate it with grace_period=0 "
                "(vault write %s/services/%s/rotate-key grace_period=0) and look for its unwrap in the audit log "
                "(sys/wrapping/unwrap with the token's accessor)")


class APIKey:
    """A service's API key as registration or rotate-key answered it:
    service, key (the secret), key_id, and creation_path (where Vault says the
    wrapped answer came from). repr() does not show the key."""

    __slots__ = ("service", "key", "key_id", "creation_path")

    def __init__(self, service, key, key_id, creation_path):
        self.service, self.key, self.key_id, self.creation_path = service, key, key_id, creation_path

    def __repr__(self):
        return "APIKey(service=%r, key_id=%r, creation_path=%r)" % (self.service, self.key_id, self.creation_path)


def unwrap_api_key(vault_addr, wrapping_token, mount, service, ca_file=None, cert=None, timeout=30.0, session=None):
    """Returns the APIKey wrapped by wrapping_token, after checking that the
    token's creation_path is exactly <mount>/services/<service> or that plus
    /rotate-key. mount is the engine's mount path ("meshauth", or what -path
    named); ca_file is Vault's CA, cert=(certfile, keyfile) a client
    certificate for Vault's TLS listener if it asks for one. Raises
    WrongCreationPath (token left unwrapped), WrappingTokenUsed, or
    UnwrapError."""
    mount = (mount or "").strip("/")
    wrapping_token = (wrapping_token or "").strip()
    if not vault_addr or not mount or not service:
        raise ValueError("meshauth unwrap: unwrap_api_key needs Vault's address, the mount path and the service name")
    if not wrapping_token:
        raise ValueError("meshauth unwrap: no wrapping token given")
    base = vault_addr.rstrip("/") + "/v1/"
    http = session or requests.Session()
    # TLS settings on each request: a session's verify loses to
    # REQUESTS_CA_BUNDLE in the environment, a per-request one does not.
    # No redirects: the wrapping token must not follow one elsewhere.
    tls = {"verify": ca_file if ca_file else True, "cert": cert, "timeout": timeout, "allow_redirects": False}

    def scrub(text):
        return text.replace(wrapping_token, "<wrapping token>")

    # The lookup carries the wrapping token in its body and no client token
    # (no X-Vault-Token): a request made with the wrapping token as its client
    # token could count as its one use.
    try:
        resp = http.post(base + "sys/wrapping/lookup", json={"token": wrapping_token}, **tls)
    except (requests.RequestException, OSError) as e:
        raise UnwrapError(scrub("meshauth unwrap: looking up the wrapping token: %s: %s" % (type(e).__name__, e)))
    if resp.status_code == 400:
        raise WrappingTokenUsed(USED_MESSAGE % (mount, service), 400)
    info = _answer(resp, "looking up the wrapping token (sys/wrapping/lookup)", scrub)
    path = info.get("creation_path")
    want = mount + "/services/" + service
    if not isinstance(path, str) or path not in (want, want + "/rotate-key"):
        raise WrongCreationPath("meshauth unwrap: the wrapping token was not created by this service's registration "
                                "or rotate-key: it was created at %r, expected %r or %r; it was left unwrapped"
                                % (path, want, want + "/rotate-key"), resp.status_code)

    try:
        resp = http.put(base + "sys/wrapping/unwrap", headers={"X-Vault-Token": wrapping_token}, **tls)
    except (requests.RequestException, OSError) as e:
        raise UnwrapError(scrub("meshauth unwrap: unwrapping: %s: %s" % (type(e).__name__, e)))
    if resp.status_code in (400, 403):
        # Looked up a moment ago, gone now: someone unwrapped it in between
        # (as the client token, an unknown token is refused with 403).
        raise WrappingTokenUsed(USED_MESSAGE % (mount, service), resp.status_code)
    data = _answer(resp, "unwrapping (sys/wrapping/unwrap)", scrub)
    name, key, key_id = data.get("name"), data.get("api_key"), data.get("api_key_id")
    if not isinstance(key, str) or not key or name != service:
        raise UnwrapError("meshauth unwrap: the wrapped answer is not an API key of service %r" % service)
    return APIKey(service, key, key_id if isinstance(key_id, str) else "", path)


def _answer(resp, what, scrub):
    """The data object of a 200 answer; UnwrapError naming Vault's errors
    otherwise (they carry no secret; the token is scrubbed all the same)."""
    try:
        doc = resp.json() if len(resp.content) <= _MAX_ANSWER_BYTES else None
    except ValueError:
        doc = None
    if resp.status_code != 200:
        errs = doc.get("errors") if isinstance(doc, dict) else None
        detail = "; ".join(str(e).strip() for e in errs) if isinstance(errs, list) and errs else "no detail"
        raise UnwrapError(scrub("meshauth unwrap: %s: HTTP %d: %s" % (what, resp.status_code, detail)),
                          resp.status_code)
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, dict):
        raise UnwrapError("meshauth unwrap: %s: Vault answered no data" % what, resp.status_code)
    return data

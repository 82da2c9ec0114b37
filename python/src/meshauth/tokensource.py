"""TokenSource: a service's login to meshauth (client/tokensource.go).

It logs in with the service's client certificate (on the TLS connection to
Vault) and API key, by POST, or by GET with the key in X-Meshauth-Api-Key when
use_get=True (config allow_get_login on the mount); its Vault token comes from
AppRole, Kubernetes auth, or a static token. It refreshes at about two thirds
of a token's life, waits out a lockout until the time the engine names, backs
off after refusals, and never logs a secret (tokens, API keys, Vault tokens,
secret IDs): log lines name the service and the kind of failure only.

What it keeps, and what ends each: the current token (replaced by each
successful login, never served past its expiry: login start + expires_in by
the local clock); the failure state (cleared by the next success; it holds
logins back at most max_backoff, or until the lockout's end, at most 24h);
the Vault token of its auth method (dropped when Vault answers it is invalid,
or when its TTL has passed; the next login logs in to Vault again).
"""

import datetime
import hashlib
import logging
import random
import threading
import time
import urllib.parse

import requests

API_KEY_HEADER = "X-Meshauth-Api-Key"
LOCKOUT_PHRASE = "try again after "
# Starts the engine's text of a refused login (path_login.go); Vault wraps it
# in its own words, so it is looked for inside the message.
LOGIN_REFUSED_PREFIX = "meshauth: login refused"
MAX_TOKEN_LIFE = 7 * 24 * 3600.0
MAX_LOCKOUT_WAIT = 24 * 3600.0
GRANT_TYPE_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
MAX_EXCHANGED = 4096

log = logging.getLogger("meshauth")


class LoginError(Exception):
    """A failed login. .status is Vault's HTTP status (None when there was no
    answer); .locked_until is the lockout's end (Unix seconds) when the engine
    answered a lockout; .retry_at is when the source tries again.

    The refusals that need different action have their own subclasses:
    LoginRefused (meshauth refused the credentials), VaultPermissionDenied
    (Vault refused before meshauth saw the request) and LoginLocked."""

    def __init__(self, message, status=None, locked_until=None):
        super().__init__(message)
        self.status = status
        self.locked_until = locked_until
        self.retry_at = None


class LoginRefused(LoginError):
    """meshauth refused the login (403, "meshauth: login refused"): the API
    key, the client certificate presented to Vault, or the service's state
    (unknown, disabled, its key rotated away) did not pass. The answer does
    not say which; Vault's server log has the reason at level info (message
    "login refused"). Retrying cannot help until someone fixes the cause, and
    every attempt counts toward the engine's lockout, so the source waits
    max_backoff before asking again."""


class VaultPermissionDenied(LoginError):
    """Vault refused the request before meshauth saw it (a 403 that is not the
    engine's): the Vault token's policies do not grant update on
    <mount>/login/<service> (read too, for use_get), or the token is invalid
    or expired (.invalid_token; the source then logs in to Vault again)."""

    def __init__(self, message, status=None, invalid_token=False):
        super().__init__(message, status)
        self.invalid_token = invalid_token


class LoginLocked(LoginError):
    """The engine locked this caller out after too many refused logins; no
    login is tried before .locked_until (Unix seconds; at most 24h is waited)."""


def _errors(resp):
    try:
        return [str(e) for e in resp.json().get("errors") or []]
    except (ValueError, AttributeError):
        return []


def _locked_until(resp):
    if resp.status_code != 403:
        return None
    for msg in _errors(resp):
        if LOCKOUT_PHRASE in msg:
            when = msg.split(LOCKOUT_PHRASE, 1)[1].strip()
            try:
                return datetime.datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def _login_failure(resp, service, mount):
    """The LoginError for a meshauth login answered with an error, told apart
    as client/tokensource.go does: a lockout, the engine's refusal (its text
    is inside Vault's wrapping, "1 error occurred:\n\t* meshauth: ..."), or
    a 403 of Vault's own."""
    errs = _errors(resp)
    # The engine's and Vault's messages carry no secret; they are safe to show.
    msg = "; ".join(e.strip() for e in errs) or ("HTTP %d" % resp.status_code)
    prefix = "meshauth login as %r: " % service
    if resp.status_code != 403:
        return LoginError(prefix + msg, resp.status_code)
    until = _locked_until(resp)
    if until is not None:
        return LoginLocked(prefix + msg, 403, until)
    if any(LOGIN_REFUSED_PREFIX in e for e in errs):
        return LoginRefused(prefix + msg, 403)
    if any("invalid token" in e for e in errs):
        return VaultPermissionDenied(prefix + msg + " (Vault does not accept the Vault token: it is invalid or "
                                     "expired; the next attempt logs in to Vault again)", 403, invalid_token=True)
    return VaultPermissionDenied(prefix + msg + " (Vault's ACL refused the request before meshauth saw it: the "
                                 "Vault token's policies must grant update on %s/login/%s, and read for use_get)"
                                 % (mount, service), 403)


class StaticToken:
    """A Vault token given as is (development)."""

    def __init__(self, token):
        self._token = token

    def login(self, source):
        if not self._token:
            raise LoginError("static Vault token is empty")
        return self._token, 0.0


class AppRoleAuth:
    """Vault AppRole login (role_id and secret_id; mount default "approle")."""

    def __init__(self, role_id, secret_id, mount="approle"):
        self.role_id, self._secret_id, self.mount = role_id, secret_id, mount

    def login(self, source):
        return source._vault_login("auth/%s/login" % self.mount, {"role_id": self.role_id, "secret_id": self._secret_id})


class KubernetesAuth:
    """Vault Kubernetes auth: the pod's service-account token read from
    token_path at each login (it is rotated by the kubelet)."""

    def __init__(self, role, token_path="/var/run/secrets/kubernetes.io/serviceaccount/token", mount="kubernetes"):
        self.role, self.token_path, self.mount = role, token_path, mount

    def login(self, source):
        with open(self.token_path) as f:
            jwt = f.read().strip()
        return source._vault_login("auth/%s/login" % self.mount, {"role": self.role, "jwt": jwt})


class TokenSource:
    """Logs a service in and keeps a fresh token; safe for threads: one
    login runs at a time however many threads ask.

    vault_addr: Vault's address; cert=(certfile, keyfile): the client
    certificate presented to Vault; ca_file: Vault's CA; auth: StaticToken,
    AppRoleAuth or KubernetesAuth."""

    def __init__(self, vault_addr, service, api_key, auth, mount="meshauth", cert=None, ca_file=None,
                 audience=(), ttl=0, use_get=False, min_backoff=0.5, max_backoff=30.0, timeout=30.0,
                 session=None, clock=time.time):
        if not (vault_addr and service and api_key and auth):
            raise ValueError("meshauth TokenSource: vault_addr, service, api_key and auth are required")
        self.vault_addr = vault_addr.rstrip("/")
        self.service, self._api_key, self.auth, self.mount = service, api_key, auth, mount
        self.audience = [audience] if isinstance(audience, str) else list(audience)
        self.ttl, self.use_get = ttl, use_get
        self.min_backoff = min_backoff if min_backoff > 0 else 0.5
        self.max_backoff = max(max_backoff if max_backoff > 0 else 30.0, self.min_backoff)
        self.timeout = timeout
        self.clock = clock
        self._session = session or requests.Session()
        # Passed on every request: a session's verify loses to
        # REQUESTS_CA_BUNDLE in the environment, a per-request one does not.
        self._tls = {"cert": cert, "verify": ca_file if ca_file else True}
        self._lock = threading.Lock()
        self._login_lock = threading.Lock()
        self._token = None  # (value, expires_at, refresh_at)
        self._vault_token = None  # (token, usable_until or 0 for no TTL)
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = None
        self._stop = threading.Event()
        self._thread = None
        self.logins = 0
        self._exchanged = {}  # (sha256 of subject token, audience) -> (value, refresh_at)
        self._exchange_lock = threading.Lock()

    # --- Vault ------------------------------------------------------------

    def _vault_login(self, path, data):
        resp = self._session.post("%s/v1/%s" % (self.vault_addr, path), json=data, timeout=self.timeout, **self._tls)
        if resp.status_code != 200:
            raise LoginError("logging in to Vault (%s): HTTP %d" % (path.split("/")[1], resp.status_code), resp.status_code)
        auth = resp.json().get("auth") or {}
        tok = auth.get("client_token")
        if not tok:
            raise LoginError("logging in to Vault: answer lacks auth.client_token")
        return tok, float(auth.get("lease_duration") or 0)

    def _ensure_vault_token(self):
        now = self.clock()
        vt = self._vault_token
        if vt is not None and (vt[1] == 0 or now < vt[1]):
            return vt[0]
        tok, ttl = self.auth.login(self)
        # Renewal is replaced by a new login once 90% of the TTL has passed.
        self._vault_token = (tok, now + ttl * 0.9 if ttl > 0 else 0)
        log.info("meshauth: logged in to Vault", extra={"service": self.service})
        return tok

    # --- meshauth login ---------------------------------------------------

    def _send(self):
        vault_token = self._ensure_vault_token()
        url = "%s/v1/%s/login/%s" % (self.vault_addr, self.mount, urllib.parse.quote(self.service, safe=""))
        headers = {"X-Vault-Token": vault_token}
        params = {}
        if self.audience:
            params["audience"] = self.audience
        if self.ttl:
            params["ttl"] = "%ds" % int(self.ttl)
        if self.use_get:
            headers[API_KEY_HEADER] = self._api_key
            resp = self._session.get(url, params=params, headers=headers, timeout=self.timeout, allow_redirects=False,
                                     **self._tls)
        else:
            body = dict(params, api_key=self._api_key)
            resp = self._session.post(url, json=body, headers=headers, timeout=self.timeout, allow_redirects=False,
                                      **self._tls)
        if resp.status_code == 403 and any("invalid token" in e for e in _errors(resp)):
            self._vault_token = None
        return resp

    def _login(self, start):
        resp = self._send()
        if resp.status_code != 200:
            raise _login_failure(resp, self.service, self.mount)
        data = (resp.json() or {}).get("data") or {}
        value = data.get("token")
        life = data.get("expires_in")
        if not isinstance(value, str) or not value or not isinstance(life, (int, float)):
            raise LoginError("meshauth login as %r: answer lacks token or expires_in" % self.service)
        life = min(float(life), MAX_TOKEN_LIFE)
        if life <= 0:
            raise LoginError("meshauth login as %r: Vault answered an expired token" % self.service)
        refresh = start + life - life / 3 - random.uniform(0, life / 10)
        refresh = max(refresh, self.clock() + self.min_backoff)
        return (value, start + life, refresh)

    def exchange(self, subject_token, audience):
        """Trades subject_token, a token this service received (environ or
        scope "meshauth.token"), for a token to call audience on the caller's
        behalf (RFC 8693, exchange/<service>), bound to this service's
        certificate. Cached per (subject_token, audience) until two thirds of
        its lifetime; raises LoginError when the engine refuses."""
        if not subject_token or not audience:
            raise ValueError("meshauth exchange: subject_token and audience are required")
        key = (hashlib.sha256(subject_token.encode()).digest(), audience)
        with self._exchange_lock:
            hit = self._exchanged.get(key)
            if hit is not None and self.clock() < hit[1]:
                return hit[0]
        start = self.clock()
        vault_token = self._ensure_vault_token()
        url = "%s/v1/%s/exchange/%s" % (self.vault_addr, self.mount, urllib.parse.quote(self.service, safe=""))
        body = {"api_key": self._api_key, "subject_token": subject_token, "audience": audience,
                "grant_type": GRANT_TYPE_TOKEN_EXCHANGE, "subject_token_type": TOKEN_TYPE_JWT}
        resp = self._session.post(url, json=body, headers={"X-Vault-Token": vault_token}, timeout=self.timeout,
                                  allow_redirects=False, **self._tls)
        if resp.status_code != 200:
            if resp.status_code == 403 and any("invalid token" in e for e in _errors(resp)):
                self._vault_token = None
            msg = "; ".join(_errors(resp)) or ("HTTP %d" % resp.status_code)
            raise LoginError("meshauth exchange as %r toward %r: %s" % (self.service, audience, msg),
                             resp.status_code, _locked_until(resp))
        data = (resp.json() or {}).get("data") or {}
        value, life = data.get("token"), data.get("expires_in")
        if not isinstance(value, str) or not value or not isinstance(life, (int, float)) or life <= 0:
            raise LoginError("meshauth exchange as %r: answer lacks a token or a lifetime" % self.service)
        life = min(float(life), MAX_TOKEN_LIFE)
        with self._exchange_lock:
            if len(self._exchanged) >= MAX_EXCHANGED:
                now = self.clock()
                self._exchanged = {k: v for k, v in self._exchanged.items() if now < v[1]}
                if len(self._exchanged) >= MAX_EXCHANGED:
                    self._exchanged = {}
            self._exchanged[key] = (value, start + life - life / 3)
        return value

    def _backoff(self, n):
        d = self.min_backoff
        for _ in range(1, n):
            if d >= self.max_backoff:
                break
            d *= 2
        d = min(d, self.max_backoff)
        return d - random.uniform(0, d / 5)

    def _run_login(self):
        start = self.clock()
        try:
            t = self._login(start)
        except (LoginError, requests.RequestException, ValueError, OSError) as e:
            # requests' and OpenSSL's messages name the URL and the TLS
            # failure, never a header or body: safe, and needed to act.
            err = e if isinstance(e, LoginError) else LoginError("meshauth login as %r: %s: %s" % (self.service, type(e).__name__, e))
            with self._lock:
                self._failures += 1
                now = self.clock()
                retry = now + self._backoff(self._failures)
                if isinstance(err, LoginRefused):
                    # Not in a tight loop: the credentials will not mend
                    # themselves, and each attempt counts toward lockout.
                    retry = max(retry, now + self._backoff(64))  # max_backoff, less jitter
                if err.locked_until is not None:
                    retry = max(retry, min(err.locked_until, now + MAX_LOCKOUT_WAIT))
                self._retry_at = retry
                err.retry_at = retry
                self._last_error = err
            log.warning("meshauth: login failed (%s); next attempt in %.1fs", str(err), retry - now,
                        extra={"service": self.service})
            raise err
        with self._lock:
            if self._failures:
                log.info("meshauth: login recovered after %d failures", self._failures, extra={"service": self.service})
            self._token, self._failures, self._retry_at, self._last_error = t, 0, 0.0, None
            self.logins += 1
        return t

    def token(self):
        """A valid token: the current one, or a new login when there is none
        (or it expired). During a backoff or lockout it raises the last
        failure at once, without asking Vault."""
        t = self._token
        if t is not None and self.clock() < t[1]:
            return t[0]
        with self._login_lock:
            t = self._token
            if t is not None and self.clock() < t[1]:
                return t[0]
            if self.clock() < self._retry_at and self._last_error is not None:
                raise self._last_error
            return self._run_login()[0]

    def fresh_token(self):
        """Logs in and returns a new token without keeping it (for audiences
        that accept each jti once). Like token(), it does not ask Vault
        during a backoff or lockout; its failures count toward them."""
        with self._login_lock:
            if self.clock() < self._retry_at and self._last_error is not None:
                raise self._last_error
            keep = self._token
            t = self._run_login()
            self._token = keep if keep is not None and self.clock() < keep[1] else t
            return t[0]

    def start(self):
        """Refreshes in a background thread until stop()."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="meshauth-refresh", daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stop.is_set():
            t = self._token
            wait = (t[2] - self.clock()) if t is not None else 0.0
            wait = max(wait, self._retry_at - self.clock())
            if wait > 0 and self._stop.wait(wait):
                return
            with self._login_lock:
                if self.clock() < self._retry_at:
                    continue
                try:
                    self._run_login()
                except LoginError:
                    pass

    def stop(self):
        self._stop.set()


class MeshauthAuth(requests.auth.AuthBase):
    """requests auth: sends the source's token as a Bearer token, and drops
    it when a redirect leads to another origin (scheme, host, port), so a
    redirect cannot carry the token to someone else."""

    def __init__(self, source):
        self.source = source

    def __call__(self, r):
        r.headers["Authorization"] = "Bearer " + self.source.token()
        origin = _origin(r.url)
        r.register_hook("response", lambda resp, **kw: _drop_cross_origin(resp, origin))
        return r


def _origin(url):
    u = urllib.parse.urlsplit(url)
    port = u.port or {"https": 443, "http": 80}.get(u.scheme)
    return (u.scheme, (u.hostname or "").lower(), port)


def _drop_cross_origin(resp, origin):
    # requests' own rebuild_auth drops Authorization only when the host
    # changes; a scheme or port change (http://same-host:8080) keeps it. We
    # decide on the whole origin, before requests follows the redirect.
    if resp.is_redirect:
        target = urllib.parse.urljoin(resp.url, resp.headers.get("Location", ""))
        if _origin(target) != origin:
            resp.request.headers.pop("Authorization", None)
    return resp

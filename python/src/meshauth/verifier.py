"""Verifier: offline verification of meshauth tokens, as meshtoken.Verifier.

Its caches, and what ends each entry:
  - the key set (JWKS): replaced whole by every successful fetch, so a key
    that left the JWKS is gone at the next fetch (never kept forever, unlike
    PyJWT's PyJWKClient with cache_keys=True). It is fresh for the answer's
    max-age (at most an hour, 5 minutes without one) and, while fetches fail,
    usable MaxStaleness more; past that, verification fails closed
    (keys_stale, HTTP 503). Fetches run one at a time and at most one per
    min_refetch_interval whatever triggers them (max-age passed, unknown kid,
    failure), so random kids or max-age=0 cannot turn verifiers into a flood.
  - the revocation feed: replaced by a newer signed feed (by its iat; an
    older one is refused, so nobody on the path can roll it back), confirmed
    by ETag (304: the same bytes, so the same iat). A feed without iat is
    refused, as meshtoken.ParseFeed refuses it. Past its max_staleness
    (counted from its iat, the time it describes) verification fails closed
    (revocations_stale, 503).
  - verified tokens, keyed by the whole token text (one spelling per token:
    parsing refuses non-canonical base64url): an entry answers only while the
    key set it was verified with, or a later one holding the same key under
    the same kid, is current; it is dropped at exp. Time, audience, binding
    and revocation are checked on every request. An entry stored by a
    verification that read an older key set after a newer one was published
    never answers (it names the old set).
"""

import hmac
import threading
import time
import urllib.parse

from . import _json, token as _tok
from .jwk import parse_jwks
from .token import TokenError, UnknownKey

DEFAULT_MIN_REFETCH = 30.0
DEFAULT_MAX_STALENESS = 3600.0
DEFAULT_REVOCATION_MAX_STALENESS = 300.0
DEFAULT_MAX_CACHED_TOKENS = 10000
MAX_CACHE_AGE = 3600.0
FALLBACK_CACHE_AGE = 300.0
HTTP_TIMEOUT = 10.0
MAX_JWKS_BYTES = 1 << 20
MAX_DISCOVERY_BYTES = 64 << 10
MAX_REVOCATIONS_BYTES = _tok.MAX_FEED_LENGTH
REVOCATIONS_TYPE = _tok.REVOCATIONS_TYPE

# Reasons beyond meshtoken's Parse reasons: the binding and revocation
# reasons are meshtoken's (ReasonUnbound, ReasonCertMissing,
# ReasonCertMismatch, ReasonRevoked); keys_stale and revocations_stale name
# the Verifier's errors that carry no reason in Go (ErrKeysStale,
# ErrRevocationsStale).
UNBOUND = "unbound_token"
CERTIFICATE_MISSING = "certificate_missing"
CERTIFICATE_MISMATCH = "certificate_mismatch"
REVOKED = "revoked"
DELEGATION_NOT_ALLOWED = "delegation_not_allowed"
KEYS_STALE = "keys_stale"
REVOCATIONS_STALE = "revocations_stale"


class VerifyError(TokenError):
    """A token this verifier does not accept. .reason says why; .status is
    the HTTP status a service answers: 401, or 503 when the verifier itself
    cannot decide (stale keys or feed: Vault unreachable)."""

    def __init__(self, reason, detail="", status=401):
        super().__init__(reason, detail)
        self.status = status


class _Stale(Exception):
    """The key set is past max_staleness."""


def max_age(cache_control):
    """max-age from Cache-Control, at most an hour; 5 minutes without one."""
    for part in (cache_control or "").split(","):
        part = part.strip()
        if part.startswith("max-age="):
            v = part[len("max-age="):]
            if v.isdigit():
                return min(float(int(v)), MAX_CACHE_AGE)
    return FALLBACK_CACHE_AGE


class _KeySet:
    __slots__ = ("keys", "fresh_until", "usable_until")

    def __init__(self, keys, fresh_until, usable_until):
        self.keys, self.fresh_until, self.usable_until = keys, fresh_until, usable_until


class _BackgroundFetch:
    """One fetch at a time, at most one per interval, in a background thread:
    no verification waits on Vault for something it already holds."""

    def __init__(self):
        self._lock = threading.Lock()
        self._running = None
        self.last_attempt = None
        self.last_error = None

    def attempted(self, at):
        with self._lock:
            self.last_attempt = at

    def start(self, now, interval, fn):
        with self._lock:
            if self._running is not None:
                return self._running
            if self.last_attempt is not None and now - self.last_attempt < interval:
                return None
            self.last_attempt = now
            done = threading.Event()
            self._running = done

        def run():
            err = None
            try:
                fn(now)
            except Exception as e:  # kept for the stale error; the fetch ends here
                err = e
            with self._lock:
                self._running, self.last_error = None, err
            done.set()

        threading.Thread(target=run, name="meshauth-fetch", daemon=True).start()
        return done


class _HTTP:
    """GETs with a size bound and a timeout, through requests."""

    def __init__(self, session=None, ca_file=None, timeout=HTTP_TIMEOUT):
        import requests
        self.session = session or requests.Session()
        self.verify = ca_file if ca_file else True
        self.timeout = timeout

    def get(self, url, limit, headers=None):
        resp = self.session.get(url, headers=headers or {}, timeout=self.timeout, verify=self.verify,
                                stream=True)
        try:
            body = resp.raw.read(limit + 1, decode_content=True) if resp.status_code == 200 else b""
        finally:
            resp.close()
        if len(body) > limit:
            raise ValueError("GET %s: more than %d bytes" % (url, limit))
        return resp.status_code, resp.headers, body


class RevocationConfig:
    """Makes a Verifier refuse what the engine's revocation feed lists.
    max_staleness: set it to the engine's revocation_max_staleness (seconds);
    allow_stale keeps verifying with an old feed (availability over prompt
    revocation)."""

    def __init__(self, url="", max_staleness=DEFAULT_REVOCATION_MAX_STALENESS, allow_stale=False):
        self.url = url
        self.max_staleness = max_staleness if max_staleness > 0 else DEFAULT_REVOCATION_MAX_STALENESS
        self.allow_stale = allow_stale


def _same_origin(base, ref, member):
    """ref resolved against base (a relative reference such as /v1/<mount>/jwks
    is usual); an absolute one must stay on base's scheme and host."""
    resolved = urllib.parse.urljoin(base, ref)
    b, r = urllib.parse.urlsplit(base), urllib.parse.urlsplit(resolved)
    if (b.scheme, b.netloc) != (r.scheme, r.netloc):
        raise ValueError("meshauth verify: %s %s is not on %s" % (member, resolved, b.netloc))
    return resolved


class _Feed:
    """One accepted copy of the feed: what it lists (a token.Feed), its ETag,
    and when to fetch again. Immutable once published."""

    __slots__ = ("feed", "etag", "fresh_until")

    def __init__(self, feed, etag, fresh_until):
        self.feed, self.etag, self.fresh_until = feed, etag, fresh_until


class Verifier:
    """Checks meshauth tokens offline. Safe for concurrent use by threads.

    discovery_url or jwks_url says where the keys are; issuer defaults to the
    discovery document's; audience is required unless allow_any_audience.
    The revocation feed is checked by default (revocations=None means a
    default RevocationConfig; its URL is discovery's revocation_endpoint, else
    the JWKS URL's sibling "revocations"); skip_revocations=True turns it off,
    as meshtoken's SkipRevocations: revoked tokens, revoked or disabled
    services and removed keys are then accepted until the tokens expire or
    their key leaves the JWKS. Times are seconds. http: an object with get(url, limit, headers) ->
    (status, headers, body), for tests; by default requests with ca_file.
    """

    def __init__(self, discovery_url="", jwks_url="", issuer="", audience="", allow_any_audience=False,
                 require_binding=False, leeway=_tok.DEFAULT_LEEWAY, min_refetch_interval=DEFAULT_MIN_REFETCH,
                 max_staleness=DEFAULT_MAX_STALENESS, revocations=None, skip_revocations=False,
                 max_cached_tokens=DEFAULT_MAX_CACHED_TOKENS,
                 trusted_proxies=None, ca_file=None, session=None, http=None, clock=time.time,
                 max_delegation_depth=0, allowed_actors=None):
        if not audience and not allow_any_audience:
            raise ValueError("meshauth verify: set audience to the name callers use for this service (a token "
                             "minted for another service must not be accepted here), or allow_any_audience=True")
        if audience and allow_any_audience:
            raise ValueError("meshauth verify: audience and allow_any_audience contradict each other: set one")
        if skip_revocations and revocations is not None:
            raise ValueError("meshauth verify: revocations and skip_revocations contradict each other: set one")
        if not skip_revocations and revocations is None:
            revocations = RevocationConfig()
        self.issuer = issuer
        self.audience = "" if allow_any_audience else audience
        self.require_binding = require_binding
        self.leeway = leeway
        self.min_refetch_interval = min_refetch_interval if min_refetch_interval > 0 else DEFAULT_MIN_REFETCH
        self.max_staleness = max(max_staleness, 0.0)
        self.trusted_proxies = trusted_proxies
        # As meshtoken's MaxDelegationDepth (0 or negative: no delegated
        # tokens, the receiving service opts in) and AllowedActors (None: any).
        self.max_delegation_depth = max_delegation_depth
        self.allowed_actors = None if allowed_actors is None else frozenset(allowed_actors)
        self.clock = clock
        self._http = http or _HTTP(session=session, ca_file=ca_file)
        self._keys_fetch = _BackgroundFetch()
        self._feed_fetch = _BackgroundFetch()
        self._lock = threading.Lock()
        self._max_cached = max_cached_tokens
        self._verified = {}
        self.jwks_url = jwks_url
        # discovery's revocation_endpoint, resolved; "" when it named none.
        self._revocations_url = ""
        if discovery_url:
            self._discover(discovery_url)
        if not self.jwks_url:
            raise ValueError("meshauth verify: set discovery_url or jwks_url")
        if not self.issuer:
            raise ValueError("meshauth verify: no issuer: set issuer, or use discovery_url")
        first = self.clock()
        self._keys_fetch.attempted(first)
        self._set = None
        self._fetch_keys(first)
        self._revocations = None
        self._feed = None
        if revocations is not None:
            url = revocations.url or self._revocations_url
            if not url:
                u = urllib.parse.urlsplit(self.jwks_url)
                path = u.path[:u.path.rfind("/") + 1] + "revocations"
                url = urllib.parse.urlunsplit((u.scheme, u.netloc, path, "", ""))
            self._revocations = RevocationConfig(url, revocations.max_staleness, revocations.allow_stale)
            self._feed_fetch.attempted(first)
            self._fetch_feed(first)

    # --- keys -----------------------------------------------------------

    def _discover(self, url):
        status, _, body = self._http.get(url, MAX_DISCOVERY_BYTES)
        if status != 200:
            raise ValueError("meshauth verify: discovery: GET %s: %d" % (url, status))
        doc = _json.loads_checked(body)
        jwks_uri = doc.get("jwks_uri")
        if not isinstance(jwks_uri, str) or isinstance(jwks_uri, _json.Number) or not jwks_uri:
            raise ValueError("meshauth verify: discovery document at %s has no jwks_uri" % url)
        # A tampered document must not point the verifier at another host,
        # for the keys nor for its idea of what is revoked.
        self.jwks_url = _same_origin(url, jwks_uri, "jwks_uri")
        endpoint = doc.get("revocation_endpoint")
        # _json keeps numbers as Number, a str: Go's string field refuses them.
        if endpoint is not None and (not isinstance(endpoint, str) or isinstance(endpoint, _json.Number)):
            raise ValueError("meshauth verify: discovery document at %s: revocation_endpoint is not a string" % url)
        if endpoint:
            self._revocations_url = _same_origin(url, endpoint, "revocation_endpoint")
        if not self.issuer and isinstance(doc.get("issuer"), str):
            self.issuer = doc["issuer"]

    def _fetch_keys(self, start):
        status, headers, body = self._http.get(self.jwks_url, MAX_JWKS_BYTES)
        if status != 200:
            raise ValueError("meshauth verify: fetching keys: GET %s: %d" % (self.jwks_url, status))
        keys = parse_jwks(body)
        fresh = start + max_age(headers.get("Cache-Control"))
        new = _KeySet(keys, fresh, fresh + self.max_staleness)
        with self._lock:
            self._set = new
            # Remembered tokens whose key left the set stop answering now.
            now = self.clock()
            for tok, e in list(self._verified.items()):
                k = keys.get(e[0].key_id)
                if k is None or not k.same(e[1]) or now - self.leeway > e[0].expires_at:
                    del self._verified[tok]
                else:
                    e[2] = new

    def _key(self, kid):
        """(Key, set) for kid, as meshtoken's Verifier.key: a fresh set
        answers at once; a set past max-age still answers (within
        max_staleness) while one background fetch refreshes it; an unknown
        kid or an unusable set waits for a fetch, at most one per
        min_refetch_interval."""
        s = self._set
        now = self.clock()
        k = s.keys.get(kid)
        if k is not None and now < s.fresh_until:
            return k, s
        usable = now < s.usable_until
        done = self._keys_fetch.start(now, self.min_refetch_interval, self._fetch_keys)
        if k is not None and usable:
            return k, s
        if done is not None:
            done.wait(HTTP_TIMEOUT + 1)
            s = self._set
            k = s.keys.get(kid)
            usable = self.clock() < s.usable_until
        if not usable:
            raise _Stale(str(self._keys_fetch.last_error or ""))
        if k is None:
            raise UnknownKey("unknown or expired kid")
        return k, s

    # --- verification ---------------------------------------------------

    def verify(self, token, certificate_der=None, thumbprint=None):
        """Verifies a token presented with a client certificate (DER bytes,
        or its x5t#S256 thumbprint; neither when none was presented) and
        returns its Claims; raises VerifyError."""
        if thumbprint is None:
            thumbprint = _tok.thumbprint_of_der(certificate_der) if certificate_der else ""
        claims = self._parse(token)
        # meshtoken's Binding.Check: parse already refused any cnf but one
        # well-spelled x5t#S256 (unsupported_confirmation).
        if not claims.has_cnf:
            if self.require_binding:
                raise VerifyError(UNBOUND, "token is not bound to a client certificate (cnf), and binding is required")
        elif not thumbprint:
            raise VerifyError(CERTIFICATE_MISSING, "token is bound to a client certificate, but none was presented")
        elif not hmac.compare_digest(thumbprint.encode(), claims.thumbprint.encode()):
            raise VerifyError(CERTIFICATE_MISMATCH, "token is bound to another client certificate")
        self._check_delegation(claims)
        self._check_revoked(claims)
        return claims

    def _parse(self, token):
        now = self.clock()
        c = self._remembered(token, now)
        if c is not None:
            return c
        used = []

        def keys(kid):
            try:
                k, s = self._key(kid)
            except _Stale as e:
                raise VerifyError(KEYS_STALE, "key set is past max_staleness and could not be refreshed: %s" % e, 503)
            used.append((k, s))
            return k

        try:
            claims = _tok.parse(token, keys, self.issuer, self.audience, self.leeway, now)
        except VerifyError:
            raise
        except TokenError as e:
            raise VerifyError(e.reason, str(e))
        if self._max_cached > 0 and used:
            k, s = used[-1]
            with self._lock:
                # Stored only if s is still the current set: an entry of an
                # older set could never answer.
                if self._set is s:
                    if len(self._verified) >= self._max_cached:
                        self._verified.pop(next(iter(self._verified)))
                    self._verified[token] = [claims, k, s]
        return claims

    def _remembered(self, token, now):
        e = self._verified.get(token)
        if e is None:
            return None
        c, k, s = e
        try:
            _tok.validate(c, self.issuer, self.audience, self.leeway, now)
        except TokenError:
            return None
        try:
            _, cur = self._key(c.key_id)
        except (UnknownKey, _Stale):
            return None
        if cur is not e[2]:
            return None
        return c

    # --- revocation feed ------------------------------------------------

    def revocations_age(self):
        """How old the feed in use is, counted from its iat; 0.0 without one."""
        f = self._feed
        if f is None:
            return 0.0
        return self.clock() - f.feed.iat

    def _fetch_feed(self, start):
        rc = self._revocations
        old = self._feed
        headers = {"If-None-Match": old.etag} if old is not None and old.etag else {}
        status, resp_headers, body = self._http.get(rc.url, MAX_REVOCATIONS_BYTES, headers)
        age = max_age(resp_headers.get("Cache-Control"))
        if status == 304 and old is not None:
            # The same bytes, so the same iat: a 304 says when to ask again,
            # not that the copy is any younger.
            self._feed = _Feed(old.feed, old.etag, start + age)
            return
        if status != 200:
            raise ValueError("meshauth verify: fetching revocations: GET %s: %d" % (rc.url, status))
        try:
            feed = _tok.parse_feed(body.strip().decode("ascii", "replace"), self._feed_key, self.issuer)
        except TokenError as e:
            raise ValueError("meshauth verify: revocations feed refused: %s" % e)
        if old is not None and feed.iat < old.feed.iat:
            # meshtoken's ErrFeedRollback: the newer copy stays, so a revoked
            # token cannot verify again.
            raise ValueError("meshauth verify: revocations feed is older than one already accepted "
                             "(iat %d, accepted %d)" % (feed.iat, old.feed.iat))
        if old is not None and feed.iat == old.feed.iat and not feed.covers(old.feed):
            # meshtoken: within one step every render has the same iat and
            # entries only leave at a step boundary, so a same-iat feed that
            # lacks an accepted entry is an earlier render of the step.
            raise ValueError("meshauth verify: revocations feed is older than one already accepted "
                             "(iat %d, an earlier render of the same step)" % feed.iat)
        # Fetches run one at a time (_BackgroundFetch), so old is still the
        # current copy here: nothing older can replace a newer one.
        self._feed = _Feed(feed, resp_headers.get("ETag", ""), start + age)

    def _feed_key(self, kid):
        try:
            k, _ = self._key(kid)
        except _Stale as e:
            # Go's ParseFeed sees a key error other than an unknown kid as
            # malformed; the fetch fails either way.
            raise TokenError(_tok.MALFORMED, "key set is past max_staleness: %s" % e)
        return k

    def _check_delegation(self, c):
        if not c.actors:
            return
        depth = self.max_delegation_depth
        if depth <= 0:
            raise VerifyError(DELEGATION_NOT_ALLOWED,
                              "this verifier accepts no delegated tokens (set max_delegation_depth to accept them)")
        if len(c.actors) > depth:
            raise VerifyError(DELEGATION_NOT_ALLOWED, "the actor chain is longer than allowed")
        if self.allowed_actors is not None and any(a not in self.allowed_actors for a in c.actors):
            raise VerifyError(DELEGATION_NOT_ALLOWED, "an actor is not in allowed_actors")

    def _check_revoked(self, c):
        rc = self._revocations
        if rc is None:
            return
        cur = self._feed
        now = self.clock()

        def stale(at, copy):
            return at - copy.feed.iat > rc.max_staleness

        # max_staleness may be shorter than the feed's max-age: it wins.
        if now >= cur.fresh_until or stale(now, cur):
            done = self._feed_fetch.start(now, self.min_refetch_interval, self._fetch_feed)
            if stale(now, cur) and done is not None:
                done.wait(HTTP_TIMEOUT + 1)
                cur = self._feed
            if stale(self.clock(), cur) and not rc.allow_stale:
                raise VerifyError(REVOCATIONS_STALE, "revocations feed is older than its maximum staleness", 503)
        f = cur.feed
        if c.key_id in f.keys:
            raise VerifyError(REVOKED, "its signing key was removed")
        if c.id in f.tokens:
            raise VerifyError(REVOKED, "jti is revoked")
        # An exchanged token ends with any token it was derived from.
        if any(jti in f.tokens for jti in c.derived_from):
            raise VerifyError(REVOKED, "it was exchanged from a revoked token")
        if c.bound and c.thumbprint in f.certificates:
            raise VerifyError(REVOKED, "its client certificate is revoked")
        # And with the certificate of any token it was exchanged from: the
        # caller's certificate revocation ends what others obtained for it.
        if any(t and t in f.certificates for t in c.derived_cnf):
            raise VerifyError(REVOKED, "it was exchanged from a token bound to a revoked client certificate")
        service = c.service_name
        if service in f.disabled:
            raise VerifyError(REVOKED, "service is disabled")
        if service in f.services and f.services[service] != c.generation:
            raise VerifyError(REVOKED, "every token of the service issued before its last revoke")
        # Each actor of an exchanged token, by the same rules.
        for actor, gen in zip(c.actors, c.actor_gens):
            if actor in f.disabled:
                raise VerifyError(REVOKED, "an acting service is disabled")
            if actor in f.services and f.services[actor] != gen:
                raise VerifyError(REVOKED, "an acting service was revoked after the exchange")


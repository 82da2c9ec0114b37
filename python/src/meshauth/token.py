"""Parsing a meshauth token: the same checks, in the same order and with the
same reasons, as meshtoken.Parse (Go).

The reasons a token is refused are meshtoken's Reason constants; the verifier
adds its own (binding, revocation, staleness) in verifier.py. The shared test
vectors under testdata/vectors pin every reason in both languages.
"""

import base64
import binascii
import decimal
import hashlib
import math
import re
import time as _time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from . import _json

ES256, ES384, EDDSA, RS256 = "ES256", "ES384", "EdDSA", "RS256"
ALGORITHMS = (ES256, ES384, EDDSA, RS256)

MAX_TOKEN_LENGTH = 16 << 10
DEFAULT_LEEWAY = 30.0

# act, meshauth_derived_from and meshauth_derived_cnf are written by token
# exchange (RFC 8693).
REGISTERED_CLAIMS = ("iss", "sub", "aud", "exp", "nbf", "iat", "jti", "cnf", "gen", "meshauth_service",
                     "act", "meshauth_derived_from", "meshauth_derived_cnf")
HEADER_NAMES = ("alg", "jku", "jwk", "kid", "x5u", "x5c", "x5t", "x5t#S256", "typ", "cty", "crit")
CNF_MEMBERS = ("x5t#S256",)
ACT_MEMBERS = ("sub", "gen", "act")
# meshtoken.MaxActorDepth: the act nesting a token may carry.
MAX_ACTOR_DEPTH = 8
# A JSON number without fraction or exponent.
_INTEGER_LITERAL = re.compile(r"-?(0|[1-9][0-9]*)\Z")

# Reasons, spelled as meshtoken's.
TOO_LARGE = "too_large"
MALFORMED = "malformed"
AMBIGUOUS_CLAIMS = "ambiguous_claims"
ALG_NOT_ALLOWED = "algorithm_not_allowed"
UNKNOWN_KEY = "unknown_key"
ALG_MISMATCH = "algorithm_mismatch"
CRIT_HEADER = "unsupported_critical_header"
BAD_SIGNATURE = "bad_signature"
EXPIRED = "expired"
NOT_YET_VALID = "not_yet_valid"
ISSUED_IN_FUTURE = "issued_in_future"
WRONG_ISSUER = "wrong_issuer"
WRONG_AUDIENCE = "wrong_audience"
MISSING_CLAIM = "missing_claim"
INVALID = "invalid"
UNSUPPORTED_CONFIRMATION = "unsupported_confirmation"
NOT_A_FEED = "not_a_revocation_feed"

# The typ of the engine's revocation feed: the one typ parse refuses in a
# token, and the only one parse_feed accepts.
REVOCATIONS_TYPE = "meshauth-revocations+jwt"
# The largest feed a verifier reads (meshtoken.MaxFeedLength).
MAX_FEED_LENGTH = 8 << 20
# The top-level members of a feed, spelled only exactly (meshtoken's feedMembers).
FEED_MEMBERS = ("iss", "iat", "tokens", "services", "disabled", "keys", "certificates")
_THUMBPRINT_LEN = 43


class TokenError(Exception):
    """A refused token: .reason is one of the reason constants. The message
    never holds the token."""

    status = 401

    def __init__(self, reason, detail=""):
        super().__init__("meshauth token refused (%s)%s" % (reason, ": " + detail if detail else ""))
        self.reason = reason


class UnknownKey(LookupError):
    """What a key function raises for a kid it does not hold."""


class Key:
    """A verification key bound to the one algorithm it verifies."""

    __slots__ = ("algorithm", "public", "size")

    def __init__(self, algorithm, public):
        self.algorithm = algorithm
        self.public = public
        # The signature length the algorithm requires (Go's verifiers refuse
        # any other length; OpenSSL would accept a short RSA signature).
        if algorithm == RS256:
            self.size = (public.key_size + 7) // 8
        elif algorithm == ES256:
            self.size = 64
        elif algorithm == ES384:
            self.size = 96
        else:
            self.size = 64

    def same(self, other):
        return self.algorithm == other.algorithm and _public_bytes(self.public) == _public_bytes(other.public)


def _public_bytes(pub):
    from cryptography.hazmat.primitives import serialization
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


_SEGMENT = re.compile(r"[A-Za-z0-9_-]+\Z")
_WELL_FORMED = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\Z")
_B64_LAST = "AQgw"  # base64url characters whose unused low bits are zero (4 trailing bits)
_B64_LAST2 = "AEIMQUYcgkosw048"  # ... (2 trailing bits)


def b64decode_strict(seg):
    """Decodes one base64url segment of a compact JWS as RFC 7515 requires:
    the URL alphabet only, no padding, and no nonzero unused bits in the last
    character, so each byte string has exactly one spelling. Raises
    ValueError otherwise."""
    if not _SEGMENT.match(seg):
        raise ValueError("not base64url")
    rem = len(seg) % 4
    if rem == 1:
        raise ValueError("base64url of impossible length")
    if rem == 2 and seg[-1] not in _B64_LAST:
        raise ValueError("base64url with nonzero unused bits")
    if rem == 3 and seg[-1] not in _B64_LAST2:
        raise ValueError("base64url with nonzero unused bits")
    try:
        return base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4))
    except (binascii.Error, ValueError) as e:
        raise ValueError(str(e))


def b64encode(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def well_formed(token):
    """Three non-empty base64url segments, nothing else (meshtoken.WellFormed)."""
    return _WELL_FORMED.match(token) is not None


def verify_signature(key, alg, signing_input, sig):
    """Raises InvalidSignature unless sig is alg's signature of signing_input."""
    if len(sig) != key.size:
        raise InvalidSignature()
    pub = key.public
    if alg == ES256 or alg == ES384:
        half = key.size // 2
        der = encode_dss_signature(int.from_bytes(sig[:half], "big"), int.from_bytes(sig[half:], "big"))
        pub.verify(der, signing_input, ec.ECDSA(hashes.SHA256() if alg == ES256 else hashes.SHA384()))
    elif alg == EDDSA:
        pub.verify(sig, signing_input)
    else:
        pub.verify(sig, signing_input, padding.PKCS1v15(), hashes.SHA256())


# --- Go's time arithmetic -------------------------------------------------
# golang-jwt reads exp, nbf and iat into time.Time through float64 and
# int64 conversions, and compares them after adding the leeway. At the edges
# (values beyond int64 seconds, or near it) Go's conversions wrap or
# saturate; to reach the same verdict on every token we compute as Go does.
# A time is (internal seconds since year 1, nanoseconds), as Go keeps it.

_UNIX_TO_INTERNAL = 62135596800
_I64 = 1 << 63


def _wrap64(x):
    return ((x + _I64) % (1 << 64)) - _I64


def _float_to_int64(f):
    # amd64's CVTTSD2SI: out of range (and NaN) gives the minimum int64.
    if not (-9.223372036854775808e18 <= f < 9.223372036854775808e18):
        return -_I64
    return int(f)


def numeric_date(f):
    """golang-jwt's NumericDate of float seconds f, as Go's internal time
    truncated to the second: (sec, 0)."""
    rnd = math.trunc(f) if math.isfinite(f) else f
    frac = f - rnd if math.isfinite(f) else 0.0
    sec = _float_to_int64(rnd)
    nsec = int(frac * 1e9)
    # time.Unix normalizes nsec into [0, 1e9).
    if nsec < 0 or nsec >= 1000000000:
        n = nsec // 1000000000
        sec += n
        nsec -= n * 1000000000
    sec = _wrap64(sec)
    return (_wrap64(sec + _UNIX_TO_INTERNAL), 0)


def _add(t, d_ns):
    """Go's Time.Add of d_ns nanoseconds to a time without monotonic reading:
    the seconds saturate instead of wrapping (Time.addSec)."""
    sec, nsec = t
    dsec = abs(d_ns) // 1000000000 * (1 if d_ns >= 0 else -1)
    nsec += d_ns - dsec * 1000000000
    if nsec >= 1000000000:
        dsec += 1
        nsec -= 1000000000
    elif nsec < 0:
        dsec -= 1
        nsec += 1000000000
    s = sec + dsec
    if not (-_I64 <= s < _I64):
        s = (_I64 - 1) if dsec > 0 else -(_I64 - 1)
    return (s, nsec)


def _before(a, b):
    return a[0] < b[0] or (a[0] == b[0] and a[1] < b[1])


def go_now(now):
    """A float Unix time as Go's internal (sec, nsec)."""
    ns = int(round(now * 1e9))
    sec, nsec = divmod(ns, 1000000000)
    return (sec + _UNIX_TO_INTERNAL, nsec)


def unix_seconds(t):
    return t[0] - _UNIX_TO_INTERNAL


# --- claims ----------------------------------------------------------------

class Claims:
    """What a verified token says. Read it; do not modify it (a verifier may
    hand the same object to several requests)."""

    __slots__ = ("issuer", "subject", "audience", "issued_at", "not_before", "expires_at",
                 "id", "thumbprint", "has_cnf", "generation", "service", "key_id", "payload", "_times",
                 "actors", "actor_gens", "derived_from", "derived_cnf")

    def __init__(self):
        self.thumbprint = ""
        self.has_cnf = False
        # actors: an exchanged token's actor chain, outermost (the service
        # holding the token) first; derived_from: the jti of every token it
        # was exchanged from, the original first; derived_cnf: the x5t#S256
        # each of those was bound to ("" if unbound), in the same order.
        # Empty for a login's token.
        self.actors = ()
        self.actor_gens = ()
        self.derived_from = ()
        self.derived_cnf = ()

    @property
    def bound(self):
        return self.has_cnf and self.thumbprint != ""

    @property
    def service_name(self):
        """The service the token speaks for: meshauth_service of a JWT-SVID,
        else sub."""
        return self.service or self.subject

    def extra(self):
        """The claims other than the registered ones (the service's claims and
        its rendered claims_template), as plain Python values: objects as
        dicts, lists as lists, strings, True/False/None, and numbers as int
        for an integer literal (exactly, however large), float otherwise
        (decimal.Decimal, exactly, beyond float's range). Each call returns
        new objects: changing them does not change the claims kept in the
        verified-token cache."""
        return {k: _plain(v) for k, v in self.payload.items() if k not in REGISTERED_CLAIMS}


def _plain(v):
    """v with every _json.Number made a number, in new containers. Iterative:
    arrays may nest far deeper than Python's recursion limit (only objects
    are bounded, at 32, as meshtoken bounds them)."""
    # The parser keeps numbers as _json.Number (their literal text, as Go's
    # json.Number); a caller wants numbers. The engine renders templates with
    # UseNumber, so an integer claim can exceed 2**53: int keeps it exact.
    def scalar(x):
        if not isinstance(x, _json.Number):
            return x
        if _INTEGER_LITERAL.match(x):
            try:
                return int(x)
            except ValueError:  # beyond int's string-conversion limit (4300 digits)
                return decimal.Decimal(str(x))
        f = float(x)
        return f if not math.isinf(f) else decimal.Decimal(str(x))

    def container(x):
        return {} if isinstance(x, dict) else []

    if not isinstance(v, (dict, list)):
        return scalar(v)
    root = container(v)
    stack = [(v, root)]
    while stack:
        src, dst = stack.pop()
        items = src.items() if isinstance(src, dict) else enumerate(src)
        for k, x in items:
            y = container(x) if isinstance(x, (dict, list)) else scalar(x)
            if isinstance(dst, dict):
                dst[k] = y
            else:
                dst.append(y)
            if isinstance(x, (dict, list)):
                stack.append((x, y))
    return root


def _string(v):
    # A Go string field: a JSON string, or null (left empty).
    if v is None:
        return ""
    if isinstance(v, str) and not isinstance(v, _json.Number):
        return v
    raise TokenError(MALFORMED, "a registered claim has the wrong JSON type")


def _date(v):
    # A golang-jwt NumericDate: a number, or a string holding a number
    # literal (json.Number accepts both), or null (absent).
    if v is None:
        return None
    if isinstance(v, _json.Number) or (isinstance(v, str) and _json.is_number_literal(v)):
        f = float(v)
        if math.isinf(f):
            raise TokenError(MALFORMED, "a time claim is out of range")
        return numeric_date(f)
    raise TokenError(MALFORMED, "a time claim is not a number")


def _audience(v):
    if v is None:
        return []
    if isinstance(v, str) and not isinstance(v, _json.Number):
        return [v]
    if isinstance(v, list):
        out = []
        for a in v:
            if not isinstance(a, str) or isinstance(a, _json.Number):
                raise TokenError(MALFORMED, "aud holds a non-string")
            out.append(a)
        return out
    raise TokenError(MALFORMED, "aud is neither a string nor a list")


def _verify_jws(raw, max_len, keys, reserved, inner):
    """meshtoken's verifyJWS, the one check of a compact JWS meshauth signs
    (a token or the feed), in its order: at most max_len; one spelling
    (three base64url segments, strict); a header whose members every JSON
    reader reads alike; a payload whose members do (reserved, inner: else
    ambiguous_claims); the header's alg, kid and typ strings; an alg meshauth
    signs with; no crit; a kid that keys names and its one algorithm; the
    signature over the segments as sent. Returns (header, payload,
    payload_trailing): payload_trailing says the payload object is followed
    by bytes Go's member check lets pass and its json.Unmarshal refuses, which
    the caller refuses as malformed at its own Unmarshal."""
    if not isinstance(raw, str):
        raise TokenError(MALFORMED, "not a string")
    if len(raw) > max_len:
        raise TokenError(TOO_LARGE, "larger than %d bytes" % max_len)
    if not well_formed(raw):
        raise TokenError(MALFORMED, "not a compact JWS of three base64url segments")
    first = raw.index(".")
    second = raw.index(".", first + 1)
    try:
        header_bytes = b64decode_strict(raw[:first])
    except ValueError as e:
        raise TokenError(MALFORMED, str(e))
    header_trailing = False
    try:
        header = _json.loads_checked(header_bytes, HEADER_NAMES)
    except _json.TrailingData:
        # Go's member check passes; its Unmarshal of the header fails after
        # the payload's member check.
        header, header_trailing = None, True
    except (_json.JSONError, _json.AmbiguousMembers) as e:
        raise TokenError(MALFORMED, "header: " + str(e))
    try:
        payload_bytes = b64decode_strict(raw[first + 1:second])
    except ValueError as e:
        raise TokenError(MALFORMED, str(e))
    trailing = False
    try:
        payload = _json.loads_checked(payload_bytes, reserved, inner)
    except _json.TrailingData as e:
        payload, trailing = e.value, True
    except (_json.JSONError, _json.AmbiguousMembers) as e:
        raise TokenError(AMBIGUOUS_CLAIMS, str(e))

    if header_trailing:
        raise TokenError(MALFORMED, "header has data after its object")
    # Go unmarshals alg, kid and typ as strings: any other type (null
    # aside) fails the whole header.
    alg = _string(header.get("alg"))
    kid = _string(header.get("kid"))
    typ = _string(header.get("typ"))
    if alg not in ALGORITHMS:
        raise TokenError(ALG_NOT_ALLOWED, "alg is not one meshauth signs with")
    if "crit" in header:
        raise TokenError(CRIT_HEADER, "crit header names extensions meshauth does not understand")
    try:
        key = keys(kid)
    except UnknownKey as e:
        raise TokenError(UNKNOWN_KEY, str(e) or "unknown or expired kid")
    if alg != key.algorithm:
        raise TokenError(ALG_MISMATCH, "alg does not match the key named by kid")
    try:
        sig = b64decode_strict(raw[second + 1:])
    except ValueError as e:
        raise TokenError(MALFORMED, str(e))
    try:
        verify_signature(key, alg, raw[:second].encode("ascii"), sig)
    except InvalidSignature:
        raise TokenError(BAD_SIGNATURE, "signature does not verify")
    return {"alg": alg, "kid": kid, "typ": typ}, payload, trailing


def is_thumbprint(s):
    """Whether s is an RFC 8705 x5t#S256 in its one spelling: 43 canonical
    base64url characters of 32 bytes (meshtoken.IsThumbprint)."""
    if not isinstance(s, str) or len(s) != _THUMBPRINT_LEN:
        return False
    try:
        b64decode_strict(s)
    except ValueError:
        return False
    return True


def parse(raw, keys, issuer="", audience="", leeway=DEFAULT_LEEWAY, now=None):
    """Checks an untrusted token completely, as meshtoken.Parse does, and
    returns its Claims or raises TokenError. keys(kid) returns a Key or
    raises UnknownKey; any other exception it raises passes through (the
    verifier uses that for a stale key set)."""
    h, payload, trailing = _verify_jws(raw, MAX_TOKEN_LENGTH, keys, REGISTERED_CLAIMS, {"cnf": CNF_MEMBERS, "act": ACT_MEMBERS})
    if h["typ"] == REVOCATIONS_TYPE:
        raise TokenError(MALFORMED, "a revocation feed is not a token")
    if trailing:
        raise TokenError(MALFORMED, "payload has data after its object")
    c = claims_of(payload, h["kid"])
    # A cnf no verifier can check must not pass as none: absent (or null)
    # is unbound, anything else must be one well-spelled x5t#S256.
    if c.has_cnf and not is_thumbprint(c.thumbprint):
        raise TokenError(UNSUPPORTED_CONFIRMATION, "cnf must carry exactly x5t#S256, 43 base64url characters of a SHA-256")
    validate(c, issuer, audience, leeway, now)
    read_delegation(c)
    return c


def claims_of(payload, kid):
    """Reads the registered claims as Go's json.Unmarshal into meshtoken's
    struct does; a wrong type anywhere is malformed."""
    c = Claims()
    # Go's Unmarshal reports the first error but reads every member; any
    # error is "malformed", so the order does not matter.
    c.issuer = _string(payload.get("iss"))
    c.subject = _string(payload.get("sub"))
    c.id = _string(payload.get("jti"))
    c.generation = _string(payload.get("gen"))
    c.service = _string(payload.get("meshauth_service"))
    c.audience = _audience(payload.get("aud"))
    exp, nbf, iat = _date(payload.get("exp")), _date(payload.get("nbf")), _date(payload.get("iat"))
    derived = _string_list(payload.get("meshauth_derived_from"))
    derived_cnf = _string_list(payload.get("meshauth_derived_cnf"))
    cnf = payload.get("cnf")
    if cnf is not None:
        if not isinstance(cnf, dict):
            raise TokenError(MALFORMED, "cnf is not an object")
        c.has_cnf = True
        c.thumbprint = _string(cnf.get("x5t#S256"))
    c._times = (exp, nbf, iat)
    c.derived_from = derived
    c.derived_cnf = derived_cnf
    c.expires_at = unix_seconds(exp) if exp else None
    c.not_before = unix_seconds(nbf) if nbf else None
    c.issued_at = unix_seconds(iat) if iat else None
    c.key_id = kid
    c.payload = payload
    return c


def _string_list(v):
    # A Go []string field: null is absent, a null element is "".
    if v is None:
        return ()
    if not isinstance(v, list):
        raise TokenError(MALFORMED, "a registered claim has the wrong JSON type")
    return tuple(_string(x) for x in v)


def read_delegation(c):
    """Reads act as meshtoken's readDelegation: exact member names, a
    non-empty string sub at each level, at most MAX_ACTOR_DEPTH levels, and
    one meshauth_derived_from jti and one meshauth_derived_cnf entry (an
    x5t#S256 or "") per actor."""
    actors, gens = [], []
    act = c.payload.get("act")
    while act is not None:
        if len(actors) == MAX_ACTOR_DEPTH:
            raise TokenError(MALFORMED, "act nests too many actors")
        if not isinstance(act, dict):
            raise TokenError(MALFORMED, "act must be a JSON object")
        sub = act.get("sub")
        if not isinstance(sub, str) or isinstance(sub, _json.Number) or sub == "":
            raise TokenError(MALFORMED, "act must carry sub, a non-empty string")
        gen = act.get("gen")
        if gen is not None and (not isinstance(gen, str) or isinstance(gen, _json.Number)):
            raise TokenError(MALFORMED, "act's gen must be a string")
        actors.append(sub)
        gens.append(gen or "")
        act = act.get("act")
    if len(c.derived_from) != len(actors):
        raise TokenError(MALFORMED, "meshauth_derived_from must list one jti per actor")
    if len(c.derived_cnf) != len(actors):
        raise TokenError(MALFORMED, "meshauth_derived_cnf must list one x5t#S256 (or \"\") per actor")
    if any(t != "" and not is_thumbprint(t) for t in c.derived_cnf):
        raise TokenError(MALFORMED, "meshauth_derived_cnf entries must be x5t#S256 thumbprints or \"\"")
    c.actors = tuple(actors)
    c.actor_gens = tuple(gens)


_ZERO_TIME = (0, 0)


def _window(c, t, lw):
    """meshtoken's Claims.window: the one time check, of a fresh token and
    of a remembered one. Valid from max(nbf, iat) - leeway inclusive until
    exp + leeway exclusive; a time claim absent (or at Go's zero time, which
    Go cannot tell from absent) is missing."""
    exp, nbf, iat = c._times
    if exp in (None, _ZERO_TIME) or iat in (None, _ZERO_TIME) or nbf in (None, _ZERO_TIME):
        return MISSING_CLAIM
    if not _before(t, _add(exp, lw)):
        return EXPIRED
    if _before(_add(t, lw), nbf):
        return NOT_YET_VALID
    if _before(_add(t, lw), iat):
        return ISSUED_IN_FUTURE
    return None


def _identity(c, issuer, audience):
    """meshtoken's Claims.identity: sub and jti present, iss (when issuer is
    set), aud (when audience is set)."""
    if c.subject == "" or c.id == "":
        return MISSING_CLAIM
    if issuer and c.issuer != issuer:
        return WRONG_ISSUER
    if audience and audience not in c.audience:
        return WRONG_AUDIENCE
    return None


def validate(c, issuer, audience, leeway, now=None):
    """The claim checks of meshtoken.Parse, in its order: the time window
    (a missing time claim first, then expired, not yet valid, issued in the
    future); then, unless the window failed otherwise, sub and jti, iss and
    aud, whose failure wins over expired."""
    t = go_now(_time.time() if now is None else now)
    reason = _window(c, t, int(round(leeway * 1e9)))
    if reason is None or reason == EXPIRED:
        r = _identity(c, issuer, audience)
        if r is not None:
            raise TokenError(r, "claims do not hold")
    if reason is not None:
        raise TokenError(reason, "claims do not hold")


# --- the revocation feed ---------------------------------------------------

class Feed:
    """A verified revocation feed (meshtoken.Feed): iss, iat (Unix seconds),
    and the names it revokes. services maps a service to its current gen."""

    __slots__ = ("issuer", "iat", "tokens", "services", "disabled", "keys", "certificates")

    def covers(self, earlier):
        """meshtoken's Feed.Covers: whether this feed lists every entry the
        earlier one lists (tokens, disabled, keys, certificates, services)."""
        return all(set(getattr(earlier, m)) <= set(getattr(self, m))
                   for m in ("tokens", "disabled", "keys", "certificates", "services"))


def _int64(v):
    # A Go int64 field: an integer literal in range, or null (left 0).
    if v is None:
        return 0
    if isinstance(v, _json.Number) and _INTEGER_LITERAL.match(v):
        n = int(v)
        if -_I64 <= n < _I64:
            return n
    raise TokenError(MALFORMED, "a feed number is not an int64")


def _int_map(v):
    # A Go map[string]int64: an object of int64s (null entries are 0), or null.
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise TokenError(MALFORMED, "a feed member is not an object")
    return {k: _int64(x) for k, x in v.items()}


_FEED_SERVICE = ("gen", "exp")


def _services(v):
    # map[string]FeedService: Go matches gen and exp in any case (simple
    # folding), the last matching member winning, as it fills a struct.
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise TokenError(MALFORMED, "feed services is not an object")
    out = {}
    for name, entry in v.items():
        if entry is None:
            out[name] = ""
            continue
        if not isinstance(entry, dict):
            raise TokenError(MALFORMED, "a feed services entry is not an object")
        gen = ""
        for k, x in entry.items():
            field = _json.folds_to(k, _FEED_SERVICE)
            if field == "gen":
                gen = _string(x)
            elif field == "exp":
                _int64(x)
        out[name] = gen
    return out


def parse_feed(raw, keys, issuer):
    """Checks an untrusted revocation feed as meshtoken.ParseFeed does: the
    checks of a token's JWS (size up to MAX_FEED_LENGTH, one spelling,
    header and payload members every reader reads alike, the feed's members
    spelled only exactly, no crit, kid and its one algorithm, signature),
    then its typ, the payload's types, its issuer and its iat. Returns a
    Feed or raises TokenError."""
    h, doc, trailing = _verify_jws(raw, MAX_FEED_LENGTH, keys, FEED_MEMBERS, None)
    if h["typ"] != REVOCATIONS_TYPE:
        raise TokenError(NOT_A_FEED, "typ is not " + REVOCATIONS_TYPE)
    if trailing:
        raise TokenError(MALFORMED, "feed has data after its object")
    f = Feed()
    f.issuer = _string(doc.get("iss"))
    f.iat = _int64(doc.get("iat"))
    f.tokens = _int_map(doc.get("tokens"))
    f.services = _services(doc.get("services"))
    f.disabled = _int_map(doc.get("disabled"))
    f.keys = _int_map(doc.get("keys"))
    f.certificates = _int_map(doc.get("certificates"))
    if f.issuer != issuer:
        raise TokenError(WRONG_ISSUER, "feed of another issuer")
    if f.iat <= 0:
        raise TokenError(MISSING_CLAIM, "the feed carries no iat")
    return f


def thumbprint_of_der(der):
    """RFC 8705 x5t#S256 of a DER certificate."""
    return b64encode(hashlib.sha256(der).digest())


__all__ = [n for n in dir() if n.isupper() and not n.startswith("_")] + [
    "TokenError", "UnknownKey", "Key", "Claims", "parse", "validate", "b64decode_strict",
    "b64encode", "well_formed", "thumbprint_of_der", "claims_of", "is_thumbprint", "Feed", "parse_feed",
]


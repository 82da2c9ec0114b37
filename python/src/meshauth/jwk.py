"""JWK Sets: meshauth's keys, each bound to its one algorithm (meshtoken's
ParseJWK and parseJWKS)."""

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from . import _json
from .token import EDDSA, ES256, ES384, RS256, Key, b64encode

MIN_RSA_BITS = 2048


def _b64(s):
    # Go's ParseJWK ignores decoding errors (a bad value then fails the key
    # checks below); so do we, but without accepting padding or junk.
    import base64
    import binascii
    try:
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)) if s.replace("-", "").replace("_", "").isalnum() or s == "" else b""
    except (binascii.Error, ValueError):
        return b""


def parse_jwk(k):
    """A Key from one JWK (a dict of strings); ValueError when unsupported."""
    alg, kty, crv = k.get("alg", ""), k.get("kty", ""), k.get("crv", "")
    if alg == EDDSA and kty == "OKP" and crv == "Ed25519":
        x = _b64(k.get("x", ""))
        if len(x) != 32:
            raise ValueError("bad Ed25519 key")
        return Key(alg, ed25519.Ed25519PublicKey.from_public_bytes(x))
    if (alg == ES256 and kty == "EC" and crv == "P-256") or (alg == ES384 and kty == "EC" and crv == "P-384"):
        curve, size = (ec.SECP256R1(), 32) if crv == "P-256" else (ec.SECP384R1(), 48)
        x, y = _b64(k.get("x", "")), _b64(k.get("y", ""))
        if len(x) + len(y) != 2 * size:
            raise ValueError("bad EC key")
        point = b"\x04" + x + y
        return Key(alg, ec.EllipticCurvePublicKey.from_encoded_point(curve, point))
    if alg == RS256 and kty == "RSA":
        n = int.from_bytes(_b64(k.get("n", "")), "big")
        e = int.from_bytes(_b64(k.get("e", "")), "big")
        if n.bit_length() < MIN_RSA_BITS or e < 3 or e > 1 << 31:
            raise ValueError("bad RSA key")
        return Key(alg, rsa.RSAPublicNumbers(e, n).public_key())
    raise ValueError("unsupported JWK (alg %r, kty %r)" % (alg, kty))


def parse_jwks(body):
    """kid -> Key for a JWK Set; keys meshauth cannot use are skipped, as in
    Go. A set whose members are not all strings does not parse (Go decodes
    it into map[string]string)."""
    doc = _json.loads_checked(body)
    keys = doc.get("keys")
    if keys is None:
        keys = []
    if not isinstance(keys, list):
        raise ValueError("JWKS keys is not a list")
    out = {}
    for k in keys:
        if k is None:
            continue
        if not isinstance(k, dict) or any(v is not None and (not isinstance(v, str) or isinstance(v, _json.Number)) for v in k.values()):
            raise ValueError("JWKS does not parse: a key member is not a string")
        k = {name: (v or "") for name, v in k.items()}
        try:
            key = parse_jwk(k)
        except ValueError:
            continue
        if not k.get("kid"):
            continue
        out[k["kid"]] = key
    return out


def public_jwk(pub, alg, kid):
    """The public JWK of a cryptography public key (for tests and tools)."""
    if isinstance(pub, ed25519.Ed25519PublicKey):
        from cryptography.hazmat.primitives import serialization
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64encode(raw), "alg": alg, "kid": kid}
    if isinstance(pub, ec.EllipticCurvePublicKey):
        nums = pub.public_numbers()
        size = (pub.curve.key_size + 7) // 8
        crv = {"secp256r1": "P-256", "secp384r1": "P-384"}[pub.curve.name]
        return {"kty": "EC", "crv": crv, "x": b64encode(nums.x.to_bytes(size, "big")),
                "y": b64encode(nums.y.to_bytes(size, "big")), "alg": alg, "kid": kid}
    nums = pub.public_numbers()
    return {"kty": "RSA", "n": b64encode(nums.n.to_bytes((nums.n.bit_length() + 7) // 8, "big")),
            "e": b64encode(nums.e.to_bytes((nums.e.bit_length() + 7) // 8, "big")), "alg": alg, "kid": kid}

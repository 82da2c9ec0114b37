"""Client certificates forwarded by a proxy that terminated mutual TLS
(meshtoken/forwarded.go): Envoy's X-Forwarded-Client-Cert and RFC 9440's
Client-Cert, believed only from configured trusted proxies."""

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
import urllib.parse

from cryptography import x509

from .token import b64encode, thumbprint_of_der

HEADER_XFCC = "X-Forwarded-Client-Cert"
HEADER_CLIENT_CERT = "Client-Cert"
MAX_FORWARDED_HEADER = 64 << 10


class ForwardedCertError(ValueError):
    """A trusted proxy sent a forwarded-certificate header we cannot read
    as one certificate (HTTP 400)."""


class TrustedProxies:
    """The peers whose forwarded-certificate header a service believes: by
    network (addresses they connect from) and/or by the thumbprints of their
    own client certificates. header is HEADER_XFCC or HEADER_CLIENT_CERT."""

    def __init__(self, networks=(), certificates=(), header=HEADER_XFCC):
        if header not in (HEADER_XFCC, HEADER_CLIENT_CERT):
            raise ValueError("TrustedProxies header must be %r or %r" % (HEADER_XFCC, HEADER_CLIENT_CERT))
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        self.certificates = list(certificates)
        if not self.networks and not self.certificates:
            raise ValueError("TrustedProxies names no proxy: set networks or certificates")
        for c in self.certificates:
            try:
                ok = len(base64.urlsafe_b64decode(c + "=" * (-len(c) % 4))) == 32 and "=" not in c
            except (binascii.Error, ValueError):
                ok = False
            if not ok:
                raise ValueError("TrustedProxies certificates: %r is not an x5t#S256 thumbprint" % c)
        self.header = header

    def trusts(self, cert_der=None, addr=None):
        if cert_der and self.certificates:
            thumb = thumbprint_of_der(cert_der).encode()
            if any(hmac.compare_digest(thumb, c.encode()) for c in self.certificates):
                return True
        if addr and self.networks:
            try:
                ip = ipaddress.ip_address(addr)
            except ValueError:
                return False
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            return any(ip in n for n in self.networks)
        return False

    def peer_thumbprint(self, trusted, cert_der, values):
        """The x5t#S256 of the client behind a request: from the header when
        the peer is trusted (values: every line of it), else of the peer's
        own certificate; "" for none. A trusted proxy that sends no header
        forwards no certificate: its own is never taken for the client's."""
        if not trusted:
            return thumbprint_of_der(cert_der) if cert_der else ""
        if not values:
            return ""
        if len(values) > 1:
            raise ForwardedCertError("forwarded client certificate header sent %d times" % len(values))
        if self.header == HEADER_CLIENT_CERT:
            return parse_client_cert(values[0])
        return parse_xfcc(values[0])


_STD_B64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?\Z")


def _strict_std_b64(s):
    # Go's StdEncoding.Strict(): padding required, unused bits zero.
    if not _STD_B64.match(s):
        raise ValueError("not base64")
    data = base64.b64decode(s)
    if base64.b64encode(data).decode() != s:
        raise ValueError("non-canonical base64")
    return data


def _cert_thumbprint(der):
    try:
        x509.load_der_x509_certificate(der)
    except ValueError as e:
        raise ForwardedCertError("does not hold a certificate: %s" % e)
    return thumbprint_of_der(der)


def parse_client_cert(value):
    """RFC 9440 Client-Cert (:base64 DER:) to its x5t#S256."""
    if len(value) > MAX_FORWARDED_HEADER:
        raise ForwardedCertError("Client-Cert is too long")
    v = value.strip(" \t")
    if len(v) < 2 or v[0] != ":" or v[-1] != ":" or ":" in v[1:-1]:
        raise ForwardedCertError("Client-Cert is not one byte sequence (:base64:)")
    try:
        der = _strict_std_b64(v[1:-1])
    except (ValueError, binascii.Error):
        raise ForwardedCertError("Client-Cert is not base64")
    return _cert_thumbprint(der)


def parse_xfcc(value):
    """The x5t#S256 of the client certificate in the last element of an XFCC
    value (the one the nearest, trusted proxy added): its Cert, which must
    agree with its Hash when both are present, else its Hash; "" when the
    element has neither. Any syntax error refuses the whole header."""
    if len(value) > MAX_FORWARDED_HEADER:
        raise ForwardedCertError("XFCC is too long")
    last = _split_xfcc(value)[-1]
    thumb = ""
    if "hash" in last:
        try:
            digest = bytes.fromhex(last["hash"]) if re.fullmatch(r"[0-9a-fA-F]*", last["hash"]) else b""
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise ForwardedCertError("Hash is not a hex SHA-256")
        thumb = b64encode(digest)
    if "cert" in last:
        from_cert = _xfcc_cert(last["cert"])
        if thumb and not hmac.compare_digest(thumb.encode(), from_cert.encode()):
            raise ForwardedCertError("Hash and Cert name different certificates")
        thumb = from_cert
    return thumb


_PEM = re.compile(r"-----BEGIN CERTIFICATE-----\r?\n([A-Za-z0-9+/=\r\n]+?)-----END CERTIFICATE-----[ \t]*\r?\n?")


def _xfcc_cert(v):
    # unquote, not unquote_plus: '+' in base64 is a plus, not a space.
    try:
        text = urllib.parse.unquote(v, errors="strict")
    except UnicodeDecodeError:
        raise ForwardedCertError("the Cert field is not URL-encoded")
    if re.search(r"%(?![0-9a-fA-F]{2})", v):
        raise ForwardedCertError("the Cert field is not URL-encoded")
    start = text.find("-----BEGIN CERTIFICATE-----")
    m = _PEM.match(text, start) if start >= 0 else None
    if m is None:
        raise ForwardedCertError("the Cert field is not a PEM certificate")
    if text[m.end():].strip() != "":
        raise ForwardedCertError("the Cert field holds more than one PEM block")
    try:
        der = base64.b64decode("".join(m.group(1).split()), validate=True)
    except (binascii.Error, ValueError):
        raise ForwardedCertError("the Cert field is not a PEM certificate")
    return _cert_thumbprint(der)


def _split_xfcc(s):
    elems, cur, i = [], {}, 0
    n = len(s)
    while True:
        j = i
        while j < n and s[j] not in '=;,"':
            j += 1
        key = s[i:j].strip().lower()
        if j >= n or s[j] != "=" or not key:
            raise ForwardedCertError("XFCC pair at byte %d is not key=value" % i)
        if key in cur:
            raise ForwardedCertError("XFCC key %r twice in one element" % key)
        j += 1
        val = []
        if j < n and s[j] == '"':
            j += 1
            closed = False
            while j < n:
                c = s[j]
                if c == "\\" and j + 1 < n:
                    val.append(s[j + 1])
                    j += 2
                    continue
                if c == '"':
                    closed = True
                    j += 1
                    break
                val.append(c)
                j += 1
            if not closed:
                raise ForwardedCertError("XFCC has an unterminated quoted value")
            value = "".join(val)
        else:
            k = j
            while j < n and s[j] not in ";,":
                if s[j] in '"=':
                    raise ForwardedCertError("XFCC unquoted value holds %r" % s[j])
                j += 1
            value = s[k:j].strip()
        cur[key] = value
        while j < n and s[j] in " \t":
            j += 1
        if j >= n:
            elems.append(cur)
            return elems
        if s[j] == ";":
            pass
        elif s[j] == ",":
            elems.append(cur)
            cur = {}
        else:
            raise ForwardedCertError("XFCC: unexpected %r after a value" % s[j])
        i = j + 1


def sha256_hex(der):
    return hashlib.sha256(der).hexdigest()

"""A JSON reader that reads a token's header and payload exactly as Go does.

meshtoken (Go) decides what a token says with encoding/json. Python's json
module reads some inputs differently: it keeps lone UTF-16 surrogates that Go
replaces with U+FFFD, it decodes invalid UTF-8 differently (or refuses it), it
accepts NaN and Infinity, and it recurses (so deep nesting raises
RecursionError where Go answers). A verifier that must reach the same verdict
as meshtoken on every token therefore reads with this module: an iterative
reader that follows encoding/json's rules and, while reading, refuses what
meshtoken's CheckMembers refuses (duplicate member names at any depth, names
that fold to a reserved name without being equal to it, objects nested more
than 32 deep).

Values: dict (str keys), list, str, bool, None, and Number (the literal text,
so a caller decides how to read it, as json.Number does in Go).
"""

import json as _stdjson
import re

__all__ = ["Number", "JSONError", "AmbiguousMembers", "loads_checked", "folds_to"]

# encoding/json's scanner refuses nesting deeper than this.
_GO_MAX_NESTING = 10000
# meshtoken's checkObject refuses objects nested deeper than this.
MAX_DEPTH = 32


class JSONError(ValueError):
    """The text is not one JSON value as Go reads it."""


class AmbiguousMembers(ValueError):
    """Member names another JSON reader could read differently (CheckMembers)."""


class Number(str):
    """A JSON number, kept as its literal text (Go's json.Number)."""

    __slots__ = ()


# The simple case-folding orbits (Go's unicode.SimpleFold) of the ASCII
# letters that have members outside ASCII: strings.EqualFold, which Go's
# encoding/json uses to match member names to struct fields, treats these as
# equal to the letter. Every other ASCII letter folds only to its other case,
# and no other ASCII character folds to anything but itself.
_EXTRA_FOLDS = {"k": "\u212a", "s": "\u017f"}  # KELVIN SIGN, LATIN SMALL LETTER LONG S


# Every rune Go's simple folding maps onto an ASCII letter, as that letter's
# lower case: the other case, and the two non-ASCII members of those orbits.
_FOLD = {ord(c): ord(c.lower()) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}
_FOLD.update({ord(v): ord(k) for k, v in _EXTRA_FOLDS.items()})
_fold_tables = {}


def folds_to(name, reserved):
    """The reserved (ASCII) name that name equals under Go's Unicode simple
    case folding ("SUB", "\u017fub" and "Sub" fold to "sub"), or None.
    An exact match returns the name too."""
    table = _fold_tables.get(reserved)
    if table is None:
        table = {r.translate(_FOLD): r for r in reserved}
        _fold_tables[reserved] = table
    return table.get(name.translate(_FOLD))


_WS = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
# A run of string characters that need no decoding: not '"', '\\', a control
# character, or a lone surrogate (which appears only from bytes we replaced).
_PLAIN = re.compile(r'[^"\\\x00-\x1f]*')
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")
_NUMBER_ONLY = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\Z")


def is_number_literal(s):
    """Whether s is a JSON number literal (Go's isValidNumber)."""
    return _NUMBER_ONLY.match(s) is not None


def _decode_go_utf8(data):
    """Bytes to str as Go reads JSON text: each byte of an invalid UTF-8
    sequence becomes one U+FFFD."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    out = []
    i = 0
    n = len(data)
    while i < n:
        try:
            out.append(data[i:].decode("utf-8"))
            break
        except UnicodeDecodeError as e:
            out.append(data[i:i + e.start].decode("utf-8"))
            # Go's utf8.DecodeRune consumes one byte of an invalid sequence.
            out.append("\ufffd")
            i += e.start + 1
    return "".join(out)


def _read_string(s, i):
    """Reads the string whose opening quote is at s[i-1]; returns (value, end)."""
    parts = []
    while True:
        m = _PLAIN.match(s, i)
        parts.append(m.group())
        i = m.end()
        if i >= len(s):
            raise JSONError("unterminated string")
        c = s[i]
        if c == '"':
            return "".join(parts), i + 1
        if c != "\\":
            raise JSONError("control character in string")
        i += 1
        if i >= len(s):
            raise JSONError("unterminated escape")
        e = s[i]
        if e in _ESCAPES:
            parts.append(_ESCAPES[e])
            i += 1
            continue
        if e != "u" or not _HEX4.match(s, i + 1):
            raise JSONError("invalid escape")
        cp = int(s[i + 1:i + 5], 16)
        i += 5
        if 0xD800 <= cp < 0xDC00:
            # A high surrogate pairs only with an escaped low one that
            # follows at once; Go replaces anything else with U+FFFD and
            # reads what follows on its own.
            if s.startswith("\\u", i) and _HEX4.match(s, i + 2):
                lo = int(s[i + 2:i + 6], 16)
                if 0xDC00 <= lo < 0xE000:
                    parts.append(chr(0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)))
                    i += 6
                    continue
            parts.append("\ufffd")
            continue
        if 0xDC00 <= cp < 0xE000:
            parts.append("\ufffd")
            continue
        parts.append(chr(cp))


def loads_checked(data, reserved=(), inner=None):
    """Reads data (bytes) as one JSON object, refusing what meshtoken's
    checkMembers refuses: JSONError for text Go's decoder refuses, and
    AmbiguousMembers for duplicate names at any depth, a top-level name that
    folds to one of reserved without equal to it, the same for the members
    of top-level objects named in inner, or objects nested deeper than 32.
    Every failure in the Go check is ambiguous_claims, syntax included, so
    callers that need one reason may treat both alike."""
    inner = inner or {}
    data = bytes(data)
    fast = _fast(data, reserved, inner)
    if fast is not None:
        return fast
    s = _decode_go_utf8(data)
    i = _WS.match(s, 0).end()
    if i >= len(s) or s[i] != "{":
        raise AmbiguousMembers("not a JSON object")
    root, i = _read_value(s, i, reserved, inner)
    i = _WS.match(s, i).end()
    if i != len(s):
        # meshtoken refuses data after the object only when Go's
        # Decoder.Token reads a token there; other trailing bytes pass its
        # member check and make the later json.Unmarshal fail (malformed,
        # after the header and signature checks). Both are refusals; the
        # reason must match too.
        if _token_at(s, i):
            raise AmbiguousMembers("data after the object")
        raise TrailingData(root)
    return root


class TrailingData(JSONError):
    """The object is followed by bytes that are not a JSON token: Go's
    member check passes, its Unmarshal fails. .value is the object read."""

    def __init__(self, value):
        super().__init__("invalid data after the object")
        self.value = value


# The bytes of the payloads meshauth itself writes: printable ASCII and JSON
# whitespace, no escapes. For these, Python's json module and Go's
# encoding/json read the same names and values, so the C parser can do the
# work (as meshtoken's plainMembersOK does for Go).
_PLAIN_BYTES = re.compile(rb"[\x20-\x5b\x5d-\x7e\t\n\r]*\Z")


class _Doubt(Exception):
    pass


def _pairs(pairs):
    d = dict(pairs)
    if len(d) != len(pairs):
        raise _Doubt()
    return d


def _no_constant(name):
    raise _Doubt()


def _fast(data, reserved, inner):
    """The object when data is plain and every check passes; None when in
    any doubt (the iterative reader then decides, with its error)."""
    if not _PLAIN_BYTES.match(data) or data.count(b"{") + data.count(b"[") > MAX_DEPTH:
        return None
    try:
        root = _stdjson.loads(data.decode("ascii"), object_pairs_hook=_pairs, parse_float=Number,
                              parse_int=Number, parse_constant=_no_constant)
    except (_Doubt, ValueError):
        return None
    if not isinstance(root, dict):
        return None
    for name in root:
        r = folds_to(name, reserved)
        if r is not None and r != name:
            return None
        names = inner.get(name)
        if names and isinstance(root[name], dict):
            for n in root[name]:
                r = folds_to(n, names)
                if r is not None and r != n:
                    return None
    return root


def _token_at(s, i):
    """Whether Go's Decoder.Token, at the top level, reads a token at s[i:]
    (a delimiter that opens, a complete string, literal or number)."""
    c = s[i]
    if c in "{[":
        return True
    if c == '"':
        try:
            _read_string(s, i + 1)
            return True
        except JSONError:
            return False
    for lit in ("true", "false", "null"):
        if s.startswith(lit, i):
            return True
    m = _NUMBER.match(s, i)
    if not m or m.end() == i:
        return False
    num, nxt = m.group(), s[m.end():m.end() + 1]
    # The scanner goes on into a fraction or exponent that the match did
    # not take only to fail on it.
    if nxt == "." and "." not in num and "e" not in num.lower():
        return False
    if nxt in ("e", "E") and "e" not in num.lower():
        return False
    return True


def _read_value(s, i, reserved, inner):
    """An iterative reader: a stack of open containers, so no input can
    exhaust Python's recursion limit."""
    # Each frame: [container, kind, pending_key, depth_of_object, reserved, seen]
    stack = []
    value = None
    while True:
        i = _WS.match(s, i).end()
        if i >= len(s):
            raise JSONError("unexpected end of JSON")
        c = s[i]
        top = stack[-1] if stack else None
        # Read one value starting at i.
        if c == "{" or c == "[":
            if len(stack) + 1 > _GO_MAX_NESTING:
                raise JSONError("exceeded max depth")
            if c == "{":
                # meshtoken counts depth as checkObject/checkValue do: the
                # top-level object is 1, and each level of object or array
                # below adds one.
                depth = len(stack) + 1
                if depth > MAX_DEPTH:
                    raise AmbiguousMembers("nested too deeply")
                if top is None:
                    names = reserved
                elif len(stack) == 1 and top[1] == "o":
                    names = inner.get(top[2], None)
                else:
                    names = None
                frame = [{}, "o", None, depth, names]
            else:
                frame = [[], "a", None, len(stack) + 1, None]
            stack.append(frame)
            i += 1
            i = _WS.match(s, i).end()
            if i < len(s) and s[i] == ("}" if c == "{" else "]"):
                i += 1
                value = stack.pop()[0]
            elif c == "{":
                i = _read_key(s, i, frame)
                continue
            else:
                continue
        elif c == '"':
            value, i = _read_string(s, i + 1)
        elif c == "t" and s.startswith("true", i):
            value, i = True, i + 4
        elif c == "f" and s.startswith("false", i):
            value, i = False, i + 5
        elif c == "n" and s.startswith("null", i):
            value, i = None, i + 4
        else:
            m = _NUMBER.match(s, i)
            if not m or m.end() == i:
                raise JSONError("invalid character")
            value, i = Number(m.group()), m.end()
        # Store value into the enclosing containers, closing as many as end.
        while True:
            if not stack:
                return value, i
            top = stack[-1]
            if top[1] == "o":
                top[0][top[2]] = value
            else:
                top[0].append(value)
            i = _WS.match(s, i).end()
            if i >= len(s):
                raise JSONError("unexpected end of JSON")
            c = s[i]
            if c == ",":
                i += 1
                if top[1] == "o":
                    i = _read_key(s, _WS.match(s, i).end(), top)
                break
            close = "}" if top[1] == "o" else "]"
            if c != close:
                raise JSONError("expected , or " + close)
            i += 1
            value = stack.pop()[0]


def _read_key(s, i, frame):
    """Reads `"name" :` into frame's pending key, checking it."""
    if i >= len(s) or s[i] != '"':
        raise JSONError("expected a member name")
    name, i = _read_string(s, i + 1)
    if name in frame[0]:
        raise AmbiguousMembers("member %r appears twice" % name)
    names = frame[4]
    if names:
        r = folds_to(name, names)
        if r is not None and r != name:
            raise AmbiguousMembers("member %r spells %r differently" % (name, r))
    i = _WS.match(s, i).end()
    if i >= len(s) or s[i] != ":":
        raise JSONError("expected :")
    frame[2] = name
    return i + 1

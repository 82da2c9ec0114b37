package meshtoken

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// cnfMembers are the members meshauth reads inside cnf.
var cnfMembers = []string{"x5t#S256"}

// foldsTo returns the reserved name that name folds to (Unicode simple case
// folding, as Go's encoding/json matches struct fields: "SUB", "ſub" and
// "Sub" all fold to "sub"), or "" when it folds to none. An exact match also
// returns the name.
func foldsTo(name string, reserved []string) string {
	for _, r := range reserved {
		if strings.EqualFold(name, r) {
			return r
		}
	}
	return ""
}

// ErrAmbiguousMembers is returned for a payload whose member names another
// JSON reader could read differently from Go.
var ErrAmbiguousMembers = errors.New("payload has duplicate members or a member that spells a registered claim differently")

// maxDepth bounds nesting so a hostile payload cannot recurse deeply.
const maxDepth = 32

// CheckMembers refuses a JWT payload that JSON readers could disagree on.
// Go's encoding/json keeps the last of duplicate members and matches member
// names to fields case-insensitively with Unicode folding; other readers keep
// the first duplicate, or refuse it, and match exactly. So a payload is
// accepted only when it is one JSON object in which no object has duplicate
// member names, no top-level member folds to a registered claim without being
// byte-equal to it, and no member of cnf folds to one of cnf's members
// without being equal to it. Member names are compared after JSON unescaping,
// as every reader does.
func CheckMembers(payload []byte) error {
	return checkMembers(payload, registeredClaims[:], map[string][]string{"cnf": cnfMembers, ClaimActor: actMembers})
}

// checkMembers checks one JSON object: no duplicates at any depth, top-level
// names that fold to one of reserved only when equal to it, and the same for
// the members of the top-level objects named in inner.
func checkMembers(payload []byte, reserved []string, inner map[string][]string) error {
	if plainMembersOK(payload, reserved, inner) {
		return nil
	}
	return checkMembersJSON(payload, reserved, inner)
}

// checkMembersJSON is checkMembers by encoding/json's own tokenizer, so
// names are unescaped exactly as every Go reader of the payload sees them.
func checkMembersJSON(payload []byte, reserved []string, inner map[string][]string) error {
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrAmbiguousMembers, err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return fmt.Errorf("%w: not a JSON object", ErrAmbiguousMembers)
	}
	if err := checkObject(dec, reserved, inner, 1); err != nil {
		return err
	}
	if _, err := dec.Token(); err == nil {
		return fmt.Errorf("%w: data after the object", ErrAmbiguousMembers)
	}
	return nil
}

// checkObject walks the members of an object whose '{' was just read, up to
// and including its '}'. reserved are the names its members may spell only
// exactly; nil for objects meshauth does not read.
func checkObject(dec *json.Decoder, reserved []string, inner map[string][]string, depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("%w: nested too deeply", ErrAmbiguousMembers)
	}
	seen := make(map[string]struct{})
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return fmt.Errorf("%w: %w", ErrAmbiguousMembers, err)
		}
		name, _ := tok.(string)
		if _, dup := seen[name]; dup {
			return fmt.Errorf("%w: member %q appears twice", ErrAmbiguousMembers, name)
		}
		seen[name] = struct{}{}
		if r := foldsTo(name, reserved); r != "" && r != name {
			return fmt.Errorf("%w: member %q spells %q differently", ErrAmbiguousMembers, name, r)
		}
		var nested []string
		if depth == 1 {
			nested = inner[name]
		}
		if err := checkValue(dec, nested, depth); err != nil {
			return err
		}
	}
	_, err := dec.Token() // the closing '}'
	if err != nil {
		return fmt.Errorf("%w: %w", ErrAmbiguousMembers, err)
	}
	return nil
}

// checkValue reads one value, checking any object inside it.
func checkValue(dec *json.Decoder, reserved []string, depth int) error {
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrAmbiguousMembers, err)
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	switch d {
	case '{':
		return checkObject(dec, reserved, nil, depth+1)
	case '[':
		for dec.More() {
			if err := checkValue(dec, nil, depth+1); err != nil {
				return err
			}
		}
		if _, err := dec.Token(); err != nil {
			return fmt.Errorf("%w: %w", ErrAmbiguousMembers, err)
		}
	}
	return nil
}

// WellFormed accepts only three non-empty base64url segments (RFC 7515
// compact serialization, no padding). Go's base64 decoder skips CR and LF,
// so without this check one token would have many spellings.
func WellFormed(token string) bool {
	dots, segment := 0, 0
	for i := 0; i < len(token); i++ {
		switch c := token[i]; {
		case c == '.':
			if segment == 0 {
				return false
			}
			dots++
			segment = 0
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
			segment++
		default:
			return false
		}
	}
	return dots == 2 && segment > 0
}

package meshtoken

// plainMembersOK is the fast path of checkMembers for the payloads meshauth
// itself writes: it reports true only when payload is one JSON object,
// followed by nothing but whitespace, whose strings are all printable ASCII
// without escapes, nested at most maxDepth deep, with no duplicate member
// names in any object, no top-level name that folds to one of reserved
// without being it, and the same for the objects named in inner. Every
// such payload is one that the encoding/json walk of checkMembers accepts
// too; for anything else (an escape, a byte outside printable ASCII, a
// refusal, any doubt) it reports false and checkMembers decides, with its
// error. It allocates nothing, which is what makes a cold verification
// cost little more than its signature check.
func plainMembersOK(payload []byte, reserved []string, inner map[string][]string) bool {
	s := plainScanner{b: payload}
	s.ws()
	if !s.object(reserved, inner, 1) {
		return false
	}
	s.ws()
	return s.i == len(s.b)
}

type plainScanner struct {
	b []byte
	i int
}

// maxPlainMembers bounds the names remembered per object for the duplicate
// check; an object with more goes the slow way.
const maxPlainMembers = 32

func (s *plainScanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// str reads a string of printable ASCII without escapes and returns its
// contents (a slice of the payload).
func (s *plainScanner) str() ([]byte, bool) {
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return nil, false
	}
	start := s.i + 1
	for j := start; j < len(s.b); j++ {
		c := s.b[j]
		switch {
		case c == '"':
			s.i = j + 1
			return s.b[start:j], true
		case c == '\\' || c < 0x20 || c > 0x7e:
			return nil, false
		}
	}
	return nil, false
}

// object reads an object whose '{' is at s.i.
func (s *plainScanner) object(reserved []string, inner map[string][]string, depth int) bool {
	if depth > maxDepth || s.i >= len(s.b) || s.b[s.i] != '{' {
		return false
	}
	s.i++
	var names [maxPlainMembers][]byte
	n := 0
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == '}' {
		s.i++
		return true
	}
	for {
		s.ws()
		name, ok := s.str()
		if !ok || n == maxPlainMembers {
			return false
		}
		for _, seen := range names[:n] {
			if string(seen) == string(name) {
				return false
			}
		}
		names[n] = name
		n++
		if reserved != nil {
			if r := foldsTo(string(name), reserved); r != "" && r != string(name) {
				return false
			}
		}
		s.ws()
		if s.i >= len(s.b) || s.b[s.i] != ':' {
			return false
		}
		s.i++
		s.ws()
		var nested []string
		if depth == 1 && inner != nil {
			nested = inner[string(name)]
		}
		if !s.value(nested, depth) {
			return false
		}
		if more, ok := s.next('}'); !ok || !more {
			return ok
		}
	}
}

// value reads one value; reserved applies to an object value.
func (s *plainScanner) value(reserved []string, depth int) bool {
	if s.i >= len(s.b) {
		return false
	}
	switch c := s.b[s.i]; {
	case c == '{':
		return s.object(reserved, nil, depth+1)
	case c == '[':
		return s.array(depth + 1)
	case c == '"':
		_, ok := s.str()
		return ok
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	case c == '-' || c >= '0' && c <= '9':
		return s.number()
	}
	return false
}

func (s *plainScanner) array(depth int) bool {
	if depth > maxDepth {
		return false
	}
	s.i++ // '['
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == ']' {
		s.i++
		return true
	}
	for {
		s.ws()
		if !s.value(nil, depth) {
			return false
		}
		if more, ok := s.next(']'); !ok || !more {
			return ok
		}
	}
}

// next reads what follows a member or an element: a comma (more follows)
// or closer (the object or array ends); anything else is not plain JSON.
func (s *plainScanner) next(closer byte) (more, ok bool) {
	s.ws()
	if s.i >= len(s.b) {
		return false, false
	}
	switch s.b[s.i] {
	case ',':
		s.i++
		return true, true
	case closer:
		s.i++
		return false, true
	}
	return false, false
}

func (s *plainScanner) literal(word string) bool {
	if len(s.b)-s.i < len(word) || string(s.b[s.i:s.i+len(word)]) != word {
		return false
	}
	s.i += len(word)
	return true
}

// number reads a JSON number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *plainScanner) number() bool {
	digits := func() int {
		start := s.i
		for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
			s.i++
		}
		return s.i - start
	}
	if s.b[s.i] == '-' {
		s.i++
	}
	if s.i >= len(s.b) {
		return false
	}
	if s.b[s.i] == '0' {
		s.i++
	} else if digits() == 0 {
		return false
	}
	if s.i < len(s.b) && s.b[s.i] == '.' {
		s.i++
		if digits() == 0 {
			return false
		}
	}
	if s.i < len(s.b) && (s.b[s.i] == 'e' || s.b[s.i] == 'E') {
		s.i++
		if s.i < len(s.b) && (s.b[s.i] == '+' || s.b[s.i] == '-') {
			s.i++
		}
		if digits() == 0 {
			return false
		}
	}
	return true
}

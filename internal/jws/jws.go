// Package jws holds the JWS form checks shared by the engine and the client
// library, so both refuse exactly the same spellings of a token.
package jws

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

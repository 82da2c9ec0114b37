package meshtoken

import "testing"

func TestWellFormed(t *testing.T) {
	for token, want := range map[string]bool{
		"a.b.c":       true,
		"a-_.b0.c9":   true,
		"a.b":         false,
		"a.b.c.d":     false,
		".b.c":        false,
		"a..c":        false,
		"a.b.":        false,
		"a=.b.c":      false,
		"a.\r\nb.c":   false,
		"a.b.c ":      false,
		"":            false,
		"a+b.c/d.e==": false,
	} {
		if got := WellFormed(token); got != want {
			t.Errorf("WellFormed(%q) = %v, want %v", token, got, want)
		}
	}
}

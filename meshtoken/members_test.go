package meshtoken

import (
	"errors"
	"testing"
)

func TestCheckMembers(t *testing.T) {
	cases := []struct {
		payload string
		ok      bool
	}{
		{`{"iss":"m","sub":"orders","aud":"x","exp":1,"cnf":{"x5t#S256":"abc"},"team":"a"}`, true},
		{`{"sub":"orders","nested":{"a":1,"b":[{"c":2},{"c":3}]}}`, true},
		{`{"sub":"orders","SUB":"payments"}`, false},
		{`{"sub":"orders","Sub":"payments"}`, false},
		{"{\"sub\":\"orders\",\"\u017fub\":\"payments\"}", false},  // ſ folds to s
		{"{\"sub\":\"orders\",\"\\u017fub\":\"payments\"}", false}, // escaped ſ
		{"{\"\u212aid\":\"x\",\"sub\":\"a\"}", true},               // kid is a header name, not a claim here
		{`{"sub":"orders","sub":"payments"}`, false},
		{`{"sub":"orders","s\u0075b":"payments"}`, false}, // escaped duplicate
		{`{"EXP":4102444800,"exp":1}`, false},
		{`{"cnf":{"X5T#s256":"abc"}}`, false},
		{`{"cnf":{"x5t#S256":"a","x5t#S256":"b"}}`, false},
		{`{"extra":{"a":1,"a":2}}`, false},
		{`[1]`, false},
		{`{"sub":"a"} {"sub":"b"}`, false},
		{`{"sub":"a"`, false},
		{`{"sub":"a",}`, false},
	}
	for _, c := range cases {
		err := CheckMembers([]byte(c.payload))
		if (err == nil) != c.ok {
			t.Errorf("CheckMembers(%s) = %v, want ok=%v", c.payload, err, c.ok)
		}
		if err != nil && !errors.Is(err, ErrAmbiguousMembers) {
			t.Errorf("CheckMembers(%s) = %v, not ErrAmbiguousMembers", c.payload, err)
		}
	}
}

func TestFoldsTo(t *testing.T) {
	for name, want := range map[string]string{"sub": "sub", "SUB": "sub", "\u017fub": "sub", "\u212aid": "kid", "team": "", "X5T#s256": "x5t#S256"} {
		if got := FoldsTo(name, ReservedNames); got != want {
			t.Errorf("FoldsTo(%q) = %q, want %q", name, got, want)
		}
	}
}

func FuzzCheckMembers(f *testing.F) {
	f.Add([]byte(`{"sub":"a","cnf":{"x5t#S256":"b"}}`))
	f.Add([]byte(`{"a":[{"b":{"c":[1,2,{"d":null}]}}]}`))
	f.Fuzz(func(_ *testing.T, b []byte) {
		_ = CheckMembers(b)
	})
}

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
		if got := foldsTo(name, ReservedNames()); got != want {
			t.Errorf("foldsTo(%q) = %q, want %q", name, got, want)
		}
	}
}

func FuzzCheckMembers(f *testing.F) {
	f.Add([]byte(`{"sub":"a","cnf":{"x5t#S256":"b"}}`))
	f.Add([]byte(`{"a":[{"b":{"c":[1,2,{"d":null}]}}]}`))
	f.Add([]byte(`{"iss":"m","sub":"o","aud":["p"],"exp":1.5e3,"nbf":-0,"cnf":{"x5t#S256":"x"},"t":[true,false,null,{}]}`))
	f.Add([]byte(`{"sub":"a","SUB":"b"}`))
	f.Add([]byte(` {"a":{"a":1}} `))
	f.Fuzz(func(t *testing.T, b []byte) {
		err := CheckMembers(b)
		// The fast path may only accept what encoding/json's walk accepts.
		inner := map[string][]string{"cnf": cnfMembers}
		if plainMembersOK(b, RegisteredClaims(), inner) {
			if err := checkMembersJSON(b, RegisteredClaims(), inner); err != nil {
				t.Fatalf("fast path accepted %q, which the JSON walk refuses: %v", b, err)
			}
		}
		if plainMembersOK(b, headerNames[:], nil) {
			if err := checkMembersJSON(b, headerNames[:], nil); err != nil {
				t.Fatalf("fast path accepted header %q, which the JSON walk refuses: %v", b, err)
			}
		}
		_ = err
	})
}

// The fast path accepts the payloads meshauth writes, and leaves every
// refusal to the JSON walk (so the reason stays the walk's).
func TestCheckMembersFastPath(t *testing.T) {
	inner := map[string][]string{"cnf": cnfMembers}
	for _, p := range []string{
		`{"iss":"https://v/v1/meshauth","sub":"orders","aud":["payments"],"iat":1,"nbf":1,"exp":2,"jti":"j","cnf":{"x5t#S256":"x"},"gen":"1","team":"a"}`,
		` {"a":{"b":[1,-2.5e-3,0,true,false,null,"s",{}]}} `,
		`{}`,
	} {
		if !plainMembersOK([]byte(p), RegisteredClaims(), inner) {
			t.Errorf("fast path refused %s", p)
		}
	}
	for _, p := range []string{
		`{"sub":"a","SUB":"b"}`, `{"sub":"a","sub":"b"}`, `{"cnf":{"X5T#s256":"x"}}`, `{"a":{"b":1,"b":2}}`,
		`{"s\u0075b":"x"}`, "{\"\u017fub\":\"x\"}", `{"a":01}`, `{"a":1.}`, `{"a":tru}`, `{"a":1}x`,
		`{"a":1,}`, `[1]`, `{"a":[1,]}`, "{\"a\":\"\x01\"}", "{\"a\":\"\xc3\xa9\"}",
	} {
		if plainMembersOK([]byte(p), RegisteredClaims(), inner) {
			t.Errorf("fast path accepted %s", p)
		}
	}
}

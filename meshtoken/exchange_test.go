package meshtoken

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
)

// x5tOrders is a well-formed x5t#S256 (43 base64url characters).
const x5tOrders = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"

func TestActorChain(t *testing.T) {
	j := newJWKSServer(t)
	kid := j.addKey("ES256")
	v := j.verifier(t, "payments")
	tok := j.sign(t, kid, map[string]any{
		"act":                   map[string]any{"sub": "ledger", "act": map[string]any{"sub": "payments"}},
		"meshauth_derived_from": []string{"J0", "J1"},
		"meshauth_derived_cnf":  []string{"", x5tOrders},
	})
	// Secure by default: a verifier that did not opt in (MaxDelegationDepth
	// 0) refuses every token with act.
	if _, err := v.Verify(t.Context(), tok, nil); !errors.Is(err, ErrDelegation) || !errors.Is(err, ErrInvalidToken) || ReasonOf(err) != ReasonDelegationNotAllowed {
		t.Fatalf("delegated token without opting in: %v", err)
	}
	v.cfg.MaxDelegationDepth = 2
	c, err := v.Verify(t.Context(), tok, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Actors(); !slices.Equal(got, []string{"ledger", "payments"}) {
		t.Errorf("Actors %v; want the outermost first", got)
	}
	if got := c.DerivedFrom(); !slices.Equal(got, []string{"J0", "J1"}) {
		t.Errorf("DerivedFrom %v", got)
	}
	if got := c.DerivedConfirmations(); !slices.Equal(got, []string{"", x5tOrders}) {
		t.Errorf("DerivedConfirmations %v", got)
	}
	if _, ok := c.Extra()["act"]; ok {
		t.Error("Extra holds act")
	}
	for name, mod := range map[string]map[string]any{
		"act without derived_from": {"act": map[string]any{"sub": "payments"}},
		"act not an object":        {"act": "payments", "meshauth_derived_from": []string{"J0"}},
		"ACT":                      {"ACT": map[string]any{"sub": "payments"}},
		"act.SUB":                  {"act": map[string]any{"SUB": "payments"}, "meshauth_derived_from": []string{"J0"}, "meshauth_derived_cnf": []string{""}},
		"act without derived_cnf":  {"act": map[string]any{"sub": "payments"}, "meshauth_derived_from": []string{"J0"}},
		"derived_cnf not x5t":      {"act": map[string]any{"sub": "payments"}, "meshauth_derived_from": []string{"J0"}, "meshauth_derived_cnf": []string{"orders"}},
		"derived_cnf too long":     {"act": map[string]any{"sub": "payments"}, "meshauth_derived_from": []string{"J0"}, "meshauth_derived_cnf": []string{"", ""}},
	} {
		if _, err := v.Verify(t.Context(), j.sign(t, kid, mod), nil); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("%s: %v", name, err)
		}
	}
	v.cfg.MaxDelegationDepth = 1
	if _, err := v.Verify(t.Context(), tok, nil); !errors.Is(err, ErrDelegation) {
		t.Errorf("two actors past MaxDelegationDepth 1: %v", err)
	}
	v.cfg.MaxDelegationDepth = 2
	v.cfg.AllowedActors = []string{"ledger"}
	if _, err := v.Verify(t.Context(), tok, nil); !errors.Is(err, ErrDelegation) {
		t.Errorf("payments not in AllowedActors: %v", err)
	}
	v.cfg.AllowedActors = []string{"payments", "ledger"}
	if _, err := v.Verify(t.Context(), tok, nil); err != nil {
		t.Errorf("every actor allowed: %v", err)
	}
	// A token without act passes whatever the options say.
	v.cfg.MaxDelegationDepth, v.cfg.AllowedActors = -1, []string{}
	if _, err := v.Verify(t.Context(), j.sign(t, kid, nil), nil); err != nil {
		t.Errorf("a login's token: %v", err)
	}
}

func TestMiddlewareKeepsToken(t *testing.T) {
	j := newJWKSServer(t)
	kid := j.addKey("ES256")
	v := j.verifier(t, "payments")
	tok := j.sign(t, kid, nil)
	var got string
	h := v.Middleware(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		got, _ = TokenFromContext(r.Context())
	}))
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	h.ServeHTTP(httptest.NewRecorder(), req)
	if got != tok {
		t.Fatalf("TokenFromContext %q; want the verified token", got)
	}
	if _, ok := TokenFromContext(t.Context()); ok {
		t.Fatal("a token in an empty context")
	}
}

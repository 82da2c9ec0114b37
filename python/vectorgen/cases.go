package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
)

// claims renders a payload from ordered members (name, raw JSON value), so
// duplicates, odd spellings and raw numbers can be written as they are.
func claims(members ...string) string {
	var sb strings.Builder
	sb.WriteByte('{')
	for i := 0; i+1 < len(members); i += 2 {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(members[i])
		sb.WriteByte(':')
		sb.WriteString(members[i+1])
	}
	sb.WriteByte('}')
	return sb.String()
}

func q(s string) string { b, _ := json.Marshal(s); return string(b) }

// base are the members of a valid token, in order; with overrides.
func (fx *fixture) base(extra ...string) []string {
	m := []string{
		`"iss"`, q(issuer), `"sub"`, `"orders"`, `"aud"`, q(audience),
		`"iat"`, fmt.Sprint(fx.now - 60), `"nbf"`, fmt.Sprint(fx.now - 60), `"exp"`, fmt.Sprint(farFuture),
		`"jti"`, `"jti-1"`,
	}
	return append(m, extra...)
}

// set replaces the raw value of a member of base (or appends it).
func set(m []string, name, raw string) []string {
	out := append([]string(nil), m...)
	for i := 0; i+1 < len(out); i += 2 {
		if out[i] == name {
			if raw == "" {
				return append(out[:i], out[i+2:]...)
			}
			out[i+1] = raw
			return out
		}
	}
	if raw == "" {
		return out
	}
	return append(out, name, raw)
}

func header(key string, fx *fixture) string {
	s := fx.signers[key]
	return fmt.Sprintf(`{"alg":%q,"kid":%q,"typ":"JWT"}`, s.alg, s.kid)
}

// tok signs a token of raw header and payload JSON.
func (fx *fixture) tok(key, hdr, payload string) string {
	return fx.sign(key, b64([]byte(hdr)), b64([]byte(payload)))
}

// vectors are the named cases, each with the verdict the contract gives.
func (fx *fixture) vectors() (*File, error) {
	f := fx.file("Shared test vectors of meshtoken (Go) and meshauth (Python), written by python/vectorgen (make vectors). Each case: token, presented certificate, expected reason (\"\" = accepted).")
	cnf := `{"x5t#S256":` + q(fx.x5t("orders")) + `}`
	bound := fx.base(`"cnf"`, cnf)
	ok := claims(fx.base()...)
	edH := header("ed", fx)
	add := func(name, token, cert, reason string) {
		f.Cases = append(f.Cases, Case{Name: name, Token: token, Certificate: cert, Reason: reason})
	}
	for _, k := range []string{"ed", "es256", "es384", "rs256"} {
		add("valid "+fx.signers[k].alg, fx.tok(k, header(k, fx), ok), "", "")
		add("valid bound "+fx.signers[k].alg, fx.tok(k, header(k, fx), claims(bound...)), "orders", "")
	}
	add("bound, no certificate", fx.tok("ed", edH, claims(bound...)), "", "certificate_missing")
	add("bound, another certificate", fx.tok("ed", edH, claims(bound...)), "thief", "certificate_mismatch")
	add("unbound token with a certificate", fx.tok("ed", edH, ok), "thief", "")
	add("cnf without x5t#S256", fx.tok("ed", edH, claims(fx.base(`"cnf"`, `{}`)...)), "orders", "unsupported_confirmation")
	add("cnf x5t#S256 null", fx.tok("ed", edH, claims(fx.base(`"cnf"`, `{"x5t#S256":null}`)...)), "orders", "unsupported_confirmation")
	add("cnf x5t#S256 too short", fx.tok("ed", edH, claims(fx.base(`"cnf"`, `{"x5t#S256":"abc"}`)...)), "orders", "unsupported_confirmation")
	add("cnf x5t#S256 padded", fx.tok("ed", edH, claims(fx.base(`"cnf"`, `{"x5t#S256":`+q(fx.x5t("orders")+"=")+`}`)...)), "orders", "unsupported_confirmation")
	x5t := fx.x5t("orders")
	add("cnf x5t#S256 non-canonical", fx.tok("ed", edH, claims(fx.base(`"cnf"`, `{"x5t#S256":`+q(x5t[:42]+string(nonCanonical(x5t[42], 3)))+`}`)...)), "orders", "unsupported_confirmation")
	add("cnf x5t#S256 with another method beside it", fx.tok("ed", edH, claims(fx.base(`"cnf"`, `{"x5t#S256":`+q(x5t)+`,"jkt":"x"}`)...)), "orders", "")
	add("cnf another method only", fx.tok("ed", edH, claims(fx.base(`"cnf"`, `{"jkt":"x"}`)...)), "orders", "unsupported_confirmation")
	add("cnf a string", fx.tok("ed", edH, claims(fx.base(`"cnf"`, q(x5t))...)), "orders", "malformed")
	add("cnf refused before time and issuer", fx.tok("ed", edH, claims(set(set(fx.base(`"cnf"`, `{}`), `"exp"`, "1"), `"iss"`, `"x"`)...)), "orders", "unsupported_confirmation")
	add("cnf null is no cnf", fx.tok("ed", edH, claims(fx.base(`"cnf"`, `null`)...)), "", "")
	add("cnf member spelled differently", fx.tok("ed", edH, claims(fx.base(`"cnf"`, `{"X5T#s256":`+q(fx.x5t("orders"))+`}`)...)), "orders", "ambiguous_claims")

	// Duplicates and folding: the claim-shadowing class.
	add("duplicate sub (first orders, last admin)", fx.tok("ed", edH, claims(append(fx.base(), `"sub"`, `"admin"`)...)), "", "ambiguous_claims")
	add("duplicate sub, same value", fx.tok("ed", edH, claims(append(fx.base(), `"sub"`, `"orders"`)...)), "", "ambiguous_claims")
	add("duplicate sub through an escape", fx.tok("ed", edH, claims(append(fx.base(), `"\u0073ub"`, `"admin"`)...)), "", "ambiguous_claims")
	add("sub spelled by escape only", fx.tok("ed", edH, claims(set(set(fx.base(), `"sub"`, ""), `"\u0073ub"`, `"orders"`)...)), "", "")
	add("SUB beside sub", fx.tok("ed", edH, claims(append(fx.base(), `"SUB"`, `"admin"`)...)), "", "ambiguous_claims")
	add("long s (U+017F) sub", fx.tok("ed", edH, claims(append(fx.base(), `"ſub"`, `"admin"`)...)), "", "ambiguous_claims")
	add("long s iss, escaped", fx.tok("ed", edH, claims(append(fx.base(), `"\u017fub"`, `"admin"`)...)), "", "ambiguous_claims")
	add("Kelvin sign in an extra claim is fine", fx.tok("ed", edH, claims(append(fx.base(), `"\u212aey"`, `"x"`)...)), "", "")
	add("duplicate in a nested extra object", fx.tok("ed", edH, claims(append(fx.base(), `"ctx"`, `{"a":1,"a":2}`)...)), "", "ambiguous_claims")
	add("duplicate inside an array", fx.tok("ed", edH, claims(append(fx.base(), `"ctx"`, `[{"a":1,"a":2}]`)...)), "", "ambiguous_claims")
	add("duplicate cnf member", fx.tok("ed", edH, claims(fx.base(`"cnf"`, `{"x5t#S256":"a","x5t#S256":`+q(fx.x5t("orders"))+`}`)...)), "orders", "ambiguous_claims")
	add("lone surrogate and U+FFFD name twice", fx.tok("ed", edH, claims(append(fx.base(), `"\ud800"`, `1`, `"\ufffd"`, `2`)...)), "", "ambiguous_claims")
	add("invalid UTF-8 byte and U+FFFD name twice", fx.tok("ed", edH, claims(append(fx.base(), "\"\xff\"", `1`, `"\ufffd"`, `2`)...)), "", "ambiguous_claims")
	add("header duplicate alg", fx.tok("ed", `{"alg":"EdDSA","alg":"EdDSA","kid":"ed-1"}`, ok), "", "malformed")
	add("header ALG", fx.tok("ed", `{"alg":"EdDSA","ALG":"none","kid":"ed-1"}`, ok), "", "malformed")
	add("header Kelvin kid", fx.tok("ed", `{"alg":"EdDSA","kid":"ed-1","\u212aid":"x"}`, ok), "", "malformed")
	add("NaN in the payload", fx.tok("ed", edH, claims(append(fx.base(), `"x"`, `NaN`)...)), "", "ambiguous_claims")
	add("data after the payload object", fx.tok("ed", edH, ok+" {}"), "", "ambiguous_claims")
	add("payload is an array", fx.tok("ed", edH, "["+ok+"]"), "", "ambiguous_claims")
	nest := func(n int) string { return strings.Repeat(`{"a":`, n) + "1" + strings.Repeat("}", n) }
	// Extra claims as a claims_template renders them (objects, lists,
	// numbers, booleans, null): both verifiers hand them back alike.
	add("extra claims: objects, lists and numbers", fx.tok("ed", edH, claims(append(fx.base(),
		`"team"`, `"payments"`,
		`"ctx"`, `{"env":"prod","tier":2,"weight":0.25,"tags":["a",{"b":[1,-2.5,1e3,0]}],"none":null,"on":true}`,
		`"groups"`, `["admins","ops"]`,
		`"ids"`, `[1,9007199254740993,-12345678901234567890123]`,
		`"empty"`, `{}`, `"nothing"`, `[]`)...)), "", "")
	add("extra claim nested in a list of objects", fx.tok("ed", edH, claims(append(fx.base(), `"roles"`, `[{"name":"read","scopes":["a","b"]},{"name":"write","scopes":[]}]`)...)), "", "")
	add("objects nested 32 deep", fx.tok("ed", edH, claims(append(fx.base(), `"deep"`, nest(31))...)), "", "")
	add("objects nested 33 deep", fx.tok("ed", edH, claims(append(fx.base(), `"deep"`, nest(32))...)), "", "ambiguous_claims")
	add("arrays nested 2000 deep", fx.tok("ed", edH, claims(append(fx.base(), `"deep"`, strings.Repeat("[", 2000)+strings.Repeat("]", 2000))...)), "", "")

	// JOSE header.
	add("alg none", fx.tok("ed", `{"alg":"none","kid":"ed-1"}`, ok), "", "algorithm_not_allowed")
	add("alg HS256", fx.tok("ed", `{"alg":"HS256","kid":"ed-1"}`, ok), "", "algorithm_not_allowed")
	add("alg of another key", fx.tok("es256", `{"alg":"ES384","kid":"es256-1"}`, ok), "", "algorithm_mismatch")
	add("crit", fx.tok("ed", `{"alg":"EdDSA","kid":"ed-1","crit":["exp"]}`, ok), "", "unsupported_critical_header")
	add("crit null", fx.tok("ed", `{"alg":"EdDSA","kid":"ed-1","crit":null}`, ok), "", "unsupported_critical_header")
	add("unknown kid", fx.tok("ed", `{"alg":"EdDSA","kid":"nobody"}`, ok), "", "unknown_key")
	add("kid not a string", fx.tok("ed", `{"alg":"EdDSA","kid":1}`, ok), "", "malformed")
	add("typ not a string", fx.tok("ed", `{"alg":"EdDSA","kid":"ed-1","typ":1}`, ok), "", "malformed")
	add("typ of the revocation feed", fx.tok("ed", `{"alg":"EdDSA","kid":"ed-1","typ":"meshauth-revocations+jwt"}`, ok), "", "malformed")
	add("the revocation feed presented as a token", fx.feed, "", "malformed")
	add("typ absent", fx.tok("ed", `{"alg":"EdDSA","kid":"ed-1"}`, ok), "", "")
	add("typ of another kind", fx.tok("ed", `{"alg":"EdDSA","kid":"ed-1","typ":"at+jwt"}`, ok), "", "")
	good := fx.tok("ed", edH, ok)
	add("bad signature", good[:len(good)-4]+"AAAA", "", "bad_signature")
	add("token of a removed key", fx.tok("removed", header("removed", fx), ok), "", "revoked")

	// Form and size.
	add("four segments", good+".x", "", "malformed")
	add("padding", good+"=", "", "malformed")
	add("empty signature", good[:strings.LastIndexByte(good, '.')+1], "", "malformed")
	add("too large", fx.tok("ed", edH, claims(append(fx.base(), `"pad"`, q(strings.Repeat("x", 16<<10)))...)), "", "too_large")
	// A payload segment whose last character carries nonzero unused bits:
	// the same bytes, another spelling (RFC 7515 allows one).
	p := b64([]byte(ok))
	if len(p)%4 == 2 || len(p)%4 == 3 {
		p = p[:len(p)-1] + string(nonCanonical(p[len(p)-1], len(p)%4))
		add("non-canonical base64url payload", fx.sign("ed", b64([]byte(edH)), p), "", "malformed")
	}
	h := b64([]byte(edH + " "))
	if len(h)%4 == 2 || len(h)%4 == 3 {
		add("non-canonical base64url header", fx.sign("ed", h[:len(h)-1]+string(nonCanonical(h[len(h)-1], len(h)%4)), b64([]byte(ok))), "", "malformed")
	}

	// Claims.
	add("expired", fx.tok("ed", edH, claims(set(fx.base(), `"exp"`, fmt.Sprint(fx.now-3600))...)), "", "expired")
	add("not yet valid", fx.tok("ed", edH, claims(set(fx.base(), `"nbf"`, fmt.Sprint(farFuture-10))...)), "", "not_yet_valid")
	add("issued in the future", fx.tok("ed", edH, claims(set(fx.base(), `"iat"`, fmt.Sprint(farFuture-10))...)), "", "issued_in_future")
	add("wrong issuer", fx.tok("ed", edH, claims(set(fx.base(), `"iss"`, `"https://other"`)...)), "", "wrong_issuer")
	add("wrong audience", fx.tok("ed", edH, claims(set(fx.base(), `"aud"`, `["ledger"]`)...)), "", "wrong_audience")
	add("audience in a list", fx.tok("ed", edH, claims(set(fx.base(), `"aud"`, `["ledger","payments"]`)...)), "", "")
	add("no aud", fx.tok("ed", edH, claims(set(fx.base(), `"aud"`, "")...)), "", "wrong_audience")
	add("aud empty string", fx.tok("ed", edH, claims(set(fx.base(), `"aud"`, `""`)...)), "", "wrong_audience")
	add("no iss", fx.tok("ed", edH, claims(set(fx.base(), `"iss"`, "")...)), "", "wrong_issuer")
	add("no sub", fx.tok("ed", edH, claims(set(fx.base(), `"sub"`, "")...)), "", "missing_claim")
	add("no sub and wrong issuer", fx.tok("ed", edH, claims(set(set(fx.base(), `"sub"`, ""), `"iss"`, `"x"`)...)), "", "missing_claim")
	add("no exp and wrong issuer", fx.tok("ed", edH, claims(set(set(fx.base(), `"exp"`, ""), `"iss"`, `"x"`)...)), "", "missing_claim")
	add("not yet valid and wrong issuer", fx.tok("ed", edH, claims(set(set(fx.base(), `"nbf"`, fmt.Sprint(farFuture-10)), `"iss"`, `"x"`)...)), "", "not_yet_valid")
	add("expired and wrong audience", fx.tok("ed", edH, claims(set(set(fx.base(), `"exp"`, "1"), `"aud"`, `"ledger"`)...)), "", "wrong_audience")
	add("expired and no jti", fx.tok("ed", edH, claims(set(set(fx.base(), `"exp"`, "1"), `"jti"`, "")...)), "", "missing_claim")
	add("exp at Go's zero time counts as absent", fx.tok("ed", edH, claims(set(fx.base(), `"exp"`, "-62135596800")...)), "", "missing_claim")
	add("no jti", fx.tok("ed", edH, claims(set(fx.base(), `"jti"`, "")...)), "", "missing_claim")
	add("no nbf", fx.tok("ed", edH, claims(set(fx.base(), `"nbf"`, "")...)), "", "missing_claim")
	add("no exp", fx.tok("ed", edH, claims(set(fx.base(), `"exp"`, "")...)), "", "missing_claim")
	add("expired and wrong issuer", fx.tok("ed", edH, claims(set(set(fx.base(), `"exp"`, "1"), `"iss"`, `"x"`)...)), "", "wrong_issuer")
	add("sub a number", fx.tok("ed", edH, claims(set(fx.base(), `"sub"`, `7`)...)), "", "malformed")
	add("aud with a number", fx.tok("ed", edH, claims(set(fx.base(), `"aud"`, `["payments",1]`)...)), "", "malformed")
	add("exp a numeric string", fx.tok("ed", edH, claims(set(fx.base(), `"exp"`, `"4102444800"`)...)), "", "")
	add("exp 1e19 (beyond int64)", fx.tok("ed", edH, claims(set(fx.base(), `"exp"`, `1e19`)...)), "", "expired")
	add("exp 1e400", fx.tok("ed", edH, claims(set(fx.base(), `"exp"`, `1e400`)...)), "", "malformed")
	add("exp with a fraction", fx.tok("ed", edH, claims(set(fx.base(), `"exp"`, `4102444800.75`)...)), "", "")

	// The revocation feed.
	add("revoked jti", fx.tok("ed", edH, claims(set(fx.base(), `"jti"`, `"jti-revoked"`)...)), "", "revoked")
	add("disabled service", fx.tok("ed", edH, claims(set(fx.base(), `"sub"`, `"disabled"`)...)), "", "revoked")
	add("service revoked since (old gen)", fx.tok("ed", edH, claims(set(set(fx.base(), `"sub"`, `"rotated"`), `"gen"`, `"g1"`)...)), "", "revoked")
	add("service revoked since (no gen)", fx.tok("ed", edH, claims(set(fx.base(), `"sub"`, `"rotated"`)...)), "", "revoked")
	add("service current gen", fx.tok("ed", edH, claims(set(set(fx.base(), `"sub"`, `"rotated"`), `"gen"`, `"g2"`)...)), "", "")
	add("JWT-SVID of a disabled service", fx.tok("ed", edH, claims(set(set(fx.base(), `"sub"`, `"spiffe://mesh/x"`), `"meshauth_service"`, `"disabled"`)...)), "", "revoked")
	rcnf := `{"x5t#S256":` + q(fx.x5t("revoked")) + `}`
	add("bound to a revoked certificate", fx.tok("ed", edH, claims(fx.base(`"cnf"`, rcnf)...)), "revoked", "revoked")

	// Token exchange (RFC 8693): act, meshauth_derived_from and
	// meshauth_derived_cnf.
	delegCnf := func(act, derived, cnf string) string {
		m := fx.base()
		if act != "" {
			m = append(m, `"act"`, act)
		}
		if derived != "" {
			m = append(m, `"meshauth_derived_from"`, derived)
		}
		if cnf != "" {
			m = append(m, `"meshauth_derived_cnf"`, cnf)
		}
		return fx.tok("ed", edH, claims(m...))
	}
	// deleg gives meshauth_derived_cnf one "" (an unbound subject token) per
	// entry of a derived list, as the engine writes it.
	deleg := func(act, derived string) string {
		var list []json.RawMessage
		cnf := ""
		if json.Unmarshal([]byte(derived), &list) == nil && list != nil {
			cnf = "[" + strings.TrimSuffix(strings.Repeat(`"",`, len(list)), ",") + "]"
		}
		return delegCnf(act, derived, cnf)
	}
	nested := `{"sub":"a0"}`
	for i := 1; i <= 8; i++ {
		nested = `{"sub":"a` + fmt.Sprint(i) + `","act":` + nested + `}`
	}
	add("exchanged token", deleg(`{"sub":"payments"}`, `["jti-orig"]`), "", "")
	add("exchanged twice", deleg(`{"sub":"ledger","act":{"sub":"payments"}}`, `["jti-orig","jti-hop"]`), "", "")
	add("exchanged from a revoked jti", deleg(`{"sub":"payments"}`, `["jti-revoked"]`), "", "revoked")
	add("exchanged from a revoked original", deleg(`{"sub":"ledger","act":{"sub":"payments"}}`, `["jti-revoked","jti-hop"]`), "", "revoked")
	add("act without derived_from", deleg(`{"sub":"payments"}`, ""), "", "malformed")
	add("derived_from without act", deleg("", `["jti-orig"]`), "", "malformed")
	add("act null", deleg(`null`, ""), "", "")
	add("nested act null", deleg(`{"sub":"payments","act":null}`, `["jti-orig"]`), "", "")
	add("act an array", deleg(`[{"sub":"payments"}]`, `["jti-orig"]`), "", "malformed")
	add("act sub a number", deleg(`{"sub":7}`, `["jti-orig"]`), "", "malformed")
	add("act sub empty", deleg(`{"sub":""}`, `["jti-orig"]`), "", "malformed")
	add("act without sub", deleg(`{"act":{"sub":"x"}}`, `["jti-orig"]`), "", "malformed")
	add("act member spelled SUB", deleg(`{"SUB":"payments"}`, `["jti-orig"]`), "", "ambiguous_claims")
	add("act nested nine deep", deleg(nested, `["1","2","3","4","5","6","7","8","9"]`), "", "malformed")
	add("derived_from a string", deleg(`{"sub":"payments"}`, `"jti-orig"`), "", "malformed")
	add("derived_from with null", deleg(`{"sub":"payments"}`, `[null]`), "", "")
	add("actor in its current gen", deleg(`{"sub":"rotated","gen":"g2"}`, `["jti-orig"]`), "", "")
	add("actor revoked since (old gen)", deleg(`{"sub":"rotated","gen":"g1"}`, `["jti-orig"]`), "", "revoked")
	add("actor revoked since (no gen)", deleg(`{"sub":"rotated"}`, `["jti-orig"]`), "", "revoked")
	add("earlier actor revoked since", deleg(`{"sub":"payments","act":{"sub":"rotated","gen":"g1"}}`, `["jti-orig","jti-hop"]`), "", "revoked")
	add("actor disabled", deleg(`{"sub":"disabled","gen":"g"}`, `["jti-orig"]`), "", "revoked")
	add("act gen a number", deleg(`{"sub":"payments","gen":1}`, `["jti-orig"]`), "", "malformed")
	add("act gen null", deleg(`{"sub":"payments","gen":null}`, `["jti-orig"]`), "", "")
	add("act member spelled GEN", deleg(`{"sub":"payments","GEN":"g"}`, `["jti-orig"]`), "", "ambiguous_claims")
	ocnf := q(fx.x5t("orders"))
	add("exchanged from a bound token", delegCnf(`{"sub":"payments"}`, `["jti-orig"]`, `[`+ocnf+`]`), "", "")
	add("exchanged from a token bound to a revoked certificate", delegCnf(`{"sub":"payments"}`, `["jti-orig"]`, `[`+q(fx.x5t("revoked"))+`]`), "", "revoked")
	add("earlier hop bound to a revoked certificate", delegCnf(`{"sub":"ledger","act":{"sub":"payments"}}`, `["jti-orig","jti-hop"]`, `[`+q(fx.x5t("revoked"))+`,`+ocnf+`]`), "", "revoked")
	add("act without derived_cnf", delegCnf(`{"sub":"payments"}`, `["jti-orig"]`, ""), "", "malformed")
	add("derived_cnf longer than act", delegCnf(`{"sub":"payments"}`, `["jti-orig"]`, `["",""]`), "", "malformed")
	add("derived_cnf not a thumbprint", delegCnf(`{"sub":"payments"}`, `["jti-orig"]`, `["orders"]`), "", "malformed")
	add("derived_cnf a string", delegCnf(`{"sub":"payments"}`, `["jti-orig"]`, `""`), "", "malformed")
	add("derived_cnf with null", delegCnf(`{"sub":"payments"}`, `["jti-orig"]`, `[null]`), "", "")
	add("derived_cnf without act", delegCnf("", "", `[""]`), "", "malformed")
	add("DERIVED_CNF spelled differently", fx.tok("ed", edH, claims(append(fx.base(), `"MESHAUTH_DERIVED_CNF"`, `[""]`)...)), "", "ambiguous_claims")
	add("ACT spelled differently", fx.tok("ed", edH, claims(append(fx.base(), `"ACT"`, `{"sub":"payments"}`)...)), "", "ambiguous_claims")

	f.Feeds = fx.feedVectors()
	if err := feedVerdicts(f); err != nil {
		return nil, err
	}
	g, err := newGoVerifier(f)
	if err != nil {
		return nil, err
	}
	defer g.close()
	for i, c := range f.Cases {
		if got := g.verdict(c); got != c.Reason {
			f.Cases[i].GoPending = fmt.Sprintf("meshtoken answers %q", got)
		}
		f.Cases[i].Extra = g.extra(c)
	}
	return f, nil
}

// nonCanonical returns a base64url character that decodes to the same bytes
// as c in the last position of a segment of length%4 == rem, with nonzero
// unused bits.
func nonCanonical(c byte, rem int) byte {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	i := strings.IndexByte(alphabet, c)
	if rem == 2 {
		return alphabet[i|1] // 4 unused bits
	}
	return alphabet[i|1] // 2 unused bits
}

// differential writes n signed, oddly shaped tokens with meshtoken's verdict
// on each. The Python suite must reach the same verdict on every one.
func (fx *fixture) differential(n int) (*File, error) {
	f := fx.file("Differential corpus: signed, oddly shaped tokens and meshtoken's verdict on each, written by python/vectorgen (make vectors). The Python verifier must agree on every one.")
	rng := rand.New(rand.NewPCG(21, 2026)) //nolint:gosec // a reproducible corpus, not a secret
	for range n {
		key := "ed"
		if rng.IntN(20) == 0 {
			key = "es256"
		}
		hdr, payload, cert := fx.oddToken(rng, key)
		f.Cases = append(f.Cases, Case{Token: fx.tok(key, hdr, payload), Certificate: cert})
	}
	f.Feeds = fx.oddFeeds(rng, n/10)
	if err := feedVerdicts(f); err != nil {
		return nil, err
	}
	g, err := newGoVerifier(f)
	if err != nil {
		return nil, err
	}
	defer g.close()
	for i := range f.Cases {
		f.Cases[i].Reason = g.verdict(f.Cases[i])
		f.Cases[i].Extra = g.extra(f.Cases[i])
	}
	return f, nil
}

var (
	// trailers follow the payload object: Go refuses some as data after the
	// object and lets others fail later (the verdict differs).
	trailers = []string{"x", " 1", "1.", "1.5x", "1ex", "01", " \"s\"", " \"s", " tru", " true", "truex", "]", "}", ",", " -", "-1", " null", "[", "{", " 1e5", "\ufeff"}
	// timeEdges are time claims at the edges of int64 seconds, of Go's
	// internal time (seconds since year 1, which wraps), of float64, and of
	// the second.
	timeEdges = []string{
		`9223372036854775807`, `9223372036854775808`, `-9223372036854775808`, `-9223372036854775809`,
		`9.2233720368547748e18`, `9.2233720368547758e18`, `-9.2233720368547758e18`, `1e19`, `-1e19`, `1e300`, `-1e300`,
		`9223371974719179007`, `9223371974719179008`, `9223371974719178000`, `-62135596800`, `-62135596801`,
		`253402300799`, `253402300800`, `4102444800.999999999`, `4102444800.0000001`, `-0.5`, `-1e-9`, `0.999999999`,
		`1e-400`, `5e-324`, `-0`, `0`, `1`, `"1"`, `"-1e19"`, `"0x10"`, `1E2`, `4102444800e0`, `41024448e2`, `true`, `[]`,
	}
	oddNames = []string{
		`"sub"`, `"SUB"`, `"Sub"`, `"ſub"`, `"\u017fub"`, `"\u0073ub"`, `"su\u0062"`, `"iss"`, `"ISS"`, `"iſs"`, `"aud"`, `"AUD"`,
		`"exp"`, `"EXP"`, `"nbf"`, `"iat"`, `"jti"`, `"JTI"`, `"cnf"`, `"CNF"`, `"gen"`, `"GEN"`, `"meshauth_service"`,
		`"meshauth_ſervice"`, `"act"`, `"ACT"`, `"meshauth_derived_from"`, `"meshauth_derived_cnf"`, `"kid"`, `"\u212aid"`, `"x"`, `"X"`, `"\ud800"`, `"\udc00"`, `"\ufffd"`, "\"\xff\"", "\"\xed\xa0\x80\"",
		`"é"`, `"e\u0301"`, `"\u0000"`, `""`, `"team"`, `"Team"`, `"s\u017f"`,
	}
	oddValues = []string{
		`"orders"`, `"admin"`, `"disabled"`, `"rotated"`, `"payments"`, `["payments"]`, `["ledger"]`, `[]`, `""`, `null`,
		`true`, `1`, `0`, `-0`, `1.5`, `1e3`, `1E3`, `-1`, `4102444800`, `4102444800.999`, `"4102444800"`, `" 4102444800"`,
		`1e19`, `-1e19`, `9223372036854775807`, `9223372036854775808`, `9.2233720368547748e18`, `-9223372036854775808`,
		`1e400`, `1e-400`, `4.9e-324`, `{}`, `{"x5t#S256":null}`, `{"a":1,"a":2}`, `[1,"a",null]`, `"\ud800"`, "\"\xff\"",
		`{"sub":"payments"}`, `{"sub":"a","act":{"sub":"b"}}`, `{"sub":"rotated","gen":"g1"}`, `["jti-revoked"]`, `["a","b"]`,
		`"g2"`, `"g1"`, `"jti-revoked"`, `"\u006frders"`, `"ord\u0000ers"`, `NaN`, `Infinity`, `01`, `1.`, `.5`, `+1`,
	}
)

// oddToken makes one oddly shaped header and payload and a presented
// certificate.
func (fx *fixture) oddToken(rng *rand.Rand, key string) (string, string, string) {
	m := fx.base()
	if rng.IntN(3) == 0 {
		m = fx.base(`"cnf"`, `{"x5t#S256":`+q(fx.x5t("orders"))+`}`)
	}
	if rng.IntN(4) == 0 {
		// Numbers at the edges of Go's time arithmetic, in the time
		// claims only; never relative to the time of generation, so the
		// verdict is the same whenever the corpus is read.
		names := []string{`"exp"`, `"nbf"`, `"iat"`}
		m = set(m, names[rng.IntN(3)], timeEdges[rng.IntN(len(timeEdges))])
		if rng.IntN(2) == 0 {
			m = set(m, names[rng.IntN(3)], timeEdges[rng.IntN(len(timeEdges))])
		}
		return header(key, fx), claims(m...), "orders"
	}
	// Mutations: replace values, add members (possibly duplicates), drop.
	for range 1 + rng.IntN(3) {
		switch rng.IntN(4) {
		case 0: // replace a value
			i := 2 * rng.IntN(len(m)/2)
			m[i+1] = oddValues[rng.IntN(len(oddValues))]
		case 1: // add a member
			m = append(m, oddNames[rng.IntN(len(oddNames))], oddValues[rng.IntN(len(oddValues))])
		case 2: // drop a member
			i := 2 * rng.IntN(len(m)/2)
			m = append(m[:i], m[i+2:]...)
		case 3: // nest
			d := 28 + rng.IntN(8)
			m = append(m, `"deep"`, strings.Repeat(`[{"a":`, d/2)+"1"+strings.Repeat("}]", d/2))
		}
		if len(m) < 2 {
			m = fx.base()
		}
	}
	payload := claims(m...)
	switch rng.IntN(12) {
	case 0:
		payload = " \t\n" + payload + "\r\n"
	case 1:
		payload = "\ufeff" + payload
	case 2, 3:
		payload += trailers[rng.IntN(len(trailers))]
	}
	hdr := header(key, fx)
	switch n := rng.IntN(14); {
	case key != "ed":
	case n == 0:
		hdr = `{"alg":"EdDSA","kid":"ed-1","ALG":"none"}`
	case n == 1:
		hdr = `{"alg":"EdDSA","kid":"ed-1","crit":[]}`
	case n == 2:
		hdr = `{"alg":"EdDSA","kid":"ed-1","x":{"y":1,"y":2}}`
	case n == 3:
		hdr = `{"alg":"EdDSA","\u006bid":"ed-1"}`
	case n == 4:
		hdr = `{"alg":"EdDSA","kid":"ed-1","typ":1}`
	}
	certs := []string{"", "orders", "thief"}
	return hdr, payload, certs[rng.IntN(len(certs))]
}

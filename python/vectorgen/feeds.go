package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// FeedCase is one revocation feed and meshtoken.ParseFeed's verdict on it.
type FeedCase struct {
	Name string `json:"name,omitempty"`
	// Feed is the compact JWS as served.
	Feed string `json:"feed"`
	// Reason is "" for accepted, else the reason of the refusal.
	Reason string `json:"reason"`
}

// feedHeader is the header the engine writes on its feed, signed by key.
func feedHeader(key string, fx *fixture) string {
	s := fx.signers[key]
	return string(meshtoken.Header(s.alg, s.kid, meshtoken.RevocationsType))
}

// feedBase are the members of a valid feed, in order.
func (fx *fixture) feedBase() []string {
	return []string{
		`"iss"`, q(issuer), `"iat"`, fmt.Sprint(fx.now),
		`"tokens"`, `{"jti-revoked":` + fmt.Sprint(farFuture) + `}`,
		`"services"`, `{"rotated":{"gen":"g2","exp":` + fmt.Sprint(farFuture) + `}}`,
		`"disabled"`, `{"disabled":` + fmt.Sprint(farFuture) + `}`,
		`"keys"`, `{"ed-removed":` + fmt.Sprint(farFuture) + `}`,
		`"certificates"`, `{` + q(fx.x5t("revoked")) + `:` + fmt.Sprint(farFuture) + `}`,
	}
}

// feedVectors are named feeds, each with ParseFeed's verdict: the rules a
// Python verifier must apply to the feed as meshtoken does.
func (fx *fixture) feedVectors() []FeedCase {
	var out []FeedCase
	edH := feedHeader("ed", fx)
	add := func(name, feed string) { out = append(out, FeedCase{Name: name, Feed: feed}) }
	ok := claims(fx.feedBase()...)
	good := fx.tok("ed", edH, ok)
	add("valid", good)
	add("valid, signed by ES256", fx.tok("es256", feedHeader("es256", fx), ok))
	add("valid, empty maps", fx.tok("ed", edH, claims(`"iss"`, q(issuer), `"iat"`, "1")))
	add("valid, null maps and an unknown member", fx.tok("ed", edH, claims(`"iss"`, q(issuer), `"iat"`, "1", `"tokens"`, `null`, `"services"`, `{"a":null}`, `"x"`, `[1]`)))
	add("no iat", fx.tok("ed", edH, claims(set(fx.feedBase(), `"iat"`, "")...)))
	add("iat 0", fx.tok("ed", edH, claims(set(fx.feedBase(), `"iat"`, "0")...)))
	add("iat negative", fx.tok("ed", edH, claims(set(fx.feedBase(), `"iat"`, "-1")...)))
	add("iat null", fx.tok("ed", edH, claims(set(fx.feedBase(), `"iat"`, "null")...)))
	add("iat a string", fx.tok("ed", edH, claims(set(fx.feedBase(), `"iat"`, q(fmt.Sprint(fx.now)))...)))
	add("iat with a fraction", fx.tok("ed", edH, claims(set(fx.feedBase(), `"iat"`, fmt.Sprint(fx.now)+".5")...)))
	add("iat with an exponent", fx.tok("ed", edH, claims(set(fx.feedBase(), `"iat"`, "1e9")...)))
	add("iat beyond int64", fx.tok("ed", edH, claims(set(fx.feedBase(), `"iat"`, "9223372036854775808")...)))
	add("iat at int64's maximum", fx.tok("ed", edH, claims(set(fx.feedBase(), `"iat"`, "9223372036854775807")...)))
	add("no iss", fx.tok("ed", edH, claims(set(fx.feedBase(), `"iss"`, "")...)))
	add("another issuer", fx.tok("ed", edH, claims(set(fx.feedBase(), `"iss"`, `"https://other"`)...)))
	add("another issuer and no iat", fx.tok("ed", edH, claims(set(set(fx.feedBase(), `"iss"`, `"x"`), `"iat"`, "")...)))
	add("typ JWT", fx.tok("ed", header("ed", fx), ok))
	add("no typ", fx.tok("ed", `{"alg":"EdDSA","kid":"ed-1"}`, ok))
	add("typ a number", fx.tok("ed", `{"alg":"EdDSA","kid":"ed-1","typ":1}`, ok))
	add("a token", fx.tok("ed", header("ed", fx), claims(fx.base()...)))
	add("crit", fx.tok("ed", `{"alg":"EdDSA","kid":"ed-1","typ":"meshauth-revocations+jwt","crit":["iat"]}`, ok))
	add("alg none", fx.tok("ed", `{"alg":"none","kid":"ed-1","typ":"meshauth-revocations+jwt"}`, ok))
	add("alg of another key", fx.tok("es256", `{"alg":"ES384","kid":"es256-1","typ":"meshauth-revocations+jwt"}`, ok))
	add("unknown kid", fx.tok("ed", `{"alg":"EdDSA","kid":"nobody","typ":"meshauth-revocations+jwt"}`, ok))
	add("bad signature", good[:len(good)-4]+"AAAA")
	add("padding", good+"=")
	add("header TYP", fx.tok("ed", `{"alg":"EdDSA","kid":"ed-1","typ":"meshauth-revocations+jwt","TYP":"JWT"}`, ok))
	add("duplicate tokens", fx.tok("ed", edH, claims(append(fx.feedBase(), `"tokens"`, `{}`)...)))
	add("IAT beside iat", fx.tok("ed", edH, claims(append(fx.feedBase(), `"IAT"`, "1")...)))
	add("Tokens alone", fx.tok("ed", edH, claims(append(set(fx.feedBase(), `"tokens"`, ""), `"Tokens"`, `{"jti-revoked":1}`)...)))
	add("long s in services", fx.tok("ed", edH, claims(append(set(fx.feedBase(), `"services"`, ""), `"ſervices"`, `{}`)...)))
	add("duplicate jti inside tokens", fx.tok("ed", edH, claims(set(fx.feedBase(), `"tokens"`, `{"a":1,"a":2}`)...)))
	add("tokens a list", fx.tok("ed", edH, claims(set(fx.feedBase(), `"tokens"`, `["jti-revoked"]`)...)))
	add("tokens entry a string", fx.tok("ed", edH, claims(set(fx.feedBase(), `"tokens"`, `{"jti-revoked":"1"}`)...)))
	add("tokens entry with a fraction", fx.tok("ed", edH, claims(set(fx.feedBase(), `"tokens"`, `{"jti-revoked":1.5}`)...)))
	add("tokens entry null", fx.tok("ed", edH, claims(set(fx.feedBase(), `"tokens"`, `{"jti-revoked":null}`)...)))
	add("services entry a number", fx.tok("ed", edH, claims(set(fx.feedBase(), `"services"`, `{"rotated":1}`)...)))
	add("services gen a number", fx.tok("ed", edH, claims(set(fx.feedBase(), `"services"`, `{"rotated":{"gen":2,"exp":1}}`)...)))
	add("services GEN (Go folds it)", fx.tok("ed", edH, claims(set(fx.feedBase(), `"services"`, `{"rotated":{"GEN":"g2","exp":1}}`)...)))
	add("services exp a string", fx.tok("ed", edH, claims(set(fx.feedBase(), `"services"`, `{"rotated":{"gen":"g2","exp":"1"}}`)...)))
	add("payload an array", fx.tok("ed", edH, "["+ok+"]"))
	add("data after the payload object", fx.tok("ed", edH, ok+" {}"))
	add("bytes after the payload object", fx.tok("ed", edH, ok+"x"))
	add("objects nested 33 deep", fx.tok("ed", edH, claims(append(fx.feedBase(), `"deep"`, strings.Repeat(`{"a":`, 32)+"1"+strings.Repeat("}", 32))...)))
	return out
}

// oddFeeds are n feeds with mutated members, for the differential corpus.
func (fx *fixture) oddFeeds(rng *rand.Rand, n int) []FeedCase {
	names := []string{
		`"iss"`, `"ISS"`, `"iat"`, `"Iat"`, `"tokens"`, `"tokenſ"`, `"services"`, `"disabled"`, `"keys"`, `"KEYS"`,
		`"certificates"`, `"x"`, `"\u0069at"`, `"sub"`, `"exp"`,
	}
	values := []string{
		`null`, `0`, `1`, `-1`, `1.5`, `1e3`, `"1"`, `true`, `[]`, `{}`, `{"a":1}`, `{"a":null}`, `{"a":"1"}`,
		`{"a":{"gen":"g","exp":1}}`, `{"a":{"Gen":1}}`, `{"a":{"gen":null}}`, `{"a":[]}`, `{"a":1,"a":1}`, q(issuer), `"x"`,
		`9223372036854775807`, `9223372036854775808`, `-0`, fmt.Sprint(fx.now),
	}
	out := make([]FeedCase, 0, n)
	for range n {
		m := fx.feedBase()
		for range 1 + rng.IntN(3) {
			switch rng.IntN(3) {
			case 0:
				i := 2 * rng.IntN(len(m)/2)
				m[i+1] = values[rng.IntN(len(values))]
			case 1:
				m = append(m, names[rng.IntN(len(names))], values[rng.IntN(len(values))])
			case 2:
				i := 2 * rng.IntN(len(m)/2)
				m = append(m[:i], m[i+2:]...)
			}
			if len(m) < 2 {
				m = fx.feedBase()
			}
		}
		out = append(out, FeedCase{Feed: fx.tok("ed", feedHeader("ed", fx), claims(m...))})
	}
	return out
}

// feedVerdicts records ParseFeed's verdict on each feed of f.
func feedVerdicts(f *File) error {
	keys, err := fileKeys(f)
	if err != nil {
		return err
	}
	for i, c := range f.Feeds {
		f.Feeds[i].Reason = feedVerdict(keys, f.Issuer, c.Feed)
	}
	return nil
}

// feedVerdict is ParseFeed's answer to a feed, as a reason ("" = accepted).
func feedVerdict(keys meshtoken.KeyFunc, iss, feed string) string {
	_, err := meshtoken.ParseFeed(feed, keys, iss)
	if err == nil {
		return ""
	}
	if r := meshtoken.ReasonOf(err); r != "" {
		return r
	}
	return fmt.Sprintf("unexpected error: %v", err)
}

// fileKeys is a KeyFunc over a File's JWKS.
func fileKeys(f *File) (meshtoken.KeyFunc, error) {
	var set struct {
		Keys []map[string]string `json:"keys"`
	}
	if err := json.Unmarshal(f.JWKS, &set); err != nil {
		return nil, err
	}
	keys := map[string]meshtoken.Key{}
	for _, k := range set.Keys {
		key, err := meshtoken.ParseJWK(k)
		if err != nil {
			return nil, fmt.Errorf("fixture key %s: %w", k["kid"], err)
		}
		keys[k["kid"]] = key
	}
	return func(kid string) (meshtoken.Key, error) {
		if k, ok := keys[kid]; ok {
			return k, nil
		}
		return meshtoken.Key{}, meshtoken.ErrUnknownKey
	}, nil
}

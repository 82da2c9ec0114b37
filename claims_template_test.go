package meshauth

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/logical"
)

// entitySystemView answers EntityInfo and GroupsForEntity like Vault does
// for the request's entity, with data a test can change.
type entitySystemView struct {
	logical.StaticSystemView
	mu     sync.Mutex
	entity *logical.Entity
	groups []*logical.Group
	calls  int
}

func (s *entitySystemView) EntityInfo(string) (*logical.Entity, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	return s.entity, nil
}

func (s *entitySystemView) GroupsForEntity(string) ([]*logical.Group, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.groups, nil
}

func (s *entitySystemView) set(e *logical.Entity, g []*logical.Group) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.entity, s.groups = e, g
}

// templateEnv is a test backend whose system view serves an entity.
func templateEnv(tb testing.TB) (*testEnv, *entitySystemView) {
	tb.Helper()
	conf := logical.TestBackendConfig()
	conf.StorageView = &logical.InmemStorage{}
	if _, bench := tb.(*testing.B); bench {
		conf.Logger = hclog.NewNullLogger()
	}
	sys := &entitySystemView{StaticSystemView: *conf.System.(*logical.StaticSystemView)}
	conf.System = sys
	b := newBackend()
	if err := b.Setup(context.Background(), conf); err != nil {
		tb.Fatal(err)
	}
	storage := &countingStorage{Storage: conf.StorageView}
	clock := &testClock{t: time.Now()}
	b.now = clock.now
	if err := b.Initialize(context.Background(), &logical.InitializationRequest{Storage: storage}); err != nil {
		tb.Fatal(err)
	}
	e := &testEnv{b: b, storage: storage, clock: clock}
	e.mustOK(tb, logical.UpdateOperation, "config", map[string]any{"trust_domain": testTD, "lockout_threshold": 1})
	return e, sys
}

// entityLogin logs in as a Vault token of entity id would.
func entityLogin(tb testing.TB, e *testEnv, name, key, entityID string, conn *logical.Connection) (*logical.Response, error) {
	tb.Helper()
	req := &logical.Request{
		Operation:  logical.UpdateOperation,
		Path:       "login/" + name,
		Data:       map[string]any{"api_key": key},
		Storage:    e.storage,
		MountPoint: "meshauth/",
		Connection: conn,
		EntityID:   entityID,
	}
	return e.b.HandleRequest(context.Background(), req)
}

func checkoutEntity() *logical.Entity {
	return &logical.Entity{
		ID:       "ent-1",
		Name:     "orders-entity",
		Metadata: map[string]string{"team": "checkout"},
		Aliases: []*logical.Alias{{
			MountAccessor:  "auth_kubernetes_1234",
			Name:           "shop/orders",
			Metadata:       map[string]string{"service_account_namespace": "shop"},
			CustomMetadata: map[string]string{"cluster": "eu-1"},
		}},
	}
}

const fullTemplate = `{
  "team": {{identity.entity.metadata.team}},
  "namespace": {{ identity.entity.aliases.auth_kubernetes_1234.metadata.service_account_namespace }},
  "cluster": {{identity.entity.aliases.auth_kubernetes_1234.custom_metadata.cluster}},
  "groups": {{identity.entity.groups.names}},
  "owner": {{identity.groups.names.shop-admins.metadata.owner}},
  "spiffe_id": {{meshauth.cert.spiffe_id}},
  "dns": {{meshauth.cert.dns_sans}},
  "service": {{meshauth.service.name}},
  "nested": {"static": [1, true, null], "who": {{identity.entity.name}}}
}`

func TestClaimsTemplateLogin(t *testing.T) {
	e, sys := templateEnv(t)
	sys.set(checkoutEntity(), []*logical.Group{{ID: "g1", Name: "shop-admins", Metadata: map[string]string{"owner": "alice"}}})
	ca := newTestCA(t, "mesh-ca")
	e.trustDomain(t, testTD, ca)
	id := "spiffe://" + testTD + "/ns/shop/sa/orders"
	key := e.register(t, "orders", map[string]any{
		"ca_chain": ca.pem, "spiffe_ids": id, "claims": map[string]any{"tier": "gold"},
		"claims_template": fullTemplate,
	})
	conn := ca.svidConn(t, svidOptions{uris: []string{id}, dns: []string{"orders.shop.svc"}})
	resp, err := entityLogin(t, e, "orders", key, "ent-1", conn)
	if err != nil || resp.IsError() {
		t.Fatalf("login: %v %#v", err, resp)
	}
	tok := resp.Data["token"].(string)
	_, claims := decodeJWT(t, tok)
	want := map[string]any{
		"team": "checkout", "namespace": "shop", "cluster": "eu-1", "groups": []any{"shop-admins"},
		"owner": "alice", "spiffe_id": id, "dns": []any{"orders.shop.svc"}, "service": "orders", "tier": "gold",
		"nested": map[string]any{"static": []any{float64(1), true, nil}, "who": "orders-entity"},
	}
	for k, v := range want {
		got, _ := json.Marshal(claims[k])
		exp, _ := json.Marshal(v)
		if string(got) != string(exp) {
			t.Errorf("claim %s = %s, want %s", k, got, exp)
		}
	}
	if claims["sub"] != "orders" || claims["cnf"] == nil {
		t.Fatalf("registered claims changed: %#v", claims)
	}
	if valid, reason := e.verify(t, tok, nil); !valid {
		t.Fatalf("verify: %s", reason)
	}
	verifyWithJWKS(t, e, tok)
	read := e.mustOK(t, logical.ReadOperation, "services/orders", nil)
	if read.Data["claims_template"] != fullTemplate || read.Data["template_missing"] != "fail" {
		t.Fatalf("read: %#v", read.Data)
	}
}

func TestClaimsTemplateRefusedAtWrite(t *testing.T) {
	e, _ := templateEnv(t)
	cases := []struct{ name, tmpl, want string }{
		{"sub", `{"sub": {{identity.entity.name}}}`, `registered claim "sub"`},
		{"SUB", `{"SUB": "x"}`, `"SUB"`},
		{"long s", `{"ſub": {{meshauth.service.name}}}`, `registered name "sub"`},
		{"cnf", `{"cnf": {"x5t#S256": "x"}}`, `"cnf"`},
		{"act", `{"act": {"sub": {{meshauth.service.name}}}}`, `"act"`},
		{"Act", `{"Act": 1}`, `registered name "act"`},
		{"kid", `{"kid": 1}`, `"kid"`},
		{"templated name", `{ {{identity.entity.name}}: 1}`, "may not stand as a claim name"},
		{"templated nested name", `{"a": { {{identity.entity.name}}: 1}}`, "may not stand as a member name"},
		{"inside a string", `{"a": "x-{{identity.entity.name}}"}`, "whole JSON value"},
		{"quoted directive", `{"a": "{{identity.entity.name}}"}`, "whole JSON value"},
		{"unknown directive", `{"a": {{identity.entity.nmae}}}`, "unknown directive {{identity.entity.nmae}}"},
		{"unknown meshauth directive", `{"a": {{meshauth.cert.issuer}}}`, "unknown directive"},
		{"time", `{"a": {{time.now}}}`, "time directives are not supported"},
		{"unbalanced open", `{"a": {{identity.entity.name}`, "{{ without }}"},
		{"unbalanced close", `{"a": identity.entity.name}}}`, "not valid JSON"},
		{"not an object", `[{{identity.entity.name}}]`, "must be a JSON object"},
		{"twice", `{"a": 1, "a": 2}`, `names claim "a" twice`},
		{"trailing", `{"a": 1} {"b": 2}`, "data after the object"},
		{"in static claims too", `{"tier": {{identity.entity.name}}}`, `"tier" is in both claims and claims_template`},
		{"too large", `{"big": "` + strings.Repeat("x", 6000) + `",` + strings.Repeat(`"a{{N}}": {{identity.entity.name}},`, 8) + `"z": 1}`, "over the 16384-byte limit"},
		{"too many directives", `{` + strings.Repeat(`"a{{N}}": {{identity.entity.name}},`, 17) + `"z": 1}`, "more than 16 directives"},
		{"bad missing", ``, "template_missing must be"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tmpl := c.tmpl
			for i := 0; strings.Contains(tmpl, "{{N}}"); i++ {
				tmpl = strings.Replace(tmpl, "{{N}}", string(rune('a'+i)), 1)
			}
			data := map[string]any{"claims": map[string]any{"tier": "gold"}, "claims_template": tmpl}
			if c.name == "bad missing" {
				data = map[string]any{"template_missing": "empty"}
			}
			e.mustFail(t, logical.UpdateOperation, "services/svc-"+strings.ReplaceAll(strings.ToLower(c.name), " ", "-"), data, c.want)
		})
	}
	// Nothing was stored.
	if resp := e.mustOK(t, logical.ListOperation, "services/", nil); len(resp.Data) != 0 {
		t.Fatalf("a refused registration stored something: %#v", resp.Data)
	}
}

func TestClaimsTemplateMissing(t *testing.T) {
	e, sys := templateEnv(t)
	sys.set(&logical.Entity{ID: "ent-1", Name: "x", Metadata: map[string]string{"team": ""}}, nil)
	tmpl := `{"team": {{identity.entity.metadata.team}}, "cluster": {{identity.entity.aliases.acc.custom_metadata.cluster}}, "service": {{meshauth.service.name}}, "cn": {{meshauth.cert.subject_cn}}}`
	key := e.register(t, "orders", map[string]any{"claims_template": tmpl})
	conn := &logical.Connection{RemoteAddr: "127.0.0.1"}

	// fail: the login is refused with the generic error, counted in
	// metrics by reason, and does not count toward lockout (threshold 1).
	for range 3 {
		resp, err := entityLogin(t, e, "orders", key, "ent-1", conn)
		if !errors.Is(err, logical.ErrPermissionDenied) {
			t.Fatalf("missing value under fail: %v %#v", err, resp)
		}
	}
	m := e.mustOK(t, logical.ReadOperation, "metrics", nil)
	refusals := m.Data["claims_template_refusals"].(map[string]map[string]uint64)
	if refusals["orders"][templateReasonMissing] != 3 {
		t.Fatalf("refusals: %#v", refusals)
	}
	prom, _ := e.request(t, logical.ReadOperation, "metrics", map[string]any{"format": "prometheus"})
	if body := string(prom.Data[logical.HTTPRawBody].([]byte)); !strings.Contains(body, `meshauth_claims_template_refusals_total{service="orders",reason="missing_value"} 3`) {
		t.Fatalf("prometheus: %s", body)
	}

	// omit: the claims without a value are left out, never "".
	e.mustOK(t, logical.UpdateOperation, "services/orders", map[string]any{"template_missing": "omit"})
	resp, err := entityLogin(t, e, "orders", key, "ent-1", conn)
	if err != nil || resp.IsError() {
		t.Fatalf("omit login (not locked out): %v %#v", err, resp)
	}
	_, claims := decodeJWT(t, resp.Data["token"].(string))
	for _, k := range []string{"team", "cluster", "cn"} {
		if v, ok := claims[k]; ok {
			t.Errorf("claim %s = %#v, want it left out", k, v)
		}
	}
	if claims["service"] != "orders" {
		t.Fatalf("claims: %#v", claims)
	}
	// No entity at all (a root token): entity directives are missing too.
	resp, err = entityLogin(t, e, "orders", key, "", conn)
	if err != nil || resp.IsError() {
		t.Fatalf("login without entity: %v %#v", err, resp)
	}
}

func TestClaimsTemplateCacheBound(t *testing.T) {
	e, sys := templateEnv(t)
	ent := checkoutEntity()
	sys.set(ent, nil)
	key := e.register(t, "orders", map[string]any{"claims_template": `{"team": {{identity.entity.metadata.team}}}`})
	conn := &logical.Connection{RemoteAddr: "127.0.0.1"}
	team := func() any {
		t.Helper()
		resp, err := entityLogin(t, e, "orders", key, "ent-1", conn)
		if err != nil || resp.IsError() {
			t.Fatalf("login: %v %#v", err, resp)
		}
		_, claims := decodeJWT(t, resp.Data["token"].(string))
		return claims["team"]
	}
	if team() != "checkout" {
		t.Fatal("first login")
	}
	calls := sys.calls
	changed := checkoutEntity()
	changed.Metadata["team"] = "payments"
	sys.set(changed, nil)
	// Within the bound the rendering is reused: no call to Vault.
	e.clock.advance(claimsCacheTTL - time.Second)
	if team() != "checkout" || sys.calls != calls {
		t.Fatalf("within %s the cached rendering serves (calls %d -> %d)", claimsCacheTTL, calls, sys.calls)
	}
	// Past it the change reaches new tokens.
	e.clock.advance(2 * time.Second)
	if got := team(); got != "payments" {
		t.Fatalf("after %s: team %v", claimsCacheTTL, got)
	}
	// A write of the service renders anew at once.
	changed = checkoutEntity()
	changed.Metadata["team"] = "search"
	sys.set(changed, nil)
	e.mustOK(t, logical.UpdateOperation, "services/orders", map[string]any{"claims_template": `{"team": {{identity.entity.metadata.team}}, "v": 2}`})
	if got := team(); got != "search" {
		t.Fatalf("after a service write: team %v", got)
	}
}

// A rendering computed for a service that a write has since replaced is
// never served, even when it is stored after the write.
func TestClaimsCacheRacingWrite(t *testing.T) {
	c := newClaimsCache(4)
	now := time.Now()
	oldSvc := &cachedService{entry: &serviceEntry{Name: "orders"}}
	newSvc := &cachedService{entry: &serviceEntry{Name: "orders"}}
	k := claimsKey{entity: "e"}
	// The write's drop happens first, then the racing login stores.
	c.dropService("orders")
	c.put(k, &claimsResult{svc: oldSvc, body: []byte(`"a":1`), until: now.Add(time.Minute)})
	if r := c.get(newSvc, k, now); r != nil {
		t.Fatal("a rendering for the replaced service was served")
	}
	if r := c.get(oldSvc, k, now.Add(time.Minute)); r != nil {
		t.Fatal("an expired rendering was served")
	}
	for i := range 10 {
		c.put(claimsKey{entity: string(rune('a' + i))}, &claimsResult{svc: newSvc, until: now.Add(time.Minute)})
		if c.size > 4 {
			t.Fatalf("cache holds %d > 4", c.size)
		}
	}
}

// A template stored by an older release that names a reserved claim (here
// written to storage directly) makes logins fail closed; and whatever
// renders is checked again with meshtoken's member rules.
func TestClaimsTemplateCheckedAgainAtLogin(t *testing.T) {
	e, sys := templateEnv(t)
	sys.set(checkoutEntity(), nil)
	key := e.register(t, "orders", nil)
	entry, err := readService(context.Background(), e.storage, "orders")
	if err != nil {
		t.Fatal(err)
	}
	entry.ClaimsTemplate = `{"ſub": {{identity.entity.name}}}`
	if err := e.b.putService(context.Background(), e.storage, entry); err != nil {
		t.Fatal(err)
	}
	conn := &logical.Connection{RemoteAddr: "127.0.0.1"}
	for range 2 {
		if _, err := entityLogin(t, e, "orders", key, "ent-1", conn); !errors.Is(err, logical.ErrPermissionDenied) {
			t.Fatalf("stored reserved template: %v", err)
		}
	}
	for _, body := range []string{`"SUB":"x"`, `"a":1,"a":2`, `"a":{"b":1,"b":2}`, `"ACT":{}`} {
		if err := checkRenderedClaims(nil, []byte(body)); err == nil {
			t.Errorf("rendered %s accepted", body)
		}
	}
	if err := checkRenderedClaims(map[string]string{"a": "x"}, []byte(`"a":"y"`)); err == nil {
		t.Error("a rendered claim duplicating a static one accepted")
	}
	if err := checkRenderedClaims(map[string]string{"a": "x"}, []byte(`"b":{"c":[1,2]}`)); err != nil {
		t.Errorf("plain claims refused: %v", err)
	}
}

func TestClaimsTemplateCertificateDirectives(t *testing.T) {
	e, sys := templateEnv(t)
	sys.set(checkoutEntity(), nil)
	ca := newTestCA(t, "mesh-ca")
	leaf, leafKey, _ := ca.issue(t, "orders.example", leafOptions{dns: []string{"orders.mesh", "orders.alt"}, serial: 0x0102abcd})
	key := e.register(t, "orders", map[string]any{
		"ca_chain": ca.pem, "hostnames": "orders.mesh",
		"claims_template":  `{"cn": {{meshauth.cert.subject_cn}}, "serial": {{meshauth.cert.serial}}, "dns": {{meshauth.cert.dns_sans}}, "spiffe": {{meshauth.cert.spiffe_id}}}`,
		"template_missing": "omit",
	})
	resp, err := entityLogin(t, e, "orders", key, "ent-1", tlsConn(handshake(t, []*x509.Certificate{leaf}, leafKey)))
	if err != nil || resp.IsError() {
		t.Fatalf("login: %v %#v", err, resp)
	}
	_, claims := decodeJWT(t, resp.Data["token"].(string))
	if claims["cn"] != "orders.example" || claims["serial"] != "01:02:ab:cd" || len(claims["dns"].([]any)) != 2 {
		t.Fatalf("claims: %#v", claims)
	}
	// Registered by hostname: no verified SPIFFE ID, so none is claimed.
	if _, ok := claims["spiffe"]; ok {
		t.Fatalf("spiffe claimed without a verified SPIFFE ID: %#v", claims)
	}
}

func TestAPIKeyWrapTTL(t *testing.T) {
	e := getTestBackend(t)
	resp := e.mustOK(t, logical.UpdateOperation, "services/plain", nil)
	if resp.WrapInfo != nil {
		t.Fatal("wrapped with api_key_wrap_ttl off")
	}
	e.mustFail(t, logical.UpdateOperation, "config", map[string]any{"api_key_wrap_ttl": "25h"}, "api_key_wrap_ttl must be at most 24h")
	e.mustOK(t, logical.UpdateOperation, "config", map[string]any{"api_key_wrap_ttl": "5m"})
	if got := e.mustOK(t, logical.ReadOperation, "config", nil).Data["api_key_wrap_ttl"]; got != int64(300) {
		t.Fatalf("config read api_key_wrap_ttl = %#v", got)
	}
	for _, path := range []string{"services/orders", "services/orders/rotate-key", "services/plain/rotate-key"} {
		resp := e.mustOK(t, logical.UpdateOperation, path, nil)
		if resp.WrapInfo == nil || resp.WrapInfo.TTL != 5*time.Minute {
			t.Fatalf("%s: wrap info %#v", path, resp.WrapInfo)
		}
	}
	// Answers without a key are not wrapped.
	if resp := e.mustOK(t, logical.UpdateOperation, "services/orders", map[string]any{"disabled": false}); resp != nil && resp.WrapInfo != nil {
		t.Fatal("an update without a key was wrapped")
	}
	if resp := e.mustOK(t, logical.ReadOperation, "services/orders", nil); resp.WrapInfo != nil {
		t.Fatal("a read was wrapped")
	}
}

// BenchmarkLoginTemplate pairs the login with a claims template (warm
// rendering cache) with the same login without one.
func BenchmarkLoginTemplate(b *testing.B) {
	for _, withTemplate := range []bool{false, true} {
		name := "without"
		if withTemplate {
			name = "with"
		}
		b.Run(name, func(b *testing.B) {
			e, sys := templateEnv(b)
			sys.set(checkoutEntity(), nil)
			data := map[string]any{"claims": map[string]any{"tier": "gold"}}
			if withTemplate {
				data["claims_template"] = `{"team": {{identity.entity.metadata.team}}, "cluster": {{identity.entity.aliases.auth_kubernetes_1234.custom_metadata.cluster}}, "service": {{meshauth.service.name}}}`
			}
			key := e.register(b, "orders", data)
			conn := &logical.Connection{RemoteAddr: "127.0.0.1"}
			if _, err := entityLogin(b, e, "orders", key, "ent-1", conn); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if resp, err := entityLogin(b, e, "orders", key, "ent-1", conn); err != nil || resp.IsError() {
					b.Fatal(err, resp)
				}
			}
		})
	}
}

// BenchmarkLoginTemplateRatio measures the two logins of
// BenchmarkLoginTemplate the way BENCHMARKS.md does on a shared machine:
// rounds in which each flow runs a block of logins in turn, the p50 of
// each flow per round, and the median across rounds of the per-round
// ratio (with / without), reported as ratio-p50.
func BenchmarkLoginTemplateRatio(b *testing.B) {
	type flow struct {
		e   *testEnv
		key string
	}
	setup := func(withTemplate bool) flow {
		e, sys := templateEnv(b)
		sys.set(checkoutEntity(), nil)
		data := map[string]any{"claims": map[string]any{"tier": "gold"}}
		if withTemplate {
			data["claims_template"] = `{"team": {{identity.entity.metadata.team}}, "cluster": {{identity.entity.aliases.auth_kubernetes_1234.custom_metadata.cluster}}, "service": {{meshauth.service.name}}}`
		}
		return flow{e: e, key: e.register(b, "orders", data)}
	}
	flows := []flow{setup(false), setup(true)}
	conn := &logical.Connection{RemoteAddr: "127.0.0.1"}
	const rounds, block = 21, 200
	var ratios, p50s [2][]float64
	for range b.N {
		ratios, p50s = [2][]float64{}, [2][]float64{}
		for r := range rounds {
			var round [2]float64
			for i, f := range flows {
				times := make([]float64, block)
				for j := range times {
					start := time.Now()
					if resp, err := entityLogin(b, f.e, "orders", f.key, "ent-1", conn); err != nil || resp.IsError() {
						b.Fatal(err, resp)
					}
					times[j] = float64(time.Since(start).Nanoseconds())
				}
				round[i] = median(times)
			}
			if r == 0 {
				continue // warm-up
			}
			p50s[0], p50s[1] = append(p50s[0], round[0]), append(p50s[1], round[1])
			ratios[0] = append(ratios[0], round[1]/round[0])
		}
	}
	b.ReportMetric(median(p50s[0])/1e3, "µs-p50-without")
	b.ReportMetric(median(p50s[1])/1e3, "µs-p50-with")
	b.ReportMetric(median(ratios[0]), "ratio-p50")
}

// median of a sample (sorted in place).
func median(xs []float64) float64 {
	slices.Sort(xs)
	return xs[len(xs)/2]
}

// FuzzCompileClaimsTemplate: compiling never panics, and a template that
// compiles renders (against an empty entity, omitting what is missing)
// into members that form one JSON object.
func FuzzCompileClaimsTemplate(f *testing.F) {
	for _, seed := range []string{fullTemplate, `{"a": {{identity.entity.name}}}`, `{ {{x}}: 1}`, `{"a": "{{identity.entity.name}}"}`, `{"a": {"b": [{{meshauth.service.name}}, {"c": {{identity.entity.id}}}]}}`, `{"a":1}}}`} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, text string) {
		tmpl, err := compileClaimsTemplate(text)
		if err != nil {
			return
		}
		body, fail := tmpl.render(&renderInput{entity: &logical.Entity{Name: "n", ID: "i"}, service: "s"}, templateMissingOmit)
		if fail != nil {
			return
		}
		if !json.Valid(append(append([]byte{'{'}, body...), '}')) {
			t.Fatalf("template %q rendered invalid JSON %q", text, body)
		}
	})
}

// act is written by token exchange (RFC 8693): no service may set it, in
// static claims either, in any spelling.
func TestActIsReserved(t *testing.T) {
	e := getTestBackend(t)
	for _, name := range []string{"act", "ACT", "Act"} {
		e.mustFail(t, logical.UpdateOperation, "services/orders", map[string]any{"claims": map[string]any{name: "x"}}, `"act"`)
	}
}

// Logins rendering a template race writes that change it: every token
// carries the claims of one stored template, never a mix, and -race sees
// no data race.
func TestClaimsTemplateConcurrentWrites(t *testing.T) {
	e, sys := templateEnv(t)
	sys.set(checkoutEntity(), nil)
	key := e.register(t, "orders", map[string]any{"claims_template": `{"v": "0", "team": {{identity.entity.metadata.team}}}`})
	conn := &logical.Connection{RemoteAddr: "127.0.0.1"}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 50 {
				resp, err := entityLogin(t, e, "orders", key, "ent-1", conn)
				if err != nil || resp.IsError() {
					t.Errorf("login: %v %#v", err, resp)
					return
				}
				_, claims := decodeJWT(t, resp.Data["token"].(string))
				if claims["team"] != "checkout" || claims["v"] == nil {
					t.Errorf("claims %#v", claims)
				}
			}
		})
	}
	for i := range 20 {
		e.mustOK(t, logical.UpdateOperation, "services/orders", map[string]any{"claims_template": `{"v": "` + string(rune('a'+i)) + `", "team": {{identity.entity.metadata.team}}}`})
	}
	wg.Wait()
	// After the last write, a login carries the last template.
	resp, _ := entityLogin(t, e, "orders", key, "ent-1", conn)
	if _, claims := decodeJWT(t, resp.Data["token"].(string)); claims["v"] != "t" {
		t.Fatalf("after the last write: %#v", claims["v"])
	}
}

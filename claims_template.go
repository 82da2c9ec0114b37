package meshauth

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/identitytpl"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// Claims from Vault and from the certificate: a service's claims_template
// is a JSON object whose values may be directives, rendered at login over
// the caller's Vault entity (Vault's own identity templating, the SDK's
// identitytpl) and the client certificate the login verified. How it is
// written, compiled, rendered, checked and cached is in this file.

// The values of template_missing.
const (
	// templateMissingFail refuses a login whose template names a value the
	// caller's entity or certificate does not have. The default: a claim a
	// verifier relies on never goes silently missing.
	templateMissingFail = "fail"
	// templateMissingOmit leaves such a claim out of the token.
	templateMissingOmit = "omit"
)

const (
	// maxClaimsTemplateLen bounds the template text.
	maxClaimsTemplateLen = 8 << 10
	// maxTemplateDirectives bounds the directives of one template.
	maxTemplateDirectives = 16
	// maxDirectiveJSON bounds what one directive may render, in bytes of
	// JSON. Registration counts every directive at this size for the
	// worst-case token; a login whose directive renders more is refused.
	maxDirectiveJSON = 512
	// claimsCacheTTL is how long a rendered template is reused for one
	// service generation, entity and certificate: the bound on how long an
	// entity change (metadata, aliases, groups) takes to reach new tokens.
	claimsCacheTTL = 30 * time.Second
	// claimsCacheSize bounds the rendered templates kept across services.
	claimsCacheSize = 4096
)

// Reasons a login is refused by its service's template, as metrics count them.
const (
	templateReasonMissing  = "missing_value"
	templateReasonTooLarge = "value_too_large"
	templateReasonInvalid  = "invalid_output"
	templateReasonStored   = "stored_template"
	templateReasonEntity   = "entity_unavailable"
)

// addClaimsTemplateFields adds the template's fields to the services/:name schema.
func addClaimsTemplateFields(fields map[string]*framework.FieldSchema) {
	fields["claims_template"] = &framework.FieldSchema{
		Type: framework.TypeString,
		Description: "A JSON object of extra claims rendered at every login (at most 8 KiB, 16 directives). A value may be a directive, standing where a JSON value stands (not inside a string, never as a claim name): " +
			"Vault's identity templating over the caller's entity ({{identity.entity.id}}, {{identity.entity.name}}, {{identity.entity.metadata.<key>}}, {{identity.entity.aliases.<mount accessor>.metadata.<key>}}, ...custom_metadata.<key>, {{identity.entity.groups.names}}, {{identity.groups.names.<group>.metadata.<key>}}, ...) " +
			"or the verified client certificate and service ({{meshauth.cert.spiffe_id}}, {{meshauth.cert.dns_sans}}, {{meshauth.cert.subject_cn}}, {{meshauth.cert.serial}}, {{meshauth.service.name}}). " +
			"Claim names follow the rules of claims, may not also be in claims, and a directive renders at most 512 bytes of JSON (Vault bounds entity metadata values at 512 characters). Rendered claims are cached for 30s per service, entity and certificate. An empty string removes the template.",
	}
	fields["template_missing"] = &framework.FieldSchema{
		Type:        framework.TypeString,
		Description: "What a login does when a directive of claims_template has no value (metadata key absent, no certificate, not in the group): fail (default: the login is refused) or omit (the claim is left out). A claim is never an empty string.",
	}
}

// applyClaimsTemplateFields copies the template fields the request names.
func applyClaimsTemplateFields(e *serviceEntry, d *framework.FieldData) string {
	if v, ok := d.GetOk("claims_template"); ok {
		e.ClaimsTemplate = strings.TrimSpace(v.(string))
	}
	if v, ok := d.GetOk("template_missing"); ok {
		switch m := v.(string); m {
		case templateMissingFail, templateMissingOmit:
			e.TemplateMissing = m
		default:
			return fmt.Sprintf("template_missing must be %s or %s, not %q", templateMissingFail, templateMissingOmit, m)
		}
	}
	return ""
}

// addClaimsTemplateResponse adds the template fields to a service read.
func addClaimsTemplateResponse(data map[string]any, e *serviceEntry) {
	data["claims_template"] = e.ClaimsTemplate
	data["template_missing"] = e.templateMissing()
}

// templateMissing is the service's template_missing, "fail" when unset.
func (e *serviceEntry) templateMissing() string {
	if e.TemplateMissing == "" {
		return templateMissingFail
	}
	return e.TemplateMissing
}

// validateClaimsTemplate checks a service's template as registration
// stores it: it compiles (syntax, directives, names), its names are not
// also static claims, and it renders against an empty entity into claims
// that meshtoken's member rules accept. The worst-case size is part of
// checkTokenSize.
func validateClaimsTemplate(e *serviceEntry) string {
	if e.ClaimsTemplate == "" {
		return ""
	}
	t, err := compileClaimsTemplate(e.ClaimsTemplate)
	if err != nil {
		return "claims_template: " + err.Error()
	}
	for _, m := range t.members {
		if _, ok := e.Claims[m.name]; ok {
			return fmt.Sprintf("claim %q is in both claims and claims_template; a name is set in one place only", m.name)
		}
	}
	empty := renderInput{entity: &logical.Entity{}, service: e.Name}
	body, fail := t.render(&empty, templateMissingOmit)
	if fail != nil {
		return "claims_template does not render against an empty entity: " + fail.Error()
	}
	if err := checkRenderedClaims(e.Claims, body); err != nil {
		return "claims_template renders claims that verifiers would refuse: " + err.Error()
	}
	return ""
}

// claimsTemplate is a compiled template: its claims in order, each a JSON
// value with directives at fixed places.
type claimsTemplate struct {
	members []templateMember
}

// templateMember is one claim of a template.
type templateMember struct {
	// name is the claim name, literal: names are never templated.
	name string
	// nameJSON is name encoded, with its colon.
	nameJSON []byte
	// parts are the literal JSON around the directives, compact:
	// parts[0] directives[0] parts[1] ... parts[len(directives)].
	parts [][]byte
	// directives are the member's directives, in order.
	directives []directive
}

// directive is one {{...}} of a template.
type directive struct {
	// text is the directive as written, trimmed (identity.entity.name).
	text string
}

// directiveRe is every directive a template may use: Vault's identity
// templating (without time.*, which a cached rendering would freeze) and
// meshauth's own. identitytpl answers an unknown directive as it answers a
// missing value, so the names are checked here, at write, and a typo is
// refused instead of making every login fail or omit.
var directiveRe = regexp.MustCompile(`^(?:` +
	`identity\.entity\.(?:id|name|metadata|metadata\.[^.{}\s][^{}\s]*|groups\.names|groups\.ids|` +
	`aliases\.[^.{}\s]+\.(?:id|name|metadata|metadata\.[^{}\s]+|custom_metadata|custom_metadata\.[^{}\s]+))` +
	`|identity\.groups\.(?:names|ids)\.[^.{}\s]+\.(?:id|name|metadata\.[^{}\s]+)` +
	`|meshauth\.cert\.(?:spiffe_id|dns_sans|subject_cn|serial)` +
	`|meshauth\.service\.name` +
	`)$`)

// compileClaimsTemplate parses a template. Every directive is first
// replaced by a placeholder string that cannot occur in the text (it
// carries fresh random bits), so the result must parse as one JSON object
// in which each placeholder is a whole value: a directive inside a string
// or in a name's place is refused.
func compileClaimsTemplate(text string) (*claimsTemplate, error) {
	if len(text) > maxClaimsTemplateLen {
		return nil, fmt.Errorf("is %d bytes; at most %d are allowed", len(text), maxClaimsTemplateLen)
	}
	nonce := "\x7fmeshauth-directive-" + rand.Text() + "-"
	var (
		substituted strings.Builder
		directives  []directive
	)
	rest := text
	for {
		// Outside a directive "}}" is JSON (an object closing inside
		// another), unlike identitytpl, which refuses it anywhere.
		open := strings.Index(rest, "{{")
		if open < 0 {
			substituted.WriteString(rest)
			break
		}
		end := strings.Index(rest[open+2:], "}}")
		if end < 0 {
			return nil, errors.New("has {{ without }} after it")
		}
		inner := rest[open+2 : open+2+end]
		if strings.Contains(inner, "{{") {
			return nil, errors.New("has {{ inside a directive")
		}
		d := directive{text: strings.TrimSpace(inner)}
		if strings.HasPrefix(d.text, "time.") {
			return nil, fmt.Errorf("directive {{%s}}: time directives are not supported (tokens carry iat and exp, and rendered claims are cached)", d.text)
		}
		if !directiveRe.MatchString(d.text) {
			return nil, fmt.Errorf("unknown directive {{%s}}; see the path help of services/<name> for the directives", d.text)
		}
		if len(directives) == maxTemplateDirectives {
			return nil, fmt.Errorf("has more than %d directives", maxTemplateDirectives)
		}
		substituted.WriteString(rest[:open])
		fmt.Fprintf(&substituted, `"%s%d"`, nonce, len(directives))
		directives = append(directives, d)
		rest = rest[open+2+end+2:]
	}
	return parseTemplateObject([]byte(substituted.String()), nonce, directives)
}

// notJSON prefixes a template's JSON syntax errors.
const notJSON = "is not valid JSON once each directive stands as a value (a directive stands for a whole JSON value: not inside quotes, not as a name)"

// parseTemplateObject reads the substituted template: one JSON object,
// literal and distinct names, placeholders only as whole values.
func parseTemplateObject(src []byte, nonce string, directives []directive) (*claimsTemplate, error) {
	dec := json.NewDecoder(bytes.NewReader(src))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, errors.New("must be a JSON object, with directives standing where values stand ({\"team\": {{identity.entity.metadata.team}}})")
	}
	t := &claimsTemplate{}
	used := 0
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", notJSON, err)
		}
		name, _ := tok.(string)
		switch {
		case strings.Contains(name, nonce):
			return nil, errors.New("a directive may not stand as a claim name: names are literal")
		case name == "":
			return nil, errors.New("has an empty claim name")
		case slices.ContainsFunc(t.members, func(m templateMember) bool { return m.name == name }):
			return nil, fmt.Errorf("names claim %q twice", name)
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, fmt.Errorf("value of %q: %s: %w", name, notJSON, err)
		}
		m, err := splitMember(name, raw, nonce, directives)
		if err != nil {
			return nil, err
		}
		used += len(m.directives)
		t.members = append(t.members, m)
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("%s: %w", notJSON, err)
	}
	if _, err := dec.Token(); err == nil {
		return nil, errors.New("has data after the object")
	}
	if used != len(directives) {
		return nil, errors.New("has a directive outside the object's values")
	}
	names := make(map[string]string, len(t.members))
	for _, m := range t.members {
		names[m.name] = ""
	}
	if msg := checkClaimNames(names); msg != "" {
		return nil, errors.New(msg)
	}
	return t, nil
}

// splitMember cuts one member's compact value at its placeholders, and
// refuses a placeholder anywhere but as a whole value (a member name inside
// the value, or part of a string).
func splitMember(name string, raw json.RawMessage, nonce string, directives []directive) (templateMember, error) {
	var compact bytes.Buffer
	if err := json.Compact(&compact, raw); err != nil {
		return templateMember{}, fmt.Errorf("value of %q: %w", name, err)
	}
	if err := placeholdersAreValues(compact.Bytes(), nonce); err != nil {
		return templateMember{}, fmt.Errorf("value of %q: %w", name, err)
	}
	m := templateMember{name: name, nameJSON: append(appendJSONString(nil, name), ':')}
	rest := compact.Bytes()
	marker := []byte(`"` + nonce)
	for {
		i := bytes.Index(rest, marker)
		if i < 0 {
			m.parts = append(m.parts, rest)
			return m, nil
		}
		end := bytes.IndexByte(rest[i+len(marker):], '"')
		if end < 0 {
			return templateMember{}, fmt.Errorf("value of %q: a directive must be a whole value", name)
		}
		n, err := strconv.Atoi(string(rest[i+len(marker) : i+len(marker)+end]))
		if err != nil || n < 0 || n >= len(directives) {
			return templateMember{}, fmt.Errorf("value of %q: a directive must be a whole value", name)
		}
		m.parts = append(m.parts, rest[:i])
		m.directives = append(m.directives, directives[n])
		rest = rest[i+len(marker)+end+1:]
	}
}

// placeholdersAreValues walks a JSON value and refuses any string holding
// the nonce that is not a placeholder standing as a whole value.
func placeholdersAreValues(value []byte, nonce string) error {
	dec := json.NewDecoder(bytes.NewReader(value))
	dec.UseNumber()
	// One frame per open container: whether it is an object, and if so
	// whether its next token is a member name.
	type frame struct{ object, expectName bool }
	var stack []frame
	for {
		tok, err := dec.Token()
		if err != nil {
			return nil // the end of the value, which already parsed
		}
		top := len(stack) - 1
		if s, ok := tok.(string); ok && top >= 0 && stack[top].object && stack[top].expectName {
			if strings.Contains(s, nonce) {
				return errors.New("a directive may not stand as a member name")
			}
			stack[top].expectName = false
			continue
		}
		switch v := tok.(type) {
		case json.Delim:
			switch v {
			case '{':
				stack = append(stack, frame{object: true, expectName: true})
				continue
			case '[':
				stack = append(stack, frame{})
				continue
			}
			stack = stack[:top]
		case string:
			if strings.Contains(v, nonce) && !isPlaceholder(v, nonce) {
				return errors.New("a directive must be a whole value, not part of a string")
			}
		}
		// A value ended: the enclosing object expects a name next.
		if t := len(stack) - 1; t >= 0 && stack[t].object {
			stack[t].expectName = true
		}
	}
}

// isPlaceholder reports whether s is exactly a placeholder: the nonce and
// a directive number.
func isPlaceholder(s, nonce string) bool {
	rest, ok := strings.CutPrefix(s, nonce)
	if !ok || rest == "" {
		return false
	}
	for _, c := range rest {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// renderInput is what a template is rendered over.
type renderInput struct {
	// entity is the caller's Vault entity; nil when the token has none.
	entity *logical.Entity
	// groups are the entity's groups.
	groups []*logical.Group
	// leaf is the verified client certificate; nil when none verified.
	leaf *x509.Certificate
	// spiffeID is the SPIFFE ID the login verified, or "".
	spiffeID string
	// service is the service's name.
	service string
}

// templateFailure says why a template did not render: which directive,
// and the metrics reason.
type templateFailure struct {
	directive string
	reason    string
	detail    string
}

func (f *templateFailure) Error() string {
	return fmt.Sprintf("directive {{%s}}: %s", f.directive, f.detail)
}

// render renders every claim into the inside of a JSON object
// (`"a":1,"b":"x"`). A directive without a value fails the render under
// fail and drops its claim under omit; one over maxDirectiveJSON fails it
// either way: it is not missing, and dropping it would hide a claim that
// grew.
func (t *claimsTemplate) render(in *renderInput, missing string) ([]byte, *templateFailure) {
	var out []byte
members:
	for _, m := range t.members {
		values := make([][]byte, len(m.directives))
		for i, d := range m.directives {
			v, detail := d.render(in)
			switch {
			case v == nil && missing == templateMissingOmit:
				continue members
			case v == nil:
				return nil, &templateFailure{directive: d.text, reason: templateReasonMissing, detail: detail}
			case len(v) > maxDirectiveJSON:
				return nil, &templateFailure{directive: d.text, reason: templateReasonTooLarge, detail: fmt.Sprintf("renders %d bytes of JSON, over the %d allowed", len(v), maxDirectiveJSON)}
			}
			values[i] = v
		}
		if len(out) > 0 {
			out = append(out, ',')
		}
		out = append(out, m.nameJSON...)
		for i, p := range m.parts {
			out = append(out, p...)
			if i < len(values) {
				out = append(out, values[i]...)
			}
		}
	}
	return out, nil
}

// render returns the directive's value as JSON, or nil and why it has none.
// Never an empty string: Vault's identity tokens render a missing value as
// "" (hashicorp/vault#13936); here "" and null are missing.
func (d directive) render(in *renderInput) ([]byte, string) {
	var v []byte
	switch d.text {
	case "meshauth.service.name":
		v = appendJSONString(nil, in.service)
	case "meshauth.cert.spiffe_id":
		if in.spiffeID == "" {
			return nil, "the login verified no SPIFFE ID (the service has no spiffe_ids, or no certificate was presented)"
		}
		v = appendJSONString(nil, in.spiffeID)
	case "meshauth.cert.dns_sans", "meshauth.cert.subject_cn", "meshauth.cert.serial":
		if in.leaf == nil {
			return nil, "the login verified no client certificate"
		}
		v = certDirective(d.text, in.leaf)
	default:
		v = d.renderIdentity(in)
	}
	if v == nil || string(v) == `""` || string(v) == "null" || string(v) == "[]" || string(v) == "{}" {
		return nil, "has no value for this caller"
	}
	return v, ""
}

// certDirective renders one meshauth.cert directive of a verified leaf, or
// nil when the certificate has no such value.
func certDirective(text string, leaf *x509.Certificate) []byte {
	switch text {
	case "meshauth.cert.dns_sans":
		if len(leaf.DNSNames) == 0 {
			return nil
		}
		v, _ := json.Marshal(leaf.DNSNames) // a []string always marshals
		return v
	case "meshauth.cert.subject_cn":
		return appendJSONString(nil, leaf.Subject.CommonName)
	default: // serial, as Vault's PKI writes it: colon-separated hex
		raw := leaf.SerialNumber.Bytes()
		parts := make([]string, len(raw))
		for i, c := range raw {
			parts[i] = hex.EncodeToString([]byte{c})
		}
		return appendJSONString(nil, strings.Join(parts, ":"))
	}
}

// renderIdentity renders an identity directive with the SDK's identitytpl,
// in its JSON mode. A directive of the entity needs an entity, one of
// groups a group; identitytpl's group fields come back bare, and are
// quoted here. Whatever it does not render is missing.
func (d directive) renderIdentity(in *renderInput) []byte {
	if in.entity == nil {
		return nil
	}
	_, out, err := identitytpl.PopulateString(identitytpl.PopulateStringInput{
		String: "{{" + d.text + "}}",
		Mode:   identitytpl.JSONTemplating,
		Entity: in.entity,
		Groups: in.groups,
	})
	if err != nil {
		return nil
	}
	if strings.HasPrefix(d.text, "identity.groups.") {
		return appendJSONString(nil, out)
	}
	if !json.Valid([]byte(out)) {
		return nil
	}
	return []byte(out)
}

// checkRenderedClaims checks rendered claims beside the static ones with
// meshtoken's member rules, the rules verifiers apply to the payload: one
// JSON object, no duplicate members at any depth, no name that folds to a
// reserved one. Registration refused such names already; this holds for a
// template stored by an older release and for whatever identity data
// renders.
func checkRenderedClaims(static map[string]string, body []byte) error {
	if len(body) == 0 {
		return nil
	}
	obj := []byte{'{'}
	if len(static) > 0 {
		full, _ := json.Marshal(static) // map[string]string always marshals
		obj = append(obj, full[1:len(full)-1]...)
		obj = append(obj, ',')
	}
	obj = append(obj, body...)
	obj = append(obj, '}')
	if err := meshtoken.CheckMembers(obj); err != nil {
		return err
	}
	var names map[string]json.RawMessage
	if err := json.Unmarshal(obj, &names); err != nil {
		return err
	}
	keys := make(map[string]string, len(names))
	for k := range names {
		keys[k] = ""
	}
	if msg := checkClaimNames(keys); msg != "" {
		return errors.New(msg)
	}
	return nil
}

// worstCaseTemplateClaims is the largest rendering of a service's template:
// every directive at maxDirectiveJSON bytes. checkTokenSize adds it to the
// static claims.
func worstCaseTemplateClaims(e *serviceEntry) []byte {
	if e.ClaimsTemplate == "" {
		return nil
	}
	t, err := compileClaimsTemplate(e.ClaimsTemplate)
	if err != nil {
		return nil // refused by validateClaimsTemplate
	}
	filler := []byte(`"` + strings.Repeat("x", maxDirectiveJSON-2) + `"`)
	var out []byte
	for _, m := range t.members {
		if len(out) > 0 {
			out = append(out, ',')
		}
		out = append(out, m.nameJSON...)
		for i, p := range m.parts {
			out = append(out, p...)
			if i < len(m.directives) {
				out = append(out, filler...)
			}
		}
	}
	return out
}

// claimsKey identifies one rendering within a service: who the caller is
// in Vault and which certificate it verified with.
type claimsKey struct {
	entity   string
	x5t      string
	spiffeID string
}

// claimsResult is one rendering, successful or not.
type claimsResult struct {
	// svc is the cached service (one write of it) the rendering is for: a
	// result is reused only for that very service. A login that read the
	// service before a write can store its result after the write's drop,
	// but the next login holds the new cachedService and never uses it.
	svc *cachedService
	// body is the rendered claims; nil with fail set.
	body []byte
	fail *templateFailure
	// transient marks a failure to read the entity from Vault, which is
	// never cached: the next login asks again.
	transient bool
	// until is when the rendering is stale: entity changes reach new
	// tokens by then.
	until time.Time
}

// claimsCache keeps renderings per service, bounded across services, in
// the shape of chainCache: checked against the service they were computed
// for, dropped with it, started over when full.
type claimsCache struct {
	serviceMap[claimsKey, *claimsResult]
}

// newClaimsCache returns an empty cache holding at most max renderings.
func newClaimsCache(max int) *claimsCache {
	return &claimsCache{serviceMap: newServiceMap[claimsKey, *claimsResult](max)}
}

// get returns a fresh rendering for the service and key, or nil.
func (c *claimsCache) get(svc *cachedService, key claimsKey, now time.Time) *claimsResult {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, _ := c.getLocked(svc.entry.Name, key)
	if r == nil || r.svc != svc || !now.Before(r.until) {
		return nil
	}
	return r
}

// put keeps a rendering.
func (c *claimsCache) put(key claimsKey, r *claimsResult) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.putLocked(r.svc.entry.Name, key, r)
}

// templateClaims renders the service's template for a login that
// authenticated, through the cache, and returns the claims to put into the
// token (nil without a template). A failure is logged naming the directive,
// counted, and answered with the one error every failed login gets; it
// does not count toward lockout: the caller proved the key and certificate,
// and what is missing is the operator's identity data, so counting would
// lock a healthy instance out over a metadata change.
func (b *backend) templateClaims(req *logical.Request, id *loginIdentity, now time.Time) ([]byte, error) {
	svc := id.svc
	if svc.tmpl == nil && svc.tmplErr == nil {
		return nil, nil
	}
	name := svc.entry.Name
	if svc.tmplErr != nil {
		b.claimsMetrics.refused(name, templateReasonStored)
		b.metrics.loginFailed(name)
		b.Logger().Warn("login refused: the stored claims_template no longer passes registration's checks; write it again", "service", name, "error", svc.tmplErr)
		return nil, errLoginRefused(req, name)
	}
	key := claimsKey{entity: req.EntityID, x5t: id.x5t, spiffeID: id.spiffeID}
	r := b.claimsRendered.get(svc, key, now)
	if r == nil {
		r = b.renderClaims(req, id)
		r.until = now.Add(claimsCacheTTL)
		if !r.transient {
			b.claimsRendered.put(key, r)
		}
	}
	if r.fail != nil {
		b.claimsMetrics.refused(name, r.fail.reason)
		b.metrics.loginFailed(name)
		b.Logger().Warn("login refused: claims_template did not render", "service", name, "directive", "{{"+r.fail.directive+"}}", "reason", r.fail.reason, "detail", r.fail.detail, "entity_id", req.EntityID)
		return nil, errLoginRefused(req, name)
	}
	return r.body, nil
}

// renderClaims renders the template over the caller's entity and groups,
// read from Vault, and the verified certificate.
func (b *backend) renderClaims(req *logical.Request, id *loginIdentity) *claimsResult {
	svc := id.svc
	in := renderInput{spiffeID: id.spiffeID, service: svc.entry.Name}
	if id.x5t != "" {
		if chain := peerChain(connState(req)); len(chain) > 0 {
			in.leaf = chain[0]
		}
	}
	if req.EntityID != "" && b.System() != nil {
		entity, err := b.System().EntityInfo(req.EntityID)
		if err != nil {
			return &claimsResult{svc: svc, transient: true, fail: &templateFailure{directive: "identity.entity", reason: templateReasonEntity, detail: "reading the caller's entity: " + err.Error()}}
		}
		in.entity = entity
		if in.entity != nil {
			if in.groups, err = b.System().GroupsForEntity(req.EntityID); err != nil {
				return &claimsResult{svc: svc, transient: true, fail: &templateFailure{directive: "identity.groups", reason: templateReasonEntity, detail: "reading the caller's groups: " + err.Error()}}
			}
		}
	}
	body, fail := svc.tmpl.render(&in, svc.entry.templateMissing())
	if fail != nil {
		return &claimsResult{svc: svc, fail: fail}
	}
	if err := checkRenderedClaims(svc.entry.Claims, body); err != nil {
		return &claimsResult{svc: svc, fail: &templateFailure{directive: "claims_template", reason: templateReasonInvalid, detail: err.Error()}}
	}
	return &claimsResult{svc: svc, body: body}
}

// compileForCache compiles a stored template when a service is loaded. A
// template that registration would refuse today (stored by an older
// release) makes the service's logins fail closed.
func (cs *cachedService) compileForCache() {
	if cs.entry.ClaimsTemplate == "" {
		return
	}
	cs.tmpl, cs.tmplErr = compileClaimsTemplate(cs.entry.ClaimsTemplate)
	if cs.tmplErr == nil {
		if msg := validateClaimsTemplate(cs.entry); msg != "" {
			cs.tmpl, cs.tmplErr = nil, errors.New(msg)
		}
	}
}

// templateMetrics counts logins refused by templates, per service and reason.
type templateMetrics struct {
	mu     sync.RWMutex
	counts map[[2]string]*atomic.Uint64
}

// refused counts one refusal.
func (m *templateMetrics) refused(service, reason string) {
	k := [2]string{service, reason}
	m.mu.RLock()
	c := m.counts[k]
	m.mu.RUnlock()
	if c == nil {
		m.mu.Lock()
		if m.counts == nil {
			m.counts = map[[2]string]*atomic.Uint64{}
		}
		if c = m.counts[k]; c == nil {
			c = &atomic.Uint64{}
			m.counts[k] = c
		}
		m.mu.Unlock()
	}
	c.Add(1)
}

// sortedKeys lists the counters in a stable order.
func (m *templateMetrics) sortedKeys() [][2]string {
	keys := make([][2]string, 0, len(m.counts))
	for k := range m.counts {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b [2]string) int { return strings.Compare(a[0]+"\x00"+a[1], b[0]+"\x00"+b[1]) })
	return keys
}

// addTo adds the counters to the JSON metrics:
// claims_template_refusals: {service: {reason: n}}.
func (m *templateMetrics) addTo(data map[string]any) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := map[string]map[string]uint64{}
	for _, k := range m.sortedKeys() {
		if out[k[0]] == nil {
			out[k[0]] = map[string]uint64{}
		}
		out[k[0]][k[1]] = m.counts[k].Load()
	}
	data["claims_template_refusals"] = out
}

// prometheus renders the counters in the text exposition format.
func (m *templateMetrics) prometheus() string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var p promText
	p.family("meshauth_claims_template_refusals_total", "Logins refused because the service's claims_template did not render, by reason.", "counter")
	for _, k := range m.sortedKeys() {
		p.sample("meshauth_claims_template_refusals_total", m.counts[k].Load(), "service", k[0], "reason", k[1])
	}
	return p.sb.String()
}

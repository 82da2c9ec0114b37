package meshauth

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"golang.org/x/crypto/ocsp"
)

// Client-certificate revocation: CRLs and OCSP at login (issue 25).
//
// Where answers come from. Each node fetches the CRLs and OCSP answers it
// needs itself and keeps them in memory; nothing fetched is stored. That
// keeps every login storage-free (a standby cannot write, and reading what
// the active node stored would cost a storage read per refresh and a second
// copy of every rule), and a node whose CA endpoints are unreachable fails on
// its own, visibly in its own metrics. The price is one fetch per node per
// refresh, which a CRL distribution point is built for.
//
// What an answer counts for. A CRL or OCSP response counts for a
// certificate only when it is signed by that certificate's own issuing CA,
// checked by key (the CA in the verified chain), never by issuer name alone:
// two CAs may share a subject name. Revoked serials are held per CRL and a CRL
// is used for a certificate only after its signature verified against the
// certificate's issuer, so the key of a revocation is (issuing CA key,
// serial). An answer counts until the earlier of its nextUpdate and
// revocation_max_age after it was fetched; it is refetched in the background
// at about half that span, with jitter, and past it the certificate's status
// is unknown: the login is refused unless revocation_fail_open.

// Values of revocation_check.
const (
	revocationCheckNone = "none"
	revocationCheckCRL  = "crl"
	revocationCheckOCSP = "ocsp"
	revocationCheckBoth = "crl,ocsp"
)

// Bounds on revocation fetches.
const (
	// maxCRLBytes bounds a fetched or pushed CRL.
	maxCRLBytes = 10 << 20
	// maxOCSPBytes bounds an OCSP response.
	maxOCSPBytes = 64 << 10
	// revocationFetchTimeout bounds one fetch.
	revocationFetchTimeout = 10 * time.Second
	// defaultAnswerLife is how long an answer without nextUpdate counts when
	// the service sets no revocation_max_age.
	defaultAnswerLife = time.Hour
	// revocationRetry is the pause before a failed fetch is tried again.
	revocationRetry = 15 * time.Second
	// revocationIdle is how long a source nobody asked for keeps being
	// refreshed.
	revocationIdle = 24 * time.Hour
	// maxRevocationSources bounds the CRL URLs and OCSP answers kept.
	maxRevocationSources = 1024
	// maxTrackedCertificates bounds the certificates remembered for the feed.
	maxTrackedCertificates = 10000
	// ocspSkew is the clock skew allowed for thisUpdate in the future.
	ocspSkew = 5 * time.Minute
)

// Results counted in meshauth_certificate_revocation_total.
const (
	revocationResultRevoked     = "certificate_revoked"
	revocationResultUnavailable = "revocation_unavailable"
	revocationResultFailOpen    = "revocation_fail_open"
	revocationResultCRLFailed   = "crl_fetch_failed"
	revocationResultOCSPFailed  = "ocsp_fetch_failed"
)

// errCertificateRevoked refuses a login whose chain holds a revoked
// certificate. The caller only ever sees the generic refusal.
var errCertificateRevoked = errors.New("certificate_revoked")

// revocationPolicy is a service's revocation settings, parsed once with its
// trust.
type revocationPolicy struct {
	crl, ocsp   bool
	crlURLs     []string
	ocspServers []string
	failOpen    bool
	maxAge      time.Duration
}

// revocationPolicyOf returns the policy of a service entry, nil for none.
func revocationPolicyOf(e *serviceEntry) *revocationPolicy {
	mode := e.RevocationCheck
	if mode == "" || mode == revocationCheckNone {
		return nil
	}
	return &revocationPolicy{
		crl:         mode == revocationCheckCRL || mode == revocationCheckBoth,
		ocsp:        mode == revocationCheckOCSP || mode == revocationCheckBoth,
		crlURLs:     e.CRLURLs,
		ocspServers: e.OCSPServers,
		failOpen:    e.RevocationFailOpen,
		maxAge:      e.RevocationMaxAge,
	}
}

// answerLife is until when an answer fetched at fetched counts: its
// nextUpdate, cut to revocation_max_age after the fetch; without nextUpdate,
// revocation_max_age or an hour.
func (p *revocationPolicy) answerLife(fetched, nextUpdate time.Time) time.Time {
	switch {
	case p.maxAge > 0 && (nextUpdate.IsZero() || fetched.Add(p.maxAge).Before(nextUpdate)):
		return fetched.Add(p.maxAge)
	case nextUpdate.IsZero():
		return fetched.Add(defaultAnswerLife)
	}
	return nextUpdate
}

// addRevocationServiceFields declares the revocation fields of services/:name.
func addRevocationServiceFields(fields map[string]*framework.FieldSchema) {
	fields["revocation_check"] = &framework.FieldSchema{
		Type:        framework.TypeString,
		Description: "Check the client certificate and the intermediates of its verified chain for revocation at login: none (default), crl, ocsp, or crl,ocsp (each method must answer). Needs ca_chain, or spiffe_ids (the path to the trust domain's bundle is checked). A CRL or OCSP answer counts only when signed by the certificate's own issuing CA (by key), or for OCSP by a responder that CA delegated with id-kp-OCSPSigning.",
	}
	fields["crl_urls"] = &framework.FieldSchema{
		Type:        framework.TypeCommaStringSlice,
		Description: "http(s) URLs of the CRLs to fetch (list or comma-separated). Default: each certificate's CRL distribution points. CRLs pushed at crls/<name> count as well.",
	}
	fields["ocsp_servers"] = &framework.FieldSchema{
		Type:        framework.TypeCommaStringSlice,
		Description: "http(s) URLs of OCSP responders (list or comma-separated). Default: each certificate's Authority Information Access OCSP URLs.",
	}
	fields["revocation_fail_open"] = &framework.FieldSchema{
		Type:        framework.TypeBool,
		Description: "When no current CRL or OCSP answer can be had (endpoint down, CRL past nextUpdate), allow the login and count it as revocation_fail_open instead of refusing it. A certificate known to be revoked is always refused. Default: false.",
	}
	fields["revocation_max_age"] = &framework.FieldSchema{
		Type:        framework.TypeDurationSecond,
		Description: "The longest a fetched CRL or OCSP answer counts, even when its nextUpdate is later (duration or seconds). Answers are refetched at about half their span. Default 0: until nextUpdate, or an hour when the answer has none.",
	}
}

// applyRevocationFields copies the revocation fields a request names.
func applyRevocationFields(e *serviceEntry, d *framework.FieldData) string {
	if v, ok := d.GetOk("revocation_check"); ok {
		mode := strings.ReplaceAll(strings.ToLower(strings.TrimSpace(v.(string))), " ", "")
		if mode == "ocsp,crl" {
			mode = revocationCheckBoth
		}
		switch mode {
		case revocationCheckNone, revocationCheckCRL, revocationCheckOCSP, revocationCheckBoth:
		default:
			return fmt.Sprintf("revocation_check must be none, crl, ocsp or crl,ocsp, not %q", v.(string))
		}
		if mode == revocationCheckNone {
			mode = ""
		}
		e.RevocationCheck = mode
	}
	for field, dst := range map[string]*[]string{"crl_urls": &e.CRLURLs, "ocsp_servers": &e.OCSPServers} {
		if v, ok := d.GetOk(field); ok {
			cleaned, msg := cleanList(field, v.([]string))
			if msg != "" {
				return msg
			}
			for _, u := range cleaned {
				if !isFetchableURL(u) {
					return fmt.Sprintf("%s entry %q is not an http or https URL", field, u)
				}
			}
			*dst = cleaned
		}
	}
	if v, ok := d.GetOk("revocation_fail_open"); ok {
		e.RevocationFailOpen = v.(bool)
	}
	if v, ok := d.GetOk("revocation_max_age"); ok {
		if v.(int) < 0 {
			return "revocation_max_age must not be negative"
		}
		e.RevocationMaxAge = time.Duration(v.(int)) * time.Second
	}
	return ""
}

// validateServiceRevocation checks the revocation fields as stored.
func validateServiceRevocation(e *serviceEntry) string {
	if e.RevocationCheck == "" {
		return ""
	}
	if e.CAChain == "" && len(e.SPIFFEIDs) == 0 {
		return "revocation_check needs ca_chain or spiffe_ids (checked against the trust domain's bundle): a CRL or OCSP answer counts only when signed by the CA that issued the certificate"
	}
	return ""
}

// addRevocationServiceResponse adds the revocation fields to a service read.
func addRevocationServiceResponse(data map[string]any, e *serviceEntry) {
	data["revocation_check"] = cmpOr(e.RevocationCheck, revocationCheckNone)
	data["crl_urls"] = nonNil(e.CRLURLs)
	data["ocsp_servers"] = nonNil(e.OCSPServers)
	data["revocation_fail_open"] = e.RevocationFailOpen
	data["revocation_max_age"] = seconds(e.RevocationMaxAge)
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// isFetchableURL reports whether u is an absolute http(s) URL with a host.
func isFetchableURL(u string) bool {
	p, err := url.Parse(u)
	return err == nil && (p.Scheme == "http" || p.Scheme == "https") && p.Host != ""
}

// spkiHash is the SHA-256 of a certificate's SubjectPublicKeyInfo: a CA by
// its key.
type spkiHash [sha256.Size]byte

func spkiOf(c *x509.Certificate) spkiHash { return sha256.Sum256(c.RawSubjectPublicKeyInfo) }

// parsedCRL is one CRL with its revoked serials indexed.
type parsedCRL struct {
	list    *x509.RevocationList
	raw     []byte
	revoked map[string]struct{}
	// fetched is when it was fetched or pushed.
	fetched time.Time
}

// parseCRL parses a PEM or DER CRL, bounded in size.
func parseCRL(data []byte) (*parsedCRL, error) {
	if len(data) > maxCRLBytes {
		return nil, fmt.Errorf("CRL is %d bytes; at most %d are accepted", len(data), maxCRLBytes)
	}
	der := data
	if trimmed := bytes.TrimSpace(data); bytes.HasPrefix(trimmed, pemBegin) {
		block, rest := pem.Decode(trimmed)
		if block == nil || block.Type != "X509 CRL" || len(bytes.TrimSpace(rest)) > 0 {
			return nil, errors.New("CRL PEM must be exactly one X509 CRL block")
		}
		der = block.Bytes
	}
	list, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("CRL does not parse: %w", err)
	}
	p := &parsedCRL{list: list, raw: der, revoked: make(map[string]struct{}, len(list.RevokedCertificateEntries))}
	for _, r := range list.RevokedCertificateEntries {
		p.revoked[r.SerialNumber.String()] = struct{}{}
	}
	return p, nil
}

// signedBy reports whether the CRL is signed by ca's key and names it as
// issuer.
func (p *parsedCRL) signedBy(ca *x509.Certificate) bool {
	return bytes.Equal(p.list.RawIssuer, ca.RawSubject) && p.list.CheckSignatureFrom(ca) == nil
}

// revocationAnswer is one method's answer for one certificate.
type revocationAnswer struct {
	revoked bool
	// known is false when no current answer could be had.
	known bool
	// until is when the answer stops counting.
	until time.Time
	err   error
}

// answerSource is one fetched revocation answer (the CRL of one URL, or the
// OCSP answer for one issuer, serial and responder) and its fetch state:
// one fetch at a time, a refresh at about half the answer's life, nothing
// refreshed once idle. T is the parsed answer, nil until the first good one.
type answerSource[T comparable] struct {
	mu     sync.Mutex
	answer T
	// until is when answer stops counting (nextUpdate or the max age).
	until time.Time
	// inflight is closed when the running fetch ends; nil when none runs.
	inflight chan struct{}
	lastErr  error
	lastUsed time.Time
	timer    *time.Timer
	maxAge   time.Duration
	// span is how long the last good answer counted when fetched.
	span time.Duration
	// what names the source in errors and logs; failed is its results
	// label when a fetch fails.
	what, failed string
	// ask fetches and validates one answer, and says its nextUpdate.
	ask func(ctx context.Context, now time.Time) (T, time.Time, error)
	// same reports whether a new answer says what the last one said.
	same func(last, next T) bool
}

// crlSource is one CRL URL: the last good CRL and its fetch state.
type crlSource = answerSource[*parsedCRL]

// ocspKey names one OCSP answer: the issuing CA by key, the serial, and the
// responder asked.
type ocspKey struct {
	issuer spkiHash
	serial string
	server string
}

// ocspSource is one cached OCSP answer and its fetch state.
type ocspSource = answerSource[*ocsp.Response]

// trackedCertificate is a certificate that logged in on this node, kept so
// that a later revocation can list it in the feed.
type trackedCertificate struct {
	chain   []*x509.Certificate
	trust   *serviceTrust
	lastExp time.Time
}

// certRevocation is the engine's revocation checking on one node.
type certRevocation struct {
	b      *backend
	client *http.Client

	mu      sync.Mutex
	closed  bool
	crls    map[string]*crlSource
	ocsps   map[ocspKey]*ocspSource
	tracked map[string]*trackedCertificate

	// pushed holds the CRLs of crls/, loaded once, dropped by every write
	// and Invalidate of crls/; a load racing a drop is not kept.
	pushed epochValue[[]*parsedCRL]
	// listMu serialises writes and tidies of the listing.
	listMu sync.Mutex
	// listed is the set of certificates listed in storage (x5t -> exp),
	// with the same discipline.
	listed epochValue[map[string]time.Time]

	results *labelCounters
}

// newCertRevocation returns the checker of b.
func newCertRevocation(b *backend) *certRevocation {
	return &certRevocation{
		b: b,
		// Redirects are not followed: a CRL or OCSP URL names its answer.
		client: &http.Client{
			Timeout:       revocationFetchTimeout,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		crls:    map[string]*crlSource{},
		ocsps:   map[ocspKey]*ocspSource{},
		tracked: map[string]*trackedCertificate{},
		results: b.metrics.certRevocation,
	}
}

// stop ends every background refresh.
func (r *certRevocation) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	for _, s := range r.crls {
		if s.timer != nil {
			s.timer.Stop()
		}
	}
	for _, s := range r.ocsps {
		if s.timer != nil {
			s.timer.Stop()
		}
	}
	r.crls = map[string]*crlSource{}
	r.ocsps = map[ocspKey]*ocspSource{}
}

// changed is called when revocation data changed: cached chain verdicts are
// recomputed, and certificates that logged in here are checked again.
func (r *certRevocation) changed() {
	r.b.verifiedChains.bumpRevocations()
	go r.scanTracked()
}

// checkChain checks every certificate of a verified chain but its root
// against policy, using what is cached and fetching (bounded, one fetch per
// source at a time) what is not. It returns when the verdict stops counting.
func (r *certRevocation) checkChain(ctx context.Context, p *revocationPolicy, chain []*x509.Certificate, now time.Time, fetch bool) (time.Time, error) {
	until := time.Time{}
	var unknown error
	for i := 0; i+1 < len(chain); i++ {
		cert, issuer := chain[i], chain[i+1]
		for _, a := range r.answers(ctx, p, cert, issuer, now, fetch) {
			if a.revoked {
				return now.Add(failedChainTTL), errCertificateRevoked
			}
			if !a.known {
				if unknown == nil {
					unknown = cmpErr(a.err, errors.New("no current revocation answer"))
				}
				continue
			}
			if until.IsZero() || a.until.Before(until) {
				until = a.until
			}
		}
	}
	if unknown != nil {
		return now.Add(failedChainTTL), fmt.Errorf("revocation status unknown: %w", unknown)
	}
	if until.IsZero() {
		until = now.Add(failedChainTTL)
	}
	return until, nil
}

func cmpErr(err, def error) error {
	if err != nil {
		return err
	}
	return def
}

// answers returns each configured method's answer for cert.
func (r *certRevocation) answers(ctx context.Context, p *revocationPolicy, cert, issuer *x509.Certificate, now time.Time, fetch bool) []revocationAnswer {
	var out []revocationAnswer
	if p.crl {
		out = append(out, r.crlAnswer(ctx, p, cert, issuer, now, fetch))
	}
	if p.ocsp {
		out = append(out, r.ocspAnswer(ctx, p, cert, issuer, now, fetch))
	}
	return out
}

// crlAnswer checks cert against every CRL signed by issuer's key: pushed
// ones and those of its URLs.
func (r *certRevocation) crlAnswer(ctx context.Context, p *revocationPolicy, cert, issuer *x509.Certificate, now time.Time, fetch bool) revocationAnswer {
	serial := cert.SerialNumber.String()
	var a revocationAnswer
	consider := func(c *parsedCRL, until time.Time) {
		if c == nil || !c.signedBy(issuer) {
			return
		}
		// A revocation counts even from a CRL past nextUpdate: it is final.
		if _, ok := c.revoked[serial]; ok {
			a.revoked = true
			return
		}
		if now.Before(until) && !now.Before(c.list.ThisUpdate.Add(-ocspSkew)) {
			if !a.known || until.Before(a.until) {
				a.until = until
			}
			a.known = true
		}
	}
	pushed, err := r.pushedCRLs(ctx)
	if err != nil {
		a.err = err
	}
	for _, c := range pushed {
		consider(c, p.answerLife(c.fetched, c.list.NextUpdate))
	}
	urls := p.crlURLs
	if len(urls) == 0 {
		urls = cert.CRLDistributionPoints
	}
	for _, u := range urls {
		if !isFetchableURL(u) {
			continue
		}
		s := r.crlSource(u, p.maxAge, now)
		if s == nil {
			a.err = errors.New("too many revocation sources")
			continue
		}
		c, until, err := s.get(ctx, r, now, fetch)
		if err != nil {
			a.err = err
		}
		consider(c, until)
	}
	if a.revoked {
		a.known = true
	}
	return a
}

// crlSource returns the source of one URL, creating it.
func (r *certRevocation) crlSource(u string, maxAge time.Duration, now time.Time) *crlSource {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.crls[u]
	if s == nil {
		if r.closed || len(r.crls) >= maxRevocationSources {
			return nil
		}
		s = &crlSource{
			what: "CRL " + u, failed: revocationResultCRLFailed, maxAge: maxAge,
			// The CRL is kept if it parses; its signature is checked per
			// certificate, against the issuer in the verified chain.
			ask: func(ctx context.Context, now time.Time) (*parsedCRL, time.Time, error) {
				body, err := r.download(ctx, http.MethodGet, u, "", nil, maxCRLBytes)
				if err != nil {
					return nil, time.Time{}, err
				}
				c, err := parseCRL(body)
				if err != nil {
					return nil, time.Time{}, err
				}
				c.fetched = now
				return c, c.list.NextUpdate, nil
			},
			same: func(last, next *parsedCRL) bool { return bytes.Equal(last.raw, next.raw) },
		}
		r.crls[u] = s
	}
	s.use(now, maxAge)
	return s
}

// use records that a login asked the source now, under a policy of maxAge.
func (s *answerSource[T]) use(now time.Time, maxAge time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastUsed = now
	if maxAge > 0 && (s.maxAge == 0 || maxAge < s.maxAge) {
		s.maxAge = maxAge
	}
}

// get returns the source's answer and until when it counts. With none yet
// (or one no longer counting) and fetch set, it waits for a fetch, started
// if none runs.
func (s *answerSource[T]) get(ctx context.Context, r *certRevocation, now time.Time, fetch bool) (T, time.Time, error) {
	var none T
	s.mu.Lock()
	if s.answer != none && now.Before(s.until) || !fetch {
		a, until, err := s.answer, s.until, s.lastErr
		s.mu.Unlock()
		return a, until, err
	}
	done := s.startLocked(r)
	s.mu.Unlock()
	select {
	case <-done:
	case <-ctx.Done():
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.answer, s.until, s.lastErr
}

// startLocked starts a fetch unless one runs, and returns its channel.
func (s *answerSource[T]) startLocked(r *certRevocation) chan struct{} {
	if s.inflight != nil {
		return s.inflight
	}
	done := make(chan struct{})
	s.inflight = done
	go s.fetch(r, done)
	return done
}

// fetch asks once, keeps the answer only if it validates, and schedules
// the next refresh.
func (s *answerSource[T]) fetch(r *certRevocation, done chan struct{}) {
	ctx, cancel := context.WithTimeout(context.Background(), revocationFetchTimeout)
	defer cancel()
	now := r.b.now()
	a, nextUpdate, err := s.ask(ctx, now)
	var none T
	s.mu.Lock()
	changed := false
	if err != nil {
		s.lastErr = fmt.Errorf("%s: %w", s.what, err)
		r.results.add(s.failed)
		r.b.Logger().Warn("revocation fetch failed", "source", s.what, "error", err)
	} else {
		changed = s.answer == none || !s.same(s.answer, a)
		s.answer, s.lastErr = a, nil
		s.until = (&revocationPolicy{maxAge: s.maxAge}).answerLife(now, nextUpdate)
		s.span = s.until.Sub(now)
	}
	next := refreshAt(now, s.until, err != nil)
	idle := isIdle(now, s.lastUsed, s.span)
	s.inflight = nil
	close(done)
	s.mu.Unlock()
	r.schedule(idle, next.Sub(now), s.setTimer, func() {
		s.mu.Lock()
		s.startLocked(r)
		s.mu.Unlock()
	})
	if changed {
		r.changed()
	}
}

func (s *answerSource[T]) setTimer(t *time.Timer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.timer = t
}

// refreshAt is when to fetch again: at about half the answer's remaining
// life, with up to a tenth of jitter, or after revocationRetry on failure.
func refreshAt(now, until time.Time, failed bool) time.Time {
	if failed || !until.After(now) {
		return now.Add(revocationRetry)
	}
	half := until.Sub(now) / 2
	jitter := time.Duration(rand.Int64N(int64(half/10) + 1)) //nolint:gosec // jitter, not a secret
	return now.Add(half - jitter)
}

// isIdle reports whether a source is no longer worth refreshing. Logins
// served from the verified-chain cache do not touch lastUsed, but a cached
// verdict lasts at most one answer span, so a source in use was asked within
// the last span; a day beyond that it is idle.
func isIdle(now, lastUsed time.Time, span time.Duration) bool {
	return now.Sub(lastUsed) > revocationIdle+span
}

// schedule arms a refresh unless the node stopped or the source is idle.
func (r *certRevocation) schedule(idle bool, after time.Duration, set func(*time.Timer), run func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || idle {
		return
	}
	set(time.AfterFunc(after, run))
}

// download fetches one URL, bounded in time and size.
func (r *certRevocation) download(ctx context.Context, method, u, contentType string, body []byte, limit int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("response is larger than %d bytes", limit)
	}
	return data, nil
}

// ocspAnswer asks the certificate's responders (the first that answers
// counts) through the cache.
func (r *certRevocation) ocspAnswer(ctx context.Context, p *revocationPolicy, cert, issuer *x509.Certificate, now time.Time, fetch bool) revocationAnswer {
	servers := p.ocspServers
	if len(servers) == 0 {
		servers = cert.OCSPServer
	}
	a := revocationAnswer{err: errors.New("no OCSP responder")}
	for _, u := range servers {
		if !isFetchableURL(u) {
			continue
		}
		s := r.ocspSource(ocspKey{issuer: spkiOf(issuer), serial: cert.SerialNumber.String(), server: u}, cert, issuer, p.maxAge, now)
		if s == nil {
			a.err = errors.New("too many revocation sources")
			continue
		}
		resp, until, err := s.get(ctx, r, now, fetch)
		if resp == nil || !now.Before(until) {
			a.err = cmpErr(err, errors.New("OCSP answer past nextUpdate"))
			continue
		}
		switch resp.Status {
		case ocsp.Revoked:
			return revocationAnswer{revoked: true, known: true}
		case ocsp.Good:
			return revocationAnswer{known: true, until: until}
		default:
			a.err = errors.New("OCSP responder does not know the certificate")
		}
	}
	return a
}

// ocspSource returns the cached answer of one (issuer, serial, responder).
func (r *certRevocation) ocspSource(k ocspKey, cert, issuer *x509.Certificate, maxAge time.Duration, now time.Time) *ocspSource {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.ocsps[k]
	if s == nil {
		if r.closed || len(r.ocsps) >= maxRevocationSources {
			return nil
		}
		s = &ocspSource{
			what: "OCSP " + k.server + " serial " + k.serial, failed: revocationResultOCSPFailed, maxAge: maxAge,
			// One POST (RFC 6960 appendix A); the answer is kept only if it
			// validates.
			ask: func(ctx context.Context, now time.Time) (*ocsp.Response, time.Time, error) {
				req, err := ocsp.CreateRequest(cert, issuer, &ocsp.RequestOptions{Hash: crypto.SHA256})
				if err != nil {
					return nil, time.Time{}, err
				}
				body, err := r.download(ctx, http.MethodPost, k.server, "application/ocsp-request", req, maxOCSPBytes)
				if err != nil {
					return nil, time.Time{}, err
				}
				resp, err := validateOCSP(body, cert, issuer, now)
				if err != nil {
					return nil, time.Time{}, err
				}
				return resp, resp.NextUpdate, nil
			},
			same: func(last, next *ocsp.Response) bool { return last.Status == next.Status },
		}
		r.ocsps[k] = s
	}
	s.use(now, maxAge)
	return s
}

// validateOCSP parses a response for cert and checks what
// golang.org/x/crypto/ocsp leaves to its caller. ParseResponseForCert checks
// the serial and that the signature is by issuer or by a certificate issuer
// signed; here: that such a delegated responder carries id-kp-OCSPSigning
// and is within its validity and names the issuer, and that
// thisUpdate/nextUpdate hold now. Requests carry no nonce (the package
// sends none), so freshness rests on thisUpdate, nextUpdate and
// revocation_max_age.
func validateOCSP(body []byte, cert, issuer *x509.Certificate, now time.Time) (*ocsp.Response, error) {
	resp, err := ocsp.ParseResponseForCert(body, cert, issuer)
	if err != nil {
		return nil, err
	}
	if d := resp.Certificate; d != nil && !bytes.Equal(d.Raw, issuer.Raw) {
		if !slices.Contains(d.ExtKeyUsage, x509.ExtKeyUsageOCSPSigning) {
			return nil, errors.New("OCSP responder certificate lacks id-kp-OCSPSigning")
		}
		if err := checkValidity("OCSP responder certificate", d, now); err != nil {
			return nil, err
		}
		if !bytes.Equal(d.RawIssuer, issuer.RawSubject) {
			return nil, errors.New("OCSP responder certificate is not issued by the certificate's CA")
		}
	}
	if resp.ThisUpdate.After(now.Add(ocspSkew)) {
		return nil, errors.New("OCSP thisUpdate is in the future")
	}
	if !resp.NextUpdate.IsZero() && !now.Before(resp.NextUpdate) {
		return nil, errors.New("OCSP answer is past its nextUpdate")
	}
	return resp, nil
}

// track remembers a certificate that logged in on this node with a token
// that expires at exp.
func (r *certRevocation) track(x5t string, chain []*x509.Certificate, t *serviceTrust, exp, now time.Time) {
	if t == nil || t.revocation == nil || t.roots == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if old := r.tracked[x5t]; old != nil {
		if exp.After(old.lastExp) {
			old.lastExp = exp
		}
		old.trust = t
		return
	}
	if len(r.tracked) >= maxTrackedCertificates {
		for k, t := range r.tracked {
			if t.lastExp.Before(now) {
				delete(r.tracked, k)
			}
		}
		if len(r.tracked) >= maxTrackedCertificates {
			return
		}
	}
	r.tracked[x5t] = &trackedCertificate{chain: chain, trust: t, lastExp: exp}
}

// scanTracked checks, against cached answers only, every certificate that
// logged in here, and lists the revoked ones in storage for the feed.
func (r *certRevocation) scanTracked() {
	if !r.b.canWrite() {
		// A standby cannot store the listing; the active node lists what
		// logged in on it.
		return
	}
	now := r.b.now()
	r.mu.Lock()
	type item struct {
		x5t string
		t   trackedCertificate
	}
	var items []item
	for k, t := range r.tracked {
		if t.lastExp.Before(now) {
			delete(r.tracked, k)
			continue
		}
		items = append(items, item{k, *t})
	}
	r.mu.Unlock()
	for _, it := range items {
		if _, err := r.checkPresented(it.t.trust, it.t.chain, now, false); errors.Is(err, errCertificateRevoked) {
			if err := r.listRevoked(context.Background(), r.b.storageView, it.x5t, it.t.lastExp); err != nil {
				r.b.Logger().Warn("could not list a revoked certificate in the feed", "x5t#S256", it.x5t, "error", err)
			}
		}
	}
}

// labelCounters counts events by one label.
type labelCounters struct {
	mu sync.RWMutex
	m  map[string]*atomic.Uint64
}

func newLabelCounters() *labelCounters { return &labelCounters{m: map[string]*atomic.Uint64{}} }

func (l *labelCounters) add(label string) {
	l.mu.RLock()
	c := l.m[label]
	l.mu.RUnlock()
	if c == nil {
		l.mu.Lock()
		if c = l.m[label]; c == nil {
			c = &atomic.Uint64{}
			l.m[label] = c
		}
		l.mu.Unlock()
	}
	c.Add(1)
}

func (l *labelCounters) snapshot() map[string]uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	out := make(map[string]uint64, len(l.m))
	for k, c := range l.m {
		out[k] = c.Load()
	}
	return out
}

// prometheus renders the counters as one family.
func (l *labelCounters) prometheus(p *promText, family, help string) {
	p.family(family, help, "counter")
	snap := l.snapshot()
	keys := make([]string, 0, len(snap))
	for k := range snap {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		p.sample(family, snap[k], "result", k)
	}
}

// checkPresented checks a presented chain that verified against t: every
// path it verifies on through the service's CAs must pass, since the CA
// that counts is the one that signed.
func (r *certRevocation) checkPresented(t *serviceTrust, chain []*x509.Certificate, now time.Time, fetch bool) (time.Time, error) {
	intermediates := x509.NewCertPool()
	for _, c := range chain[1:] {
		intermediates.AddCert(c)
	}
	// Every path the login accepted is checked: the one to the service's
	// own ca_chain and, for a SPIFFE service, the one to its trust
	// domain's bundle (both had to hold at login).
	var paths [][]*x509.Certificate
	for _, roots := range t.revocationRoots(chain[0]) {
		p, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: intermediates, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, CurrentTime: now})
		if err != nil {
			return time.Time{}, fmt.Errorf("client certificate does not chain to its trust: %w", err)
		}
		paths = append(paths, p...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), revocationFetchTimeout)
	defer cancel()
	var until time.Time
	var unknown error
	for _, path := range paths {
		u, err := r.checkChain(ctx, t.revocation, path, now, fetch)
		if errors.Is(err, errCertificateRevoked) {
			return u, err
		}
		if err != nil {
			unknown = err
			continue
		}
		if until.IsZero() || u.Before(until) {
			until = u
		}
	}
	if unknown != nil {
		return now.Add(failedChainTTL), unknown
	}
	return until, nil
}

// checkRevocation is the login's revocation step for a chain that verified.
// It returns until when the verdict counts (zero: no limit).
func (b *backend) checkRevocation(t *serviceTrust, chain []*x509.Certificate, now time.Time) (time.Time, error) {
	if t.revocation == nil || len(t.revocationRoots(chain[0])) == 0 {
		// A pinned certificate alone has no issuer to ask.
		return time.Time{}, nil
	}
	until, err := b.certRevocation.checkPresented(t, chain, now, true)
	switch {
	case errors.Is(err, errCertificateRevoked):
		b.certRevocation.results.add(revocationResultRevoked)
		// Listed in the feed by the login, and only for a caller that also
		// holds the service's API key (listRefusedCertificate).
	case err != nil && t.revocation.failOpen:
		b.certRevocation.results.add(revocationResultFailOpen)
		b.Logger().Warn("login allowed without a current revocation answer (revocation_fail_open)", "error", err)
		return now.Add(failedChainTTL), nil
	case err != nil:
		b.certRevocation.results.add(revocationResultUnavailable)
	}
	return until, err
}

// listRefusedCertificate lists a certificate refused as revoked at login,
// until max_ttl from now: no token bound to it issued before the refusal,
// on any node, outlives that. This covers what the in-memory tracking of
// logins cannot: a node that restarted since the certificate logged in, or
// tokens minted by a standby. The refused verdict is cached, and a listing
// already as long is not written again, so a holder of a revoked key (the
// TLS handshake proves possession) causes at most one write a minute.
//
// Only a login that presented the service's live API key lists it (the
// login checks that first): a token bound to the certificate can exist only
// for someone holding both. Without that rule, anyone controlling a CA one
// service trusts could fill the mount-wide list (MaxRevokedCertificates)
// with certificates no token was ever bound to, and push the genuine ones
// out of offline verifiers' sight. A listing that already runs to within a
// minute of the new end is not written again.
func (b *backend) listRefusedCertificate(leaf *x509.Certificate) {
	if !b.canWrite() || b.storageView == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), revocationFetchTimeout)
	defer cancel()
	cfg, err := b.getConfig(ctx, b.storageView)
	if err == nil {
		x5t, until := certificateThumbprint(leaf), b.now().Add(cfg.MaxTTL)
		listed, lerr := b.certRevocation.revokedCertificates(ctx, b.storageView)
		if lerr == nil && listed[x5t].After(until.Add(-time.Minute)) {
			return
		}
		err = b.certRevocation.listRevoked(ctx, b.storageView, x5t, until)
	}
	if err != nil {
		b.Logger().Warn("could not list a revoked certificate in the feed", "x5t#S256", certificateThumbprint(leaf), "error", err)
	}
}

// revocationRoots are the root pools a presented leaf was verified against
// at login: the service's ca_chain, and the bundle of the trust domain of
// its SPIFFE ID. Revocation is checked along the paths to each.
func (t *serviceTrust) revocationRoots(leaf *x509.Certificate) []*x509.CertPool {
	var out []*x509.CertPool
	if t.roots != nil {
		out = append(out, t.roots)
	}
	if len(t.spiffe) > 0 {
		if id, err := leafSPIFFEID(leaf); err == nil && t.domains[id.trustDomain] != nil {
			out = append(out, t.domains[id.trustDomain])
		}
	}
	return out
}

package meshauth

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// The RFC 8693 values exchange/:name accepts and answers with.
const (
	grantTypeTokenExchange = "urn:ietf:params:oauth:grant-type:token-exchange" //nolint:gosec // an RFC 8693 URN, not a credential
	tokenTypeJWT           = "urn:ietf:params:oauth:token-type:jwt"            //nolint:gosec // an RFC 8693 URN, not a credential
)

// reasonActorWithdrawn is verify's reason for an exchanged token one of
// whose actors is no longer the registered, enabled service in the epoch
// it was at the exchange.
const reasonActorWithdrawn = "actor_withdrawn"

// pathExchange declares exchange/:name.
func pathExchange(b *backend) []*framework.Path {
	return []*framework.Path{{
		Pattern:      "exchange/" + serviceNamePattern,
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
		Fields: map[string]*framework.FieldSchema{
			"name": {
				Type:        framework.TypeString,
				Description: "Name of the acting service: the one that received subject_token and calls onward on its subject's behalf. It authenticates as at login/<name>.",
			},
			"api_key": {
				Type:         framework.TypeString,
				Description:  "The acting service's API key. Required; the client certificate must come on the TLS connection to Vault.",
				DisplayAttrs: &framework.DisplayAttributes{Sensitive: true},
			},
			"subject_token": {
				Type:         framework.TypeString,
				Description:  "The meshauth token the acting service received (its aud must name the acting service). Required.",
				DisplayAttrs: &framework.DisplayAttributes{Sensitive: true},
			},
			"audience": {
				Type:        framework.TypeString,
				Description: "The one service the issued token is for; must be in the acting service's exchange_audiences. Required.",
			},
			"grant_type": {
				Type:        framework.TypeString,
				Description: "Optional; when sent, " + grantTypeTokenExchange + " (RFC 8693).",
			},
			"subject_token_type": {
				Type:        framework.TypeString,
				Description: "Optional; when sent, " + tokenTypeJWT + " (RFC 8693).",
			},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "exchange", OperationSuffix: "token"},
				Callback:     b.pathExchange,
				Summary:      "Exchange a token received from a caller for one to call onward on its behalf (RFC 8693), bound to the acting service's certificate.",
			},
		},
		HelpSynopsis:    "Token exchange (RFC 8693): a token for calling onward on a caller's behalf, bound to the acting service's own certificate.",
		HelpDescription: exchangeHelp,
	}}
}

// exchangeRefusal answers an exchange refused for its subject token or the
// acting service's exchange policy. The acting service authenticated, so
// the answer may name what failed.
func exchangeRefusal(format string, args ...any) error {
	return logical.CodedError(http.StatusForbidden, "meshauth: exchange refused: "+fmt.Sprintf(format, args...))
}

func (b *backend) pathExchange(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name, errResp := serviceName(req, d)
	if errResp != nil {
		return errResp, nil
	}
	if resp := rejectUnknownFields(req, d); resp != nil {
		return resp, nil
	}
	if v, ok := d.GetOk("grant_type"); ok && v.(string) != grantTypeTokenExchange {
		return logical.ErrorResponse("grant_type must be " + grantTypeTokenExchange + " when sent"), nil
	}
	if v, ok := d.GetOk("subject_token_type"); ok && v.(string) != tokenTypeJWT {
		return logical.ErrorResponse("subject_token_type must be " + tokenTypeJWT + " when sent (meshauth exchanges its own JWTs)"), nil
	}
	subject := d.Get("subject_token").(string)
	audience := strings.TrimSpace(d.Get("audience").(string))
	switch {
	case subject == "":
		return logical.ErrorResponse("subject_token is required: the token the acting service received"), nil
	case audience == "":
		return logical.ErrorResponse("audience is required: the one service the issued token is for"), nil
	}
	// The exchange reads only, like a login; the count backs the test that
	// it writes nothing.
	storage := &countingView{Storage: req.Storage}
	defer func() { b.metrics.loginStorageOps.Add(storage.ops) }()
	req.Storage = storage
	cfg, err := b.getConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	// The acting service authenticates exactly as at login: the same
	// factors, lockout and refusal (path_login.go).
	id, err := b.authenticateCaller(ctx, req, name, d.Get("api_key").(string), cfg)
	if err != nil {
		return nil, err
	}
	svc, cfg := id.svc, id.cfg
	if id.x5t == "" {
		// The issued token is bound to the acting service's certificate;
		// without one there is nothing to bind it to, and an unbound
		// delegated token would be a bearer token anyone on the path could
		// replay.
		return nil, exchangeRefusal("service %q presented no verified client certificate; an exchanged token is always bound to the acting service's certificate", name)
	}
	if len(svc.entry.ExchangeAudiences) == 0 {
		return nil, exchangeRefusal("service %q may not exchange tokens (its exchange_audiences is empty); an operator allows it with: vault write %s/services/%s exchange_audiences=<service>", name, strings.TrimSuffix(req.MountPoint, "/"), name)
	}
	if !slices.Contains(svc.entry.ExchangeAudiences, audience) {
		return nil, exchangeRefusal("audience %q is not in the exchange_audiences of service %q (%s)", audience, name, strings.Join(svc.entry.ExchangeAudiences, ", "))
	}
	// Every rule of online verify, with the acting service as audience:
	// the subject token was sent to it, so no service can spend a token
	// addressed to another (no confused deputy).
	v, err := b.verifyToken(ctx, req.Storage, subject, name)
	if err != nil {
		return nil, err
	}
	if v.reason == "" && v.parsed.claims.Bound() {
		if v.reason, err = b.certificateRevokedReason(ctx, req.Storage, v.parsed.claims.Confirmation.X5tS256); err != nil {
			return nil, err
		}
	}
	if v.reason != "" {
		return nil, exchangeRefusal("subject_token does not verify for service %q (reason %s)", name, v.reason)
	}
	sc := v.parsed.claims
	if strings.HasPrefix(sc.Subject, spiffeScheme) {
		// A JWT-SVID's sub would carry over: to a SPIFFE verifier, which
		// reads neither act nor cnf, the exchanged token would be a plain
		// JWT-SVID of the caller that the acting service obtained.
		return nil, exchangeRefusal("subject_token is a JWT-SVID (sub %s); JWT-SVIDs are not exchanged, since SPIFFE verifiers read neither act nor cnf: exchange a token of a service with token_subject=name", sc.Subject)
	}
	depth := len(sc.Actors()) + 1
	if depth > svc.entry.maxDelegationDepth() {
		return nil, exchangeRefusal("the chain would have %d actors; service %q allows at most %d (max_delegation_depth)", depth, name, svc.entry.maxDelegationDepth())
	}
	now := b.now()
	ttl, _ := loginTTL(svc.entry, cfg, 0)
	exp := now.Unix() + int64(ttl/time.Second)
	if subjectExp := sc.ExpiresAt.Unix(); subjectExp < exp {
		exp = subjectExp
	}
	if exp <= now.Unix() {
		return nil, exchangeRefusal("subject_token expires now")
	}
	ring, err := b.getKeyRing(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	minted, err := mintExchanged(ring.current, cfg, sc, name, svc.entry.generation(), audience, id.x5t, now, exp)
	if err != nil {
		return nil, err
	}
	if minted == nil {
		return nil, exchangeRefusal("the issued token would exceed %d bytes (a long chain or large claims)", maxTokenLength)
	}
	// Remembered so that a later revocation of the acting service's
	// certificate lists it in the feed, as for a login.
	b.certRevocation.track(id.x5t, peerChain(connState(req)), svc.trust, minted.expiresAt, now)
	b.Logger().Debug("token exchanged", "service", name, "subject", sc.Subject, "audience", audience, "jti", minted.jti, "subject_jti", sc.ID)
	return &logical.Response{Data: map[string]any{
		"token":             minted.token,
		"issued_token_type": tokenTypeJWT,
		"token_type":        "Bearer",
		"expires_at":        minted.expiresAt.Format(time.RFC3339),
		"expires_in":        int64(minted.expiresAt.Sub(now.Truncate(time.Second)) / time.Second),
		"jti":               minted.jti,
		"kid":               minted.kid,
	}}, nil
}

// actorClaim is RFC 8693's act: the current actor, the one before it nested.
type actorClaim struct {
	Sub string      `json:"sub"`
	Gen string      `json:"gen,omitempty"`
	Act *actorClaim `json:"act,omitempty"`
}

// exchangedClaims are the registered claims of an exchanged token.
type exchangedClaims struct {
	Issuer      string                  `json:"iss"`
	Subject     string                  `json:"sub"`
	Audience    string                  `json:"aud"`
	IssuedAt    int64                   `json:"iat"`
	NotBefore   int64                   `json:"nbf"`
	Expiry      int64                   `json:"exp"`
	ID          string                  `json:"jti"`
	Cnf         *meshtoken.Confirmation `json:"cnf"`
	Generation  string                  `json:"gen,omitempty"`
	Service     string                  `json:"meshauth_service,omitempty"`
	Act         *actorClaim             `json:"act"`
	DerivedFrom []string                `json:"meshauth_derived_from"`
	DerivedCnf  []string                `json:"meshauth_derived_cnf"`
}

// mintExchanged signs the token exchange issues for actor from the verified
// subject claims sc: sc's sub, gen (so the subject service's revoke ends it)
// and extra claims, actor prepended to sc's actors, sc's jti appended to
// the jtis it derives from. It returns nil when the token would be too
// large for verifiers.
func mintExchanged(key *signingKey, cfg *configEntry, sc *meshtoken.Claims, actor, actorGen, audience, x5t string, now time.Time, exp int64) (*mintedToken, error) {
	var act *actorClaim
	actors := append([]string{actor}, sc.Actors()...)
	gens := append([]string{actorGen}, sc.ActorGenerations()...)
	for i := len(actors) - 1; i >= 0; i-- {
		act = &actorClaim{Sub: actors[i], Gen: gens[i], Act: act}
	}
	jti := rand.Text()
	claims := exchangedClaims{
		Issuer:      cfg.Issuer,
		Subject:     sc.Subject,
		Audience:    audience,
		IssuedAt:    now.Unix(),
		NotBefore:   now.Unix(),
		Expiry:      exp,
		ID:          jti,
		Cnf:         &meshtoken.Confirmation{X5tS256: x5t},
		Generation:  sc.Generation,
		Service:     sc.Service,
		Act:         act,
		DerivedFrom: append(sc.DerivedFrom(), sc.ID),
		// The certificate sc was bound to ("" if unbound), beside its jti:
		// revoking it ends this token too, though cnf names the actor's.
		DerivedCnf: append(sc.DerivedConfirmations(), subjectX5t(sc)),
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return nil, fmt.Errorf("encoding exchanged claims: %w", err)
	}
	// The subject's extra claims (static and templated) go first, as at
	// login: Extra leaves out every registered claim.
	// They are copied as raw JSON, so numbers keep every digit.
	var extra map[string]json.RawMessage
	if err := json.Unmarshal(sc.Payload, &extra); err != nil {
		return nil, fmt.Errorf("reading subject claims: %w", err)
	}
	for _, name := range meshtoken.RegisteredClaims() {
		delete(extra, name)
	}
	if len(extra) > 0 {
		full, err := json.Marshal(extra)
		if err != nil {
			return nil, fmt.Errorf("encoding extra claims: %w", err)
		}
		payload = prependExtraClaims(full[1:len(full)-1], payload)
	}
	input := key.headerB64 + "." + base64.RawURLEncoding.EncodeToString(payload)
	if len(input)+worstSignatureB64 > maxTokenLength {
		return nil, nil
	}
	sig, err := sign(key.method, key.signer, input)
	if err != nil {
		return nil, fmt.Errorf("signing token: %w", err)
	}
	return &mintedToken{
		token:     input + "." + base64.RawURLEncoding.EncodeToString(sig),
		jti:       jti,
		kid:       key.entry.KID,
		expiresAt: time.Unix(exp, 0).UTC(),
	}, nil
}

// subjectX5t is the x5t#S256 the subject token is bound to, "" if unbound.
func subjectX5t(sc *meshtoken.Claims) string {
	if sc.Bound() {
		return sc.Confirmation.X5tS256
	}
	return ""
}

// delegationReason is verify's check of an exchanged token beyond its own
// jti: every token it was derived from is unrevoked, and every actor in its
// chain is still the registration it was, enabled, in the epoch it had at
// the exchange (services/<actor>/revoke ends what it obtained). Tokens from
// login pass.
func (b *backend) delegationReason(ctx context.Context, s logical.Storage, c *meshtoken.Claims) (string, error) {
	for _, jti := range c.DerivedFrom() {
		revoked, err := b.revoked.isRevoked(ctx, s, jti)
		if err != nil {
			return "", err
		}
		if revoked {
			return reasonTokenRevoked, nil
		}
	}
	// A token it was exchanged from was bound to a certificate revoked
	// since: the caller's certificate revocation ends what was obtained on
	// its behalf, as its own tokens.
	for _, x5t := range c.DerivedConfirmations() {
		if x5t == "" {
			continue
		}
		reason, err := b.certificateRevokedReason(ctx, s, x5t)
		if err != nil || reason != "" {
			return reason, err
		}
	}
	gens := c.ActorGenerations()
	for i, actor := range c.Actors() {
		svc, err := b.getService(ctx, s, actor)
		if err != nil {
			return "", err
		}
		if svc == nil || svc.entry.Disabled || svc.identityErr != nil || svc.entry.generation() != gens[i] {
			return reasonActorWithdrawn, nil
		}
	}
	return "", nil
}

// delegationDepthReason is verify's max_delegation_depth: a token with act
// passes only when the caller of verify opted in with a depth at least its
// chain's. Off by default, since whoever can write the acting service's
// exchange_audiences could otherwise have it mint tokens in any caller's
// name toward the verifying service.
func delegationDepthReason(c *meshtoken.Claims, maxDepth int) string {
	if n := len(c.Actors()); n > 0 && n > maxDepth {
		return meshtoken.ReasonDelegationNotAllowed
	}
	return ""
}

// addActorsResponse adds verify's actors: an exchanged token's actor chain,
// outermost (the service holding it) first; absent for a token from login.
func addActorsResponse(data map[string]any, c *meshtoken.Claims) {
	if actors := c.Actors(); len(actors) > 0 {
		data["actors"] = actors
	}
}

// defaultMaxDelegationDepth is max_delegation_depth unless set: one hop
// (orders -> payments -> ledger), never a chain nobody planned.
const defaultMaxDelegationDepth = 1

// maxDelegationDepth is the service's max_delegation_depth; entries stored
// before the field existed hold 0 and get the default.
func (e *serviceEntry) maxDelegationDepth() int {
	if e.MaxDelegationDepth <= 0 {
		return defaultMaxDelegationDepth
	}
	return e.MaxDelegationDepth
}

// addExchangeServiceFields adds exchange_audiences and max_delegation_depth
// to services/:name.
func addExchangeServiceFields(fields map[string]*framework.FieldSchema) {
	fields["exchange_audiences"] = &framework.FieldSchema{
		Type:        framework.TypeCommaStringSlice,
		Description: "Services this service may call on a caller's behalf through exchange/<name> (list or comma-separated). Empty (the default): it may not exchange tokens.",
	}
	fields["max_delegation_depth"] = &framework.FieldSchema{
		Type:        framework.TypeInt,
		Description: "The most actors (nested act claims) a token this service obtains by exchange may carry, its own hop included: 1 (the default) lets it exchange tokens from login only. 1 to " + strconv.Itoa(meshtoken.MaxActorDepth) + ".",
	}
}

// applyExchangeFields copies exchange_audiences and max_delegation_depth.
func applyExchangeFields(e *serviceEntry, d *framework.FieldData) string {
	if v, ok := d.GetOk("exchange_audiences"); ok {
		cleaned, msg := cleanList("exchange_audiences", v.([]string))
		if msg != "" {
			return msg
		}
		for _, a := range cleaned {
			if !serviceNameRe.MatchString(a) {
				return fmt.Sprintf("exchange_audiences entry %q is not a service name (%s)", a, serviceNameRule)
			}
		}
		e.ExchangeAudiences = cleaned
	}
	if v, ok := d.GetOk("max_delegation_depth"); ok {
		n := v.(int)
		if n < 1 || n > meshtoken.MaxActorDepth {
			return fmt.Sprintf("max_delegation_depth must be 1 to %d (to forbid exchange, leave exchange_audiences empty)", meshtoken.MaxActorDepth)
		}
		e.MaxDelegationDepth = n
	}
	return ""
}

// addExchangeServiceResponse renders the fields for read.
func addExchangeServiceResponse(data map[string]any, e *serviceEntry) {
	data["exchange_audiences"] = nonNil(e.ExchangeAudiences)
	data["max_delegation_depth"] = e.maxDelegationDepth()
}

const exchangeHelp = `
RFC 8693 token exchange. A service (payments) that received a token from a
caller (orders) and must call another service (ledger) on the caller's
behalf exchanges it here for a token whose sub is still the caller, whose
act names payments (with earlier actors nested inside), whose aud is the
requested audience, and which is bound (cnf.x5t#S256) to payments' own
client certificate: ledger accepts it only from payments.

The acting service authenticates exactly as at login/<name>: api_key and
its client certificate, the same lockout and the same refusal. Without a
verified client certificate there is no exchange. Then:

- subject_token must pass every check of verify (signature, time,
  revocation, the service's gen and state) with the acting service as
  audience: a token addressed to another service cannot be exchanged;
- audience must be in the acting service's exchange_audiences (empty: no
  exchange);
- the chain (the number of act claims, this hop included) may not exceed
  the acting service's max_delegation_depth (default 1).

The issued token expires no later than subject_token and no later than a
token of the acting service would; it carries the subject's extra claims,
its gen (services/<subject>/revoke ends it) and meshauth_derived_from, the
jti of every token it was exchanged from, so revoking any of them ends it:
at once in verify, offline through the revocations feed; and
meshauth_derived_cnf, the x5t#S256 each of those was bound to ("" if
unbound), so revoking the caller's certificate ends it the same way. grant_type and
subject_token_type are optional and, when sent, must be the RFC 8693 values.
An exchange never writes to storage.
`

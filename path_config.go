package meshauth

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// configVersion is the current layout of configEntry.
const configVersion = 1

// Defaults of the engine configuration, as the contract states them.
const (
	defaultIssuer              = "meshauth"
	defaultSigningAlgorithm    = algES256
	defaultTokenTTL            = time.Hour
	defaultMaxTTL              = 24 * time.Hour
	defaultKeyRotationPeriod   = 24 * time.Hour
	defaultLeeway              = meshtoken.DefaultLeeway
	defaultLockoutThreshold    = 5
	defaultLockoutDuration     = 15 * time.Minute
	defaultLockoutCounterReset = 15 * time.Minute
	defaultAPIKeyGracePeriod   = 24 * time.Hour
	// defaultMinPublicationAge is how long a key is in jwks before it may
	// sign. istiod refetches a jwksUri every 20 minutes and pushes the keys
	// inline to Envoy, which never refetches on an unknown kid; Envoy's own
	// remote_jwks cache keeps a set 10 minutes by default; and jwks itself
	// lets any HTTP cache keep it up to maxJWKSCacheAge (1h). An hour covers
	// all three, and one failed istiod fetch besides.
	defaultMinPublicationAge = time.Hour
	// defaultRevocationMaxStaleness is how old a verifier's copy of the
	// revocation feed may be: the longest a revoked token is still accepted
	// offline. The feed's max-age is half of it, so one failed refetch still
	// leaves a verifier within it.
	defaultRevocationMaxStaleness = meshtoken.DefaultRevocationMaxStaleness
	// Bounds of revocation_max_staleness: under 10s every verifier polls
	// Vault several times a minute; over 1h revocation means little.
	minRevocationStaleness = 10 * time.Second
	maxRevocationStaleness = time.Hour
	// maxMinPublicationAge bounds the wait: past a week, keys/rotate
	// without force would in effect never work.
	maxMinPublicationAge = 7 * 24 * time.Hour
	// maxLeeway bounds the clock skew an operator may allow: more than this
	// turns expiry into a suggestion.
	maxLeeway = 10 * time.Minute
	// maxAPIKeyWrapTTL bounds api_key_wrap_ttl.
	maxAPIKeyWrapTTL = 24 * time.Hour
	// minRotationPeriod keeps automatic rotation from running away: the
	// periodic function runs about once a minute.
	minRotationPeriod = time.Minute
)

// configEntry is the engine configuration, stored at storageConfig.
type configEntry struct {
	// Version is the layout version of this entry.
	Version int `json:"version"`
	// Issuer is the iss claim of every token.
	Issuer string `json:"issuer"`
	// SigningAlgorithm is the JOSE alg of the current signing key.
	SigningAlgorithm string `json:"signing_algorithm"`
	// DefaultTTL is a token's lifetime when neither service nor request says.
	DefaultTTL time.Duration `json:"default_ttl"`
	// MaxTTL is the hard ceiling of any token's lifetime.
	MaxTTL time.Duration `json:"max_ttl"`
	// KeyRotationPeriod is how often the signing key rotates; 0 turns it off.
	KeyRotationPeriod time.Duration `json:"key_rotation_period"`
	// VerificationTTL is how long a retired key keeps verifying; 0 means
	// MaxTTL + Leeway.
	VerificationTTL time.Duration `json:"verification_ttl"`
	// Leeway is the clock skew allowed on exp, nbf and iat.
	Leeway time.Duration `json:"leeway"`
	// LockoutThreshold is the number of failed logins in a row that locks a
	// service for one caller; 0 turns lockout off.
	LockoutThreshold int `json:"lockout_threshold"`
	// LockoutDuration is how long a lock lasts.
	LockoutDuration time.Duration `json:"lockout_duration"`
	// LockoutCounterReset is how long a failure is remembered.
	LockoutCounterReset time.Duration `json:"lockout_counter_reset"`
	// APIKeyGracePeriod is how long the previous API key works after rotate-key.
	APIKeyGracePeriod time.Duration `json:"api_key_grace_period"`
	// APIKeyMaxAge is the age at which an API key stops working; 0 is none.
	APIKeyMaxAge time.Duration `json:"api_key_max_age"`
	// AllowGetLogin turns on the one-round-trip GET login. Off by default:
	// a GET is a read, so with it on, read capability on login/<name> mints
	// tokens, and an operator must grant that knowingly.
	AllowGetLogin bool `json:"allow_get_login,omitempty"`
	// APIKeyWrapTTL, when set, has Vault response-wrap every answer that
	// carries an API key with this TTL; 0 is off.
	APIKeyWrapTTL time.Duration `json:"api_key_wrap_ttl,omitempty"`
	// TrustDomain is the engine's SPIFFE trust domain; "" is none.
	TrustDomain string `json:"trust_domain,omitempty"`
	// MinPublicationAge is how long a key is in jwks before it may sign;
	// 0 turns the wait off. Never omitted when stored: a config written
	// before the field existed decodes to the default, one that set 0 keeps 0.
	MinPublicationAge time.Duration `json:"min_publication_age"`
	// RevocationMaxStaleness bounds the revocation feed's Cache-Control
	// max-age (half of it) and is the age past which verifiers refuse.
	RevocationMaxStaleness time.Duration `json:"revocation_max_staleness"`
}

// defaultConfig is the configuration of a freshly mounted engine.
func defaultConfig() *configEntry {
	return &configEntry{
		Version:             configVersion,
		Issuer:              defaultIssuer,
		SigningAlgorithm:    defaultSigningAlgorithm,
		DefaultTTL:          defaultTokenTTL,
		MaxTTL:              defaultMaxTTL,
		KeyRotationPeriod:   defaultKeyRotationPeriod,
		Leeway:              defaultLeeway,
		LockoutThreshold:    defaultLockoutThreshold,
		LockoutDuration:     defaultLockoutDuration,
		LockoutCounterReset: defaultLockoutCounterReset,
		APIKeyGracePeriod:   defaultAPIKeyGracePeriod,

		MinPublicationAge:      defaultMinPublicationAge,
		RevocationMaxStaleness: defaultRevocationMaxStaleness,
	}
}

// verificationTTL is how long a retired key stays in jwks and verifies:
// the configured value, or max_ttl + leeway, and never less than max_ttl so
// that no token outlives its key's place in jwks.
func (c *configEntry) verificationTTL() time.Duration {
	if c.VerificationTTL > 0 {
		return max(c.VerificationTTL, c.MaxTTL)
	}
	return c.MaxTTL + c.Leeway
}

// pathConfig declares the config path.
func pathConfig(b *backend) []*framework.Path {
	return []*framework.Path{{
		Pattern:      "config",
		DisplayAttrs: &framework.DisplayAttributes{OperationPrefix: operationPrefix},
		Fields: map[string]*framework.FieldSchema{
			"issuer": {
				Type:        framework.TypeString,
				Description: "The iss claim of every token. When it is an https URL, discovery's jwks_uri is <issuer>/jwks; otherwise /v1/<mount>/jwks. Default: meshauth.",
			},
			"signing_algorithm": {
				Type:          framework.TypeString,
				Description:   "Signing algorithm: ES256, ES384, EdDSA or RS256. Changing it publishes a new next key of that kind at once, which starts signing once it has been in jwks for min_publication_age (at once when that is 0). Default: ES256.",
				AllowedValues: []any{algES256, algES384, algEdDSA, algRS256},
			},
			"default_ttl": {
				Type:        framework.TypeDurationSecond,
				Description: "Token lifetime when neither the service nor the login request sets one (duration or seconds). Default: 1h.",
			},
			"max_ttl": {
				Type:        framework.TypeDurationSecond,
				Description: "Hard ceiling for any token's lifetime (duration or seconds). Default: 24h.",
			},
			"key_rotation_period": {
				Type:        framework.TypeDurationSecond,
				Description: "How often the signing key rotates automatically (duration or seconds, at least 1m); 0 turns automatic rotation off. The ring keeps verification_ttl / key_rotation_period (rounded up) + 2 keys and holds at most 20, so this must be at least verification_ttl / 18. Default: 24h.",
			},
			"verification_ttl": {
				Type:        framework.TypeDurationSecond,
				Description: "How long a retired signing key stays in jwks and verifies tokens (duration or seconds); never shorter than max_ttl. Default: max_ttl + leeway.",
			},
			"leeway": {
				Type:        framework.TypeDurationSecond,
				Description: "Clock skew allowed on exp, nbf and iat (duration or seconds, at most 10m). Default: 30s.",
			},
			"lockout_threshold": {
				Type:        framework.TypeInt,
				Description: "Failed logins in a row, per service and caller, before that caller is locked out of that service; 0 turns lockout off. Default: 5.",
			},
			"lockout_duration": {
				Type:        framework.TypeDurationSecond,
				Description: "How long a locked caller stays locked (duration or seconds). Default: 15m.",
			},
			"lockout_counter_reset": {
				Type:        framework.TypeDurationSecond,
				Description: "Failed logins older than this are forgotten (duration or seconds). Default: 15m.",
			},
			"api_key_grace_period": {
				Type:        framework.TypeDurationSecond,
				Description: "How long the previous API key keeps working after services/<name>/rotate-key (duration or seconds). Default: 24h.",
			},
			"api_key_max_age": {
				Type:        framework.TypeDurationSecond,
				Description: "API keys older than this stop working, forcing rotation (duration or seconds); 0 means no limit. Default: 0.",
			},
			"allow_get_login": {
				Type:        framework.TypeBool,
				Description: "Serve the one-round-trip GET login (API key in the X-Meshauth-Api-Key header). With it on, read capability on login/<name> mints tokens for that service, so grant read on login/* knowingly. The mount must also pass the header through, with the mount's one tune line: vault secrets tune -allowed-response-headers=ETag -passthrough-request-headers=X-Meshauth-Api-Key -passthrough-request-headers=If-None-Match meshauth (a tune replaces each list, so it names every header). Default: false.",
			},
			"api_key_wrap_ttl": {
				Type:        framework.TypeDurationSecond,
				Description: "When set, every answer that carries an API key (services/<name> create, services/<name>/rotate-key) is response-wrapped by Vault with this TTL: the caller gets a single-use wrapping token whose creation_path is <mount>/services/<name>[/rotate-key], and reads the key with sys/wrapping/unwrap after checking that path (sys/wrapping/lookup). A request that asks for a shorter -wrap-ttl gets the shorter one. 0 turns it off (duration or seconds, at most 24h). Default: 0.",
			},
			"trust_domain": {
				Type:        framework.TypeString,
				Description: "The engine's SPIFFE trust domain, as a bare name (example.org, no spiffe://): the only trust domain whose IDs get JWT-SVIDs (token_subject=spiffe_id); services with IDs in other registered trust domains get name tokens. Its CA bundle is registered at trust_domains/<name> like any other. Default: empty (none).",
			},
			"min_publication_age": {
				Type:        framework.TypeDurationSecond,
				Description: "How long a key is published in jwks as the next key before it may sign (duration or seconds). Applies to every promotion: the schedule, keys/rotate and a change of signing_algorithm; a rotation that is due earlier waits. The default covers istiod (refetches every 20m and never on an unknown kid), Envoy's remote_jwks cache (10m) and jwks' own max-age (at most 1h). 0 turns the wait off, for engines whose verifiers all refetch on an unknown kid. Default: 1h.",
			},
			"revocation_max_staleness": {
				Type:        framework.TypeDurationSecond,
				Description: "The longest an offline verifier may use its copy of the revocations feed, so the longest a revoked token is still accepted offline (duration or seconds, 10s to 1h). The feed is served with Cache-Control max-age of half of it. Default: 5m.",
			},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "read", OperationSuffix: "configuration"},
				Callback:     b.pathConfigRead,
				Summary:      "Read the engine configuration. Durations are in seconds.",
			},
			logical.UpdateOperation: &framework.PathOperation{
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "configure"},
				Callback:     b.pathConfigWrite,
				Summary:      "Change the engine configuration; fields not given keep their value.",
			},
		},
		HelpSynopsis:    "Engine settings: issuer, signing algorithm, token lifetimes, key rotation, lockout, API key policy.",
		HelpDescription: "Read or update the engine's settings. An update changes only the fields it names. Changing signing_algorithm publishes a next key of that algorithm, which signs once it has been in jwks for min_publication_age; until then the current key keeps signing. A read also names jwks_uri and revocation_endpoint (read only): where verifiers fetch the keys and the signed revocations feed, as the discovery document names them.",
	}}
}

// getConfig returns the configuration, from the cache or storage, with the
// defaults when nothing was ever written. It never writes.
func (b *backend) getConfig(ctx context.Context, s logical.Storage) (*configEntry, error) {
	return b.config.load(func() (*configEntry, error) {
		cfg := defaultConfig()
		if _, err := readEntryInto(ctx, s, storageConfig, "config", cfg); err != nil {
			return nil, err
		}
		return cfg, nil
	})
}

func (b *backend) pathConfigRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	cfg, err := b.getConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	return &logical.Response{Data: map[string]any{
		"issuer":                cfg.Issuer,
		"signing_algorithm":     cfg.SigningAlgorithm,
		"default_ttl":           seconds(cfg.DefaultTTL),
		"max_ttl":               seconds(cfg.MaxTTL),
		"key_rotation_period":   seconds(cfg.KeyRotationPeriod),
		"verification_ttl":      seconds(cfg.verificationTTL()),
		"leeway":                seconds(cfg.Leeway),
		"lockout_threshold":     cfg.LockoutThreshold,
		"lockout_duration":      seconds(cfg.LockoutDuration),
		"lockout_counter_reset": seconds(cfg.LockoutCounterReset),
		"api_key_grace_period":  seconds(cfg.APIKeyGracePeriod),
		"api_key_max_age":       seconds(cfg.APIKeyMaxAge),
		"allow_get_login":       cfg.AllowGetLogin,
		"api_key_wrap_ttl":      seconds(cfg.APIKeyWrapTTL),
		"trust_domain":          cfg.TrustDomain,

		"min_publication_age":      seconds(cfg.MinPublicationAge),
		"revocation_max_staleness": seconds(cfg.RevocationMaxStaleness),

		// Read only: where verifiers fetch the keys and the revocations
		// feed, as discovery names them.
		"jwks_uri":            cfg.publishedURL(req.MountPoint, "jwks"),
		"revocation_endpoint": cfg.publishedURL(req.MountPoint, "revocations"),
	}}, nil
}

func (b *backend) pathConfigWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	if resp := rejectUnknownFields(req, d); resp != nil {
		return resp, nil
	}
	// The key-ring lock also guards config writes: an algorithm change and
	// its rotation must not interleave with another rotation.
	b.keyRingLock.Lock()
	defer b.keyRingLock.Unlock()

	old, err := b.getConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	cfg := *old
	if msg := applyConfigFields(&cfg, d); msg != "" {
		return logical.ErrorResponse(msg), nil
	}
	if msg := cfg.validate(); msg != "" {
		return logical.ErrorResponse(msg), nil
	}
	// SPIFFE: trust_domain syntax, EdDSA against JWT-SVID services (spiffe.go).
	msg, warnings, err := b.checkSPIFFEConfig(ctx, req.Storage, &cfg, old)
	if err != nil {
		return nil, err
	}
	if msg != "" {
		return logical.ErrorResponse(msg), nil
	}
	cfg.Version = configVersion
	if err := b.raiseCurrentKeyTTLLocked(ctx, req.Storage, old, &cfg); err != nil {
		return nil, err
	}
	if err := writeEntry(ctx, req.Storage, storageConfig, "config", &cfg, false); err != nil {
		return nil, err
	}
	b.config.drop()
	b.feed.drop()

	if cfg.SigningAlgorithm != old.SigningAlgorithm {
		// The new algorithm's key goes through the next slot like any
		// other: published now, signing after min_publication_age.
		res, err := b.rotateKeyRingLocked(ctx, req.Storage, &cfg, rotationAlgorithm, false)
		var early *notYetPublishedError
		switch {
		case errors.As(err, &early):
			warnings = append(warnings, fmt.Sprintf("a %s key is published as the next key; it starts signing at %s (min_publication_age), until then the current %s key signs", cfg.SigningAlgorithm, early.at.UTC().Format(time.RFC3339), old.SigningAlgorithm))
		case err != nil:
			return nil, fmt.Errorf("config saved, but publishing a %s key failed (run keys/rotate to retry): %w", cfg.SigningAlgorithm, err)
		case res != nil && !res.promoted:
			warnings = append(warnings, fmt.Sprintf("a %s key is published as the next key; it starts signing at %s (min_publication_age)", cfg.SigningAlgorithm, res.signsAt.UTC().Format(time.RFC3339)))
		}
	}
	if len(warnings) > 0 {
		return &logical.Response{Warnings: warnings}, nil
	}
	return nil, nil
}

// applyConfigFields copies the fields present in d into cfg, and returns a
// message for the caller when one is out of range.
func applyConfigFields(cfg *configEntry, d *framework.FieldData) string {
	if v, ok := d.GetOk("issuer"); ok {
		cfg.Issuer = strings.TrimSpace(v.(string))
	}
	if v, ok := d.GetOk("signing_algorithm"); ok {
		cfg.SigningAlgorithm = v.(string)
	}
	durations := []struct {
		field string
		dst   *time.Duration
	}{
		{"default_ttl", &cfg.DefaultTTL},
		{"max_ttl", &cfg.MaxTTL},
		{"key_rotation_period", &cfg.KeyRotationPeriod},
		{"verification_ttl", &cfg.VerificationTTL},
		{"leeway", &cfg.Leeway},
		{"lockout_duration", &cfg.LockoutDuration},
		{"lockout_counter_reset", &cfg.LockoutCounterReset},
		{"api_key_grace_period", &cfg.APIKeyGracePeriod},
		{"api_key_max_age", &cfg.APIKeyMaxAge},
		{"api_key_wrap_ttl", &cfg.APIKeyWrapTTL},
		{"min_publication_age", &cfg.MinPublicationAge},
		{"revocation_max_staleness", &cfg.RevocationMaxStaleness},
	}
	for _, f := range durations {
		if v, ok := d.GetOk(f.field); ok {
			secs := v.(int)
			if secs < 0 {
				return fmt.Sprintf("%s must not be negative", f.field)
			}
			*f.dst = time.Duration(secs) * time.Second
		}
	}
	if v, ok := d.GetOk("lockout_threshold"); ok {
		cfg.LockoutThreshold = v.(int)
	}
	if v, ok := d.GetOk("allow_get_login"); ok {
		cfg.AllowGetLogin = v.(bool)
	}
	if v, ok := d.GetOk("trust_domain"); ok {
		cfg.TrustDomain = strings.TrimSpace(v.(string))
	}
	return ""
}

// validate checks the configuration as a whole and returns a message a
// person can act on, or "".
func (c *configEntry) validate() string {
	switch {
	case c.Issuer == "":
		return "issuer must not be empty"
	case len(c.Issuer) > 512:
		return "issuer is longer than 512 characters"
	case !isSupportedAlgorithm(c.SigningAlgorithm):
		return fmt.Sprintf("signing_algorithm %q is not supported; use one of %s", c.SigningAlgorithm, strings.Join(meshtoken.Algorithms(), ", "))
	case c.MaxTTL <= 0:
		return "max_ttl must be positive"
	case c.DefaultTTL <= 0:
		return "default_ttl must be positive"
	case c.DefaultTTL > c.MaxTTL:
		return fmt.Sprintf("default_ttl (%s) must not exceed max_ttl (%s)", c.DefaultTTL, c.MaxTTL)
	case c.KeyRotationPeriod != 0 && c.KeyRotationPeriod < minRotationPeriod:
		return "key_rotation_period must be 0 (off) or at least 1m"
	case c.VerificationTTL != 0 && c.VerificationTTL < c.MaxTTL:
		return fmt.Sprintf("verification_ttl (%s) must not be shorter than max_ttl (%s): tokens would outlive their key", c.VerificationTTL, c.MaxTTL)
	case c.Leeway > maxLeeway:
		return "leeway must be at most 10m"
	case c.MinPublicationAge > maxMinPublicationAge:
		return fmt.Sprintf("min_publication_age must be at most %s", maxMinPublicationAge)
	case c.RevocationMaxStaleness < minRevocationStaleness || c.RevocationMaxStaleness > maxRevocationStaleness:
		return fmt.Sprintf("revocation_max_staleness must be between %s and %s", minRevocationStaleness, maxRevocationStaleness)
	case c.APIKeyWrapTTL > maxAPIKeyWrapTTL:
		return fmt.Sprintf("api_key_wrap_ttl must be at most %s: a wrapping token is meant to be unwrapped soon after it is handed over", maxAPIKeyWrapTTL)
	case c.LockoutThreshold < 0:
		return "lockout_threshold must be 0 (off) or positive"
	case c.LockoutThreshold > 0 && c.LockoutDuration <= 0:
		return "lockout_duration must be positive while lockout_threshold is set"
	case c.LockoutThreshold > 0 && c.LockoutCounterReset <= 0:
		return "lockout_counter_reset must be positive while lockout_threshold is set"
	}
	if u, err := url.Parse(c.Issuer); err == nil && u.Scheme != "" && u.Scheme != "https" && u.Scheme != "http" {
		return "issuer must be a plain name or an http(s) URL"
	}
	return keyRingSizeMessage(c)
}

// issuerIsURL reports whether the issuer names a URL, in which case discovery
// publishes jwks_uri beneath it.
func (c *configEntry) issuerIsURL() bool {
	u, err := url.Parse(c.Issuer)
	return err == nil && (u.Scheme == "https" || u.Scheme == "http") && u.Host != ""
}

// seconds renders a duration the way Vault reads durations back: whole seconds.
func seconds(d time.Duration) int64 {
	return int64(d / time.Second)
}

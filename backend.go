// Package meshauth is a Vault secrets engine for service-to-service
// authentication: services registered with an mTLS identity exchange an API key
// and their client certificate for a short-lived JWT that peers verify offline
// (JWKS) or through Vault.
package meshauth

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/helper/locksutil"
	"github.com/hashicorp/vault/sdk/logical"
)

// Storage keys. Every entry is JSON with a "version" field so that a later
// release can upgrade it in memory on read.
const (
	// storageConfig holds the single configEntry.
	storageConfig = "config"
	// storageServicePrefix prefixes one serviceEntry per registered service,
	// keyed by its normalised (lower-case) name. One entry per service keeps
	// every write of a service atomic.
	storageServicePrefix = "services/"
	// storageKeyRing holds the whole signing key ring (private keys included)
	// in one entry, so rotation is a single atomic Put. It is seal-wrapped, which only Vault Enterprise with an HSM or KMS seal honours (docs/security.md).
	storageKeyRing = "keyring"
	// storageRevokedPrefix prefixes one revocationEntry per revoked token jti.
	storageRevokedPrefix = "revoked/"
	// storageDeletedPrefix prefixes one deletedService per deleted service
	// name, kept until the last token of the deleted registration expired,
	// so that the revocation feed keeps refusing them offline.
	storageDeletedPrefix = "deleted/"
	// storageTrustDomainPrefix prefixes one trustDomainEntry per registered
	// SPIFFE trust domain, keyed by its (lower-case) name. Operators write it.
	storageTrustDomainPrefix = "trust_domains/"
)

// operationPrefix starts every OpenAPI operation name of the engine
// (meshauth-read-configuration, meshauth-login, ...), so that
// sys/internal/specs/openapi and clients generated from it read well.
const operationPrefix = "meshauth"

// version is the plugin's semantic version, reported to Vault for versioned
// registration. Release builds set it with
// -ldflags "-X github.com/datapunk/vault-plugin-secrets-meshauth.version=v1.2.3";
// development builds leave it empty, which Vault treats as unversioned.
var version = ""

// backend is the meshauth secrets engine. The login and verify paths are
// served from the in-memory caches below; only writes touch storage.
type backend struct {
	*framework.Backend

	// serviceLocks serialises writes to one service (read, modify, write), so
	// two concurrent updates never lose one another.
	serviceLocks []*locksutil.LockEntry
	// keyRingLock serialises key-ring rotations and tidies.
	keyRingLock sync.Mutex
	// identityLock serialises every write that decides who may assert a
	// SPIFFE ID: service writes that set or change spiffe_ids, and trust
	// domain writes. Its holder checks that no other service claims an
	// overlapping ID and stores, as one step (spiffe_claims.go). Vault
	// forwards every write to the active node, so one process lock orders
	// them cluster-wide. Lock order: service lock, identityLock, keyRingLock.
	identityLock sync.Mutex
	// revokeLock serialises writes of the revocation set (revoke, tidy), so
	// the limit check and the write are one step.
	revokeLock sync.Mutex

	// services caches parsed service entries (with their trust material) by name.
	services *epochCache[string, *cachedService]
	// trustGen counts trust domain writes seen by this node (here or through
	// Invalidate): a login checked against a service loaded under an older
	// count starts over, since its bundles may be gone.
	trustGen atomic.Uint64
	// config caches the engine configuration; dropped by config writes and
	// Invalidate("config").
	config epochValue[*configEntry]
	// keyRing caches the parsed key ring (signers, JWKS body); dropped by
	// every ring write and Invalidate("keyring").
	keyRing epochValue[*keyRing]
	// revoked is the set of revoked jtis, applied one entry at a time.
	revoked *revocationSet
	// feed caches the rendered revocations feed; every change to what it
	// is rendered from drops it (revocation_feed.go).
	feed feedCache

	// lockout tracks failed logins per service and caller, in memory only: a
	// login must never write to storage.
	lockout *lockoutTracker
	// metrics counts logins, verifications and rotations on this node.
	metrics *metrics
	// adoption counts distinct fetchers of jwks holding the next key.
	adoption *keyAdoption
	// createLock serialises service creations from the name count
	// (serviceRoom) to the write; taken after the service's own lock.
	createLock sync.Mutex
	// verifiedChains caches the result of verifying a presented client
	// certificate chain, keyed by the SHA-256 of the whole chain.
	verifiedChains *chainCache
	// claimsRendered caches rendered claims templates per service, entity
	// and certificate, for claimsCacheTTL (claims_template.go).
	claimsRendered *claimsCache
	// claimsMetrics counts logins refused by claims templates.
	claimsMetrics templateMetrics
	// certRevocation checks client certificates against CRLs and OCSP
	// (cert_revocation.go); storageView is the mount's storage, for its
	// background work.
	certRevocation *certRevocation
	storageView    logical.Storage

	// now is the clock; tests replace it to cross leeway and lockout edges.
	now func() time.Time
}

// Factory builds and sets up the meshauth backend; Vault calls it on mount.
func Factory(ctx context.Context, conf *logical.BackendConfig) (logical.Backend, error) {
	b := newBackend()
	if err := b.Setup(ctx, conf); err != nil {
		return nil, err
	}
	return b, nil
}

// newBackend wires the paths and caches; Setup is the caller's job.
func newBackend() *backend {
	b := &backend{
		serviceLocks:   locksutil.CreateLocks(),
		services:       newEpochCache[string, *cachedService](),
		revoked:        newRevocationSet(),
		lockout:        newLockoutTracker(),
		metrics:        newMetrics(),
		adoption:       newKeyAdoption(),
		verifiedChains: newChainCache(chainCacheSize),
		claimsRendered: newClaimsCache(claimsCacheSize),
		now:            time.Now,
	}
	b.certRevocation = newCertRevocation(b)
	b.Backend = &framework.Backend{
		Help:           strings.TrimSpace(backendHelp),
		BackendType:    logical.TypeLogical,
		RunningVersion: version,
		PathsSpecial: &logical.Paths{
			Unauthenticated: []string{"jwks", ".well-known/openid-configuration", "spiffe/bundle", "revocations"},
			SealWrapStorage: []string{storageKeyRing},
		},
		Paths: framework.PathAppend(
			pathConfig(b),
			pathServices(b),
			pathServiceActions(b),
			pathServiceTLS(b),
			pathTrustDomains(b),
			pathLogin(b),
			pathToken(b),
			pathExchange(b),
			pathKeys(b),
			pathJWKS(b),
			pathSPIFFEBundle(b),
			pathRevocations(b),
			pathMetrics(b),
			pathTidy(b),
			pathCRLs(b),
		),
		InitializeFunc: b.initialize,
		PeriodicFunc:   b.periodic,
		Invalidate:     b.invalidate,
		Clean:          b.cleanup,
	}
	return b
}

// initialize makes sure a signing key ring exists before the first login.
// Vault calls it on the node that can write; elsewhere it has nothing to do.
func (b *backend) initialize(ctx context.Context, req *logical.InitializationRequest) error {
	if b.storageView == nil {
		b.storageView = req.Storage
	}
	if !b.canWrite() {
		return nil
	}
	if _, err := b.ensureKeyRing(ctx, req.Storage); err != nil {
		if errors.Is(err, logical.ErrReadOnly) {
			return nil
		}
		return err
	}
	return nil
}

// periodic rotates the signing key when it is due and tidies expired state.
// Vault runs it about once a minute; it must be safe to run twice, which it is
// because each step first re-reads what it changes and acts only when due.
func (b *backend) periodic(ctx context.Context, req *logical.Request) error {
	if !b.canWrite() {
		return nil
	}
	if _, err := b.rotateKeyRingIfDue(ctx, req.Storage); err != nil {
		return err
	}
	_, err := b.tidy(ctx, req.Storage)
	return err
}

// canWrite reports whether this node may write shared storage: not a
// performance standby, a performance secondary or a DR secondary.
func (b *backend) canWrite() bool {
	sys := b.System()
	if sys == nil {
		return true
	}
	state := sys.ReplicationState()
	if sys.LocalMount() {
		return !state.HasState(consts.ReplicationDRSecondary | consts.ReplicationPerformanceStandby)
	}
	return !state.HasState(consts.ReplicationPerformanceSecondary | consts.ReplicationDRSecondary | consts.ReplicationPerformanceStandby)
}

// invalidate drops exactly the cache that a changed storage key feeds. Vault
// calls it on standbys and replicas when another node writes, so caches there
// never serve stale trust.
func (b *backend) invalidate(_ context.Context, key string) {
	switch {
	case key == storageConfig:
		b.config.drop()
		b.feed.drop()
	case key == storageKeyRing:
		b.keyRing.drop()
		b.feed.drop()
	case strings.HasPrefix(key, storageServicePrefix):
		b.dropService(strings.TrimPrefix(key, storageServicePrefix))
	case strings.HasPrefix(key, storageTrustDomainPrefix):
		b.dropTrustDomain()
	case strings.HasPrefix(key, storageDeletedPrefix):
		b.feed.drop()
	case strings.HasPrefix(key, storageCRLPrefix):
		b.certRevocation.pushedChanged()
	case strings.HasPrefix(key, storageRevokedCertsPrefix):
		b.certRevocation.listed.drop()
		b.feed.drop()
	case strings.HasPrefix(key, storageRevokedPrefix):
		// One token's revocation changed: re-read that entry alone, on
		// its next lookup.
		b.revoked.invalidate(strings.TrimPrefix(key, storageRevokedPrefix))
		b.feed.drop()
	}
}

// cleanup releases memory when the mount is disabled or the plugin stops.
func (b *backend) cleanup(_ context.Context) {
	b.services.dropAll()
	b.config.drop()
	b.keyRing.drop()
	b.revoked.reset()
	b.feed.drop()
	b.verifiedChains.dropAll()
	b.claimsRendered.dropAll()
	b.certRevocation.stop()
}

const backendHelp = `
The meshauth secrets engine authenticates services to one another.

Register a service with its mTLS identity at services/<name>; the response
holds its API key, once. The service exchanges that key, together with the
client certificate it presents on its TLS connection to Vault, for a
short-lived signed JWT at login/<name>. Peers verify the JWT offline with the
public keys at jwks (unauthenticated), or online at verify. Services of a
mesh can be registered by SPIFFE ID and get JWT-SVIDs; spiffe/bundle
(unauthenticated) serves the keys as a SPIFFE bundle.

Signing keys rotate on a schedule (config key_rotation_period), with the next
key published in jwks for min_publication_age before it signs anything; a
compromised key is removed at keys/<kid>/revoke. Emergency revocation of every
token of a service is at services/<name>/revoke, of one token at revoke.
Offline verifiers learn of revocations from the signed feed at revocations
(unauthenticated).
`

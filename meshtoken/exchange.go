package meshtoken

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
)

// Claims written by token exchange (RFC 8693): exchange/<name> issues a token
// for the subject of another, acting on its behalf.
//
// ClaimActor (contract.go) is the RFC 8693 section 4.1 actor claim:
// {"sub": <acting service>, "gen": <its gen>}, with the actor before it
// nested inside as act. gen is the acting service's registration and
// revocation epoch, so revoking, disabling or re-registering it ends the
// tokens it obtained, online and through the feed, as for the subject's
// service.
const (
	// ClaimDerivedFrom lists the jti of every token the token was exchanged
	// from, the original first and the subject token last, so revoking any
	// of them ends the derived token: online in verify, offline through the
	// revocations feed, which lists revoked jtis.
	ClaimDerivedFrom = "meshauth_derived_from"
	// ClaimDerivedCnf lists, in the order of meshauth_derived_from, the
	// x5t#S256 each of those tokens was bound to ("" for an unbound one).
	// The exchanged token's own cnf is the acting service's certificate, so
	// without it revoking the caller's certificate would not end what was
	// exchanged from the caller's tokens; with it, online verify and the
	// offline verifiers check every listed certificate against the revoked
	// ones (the feed's certificates).
	ClaimDerivedCnf = "meshauth_derived_cnf"
)

// MaxActorDepth bounds the act nesting Parse reads; the engine's
// max_delegation_depth is bounded by it.
const MaxActorDepth = 8

// actMembers are the members meshauth reads inside act.
var actMembers = []string{"sub", "gen", ClaimActor}

// ReasonDelegationNotAllowed is the reason of ErrDelegation, as online
// verify reports it.
const ReasonDelegationNotAllowed = "delegation_not_allowed"

// ErrDelegation is returned by Verify for a delegated token (one with act)
// that the Verifier does not accept: MaxDelegationDepth is not set (a
// verifier accepts delegated tokens only when it opts in), the chain is
// longer, or AllowedActors refuses an actor. It is an *Error of reason
// ReasonDelegationNotAllowed and wraps ErrInvalidToken.
var ErrDelegation = refuse(ReasonDelegationNotAllowed, fmt.Errorf("%w: delegation chain not allowed here", ErrInvalidToken))

// Actors returns the token's actor chain, outermost (the service that
// holds the token and exchanged for it last) first, then the actors before
// it; empty for a token issued at login.
func (c *Claims) Actors() []string { return slices.Clone(c.actors) }

// ActorGenerations returns the gen of each actor, in the order of Actors
// ("" where the token carries none).
func (c *Claims) ActorGenerations() []string { return slices.Clone(c.actorGens) }

// DerivedFrom returns the jti of every token this one was exchanged from,
// the original first; empty for a token issued at login.
func (c *Claims) DerivedFrom() []string { return slices.Clone(c.derivedFrom) }

// DerivedConfirmations returns the x5t#S256 of the certificate each token
// of DerivedFrom was bound to, in the same order ("" for an unbound one);
// empty for a token issued at login.
func (c *Claims) DerivedConfirmations() []string { return slices.Clone(c.derivedCnf) }

// readDelegation reads act, meshauth_derived_from and meshauth_derived_cnf. act is read with
// exact member names (a map, not a struct, so "SUB" is not "sub", as for
// every other JSON reader); a token with act carries one jti of
// meshauth_derived_from per actor, as the engine writes them, and a token
// without act none.
func (c *Claims) readDelegation(rc *registered) error {
	raw := rc.Act
	for len(raw) > 0 && string(raw) != "null" {
		if len(c.actors) == MaxActorDepth {
			return fmt.Errorf("act nests more than %d actors", MaxActorDepth)
		}
		var members map[string]json.RawMessage
		if err := json.Unmarshal(raw, &members); err != nil || members == nil {
			return errors.New("act must be a JSON object")
		}
		var sub, gen string
		if err := json.Unmarshal(members["sub"], &sub); err != nil || sub == "" {
			return errors.New("act must carry sub, a non-empty string")
		}
		if g, ok := members["gen"]; ok {
			if err := json.Unmarshal(g, &gen); err != nil {
				return errors.New("act's gen must be a string")
			}
		}
		c.actors = append(c.actors, sub)
		c.actorGens = append(c.actorGens, gen)
		raw = members[ClaimActor]
	}
	if len(rc.Derived) != len(c.actors) {
		return fmt.Errorf("%s must list one jti per actor (%d actors, %d jtis)", ClaimDerivedFrom, len(c.actors), len(rc.Derived))
	}
	if len(rc.DerivedCnf) != len(c.actors) {
		return fmt.Errorf("%s must list one x5t#S256 (or \"\") per actor (%d actors, %d entries)", ClaimDerivedCnf, len(c.actors), len(rc.DerivedCnf))
	}
	for _, t := range rc.DerivedCnf {
		if t != "" && !IsThumbprint(t) {
			return fmt.Errorf("%s entries must be x5t#S256 thumbprints or \"\"", ClaimDerivedCnf)
		}
	}
	c.derivedFrom = rc.Derived
	c.derivedCnf = rc.DerivedCnf
	return nil
}

// checkDelegation applies MaxDelegationDepth and AllowedActors. Delegated
// tokens are refused unless the verifier opts in: whoever may write the
// acting service's exchange_audiences could otherwise let it mint tokens
// in any caller's name toward this service.
func (v *Verifier) checkDelegation(c *Claims) error {
	if len(c.actors) == 0 {
		return nil
	}
	switch depth := v.cfg.MaxDelegationDepth; {
	case depth <= 0:
		return fmt.Errorf("%w: this verifier accepts no delegated tokens (set MaxDelegationDepth to accept them)", ErrDelegation)
	case len(c.actors) > depth:
		return fmt.Errorf("%w: %d actors, at most %d allowed", ErrDelegation, len(c.actors), depth)
	}
	if v.cfg.AllowedActors != nil {
		for _, a := range c.actors {
			if !slices.Contains(v.cfg.AllowedActors, a) {
				return fmt.Errorf("%w: actor %q is not in AllowedActors", ErrDelegation, a)
			}
		}
	}
	return nil
}

// TokenFromContext returns the bearer token the Middleware (or a grpcauth
// interceptor) verified, as the caller sent it: the subject_token a service
// exchanges (client's TokenSource.Exchange) to call onward on its caller's
// behalf. Forward it only to Vault's exchange, never to another service: it
// is addressed to this service and bound to the caller's certificate.
func TokenFromContext(ctx context.Context) (string, bool) {
	c, ok := ClaimsFromContext(ctx)
	if !ok || c.raw == "" {
		return "", false
	}
	return c.raw, true
}

package grpcauth

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/credentials"
)

// TokenFunc returns the token to send with a call: a TokenSource's Token
// (a cached token, refreshed in the background), or its FreshToken for
// audiences that accept each jti once.
type TokenFunc func(ctx context.Context) (string, error)

// perRPC attaches a bearer token to every call.
type perRPC struct{ token TokenFunc }

// PerRPCCredentials returns credentials that send token as
// "authorization: Bearer <token>" with every call. They require transport
// security: a channel without it refuses to be created with them, and a
// call on a connection below privacy and integrity (TLS) is refused before
// the token is read, so a token never crosses the network in clear.
func PerRPCCredentials(token TokenFunc) credentials.PerRPCCredentials {
	return perRPC{token: token}
}

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (p perRPC) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	ri, ok := credentials.RequestInfoFromContext(ctx)
	if !ok {
		return nil, errors.New("meshauth grpc: no request info; refusing to send the token")
	}
	if err := credentials.CheckSecurityLevel(ri.AuthInfo, credentials.PrivacyAndIntegrity); err != nil {
		return nil, fmt.Errorf("meshauth grpc: refusing to send the token: %w", err)
	}
	tok, err := p.token(ctx)
	if err != nil {
		return nil, fmt.Errorf("meshauth grpc: getting a token: %w", err)
	}
	return map[string]string{"authorization": "Bearer " + tok}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials.
func (perRPC) RequireTransportSecurity() bool { return true }

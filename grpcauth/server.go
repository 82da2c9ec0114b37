package grpcauth

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// UnaryServerInterceptor requires a valid meshauth token on every unary
// call; see StreamServerInterceptor.
func UnaryServerInterceptor(v *meshtoken.Verifier) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, err := authenticate(ctx, v)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamServerInterceptor requires a valid meshauth token ("authorization:
// Bearer <token>", exactly once) on every stream, bound to the caller's
// certificate when the token says so, and puts the claims in the stream's
// context (meshtoken.ClaimsFromContext). The certificate is the gRPC
// connection's, or, from a peer in the Verifier's TrustedProxies, the one
// its forwarded-certificate header (x-forwarded-client-cert or client-cert
// metadata) names. Failures are Unauthenticated and say nothing about why
// beyond how to ask Vault's verify; the reason goes to the service through
// the Verifier's Logger and OnReject (meshtoken.Verifier.Rejected). While
// the Verifier's key set or revocations feed is past its MaxStaleness they
// are Unavailable (the caller is not at fault); an unreadable header from a
// trusted proxy is InvalidArgument.
func StreamServerInterceptor(v *meshtoken.Verifier) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := authenticate(ss.Context(), v)
		if err != nil {
			return err
		}
		return handler(srv, &stream{ServerStream: ss, ctx: ctx})
	}
}

// stream is a ServerStream with the verified claims in its context.
type stream struct {
	grpc.ServerStream
	ctx context.Context //nolint:containedctx // the stream's own context, as grpc.ServerStream exposes it
}

func (s *stream) Context() context.Context { return s.ctx }

// authenticate verifies the call's token and returns ctx with its claims.
func authenticate(ctx context.Context, v *meshtoken.Verifier) (context.Context, error) {
	// ValueFromIncomingContext reads one key without copying the whole
	// metadata, which FromIncomingContext would do on every call.
	auth := metadata.ValueFromIncomingContext(ctx, "authorization")
	if len(auth) != 1 {
		return nil, status.Error(codes.Unauthenticated, "a meshauth bearer token is required")
	}
	token, ok := strings.CutPrefix(auth[0], "Bearer ")
	if !ok || token == "" {
		return nil, status.Error(codes.Unauthenticated, "a meshauth bearer token is required")
	}
	var (
		direct *x509.Certificate
		addr   net.Addr
	)
	if p, ok := peer.FromContext(ctx); ok {
		addr = p.Addr
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
			direct = ti.State.PeerCertificates[0]
		}
	}
	forwarded := func(name string) []string { return metadata.ValueFromIncomingContext(ctx, name) }
	if !v.TrustedProxies().Trusts(direct, addr) && (len(forwarded(meshtoken.HeaderXFCC)) > 0 || len(forwarded(meshtoken.HeaderClientCert)) > 0) {
		// An untrusted peer's claim about certificates must not reach a
		// handler that reads the metadata as a proxy's word.
		md, _ := metadata.FromIncomingContext(ctx)
		md.Delete(meshtoken.HeaderXFCC)
		md.Delete(meshtoken.HeaderClientCert)
		ctx = metadata.NewIncomingContext(ctx, md)
	}
	thumb, err := v.PeerThumbprint(direct, addr, forwarded)
	if err != nil {
		v.Rejected(ctx, err)
		return nil, status.Error(codes.InvalidArgument, "unreadable forwarded client certificate")
	}
	claims, err := v.VerifyThumbprint(ctx, token, thumb)
	if err != nil {
		// The reason goes to the service (VerifierConfig.Logger,
		// OnReject), never to the caller.
		v.Rejected(ctx, err)
	}
	switch {
	case errors.Is(err, meshtoken.ErrKeysStale), errors.Is(err, meshtoken.ErrRevocationsStale):
		return nil, status.Error(codes.Unavailable, "token verification unavailable")
	case err != nil:
		return nil, status.Error(codes.Unauthenticated, "invalid token; "+v.VerifyHint())
	}
	// The token too, for a handler that exchanges it to call onward on
	// the caller's behalf (meshtoken.TokenFromContext).
	return meshtoken.NewTokenContext(meshtoken.NewContext(ctx, claims), token), nil
}

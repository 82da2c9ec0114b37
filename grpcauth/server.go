package grpcauth

import (
	"context"
	"errors"

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
// the Verifier's key set or revocation feed is past its staleness they are
// Unavailable (the caller is not at fault); an unreadable header from a
// trusted proxy is InvalidArgument. The decisions are the Middleware's
// (meshtoken.Verifier.Authenticate and meshtoken.FailureOf).
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

// authenticate verifies the call's token with the Verifier's one request
// authentication (the Middleware's too) and returns ctx with its claims;
// its failures map to codes as the Middleware's to HTTP statuses.
func authenticate(ctx context.Context, v *meshtoken.Verifier) (context.Context, error) {
	// ValueFromIncomingContext reads one key without copying the whole
	// metadata, which FromIncomingContext would do on every call.
	req := meshtoken.Request{
		Authorization: metadata.ValueFromIncomingContext(ctx, "authorization"),
		Header:        func(name string) []string { return metadata.ValueFromIncomingContext(ctx, name) },
	}
	if p, ok := peer.FromContext(ctx); ok {
		req.Addr = p.Addr
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
			req.Peer = ti.State.PeerCertificates[0]
		}
	}
	req.StripForwarded = func() {
		if len(req.Header(meshtoken.HeaderXFCC)) == 0 && len(req.Header(meshtoken.HeaderClientCert)) == 0 {
			return
		}
		// An untrusted peer's claim about certificates must not reach a
		// handler that reads the metadata as a proxy's word.
		md, _ := metadata.FromIncomingContext(ctx)
		md.Delete(meshtoken.HeaderXFCC)
		md.Delete(meshtoken.HeaderClientCert)
		ctx = metadata.NewIncomingContext(ctx, md)
	}
	claims, err := v.Authenticate(ctx, req)
	if err != nil {
		// The reason goes to the service (VerifierConfig.Logger,
		// OnReject), never to the caller.
		v.Rejected(ctx, err)
	}
	switch meshtoken.FailureOf(err) {
	case meshtoken.FailureNone:
		return meshtoken.NewContext(ctx, claims), nil
	case meshtoken.FailureUnavailable:
		return nil, status.Error(codes.Unavailable, "token verification unavailable")
	case meshtoken.FailureBadRequest:
		return nil, status.Error(codes.InvalidArgument, "unreadable forwarded client certificate")
	}
	if errors.Is(err, meshtoken.ErrMissingToken) {
		return nil, status.Error(codes.Unauthenticated, "a meshauth bearer token is required")
	}
	return nil, status.Error(codes.Unauthenticated, "invalid token; "+v.VerifyHint())
}

// Package grpcauth carries meshauth tokens over gRPC, the usual transport
// between services in a mesh: per-RPC credentials that attach a service's
// token to every call (and refuse to send it without transport security),
// and server interceptors (unary and stream) that verify the token with a
// meshtoken.Verifier, bind it to the caller's certificate (the connection's,
// or one a trusted sidecar forwards), and put the claims in the call's
// context for meshtoken.ClaimsFromContext.
//
// It is a module of its own so that services that do not use gRPC never
// see its dependencies in meshtoken's.
package grpcauth

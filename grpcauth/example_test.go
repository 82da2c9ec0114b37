package grpcauth_test

import (
	"context"
	"fmt"

	"github.com/datapunk/vault-plugin-secrets-meshauth/grpcauth"
)

// The calling side attaches its token to every call as "authorization:
// Bearer <token>"; pass client.TokenSource's Token method in a service:
//
//	conn, err := grpc.NewClient(target,
//		grpc.WithTransportCredentials(credentials.NewTLS(mtls)),
//		grpc.WithPerRPCCredentials(grpcauth.PerRPCCredentials(source.Token)))
//
// The credentials require transport security: gRPC refuses them on a
// channel without TLS, and they send nothing on a call whose connection is
// not private and authenticated, as here, outside any call.
func ExamplePerRPCCredentials() {
	creds := grpcauth.PerRPCCredentials(func(context.Context) (string, error) { return "eyJ.example.token", nil })
	fmt.Println(creds.RequireTransportSecurity())
	_, err := creds.GetRequestMetadata(context.Background())
	fmt.Println(err)
	// Output:
	// true
	// meshauth grpc: no request info; refusing to send the token
}

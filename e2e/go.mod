module github.com/datapunk/vault-plugin-secrets-meshauth/e2e

go 1.26.0

require github.com/hashicorp/vault/api v1.23.0

require (
	github.com/cenkalti/backoff/v4 v4.3.0 // indirect
	github.com/davecgh/go-spew v1.1.2-0.20180830191138-d8f796af33cc // indirect
	github.com/fatih/color v1.19.0 // indirect
	github.com/go-jose/go-jose/v4 v4.1.5 // indirect
	github.com/hashicorp/errwrap v1.1.0 // indirect
	github.com/hashicorp/go-cleanhttp v0.5.2 // indirect
	github.com/hashicorp/go-multierror v1.1.1 // indirect
	github.com/hashicorp/go-retryablehttp v0.7.8 // indirect
	github.com/hashicorp/go-rootcerts v1.0.2 // indirect
	github.com/hashicorp/go-secure-stdlib/parseutil v0.2.0 // indirect
	github.com/hashicorp/go-secure-stdlib/strutil v0.1.2 // indirect
	github.com/hashicorp/go-sockaddr v1.0.7 // indirect
	github.com/hashicorp/hcl v1.0.1-vault-7 // indirect
	github.com/mitchellh/go-homedir v1.1.0 // indirect
	github.com/mitchellh/mapstructure v1.5.0 // indirect
	github.com/ryanuber/go-glob v1.0.0 // indirect
	golang.org/x/net v0.63.0 // indirect
	golang.org/x/oauth2 v0.36.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
	golang.org/x/text v0.44.0 // indirect
	golang.org/x/time v0.15.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260526163538-3dc84a4a5aaa // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)

require (
	github.com/coreos/go-oidc/v3 v3.21.0
	github.com/datapunk/vault-plugin-secrets-meshauth/client v0.0.0
	github.com/datapunk/vault-plugin-secrets-meshauth/grpcauth v0.0.0
	github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken v0.0.0
	github.com/golang-jwt/jwt/v5 v5.3.1
	github.com/spiffe/go-spiffe/v2 v2.9.0
	google.golang.org/grpc v1.83.2
)

// The client library under test is this repository's own.
replace github.com/datapunk/vault-plugin-secrets-meshauth => ../

replace github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken => ../meshtoken

replace github.com/datapunk/vault-plugin-secrets-meshauth/client => ../client

replace github.com/datapunk/vault-plugin-secrets-meshauth/grpcauth => ../grpcauth

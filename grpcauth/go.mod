module github.com/datapunk/vault-plugin-secrets-meshauth/grpcauth

go 1.26.0

require (
	github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken v0.0.0
	github.com/golang-jwt/jwt/v5 v5.3.1
	google.golang.org/grpc v1.83.2
)

require (
	golang.org/x/net v0.63.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
	golang.org/x/text v0.44.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260526163538-3dc84a4a5aaa // indirect
	google.golang.org/protobuf v1.36.11 // indirect
)

replace github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken => ../meshtoken

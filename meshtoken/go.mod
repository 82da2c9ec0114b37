module github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken

// The go line stays as old as the code allows: services that import this
// module must not be forced onto a newer toolchain than they chose.
go 1.25

require github.com/golang-jwt/jwt/v5 v5.3.1

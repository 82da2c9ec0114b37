module github.com/datapunk/vault-plugin-secrets-meshauth/python/vectorgen

go 1.26.0

require github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken v0.0.0

require github.com/golang-jwt/jwt/v5 v5.3.1 // indirect

// The vectors are meshtoken's verdicts: always this repository's meshtoken.
replace github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken => ../../meshtoken

// Package verifybench compares meshtoken's offline verification with
// go-oidc and golang-jwt on the same token and JWKS. It holds benchmarks
// only and needs no Vault, so it runs without the suite's TestMain.
package verifybench

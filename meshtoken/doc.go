// Package meshtoken is the meshauth token contract, shared by the engine
// that mints and verifies tokens online and the services that verify them
// offline: the algorithms, the registered claims, the limits, the API-key
// header, certificate binding (RFC 8705 cnf.x5t#S256), JWK encoding with
// RFC 7638 thumbprints, and the one parser of untrusted tokens.
//
// It needs only the standard library and golang-jwt, so a service that
// verifies tokens takes nothing of the engine's dependencies.
package meshtoken

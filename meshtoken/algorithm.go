package meshtoken

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"

	// The hashes the table names, linked in for crypto.Hash.New.
	_ "crypto/sha256"
	_ "crypto/sha512"

	"github.com/golang-jwt/jwt/v5"
)

// Algorithm is one JOSE algorithm meshauth signs with, and everything that
// follows from its name: the one table behind the engine's keys, its feed
// signer and this package's JWK reader and Parse.
type Algorithm struct {
	// Name is the JOSE alg.
	Name string
	// KeyType is the JWK kty of its keys: EC, OKP or RSA.
	KeyType string
	// CurveName is the JWK crv: P-256, P-384, Ed25519, or "" for RSA.
	CurveName string
	// Curve is the elliptic curve of an EC algorithm; nil otherwise.
	Curve elliptic.Curve
	// Hash is the digest that is signed; 0 for EdDSA, which signs the
	// message itself.
	Hash crypto.Hash
	// Method is golang-jwt's implementation.
	Method jwt.SigningMethod
}

// algorithmTable holds every Algorithm, by name.
var algorithmTable = map[string]*Algorithm{
	ES256: {Name: ES256, KeyType: "EC", CurveName: "P-256", Curve: elliptic.P256(), Hash: crypto.SHA256, Method: jwt.SigningMethodES256},
	ES384: {Name: ES384, KeyType: "EC", CurveName: "P-384", Curve: elliptic.P384(), Hash: crypto.SHA384, Method: jwt.SigningMethodES384},
	EdDSA: {Name: EdDSA, KeyType: "OKP", CurveName: "Ed25519", Method: jwt.SigningMethodEdDSA},
	RS256: {Name: RS256, KeyType: "RSA", Hash: crypto.SHA256, Method: jwt.SigningMethodRS256},
}

// AlgorithmOf returns the Algorithm named name; false for any name meshauth
// does not sign with.
func AlgorithmOf(name string) (Algorithm, bool) {
	a, ok := algorithmTable[name]
	if !ok {
		return Algorithm{}, false
	}
	return *a, true
}

// FitsKey reports whether pub is a public key this algorithm verifies with:
// the right type, the right curve, and for RSA a modulus of at least 2048
// bits and a public exponent in [3, 2^31].
func (a Algorithm) FitsKey(pub crypto.PublicKey) bool {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return a.KeyType == "EC" && k.Curve == a.Curve
	case ed25519.PublicKey:
		return a.KeyType == "OKP" && len(k) == ed25519.PublicKeySize
	case *rsa.PublicKey:
		return a.KeyType == "RSA" && k.N.BitLen() >= minRSABits && k.E >= 3 && k.E <= 1<<31
	}
	return false
}

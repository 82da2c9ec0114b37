package meshtoken

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"math/big"
)

// minRSABits is the smallest RSA modulus a JWK may carry.
const minRSABits = 2048

// PublicJWK renders the public members of an RFC 7517 JWK (kty, crv, x, y,
// n, e); the caller adds kid, alg and use.
func PublicJWK(pub crypto.PublicKey) (map[string]string, error) {
	b64 := base64.RawURLEncoding.EncodeToString
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		// Bytes is the uncompressed point 0x04 || X || Y, each coordinate
		// already the fixed size RFC 7518 requires.
		point, err := k.Bytes()
		if err != nil {
			return nil, fmt.Errorf("encoding EC public key: %w", err)
		}
		size := (len(point) - 1) / 2
		return map[string]string{
			"kty": "EC",
			"crv": k.Curve.Params().Name,
			"x":   b64(point[1 : 1+size]),
			"y":   b64(point[1+size:]),
		}, nil
	case ed25519.PublicKey:
		return map[string]string{"kty": "OKP", "crv": "Ed25519", "x": b64(k)}, nil
	case *rsa.PublicKey:
		return map[string]string{
			"kty": "RSA",
			"n":   b64(k.N.Bytes()),
			"e":   b64(big.NewInt(int64(k.E)).Bytes()),
		}, nil
	}
	return nil, fmt.Errorf("unsupported public key type %T", pub)
}

// JWKThumbprint computes the RFC 7638 thumbprint of a public key: SHA-256 of
// its required JWK members in lexicographic order, base64url. meshauth uses
// it as kid, which binds the kid to the key itself.
func JWKThumbprint(pub crypto.PublicKey) (string, error) {
	jwk, err := PublicJWK(pub)
	if err != nil {
		return "", err
	}
	var canonical string
	switch jwk["kty"] {
	case "EC":
		canonical = fmt.Sprintf(`{"crv":%q,"kty":"EC","x":%q,"y":%q}`, jwk["crv"], jwk["x"], jwk["y"])
	case "OKP":
		canonical = fmt.Sprintf(`{"crv":%q,"kty":"OKP","x":%q}`, jwk["crv"], jwk["x"])
	case "RSA":
		canonical = fmt.Sprintf(`{"e":%q,"kty":"RSA","n":%q}`, jwk["e"], jwk["n"])
	}
	sum := sha256.Sum256([]byte(canonical))
	return base64.RawURLEncoding.EncodeToString(sum[:]), nil
}

// ParseJWK decodes one JWK of a meshauth key set into a Key bound to its
// alg, checking that the key type, curve and size fit the algorithm
// (Algorithm.FitsKey).
func ParseJWK(k map[string]string) (Key, error) {
	b64 := func(s string) []byte { b, _ := base64.RawURLEncoding.DecodeString(s); return b }
	a, ok := AlgorithmOf(k["alg"])
	if !ok || k["kty"] != a.KeyType || k["crv"] != a.CurveName {
		return Key{}, fmt.Errorf("unsupported JWK (alg %q, kty %q, crv %q)", k["alg"], k["kty"], k["crv"])
	}
	var pub crypto.PublicKey
	switch a.KeyType {
	case "OKP":
		pub = ed25519.PublicKey(b64(k["x"]))
	case "EC":
		pt := append(append([]byte{4}, b64(k["x"])...), b64(k["y"])...)
		ec, err := ecdsa.ParseUncompressedPublicKey(a.Curve, pt)
		if err != nil {
			return Key{}, err
		}
		pub = ec
	case "RSA":
		n, e := new(big.Int).SetBytes(b64(k["n"])), new(big.Int).SetBytes(b64(k["e"]))
		if !e.IsInt64() || e.Int64() > 1<<31 {
			return Key{}, errors.New("bad RSA key")
		}
		pub = &rsa.PublicKey{N: n, E: int(e.Int64())}
	}
	if !a.FitsKey(pub) {
		return Key{}, fmt.Errorf("bad %s key", a.Name)
	}
	return Key{Algorithm: a.Name, Public: pub}, nil
}

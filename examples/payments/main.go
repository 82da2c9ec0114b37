// Command payments is the called side of the meshauth example: an HTTPS
// service that requires mutual TLS and a meshauth JWT bound to the caller's
// certificate, verified offline from the engine's JWKS and revocations feed.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"log"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9443", "address to serve on")
	dev := ".dev"
	if d := os.Getenv("MESHAUTH_DEV"); d != "" {
		dev = d // .dev/env exports it
	}
	meshCA := flag.String("mesh-ca", dev+"/certs/ca.pem", "CA that issues the mesh's certificates")
	cert := flag.String("cert", dev+"/certs/payments.pem", "this service's certificate")
	key := flag.String("key", dev+"/certs/payments.key", "its private key")
	mount := flag.String("mount", "meshauth", "meshauth mount path in Vault")
	flag.Parse()

	vaultAddr, vaultCA := os.Getenv("VAULT_ADDR"), os.Getenv("VAULT_CACERT")
	if vaultAddr == "" || vaultCA == "" {
		log.Fatal("set VAULT_ADDR and VAULT_CACERT (make dev prints them)")
	}
	verifier, err := meshtoken.NewVerifier(context.Background(), meshtoken.VerifierConfig{
		DiscoveryURL: vaultAddr + "/v1/" + *mount + "/.well-known/openid-configuration",
		// Only tokens minted for payments, and only bound to the caller's
		// certificate (a stolen token is useless without its key).
		Audience:       "payments",
		RequireBinding: true,
		HTTPClient:     httpsClient(mustPool(vaultCA)),
		// The defaults do the rest: revoked tokens are refused from the
		// engine's signed revocations feed. Why a token was refused goes
		// to this service's log, never to the caller.
		Logger:   slog.Default(),
		LogLevel: slog.LevelInfo,
	})
	if err != nil {
		log.Fatalf("payments: %v", err)
	}

	mux := http.NewServeMux()
	mux.Handle("/charge", verifier.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		claims, _ := meshtoken.ClaimsFromContext(r.Context())
		log.Printf("charge requested by %q (token %q, bound to certificate %q)", claims.Subject, claims.ID, claims.Thumbprint())
		_ = json.NewEncoder(w).Encode(map[string]string{"status": "charged", "caller": claims.Subject})
	})))
	pair, err := tls.LoadX509KeyPair(*cert, *key)
	if err != nil {
		log.Fatalf("payments: loading its certificate: %v", err)
	}
	srv := &http.Server{
		Addr:              *listen,
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{pair},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    mustPool(*meshCA),
			MinVersion:   tls.VersionTLS13,
		},
	}
	log.Printf("payments listening on https://%s (mutual TLS + meshauth JWT)", *listen)
	log.Fatal(srv.ListenAndServeTLS("", ""))
}

// mustPool loads a PEM CA bundle.
func mustPool(file string) *x509.CertPool {
	pem, err := os.ReadFile(file) //nolint:gosec // a path the operator passes
	if err != nil {
		log.Fatalf("reading %s: %v", file, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		log.Fatalf("%s holds no PEM certificate", file)
	}
	return pool
}

// httpsClient trusts roots only.
func httpsClient(roots *x509.CertPool) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}}
}

// Command orders is the calling side of the meshauth example: it logs in to
// Vault as the service "orders" with its API key and client certificate,
// keeps the JWT fresh, and calls payments over mutual TLS with it.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"io"
	"log"
	"log/slog"
	"net/http"
	"os"
	"syscall"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/datapunk/vault-plugin-secrets-meshauth/client"
)

func main() {
	dev := devDir()
	payments := flag.String("payments", "https://127.0.0.1:9443/charge", "URL of the payments service")
	meshCA := flag.String("mesh-ca", dev+"/certs/ca.pem", "CA that issues the mesh's certificates")
	cert := flag.String("cert", dev+"/certs/orders.pem", "this service's client certificate")
	key := flag.String("key", dev+"/certs/orders.key", "its private key")
	calls := flag.Int("calls", 3, "how many calls to make, one a second")
	flag.Parse()

	apiKey := os.Getenv("MESHAUTH_API_KEY")
	if apiKey == "" || os.Getenv("VAULT_ADDR") == "" || os.Getenv("VAULT_TOKEN") == "" {
		log.Fatal("set VAULT_ADDR, VAULT_CACERT, VAULT_TOKEN and MESHAUTH_API_KEY (the api_key of services/orders)")
	}

	// Vault client presenting the service's certificate: the login checks it
	// and binds the token to it.
	cfg := api.DefaultConfig()
	if err := cfg.ConfigureTLS(&api.TLSConfig{CACert: os.Getenv("VAULT_CACERT"), ClientCert: *cert, ClientKey: *key}); err != nil {
		log.Fatalf("orders: %v", err)
	}
	vault, err := api.NewClient(cfg)
	if err != nil {
		log.Fatalf("orders: %v", err)
	}
	// The defaults: POST login (a policy with update on login/orders is
	// enough), failures logged.
	source, err := client.NewTokenSource(client.TokenSourceConfig{
		Vault: vault, Service: "orders", APIKey: apiKey, Audience: []string{"payments"},
		Logger: slog.Default(),
	})
	if err != nil {
		log.Fatalf("orders: %v", err)
	}
	ctx := context.Background()
	source.Start(ctx)
	defer source.Stop()

	// The same certificate on the connection to payments, which checks that
	// the token is bound to it.
	pair, err := tls.LoadX509KeyPair(*cert, *key)
	if err != nil {
		log.Fatalf("orders: %v", err)
	}
	roots := x509.NewCertPool()
	pem, err := os.ReadFile(*meshCA)
	if err != nil || !roots.AppendCertsFromPEM(pem) {
		log.Fatalf("orders: reading %s: %v", *meshCA, err)
	}
	httpClient := &http.Client{Timeout: 10 * time.Second, Transport: &client.Transport{
		Source: source,
		Base:   &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: roots, MinVersion: tls.VersionTLS13}},
	}}
	for i := range *calls {
		if i > 0 {
			time.Sleep(time.Second)
		}
		resp, err := call(httpClient, *payments)
		if err != nil {
			log.Fatalf("orders: calling payments: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		log.Printf("payments answered %s: %s", resp.Status, body)
	}
}

// call GETs url, waiting up to 15 seconds for payments to listen: started
// in the background just before, it may still be fetching its keys.
func call(c *http.Client, url string) (*http.Response, error) {
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := c.Get(url) //nolint:noctx // a command-line example
		if err == nil || !errors.Is(err, syscall.ECONNREFUSED) || time.Now().After(deadline) {
			return resp, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// devDir is where make dev put its certificates: MESHAUTH_DEV (which
// .dev/env exports), else .dev under the current directory.
func devDir() string {
	if d := os.Getenv("MESHAUTH_DEV"); d != "" {
		return d
	}
	return ".dev"
}

package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/datapunk/vault-plugin-secrets-meshauth/e2e/vaultlab"
)

// The mTLS-optional service: ca_chain and hostnames registered but
// require_mtls=false, so the same service logs in with a client
// certificate (verified through the cache, token bound with cnf) and
// without one. Comparing the two isolates what the certificate costs.
const (
	optionalService  = "orders-optional"
	optionalHostname = "orders-optional.mesh"
)

// clientFor is a keep-alive HTTP client presenting cert (none when nil),
// with at most conns connections.
func (e *env) clientFor(cert *vaultlab.Cert, conns int) *http.Client {
	cfg := &tls.Config{RootCAs: e.roots, MinVersion: tls.VersionTLS12}
	if cert != nil {
		pair, err := tls.LoadX509KeyPair(cert.CertFile, cert.KeyFile)
		if err != nil {
			e.lab.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return &http.Client{
		Timeout: 60 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:     cfg,
			MaxIdleConns:        conns,
			MaxIdleConnsPerHost: conns,
			MaxConnsPerHost:     conns,
		},
	}
}

// loginGETWith is a GET login of service through client c.
func (e *env) loginGETWith(c *http.Client, service, apiKey string) error {
	var s secret
	if err := e.callWith(c, "GET", "/v1/meshauth/login/"+service, e.s.Token, nil, map[string]string{"X-Meshauth-Api-Key": apiKey}, &s); err != nil {
		return err
	}
	if s.Data["token"] == nil {
		return fmt.Errorf("no token in %v", s.Data)
	}
	return nil
}

// coldCerts compares, on fresh TLS connections, the first login of a
// certificate the plugin has never seen (chain verified, cache filled)
// with the first login of one it has (cache hit), alternating; both pay
// the same TLS handshake.
type coldCerts struct {
	n                  int
	cold, warm, steady []float64
}

func (e *env) coldCertificates(n int) coldCerts {
	c := coldCerts{n: n}
	certs := make([]*vaultlab.Cert, n)
	for i := range certs {
		certs[i] = e.ca.Issue(e.lab, e.lab.TempDir(), fmt.Sprintf("cold-%d", i), []string{optionalHostname}, nil, x509.ExtKeyUsageClientAuth)
	}
	for i, cert := range certs {
		fresh := e.clientFor(cert, 1)
		start := now()
		if err := e.loginGETWith(fresh, optionalService, e.optionalKey); err != nil {
			e.lab.Fatalf("cold login %d: %v", i, err)
		}
		c.cold = append(c.cold, msSince(start))
		start = now()
		if err := e.loginGETWith(fresh, optionalService, e.optionalKey); err != nil {
			e.lab.Fatalf("second login %d: %v", i, err)
		}
		c.steady = append(c.steady, msSince(start))
		fresh.CloseIdleConnections()

		known := e.clientFor(e.optionalCert, 1)
		start = now()
		if err := e.loginGETWith(known, optionalService, e.optionalKey); err != nil {
			e.lab.Fatalf("known-certificate login %d: %v", i, err)
		}
		c.warm = append(c.warm, msSince(start))
		known.CloseIdleConnections()
	}
	return c
}

func renderColdCerts(c coldCerts) string {
	var b strings.Builder
	med := func(v []float64) float64 { return percentile(sortedCopy(v), 50) }
	fmt.Fprintf(&b, "\n## mTLS: a new certificate (verification cache cold)\n\n")
	fmt.Fprintf(&b, "%d certificates the plugin had never seen, each on a new TLS connection (GET login, service %s), alternating with a new connection presenting a known certificate (cache warm); both pay the same TLS handshake.\n\n", c.n, optionalService)
	fmt.Fprintf(&b, "| login | median ms | p90 ms |\n|---|---|---|\n")
	fmt.Fprintf(&b, "| first login of a new certificate, new connection (cold) | %.3f | %.3f |\n", med(c.cold), percentile(sortedCopy(c.cold), 90))
	fmt.Fprintf(&b, "| known certificate, new connection (warm) | %.3f | %.3f |\n", med(c.warm), percentile(sortedCopy(c.warm), 90))
	fmt.Fprintf(&b, "| second login of the new certificate, same connection | %.3f | %.3f |\n", med(c.steady), percentile(sortedCopy(c.steady), 90))
	fmt.Fprintf(&b, "\nCold / warm (median of pairs): %.2f; cold − warm: %.3f ms.\n", pairedRatio(c.cold, c.warm), med(c.cold)-med(c.warm))
	return b.String()
}

// pairedRatio is the median of a[i]/b[i].
func pairedRatio(a, b []float64) float64 {
	var r []float64
	for i := range min(len(a), len(b)) {
		r = append(r, a[i]/b[i])
	}
	return percentile(sortedCopy(r), 50)
}

package vaultlab

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/datapunk/vault-plugin-secrets-meshauth/meshtoken"
)

// CA issues certificates for one test run; nothing is committed that
// could expire.
type CA struct {
	X509 *x509.Certificate
	Key  *ecdsa.PrivateKey
	PEM  string
	File string
}

// Cert is a certificate and key written to files, as the vault CLI
// (VAULT_CLIENT_CERT, VAULT_CLIENT_KEY) and api.TLSConfig take them.
type Cert struct {
	X509     *x509.Certificate
	CertFile string
	KeyFile  string
}

// X5t is the RFC 8705 thumbprint a token bound to this certificate carries.
func (c *Cert) X5t() string { return meshtoken.CertificateThumbprint(c.X509) }

// NewCA makes a CA and writes its PEM into dir.
func NewCA(t T, dir, name string) *CA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(48 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &CA{X509: cert, Key: key, PEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
	ca.File = filepath.Join(dir, name+"-ca.pem")
	if err := os.WriteFile(ca.File, []byte(ca.PEM), 0o600); err != nil {
		t.Fatal(err)
	}
	return ca
}

// Issue signs a certificate with the given DNS names (client) or IPs
// (server) and writes it and its key into dir.
func (ca *CA) Issue(t T, dir, name string, dns []string, ips []net.IP, usage x509.ExtKeyUsage) *Cert {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     dns,
		IPAddresses:  ips,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	return ca.sign(t, dir, name, tmpl, key)
}

// IssueRevocable signs a client certificate whose CRL distribution point is
// crlURL.
func (ca *CA) IssueRevocable(t T, dir, name string, dns []string, crlURL string) *Cert {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: name},
		DNSNames:              dns,
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		CRLDistributionPoints: []string{crlURL},
	}
	return ca.sign(t, dir, name, tmpl, key)
}

// CRL signs a DER CRL listing revoked, valid for life.
func (ca *CA) CRL(t T, number int64, life time.Duration, revoked ...*big.Int) []byte {
	t.Helper()
	entries := make([]x509.RevocationListEntry, 0, len(revoked))
	for _, s := range revoked {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: s, RevocationTime: time.Now().Add(-time.Second)})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(number), ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: time.Now().Add(life),
		RevokedCertificateEntries: entries,
	}, ca.X509, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// IssueSVID signs an X.509-SVID shaped as SPIRE and Istio issue them: the
// SPIFFE IDs as URI SANs (one, unless a test wants a malformed SVID), an
// empty subject, no DNS SAN, for client and server authentication.
func (ca *CA) IssueSVID(t T, dir, name string, spiffeIDs ...string) *Cert {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		BasicConstraintsValid: true,
	}
	for _, id := range spiffeIDs {
		u, err := url.Parse(id)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	return ca.sign(t, dir, name, tmpl, key)
}

// sign issues tmpl for key and writes the certificate and key into dir.
func (ca *CA) sign(t T, dir, name string, tmpl *x509.Certificate, key *ecdsa.PrivateKey) *Cert {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.X509, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	c := &Cert{X509: cert, CertFile: filepath.Join(dir, name+".pem"), KeyFile: filepath.Join(dir, name+".key")}
	if err := os.WriteFile(c.CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}

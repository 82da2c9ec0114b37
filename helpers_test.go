package meshauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/hashicorp/vault/sdk/logical"
)

// countingStorage wraps storage and counts every call, so tests can prove
// that a path does not touch storage, and can make calls fail on demand.
type countingStorage struct {
	logical.Storage
	gets, puts, lists, deletes atomic.Int64
	failPut                    atomic.Bool
}

func (s *countingStorage) Get(ctx context.Context, k string) (*logical.StorageEntry, error) {
	s.gets.Add(1)
	return s.Storage.Get(ctx, k)
}

func (s *countingStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	s.puts.Add(1)
	if s.failPut.Load() {
		return errors.New("injected storage failure")
	}
	return s.Storage.Put(ctx, e)
}

func (s *countingStorage) List(ctx context.Context, p string) ([]string, error) {
	s.lists.Add(1)
	return s.Storage.List(ctx, p)
}

func (s *countingStorage) Delete(ctx context.Context, k string) error {
	s.deletes.Add(1)
	return s.Storage.Delete(ctx, k)
}

func (s *countingStorage) total() int64 {
	return s.gets.Load() + s.puts.Load() + s.lists.Load() + s.deletes.Load()
}

// testClock is a settable clock for the backend.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// testEnv is a backend over counting in-memory storage.
type testEnv struct {
	b       *backend
	storage *countingStorage
	clock   *testClock
}

// getTestBackend builds an initialised backend with in-memory storage.
func getTestBackend(tb testing.TB) *testEnv {
	tb.Helper()
	return getTestBackendLogging(tb, nil)
}

// getTestBackendLogging is getTestBackend with the plugin's logs written to
// logs (nil: the SDK's test logger).
func getTestBackendLogging(tb testing.TB, logs io.Writer) *testEnv {
	tb.Helper()
	conf := logical.TestBackendConfig()
	conf.StorageView = &logical.InmemStorage{}
	if logs != nil {
		conf.Logger = hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Trace})
	}
	b := newBackend()
	if err := b.Setup(context.Background(), conf); err != nil {
		tb.Fatal(err)
	}
	storage := &countingStorage{Storage: conf.StorageView}
	clock := &testClock{t: time.Now()}
	b.now = clock.now
	if err := b.Initialize(context.Background(), &logical.InitializationRequest{Storage: storage}); err != nil {
		tb.Fatal(err)
	}
	e := &testEnv{b: b, storage: storage, clock: clock}
	// Most tests rotate at will; the tests of min_publication_age set it
	// back themselves (keys_publication_test.go).
	e.mustOK(tb, logical.UpdateOperation, "config", map[string]any{"min_publication_age": 0})
	return e
}

// request runs one request through the framework, as Vault would.
func (e *testEnv) request(tb testing.TB, op logical.Operation, path string, data map[string]any) (*logical.Response, error) {
	tb.Helper()
	return e.requestWith(tb, op, path, data, nil)
}

// requestWith runs a request carrying a connection (remote address, TLS state).
func (e *testEnv) requestWith(tb testing.TB, op logical.Operation, path string, data map[string]any, conn *logical.Connection) (*logical.Response, error) {
	tb.Helper()
	req := &logical.Request{
		Operation:  op,
		Path:       path,
		Data:       data,
		Storage:    e.storage,
		MountPoint: "meshauth/",
		Connection: conn,
	}
	// Vault asks the existence check before every write and turns an update
	// of something absent into a create, so ACLs can tell them apart.
	if op == logical.UpdateOperation {
		if found, exists, err := e.b.HandleExistenceCheck(context.Background(), req); err == nil && found && !exists {
			req.Operation = logical.CreateOperation
		}
	}
	return e.b.HandleRequest(context.Background(), req)
}

// mustOK fails the test unless the request succeeded without an error response.
func (e *testEnv) mustOK(tb testing.TB, op logical.Operation, path string, data map[string]any) *logical.Response {
	tb.Helper()
	resp, err := e.request(tb, op, path, data)
	if err != nil || (resp != nil && resp.IsError()) {
		tb.Fatalf("%s %s: err=%v resp=%#v", op, path, err, resp)
	}
	return resp
}

// mustFail fails the test unless the request got an error response whose
// message contains want, and returns nothing.
func (e *testEnv) mustFail(tb testing.TB, op logical.Operation, path string, data map[string]any, want string) {
	tb.Helper()
	resp, err := e.request(tb, op, path, data)
	msg := ""
	switch {
	case err != nil:
		msg = err.Error()
	case resp != nil && resp.IsError():
		msg = resp.Error().Error()
	default:
		tb.Fatalf("%s %s succeeded; want an error containing %q", op, path, want)
	}
	if !strings.Contains(msg, want) {
		tb.Fatalf("%s %s: error %q does not contain %q", op, path, msg, want)
	}
}

// register creates a service and returns its API key.
func (e *testEnv) register(tb testing.TB, name string, data map[string]any) string {
	tb.Helper()
	resp := e.mustOK(tb, logical.UpdateOperation, "services/"+name, data)
	key, _ := resp.Data["api_key"].(string)
	if key == "" {
		tb.Fatalf("register %s: no api_key in %#v", name, resp.Data)
	}
	return key
}

// login logs in from a fixed address without a certificate.
func (e *testEnv) login(tb testing.TB, name, key string, extra map[string]any) (*logical.Response, error) {
	tb.Helper()
	data := map[string]any{"api_key": key}
	for k, v := range extra {
		data[k] = v
	}
	return e.requestWith(tb, logical.UpdateOperation, "login/"+name, data, &logical.Connection{RemoteAddr: "127.0.0.1"})
}

// mustLogin logs in and returns the token.
func (e *testEnv) mustLogin(tb testing.TB, name, key string) string {
	tb.Helper()
	resp, err := e.login(tb, name, key, nil)
	if err != nil || resp == nil || resp.IsError() {
		tb.Fatalf("login %s: err=%v resp=%#v", name, err, resp)
	}
	return resp.Data["token"].(string)
}

// verify runs verify and returns valid and reason.
func (e *testEnv) verify(tb testing.TB, token string, extra map[string]any) (bool, string) {
	tb.Helper()
	data := map[string]any{"token": token}
	for k, v := range extra {
		data[k] = v
	}
	resp := e.mustOK(tb, logical.UpdateOperation, "verify", data)
	reason, _ := resp.Data["reason"].(string)
	return resp.Data["valid"].(bool), reason
}

// testPKI is a CA with helpers to issue leaf certificates at test time.
type testPKI struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  string
}

// newTestCA makes a self-signed CA valid around now.
func newTestCA(tb testing.TB, cn string) *testPKI {
	tb.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testPKI{cert: cert, key: key, pem: pemCert(der)}
}

// leafOptions shape an issued certificate.
type leafOptions struct {
	dns       []string
	eku       []x509.ExtKeyUsage
	notBefore time.Time
	notAfter  time.Time
	serial    int64
	isCA      bool
	key       *ecdsa.PrivateKey
}

// issue signs a certificate from the CA.
func (ca *testPKI) issue(tb testing.TB, cn string, o leafOptions) (*x509.Certificate, *ecdsa.PrivateKey, string) {
	tb.Helper()
	key := o.key
	if key == nil {
		key, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if o.notBefore.IsZero() {
		o.notBefore = time.Now().Add(-time.Hour)
	}
	if o.notAfter.IsZero() {
		o.notAfter = time.Now().Add(12 * time.Hour)
	}
	if o.eku == nil {
		o.eku = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	if o.serial == 0 {
		o.serial = time.Now().UnixNano()
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(o.serial),
		Subject:               pkix.Name{CommonName: cn},
		DNSNames:              o.dns,
		NotBefore:             o.notBefore,
		NotAfter:              o.notAfter,
		ExtKeyUsage:           o.eku,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		IsCA:                  o.isCA,
		BasicConstraintsValid: o.isCA,
	}
	if o.isCA {
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert, key, pemCert(der)
}

func pemCert(der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// handshake returns the server-side ConnectionState of a real loopback TLS
// handshake in which the client presents chain, as Vault's listener would
// see it. The server requests but does not verify the certificate, as Vault.
func handshake(tb testing.TB, chain []*x509.Certificate, key *ecdsa.PrivateKey) *tls.ConnectionState {
	tb.Helper()
	serverCA := newTestCA(tb, "server-ca")
	serverCert, serverKey, _ := serverCA.issue(tb, "127.0.0.1", leafOptions{dns: []string{"localhost"}, eku: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{serverCert.Raw}, PrivateKey: serverKey}},
		ClientAuth:   tls.RequestClientCert,
		MinVersion:   tls.VersionTLS12,
	})
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	done := make(chan *tls.ConnectionState, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			done <- nil
			return
		}
		defer conn.Close()
		tc := conn.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			done <- nil
			return
		}
		st := tc.ConnectionState()
		done <- &st
	}()
	clientCfg := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}
	if len(chain) > 0 {
		raw := make([][]byte, len(chain))
		for i, c := range chain {
			raw[i] = c.Raw
		}
		clientCfg.Certificates = []tls.Certificate{{Certificate: raw, PrivateKey: key}}
	}
	conn, err := tls.Dial("tcp", ln.Addr().String(), clientCfg)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close()
	_ = conn.Handshake()
	st := <-done
	if st == nil {
		tb.Fatal("handshake failed")
	}
	return st
}

// tlsConn wraps a ConnectionState as the request connection Vault hands the plugin.
func tlsConn(st *tls.ConnectionState) *logical.Connection {
	return &logical.Connection{RemoteAddr: "127.0.0.1", ConnState: st}
}

func ellipticP256() elliptic.Curve { return elliptic.P256() }

func fmtSscanf(s, format string, a ...any) (int, error) { return fmt.Sscanf(s, format, a...) }

func decodeSegment(s string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(s) }

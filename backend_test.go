package meshauth

import (
	"errors"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// TestEveryOperationHasAnOpenAPIName checks the names that
// sys/internal/specs/openapi and generated clients show: every path has the
// engine's prefix, every operation a verb, and no two operations share an id.
func TestEveryOperationHasAnOpenAPIName(t *testing.T) {
	e := getTestBackend(t)
	for _, p := range e.b.Paths {
		if p.DisplayAttrs == nil || p.DisplayAttrs.OperationPrefix != operationPrefix {
			t.Errorf("path %s has no operation prefix", p.Pattern)
		}
		for op, h := range p.Operations {
			if attrs := h.Properties().DisplayAttrs; attrs == nil || attrs.OperationVerb == "" {
				t.Errorf("path %s, operation %s has no operation verb", p.Pattern, op)
			}
		}
	}
	// The root help builds the OpenAPI document; it asks the system view for
	// Vault's version, which the test backend's view lacks.
	conf := logical.TestBackendConfig()
	conf.System = &logical.StaticSystemView{PluginEnvironment: &logical.PluginEnvironment{VaultVersion: "v1.21.0"}}
	b := newBackend()
	if err := b.Setup(t.Context(), conf); err != nil {
		t.Fatal(err)
	}
	resp, err := b.HandleRequest(t.Context(), &logical.Request{Operation: logical.HelpOperation, Path: "", Storage: e.storage, MountPoint: "meshauth/"})
	if err != nil {
		t.Fatal(err)
	}
	doc, ok := resp.Data["openapi"].(*framework.OASDocument)
	if !ok {
		t.Fatalf("help answered %#v", resp.Data)
	}
	seen := map[string]string{}
	for path, item := range doc.Paths {
		for _, op := range []*framework.OASOperation{item.Get, item.Post, item.Delete} {
			if op == nil {
				continue
			}
			if other, dup := seen[op.OperationID]; dup {
				t.Errorf("operation id %s on %s and %s", op.OperationID, path, other)
			}
			seen[op.OperationID] = path
			if !strings.HasPrefix(op.OperationID, "meshauth-") {
				t.Errorf("operation id %s on %s lacks the prefix", op.OperationID, path)
			}
		}
	}
	for _, want := range []string{"meshauth-login", "meshauth-verify-token", "meshauth-read-configuration", "meshauth-rotate-service-api-key"} {
		if _, ok := seen[want]; !ok {
			t.Errorf("no operation %s among %v", want, seen)
		}
	}
}

func TestInvalidateDropsOnlyWhatChanged(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", nil)
	e.mustLogin(t, "orders", key)
	// Another node changes the service in shared storage and Vault tells us.
	entry, _ := readService(t.Context(), e.storage, "orders")
	entry.Disabled = true
	raw, _ := logical.StorageEntryJSON(storageServicePrefix+"orders", entry)
	_ = e.storage.Storage.Put(t.Context(), raw)
	e.mustLogin(t, "orders", key) // cache still holds the old entry
	e.b.invalidate(t.Context(), storageServicePrefix+"orders")
	if _, err := e.login(t, "orders", key, nil); !errors.Is(err, logical.ErrPermissionDenied) {
		t.Fatalf("after invalidate: %v", err)
	}
	if !e.b.keyRing.current(func(*keyRing) bool { return true }) {
		t.Fatal("invalidating a service dropped the key ring")
	}
}

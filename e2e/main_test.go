package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/datapunk/vault-plugin-secrets-meshauth/e2e/vaultlab"
)

func TestMain(m *testing.M) {
	if vaultlab.VaultBin == "" || vaultlab.PluginBin == "" {
		fmt.Fprintln(os.Stderr, "e2e: VAULT_BIN and MESHAUTH_PLUGIN must name a vault binary and the plugin binary; run `make test-e2e`, which builds both")
		os.Exit(2)
	}
	vaultlab.EndAllOnInterrupt()
	code := m.Run()
	// Every test ends what it started (vaultlab's Stop and Kill end each
	// Vault's process group); anything still running is a bug in the suite.
	if left := vaultlab.Leftovers(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: FAIL: %d process(es) started by the suite still run after every test ended:\n  %s\n", len(left), strings.Join(left, "\n  "))
		vaultlab.EndLeftovers()
		code = 1
	}
	os.Exit(code)
}

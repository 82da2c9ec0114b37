package e2e

import (
	"fmt"
	"os"
	"testing"

	"github.com/datapunk/vault-plugin-secrets-meshauth/e2e/vaultlab"
)

func TestMain(m *testing.M) {
	if vaultlab.VaultBin == "" || vaultlab.PluginBin == "" {
		fmt.Fprintln(os.Stderr, "e2e: VAULT_BIN and MESHAUTH_PLUGIN must name a vault binary and the plugin binary; run `make test-e2e`, which builds both")
		os.Exit(2)
	}
	os.Exit(m.Run())
}

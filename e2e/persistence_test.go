package e2e

import (
	"os"
	"strings"
	"testing"

	"github.com/datapunk/vault-plugin-secrets-meshauth/e2e/vaultlab"
)

// nextVersion is the version the Makefile stamps into the second plugin
// build (MESHAUTH_PLUGIN_NEXT) for the upgrade test.
const nextVersion = "v0.0.2-e2e"

func TestPersistenceRestartAndUpgrade(t *testing.T) {
	s := vaultlab.StartRaftServer(t)
	s.RegisterPlugin("meshauth")
	root := s.MustClient()

	key := vaultlab.JSONData(t, s.MustCLI(t, "write", "meshauth/services/payments", "require_mtls=false", "metadata=owner=team-b"))["api_key"].(string)
	login := func() string {
		return vaultlab.Write(t, root, "meshauth/login/payments", map[string]any{"api_key": key}).Data["token"].(string)
	}
	kept, revoked := login(), login()
	vaultlab.Write(t, root, "meshauth/revoke", map[string]any{"token": revoked})
	vaultlab.Write(t, root, "meshauth/keys/rotate", map[string]any{"force": true})
	kid := vaultlab.Read(t, root, "meshauth/keys").Data["current_kid"]
	verify := func(tok string) (bool, string) {
		sec := vaultlab.Write(t, root, "meshauth/verify", map[string]any{"token": tok})
		reason, _ := sec.Data["reason"].(string)
		return sec.Data["valid"].(bool), reason
	}

	s.Restart()
	root = s.MustClient()
	if ok, reason := verify(kept); !ok {
		t.Fatalf("token from before the restart: %s", reason)
	}
	if ok, reason := verify(revoked); ok || reason != "token_revoked" {
		t.Fatalf("revocation lost in the restart: %v %s", ok, reason)
	}
	if got := vaultlab.Read(t, root, "meshauth/keys").Data["current_kid"]; got != kid {
		t.Fatalf("current key changed across the restart: %v -> %v", kid, got)
	}
	login()

	t.Run("upgrade to a new plugin version", func(t *testing.T) {
		next := os.Getenv("MESHAUTH_PLUGIN_NEXT")
		if next == "" {
			t.Fatal("MESHAUTH_PLUGIN_NEXT must name a second plugin build stamped " + nextVersion + "; make test-e2e builds it")
		}
		sum := vaultlab.CopyPlugin(t, next, s.PluginDir, vaultlab.PluginName+"-next")
		s.MustCLI(t, "plugin", "register", "-sha256="+sum, "-command="+vaultlab.PluginName+"-next", "-version="+nextVersion, "secret", vaultlab.CatalogName)
		s.MustCLI(t, "secrets", "tune", "-plugin-version="+nextVersion, "meshauth")
		s.MustCLI(t, "plugin", "reload", "-plugin="+vaultlab.CatalogName)
		mounts := s.MustCLI(t, "secrets", "list", "-detailed")
		if !strings.Contains(mounts, `"running_plugin_version": "`+nextVersion+`"`) {
			t.Fatalf("mount does not run %s:\n%s", nextVersion, mounts)
		}
		if ok, reason := verify(kept); !ok {
			t.Fatalf("token after the upgrade: %s", reason)
		}
		if ok, _ := verify(revoked); ok {
			t.Fatal("revocation lost in the upgrade")
		}
		if md := vaultlab.Read(t, root, "meshauth/services/payments").Data["metadata"].(map[string]any); md["owner"] != "team-b" {
			t.Fatalf("service data changed: %#v", md)
		}
		login()
	})
}

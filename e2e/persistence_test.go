package e2e

import (
	"os"
	"strings"
	"testing"
)

// nextVersion is the version the Makefile stamps into the second plugin
// build (MESHAUTH_PLUGIN_NEXT) for the upgrade test.
const nextVersion = "v0.0.2-e2e"

func TestPersistenceRestartAndUpgrade(t *testing.T) {
	s := startRaftServer(t)
	s.registerPlugin("meshauth")
	root := s.mustClient()

	key := jsonData(t, s.mustCLI(t, "write", "meshauth/services/payments", "require_mtls=false", "metadata=owner=team-b"))["api_key"].(string)
	login := func() string {
		return write(t, root, "meshauth/login/payments", map[string]any{"api_key": key}).Data["token"].(string)
	}
	kept, revoked := login(), login()
	write(t, root, "meshauth/revoke", map[string]any{"token": revoked})
	write(t, root, "meshauth/keys/rotate", nil)
	kid := read(t, root, "meshauth/keys").Data["current_kid"]
	verify := func(tok string) (bool, string) {
		sec := write(t, root, "meshauth/verify", map[string]any{"token": tok})
		reason, _ := sec.Data["reason"].(string)
		return sec.Data["valid"].(bool), reason
	}

	s.restart()
	root = s.mustClient()
	if ok, reason := verify(kept); !ok {
		t.Fatalf("token from before the restart: %s", reason)
	}
	if ok, reason := verify(revoked); ok || reason != "token_revoked" {
		t.Fatalf("revocation lost in the restart: %v %s", ok, reason)
	}
	if got := read(t, root, "meshauth/keys").Data["current_kid"]; got != kid {
		t.Fatalf("current key changed across the restart: %v -> %v", kid, got)
	}
	login()

	t.Run("upgrade to a new plugin version", func(t *testing.T) {
		next := os.Getenv("MESHAUTH_PLUGIN_NEXT")
		if next == "" {
			t.Fatal("MESHAUTH_PLUGIN_NEXT must name a second plugin build stamped " + nextVersion + "; make test-e2e builds it")
		}
		sum := copyPlugin(t, next, s.pluginDir, pluginName+"-next")
		s.mustCLI(t, "plugin", "register", "-sha256="+sum, "-command="+pluginName+"-next", "-version="+nextVersion, "secret", catalogName)
		s.mustCLI(t, "secrets", "tune", "-plugin-version="+nextVersion, "meshauth")
		s.mustCLI(t, "plugin", "reload", "-plugin="+catalogName)
		mounts := s.mustCLI(t, "secrets", "list", "-detailed")
		if !strings.Contains(mounts, `"running_plugin_version": "`+nextVersion+`"`) {
			t.Fatalf("mount does not run %s:\n%s", nextVersion, mounts)
		}
		if ok, reason := verify(kept); !ok {
			t.Fatalf("token after the upgrade: %s", reason)
		}
		if ok, _ := verify(revoked); ok {
			t.Fatal("revocation lost in the upgrade")
		}
		if md := read(t, root, "meshauth/services/payments").Data["metadata"].(map[string]any); md["owner"] != "team-b" {
			t.Fatalf("service data changed: %#v", md)
		}
		login()
	})
}

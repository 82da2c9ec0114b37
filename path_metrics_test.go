package meshauth

import (
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

func TestMetricsPrometheus(t *testing.T) {
	e := getTestBackend(t)
	key := e.register(t, "orders", nil)
	e.mustLogin(t, "orders", key)
	_, _ = e.login(t, "ghost", key, nil)
	e.verify(t, "x.y.z", nil)
	resp := e.mustOK(t, logical.ReadOperation, "metrics", map[string]any{"format": "prometheus"})
	body := string(resp.Data[logical.HTTPRawBody].([]byte))
	for _, want := range []string{
		`meshauth_logins_total{service="orders",result="success"} 1`,
		`meshauth_logins_total{service="_unknown",result="failure"} 1`,
		`meshauth_verifications_total{result="malformed"} 1`,
		"# TYPE meshauth_key_rotations_total counter",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("prometheus output lacks %q:\n%s", want, body)
		}
	}
	e.mustFail(t, logical.ReadOperation, "metrics", map[string]any{"format": "xml"}, "json or prometheus")
}

package client_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/hashicorp/vault/api"

	"github.com/datapunk/vault-plugin-secrets-meshauth/client"
)

// A service logs in as "orders" and gets a token for "payments". The
// source logs in with POST (update on login/orders is all its Vault token
// needs), keeps the token until about two thirds of its life, and with
// Start refreshes it in the background. (Vault here is a stand-in that
// answers the login as the engine does; configure the real client's TLS
// with the service's certificate, to which the token is bound.)
func ExampleNewTokenSource() {
	vault := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		_ = json.NewDecoder(r.Body).Decode(&body)
		fmt.Println(r.Method, r.URL.Path, "audience", body["audience"])
		_ = json.NewEncoder(w).Encode(map[string]any{"data": map[string]any{
			"token": "eyJ.example.token", "token_type": "Bearer", "expires_in": 600,
		}})
	}))
	defer vault.Close()

	cfg := api.DefaultConfig()
	cfg.Address = vault.URL
	vc, _ := api.NewClient(cfg)
	vc.SetToken("dev-only-token") // or Auth: AppRole, Kubernetes or cert auth, which the source keeps alive
	source, err := client.NewTokenSource(client.TokenSourceConfig{
		Vault:    vc,
		Service:  "orders",
		APIKey:   "mak_example",
		Audience: []string{"payments"},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer source.Stop()
	for range 2 {
		token, err := source.Token(context.Background())
		fmt.Println(token, err)
	}
	// Output:
	// PUT /v1/meshauth/login/orders audience [payments]
	// eyJ.example.token <nil>
	// eyJ.example.token <nil>
}

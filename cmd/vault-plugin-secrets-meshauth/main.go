// Command vault-plugin-secrets-meshauth serves the meshauth secrets engine to
// Vault over the plugin protocol. It only serves: all behaviour lives in the
// meshauth package at the repository root.
package main

import (
	"os"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/sdk/plugin"

	meshauth "github.com/datapunk/vault-plugin-secrets-meshauth"
)

func main() {
	meta := &api.PluginAPIClientMeta{}
	flags := meta.FlagSet()
	if err := flags.Parse(os.Args[1:]); err != nil {
		fatal(err)
	}

	tlsConfig := meta.GetTLSConfig()
	tlsProvider := api.VaultPluginTLSProvider(tlsConfig)

	stopProfile := startCPUProfile(hclog.New(&hclog.LoggerOptions{}))
	err := plugin.ServeMultiplex(&plugin.ServeOpts{
		BackendFactoryFunc: meshauth.Factory,
		TLSProviderFunc:    tlsProvider,
	})
	stopProfile()
	if err != nil {
		fatal(err)
	}
}

// fatal logs err the way Vault reads plugin output, and exits non-zero.
func fatal(err error) {
	hclog.New(&hclog.LoggerOptions{}).Error("plugin shutting down", "error", err)
	os.Exit(1)
}

// Command vault builds the pinned HashiCorp Vault release that meshauth's
// development server and end-to-end tests run against. It exists because
// Vault is in no package registry here: its Go module is the only source.
package main

import (
	"os"

	"github.com/hashicorp/vault/command"
)

func main() {
	os.Exit(command.Run(os.Args[1:]))
}

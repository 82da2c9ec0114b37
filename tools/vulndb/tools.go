//go:build tools

// Package vulndb pins the Go vulnerability database, served as a Go module,
// and its indexer: govulncheck's own database host is out of reach here, so
// scripts/vulndb.sh builds a local copy from this module instead.
package vulndb

import _ "golang.org/x/vulndb/cmd/indexdb"

// Command vectorgen writes the test vectors that the Go package meshtoken
// and the Python package meshauth must both pass: testdata/vectors/
// vectors.json (named cases: token, presented certificate, expected verdict
// and reason) and testdata/vectors/differential.json (a few thousand signed,
// oddly shaped tokens and meshtoken's verdict on each); each file also holds
// revocation feeds (feeds) and meshtoken.ParseFeed's verdict on each. Run it with
// `make vectors` after changing meshtoken; vectors_test.go checks that
// meshtoken still gives every recorded verdict.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
)

func main() {
	out := flag.String("out", "../../testdata/vectors", "directory to write vectors.json and differential.json into")
	n := flag.Int("n", 3000, "number of differential tokens")
	flag.Parse()
	if err := os.MkdirAll(*out, 0o755); err != nil { //nolint:gosec // a directory of the repository
		log.Fatal(err)
	}
	fx, err := newFixture()
	if err != nil {
		log.Fatal(err)
	}
	vec, err := fx.vectors()
	if err != nil {
		log.Fatal(err)
	}
	if err := writeJSON(filepath.Join(*out, "vectors.json"), vec); err != nil {
		log.Fatal(err)
	}
	diff, err := fx.differential(*n)
	if err != nil {
		log.Fatal(err)
	}
	if err := writeJSON(filepath.Join(*out, "differential.json"), diff); err != nil {
		log.Fatal(err)
	}
	pending := 0
	for _, c := range vec.Cases {
		if c.GoPending != "" {
			pending++
		}
	}
	fmt.Printf("wrote %d vectors (%d that meshtoken does not yet meet), %d differential tokens and %d+%d feeds into %s\n",
		len(vec.Cases), pending, len(diff.Cases), len(vec.Feeds), len(diff.Feeds), *out)
}

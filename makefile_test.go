package meshauth

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestMakeHelpListsEveryTarget: `make help` prints the rules whose line
// matches its pattern and carries "## "; every phony target must be one.
// (It missed test-e2e and test-e2e-ha while its pattern had no digits.)
func TestMakeHelpListsEveryTarget(t *testing.T) {
	b, err := os.ReadFile("Makefile")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	helpRule := regexp.MustCompile(`@grep -E '([^']+)'`).FindStringSubmatch(text)
	if helpRule == nil {
		t.Fatal("no help rule found")
	}
	listed := regexp.MustCompile(`(?m)` + helpRule[1])
	phony := regexp.MustCompile(`(?m)^\.PHONY:(.*)$`).FindStringSubmatch(text)
	if phony == nil {
		t.Fatal("no .PHONY line")
	}
	for _, target := range strings.Fields(phony[1]) {
		rule := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(target) + `:.*$`).FindString(text)
		if rule == "" || !listed.MatchString(rule) {
			t.Errorf("make help does not list %q (rule %q)", target, rule)
		}
	}
}

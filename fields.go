package meshauth

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// serviceNamePattern is the contract's service-name syntax, for path patterns.
const serviceNamePattern = `(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,127})`

// serviceNameRe checks a whole name against the contract's syntax; the
// upper-case letters it admits are then refused by serviceName with the
// lower-case path, so a caller learns the spelling instead of a 404.
var serviceNameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// Bounds on what a caller may store; the whole service entry stays far below
// the ~1 MiB that Raft allows per entry.
const (
	maxListEntries  = 64
	maxListItemLen  = 253
	maxMapEntries   = 64
	maxMapKeyLen    = 128
	maxMapValueLen  = 1024
	maxAudienceLen  = 512
	maxAPIKeyLength = 256
)

// serviceName reads and checks the name path parameter. Names are lower
// case and have exactly one spelling: Vault checks ACL policies on the path
// as written, so if "login/PAYMENTS" reached the service "payments", a glob
// grant could walk around a deny written for "login/payments". A name with
// an upper-case letter is refused on every path, with the one path that
// reaches the service, and is never served.
func serviceName(req *logical.Request, d *framework.FieldData) (string, *logical.Response) {
	name := d.Get("name").(string)
	if !serviceNameRe.MatchString(name) {
		return "", logical.ErrorResponse("service name must match [a-z0-9][a-z0-9._-]{0,127} (lower case)")
	}
	if lower := strings.ToLower(name); lower != name {
		return "", logical.ErrorResponse(fmt.Sprintf("service names are lower case and have one spelling; use %s", canonicalPath(req, name, lower)))
	}
	return name, nil
}

// canonicalPath is the request's path with the service name in its one
// spelling, mount included, for error messages.
func canonicalPath(req *logical.Request, name, lower string) string {
	path := req.Path
	if i := strings.Index(path, name); i >= 0 {
		path = path[:i] + lower + path[i+len(name):]
	}
	return req.MountPoint + path
}

// rejectUnknownFields refuses a request that carries a field the path does
// not declare. The framework would drop it silently, and a mistyped field
// name (token_tll) silently doing nothing is worse than an error.
func rejectUnknownFields(req *logical.Request, d *framework.FieldData) *logical.Response {
	var unknown []string
	for k := range req.Data {
		if _, ok := d.Schema[k]; !ok {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	slices.Sort(unknown)
	known := make([]string, 0, len(d.Schema))
	for k := range d.Schema {
		if k != "name" {
			known = append(known, k)
		}
	}
	slices.Sort(known)
	return logical.ErrorResponse(fmt.Sprintf("unknown field(s) %s; this path takes %s", strings.Join(unknown, ", "), strings.Join(known, ", ")))
}

// cleanList trims a list field, drops nothing silently, and refuses empty or
// oversized entries, duplicates included.
func cleanList(field string, in []string) ([]string, string) {
	if len(in) > maxListEntries {
		return nil, fmt.Sprintf("%s has %d entries; at most %d are allowed", field, len(in), maxListEntries)
	}
	out := make([]string, 0, len(in))
	for _, v := range in {
		v = strings.TrimSpace(v)
		switch {
		case v == "":
			return nil, fmt.Sprintf("%s has an empty entry", field)
		case len(v) > maxListItemLen:
			return nil, fmt.Sprintf("%s has an entry longer than %d characters", field, maxListItemLen)
		case slices.Contains(out, v):
			return nil, fmt.Sprintf("%s lists %q twice", field, v)
		}
		out = append(out, v)
	}
	return out, ""
}

// cleanMap bounds a key/value map field.
func cleanMap(field string, in map[string]string) (map[string]string, string) {
	if len(in) > maxMapEntries {
		return nil, fmt.Sprintf("%s has %d entries; at most %d are allowed", field, len(in), maxMapEntries)
	}
	out := make(map[string]string, len(in))
	for k, v := range in {
		k = strings.TrimSpace(k)
		switch {
		case k == "":
			return nil, fmt.Sprintf("%s has an empty key", field)
		case len(k) > maxMapKeyLen:
			return nil, fmt.Sprintf("%s has a key longer than %d characters", field, maxMapKeyLen)
		case len(v) > maxMapValueLen:
			return nil, fmt.Sprintf("%s[%s] is longer than %d characters", field, k, maxMapValueLen)
		}
		out[k] = v
	}
	return out, ""
}

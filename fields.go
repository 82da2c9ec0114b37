package meshauth

import (
	"fmt"
	"slices"
	"strings"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

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

package meshauth

import (
	"context"
	"fmt"

	"github.com/hashicorp/vault/sdk/logical"
)

// readEntryInto decodes the JSON entry at key into dst and reports whether
// there was one. what names the entry in errors ("service \"orders\"").
// Entries carry a version; a later layout is upgraded in memory by the
// caller after reading, never written back on a read path (a standby
// answers ErrReadOnly).
func readEntryInto(ctx context.Context, s logical.Storage, key, what string, dst any) (bool, error) {
	raw, err := s.Get(ctx, key)
	if err != nil {
		return false, fmt.Errorf("reading %s: %w", what, err)
	}
	if raw == nil {
		return false, nil
	}
	if err := raw.DecodeJSON(dst); err != nil {
		return false, fmt.Errorf("decoding %s: %w", what, err)
	}
	return true, nil
}

// readEntry reads the JSON entry at key into a new T, or returns (nil, nil)
// when there is none.
func readEntry[T any](ctx context.Context, s logical.Storage, key, what string) (*T, error) {
	v := new(T)
	found, err := readEntryInto(ctx, s, key, what, v)
	if err != nil || !found {
		return nil, err
	}
	return v, nil
}

// writeEntry stores v as one JSON entry at key, seal-wrapped when asked (the
// key ring: private keys get the seal's extra layer where Vault offers one).
func writeEntry(ctx context.Context, s logical.Storage, key, what string, v any, sealWrap bool) error {
	raw, err := logical.StorageEntryJSON(key, v)
	if err != nil {
		return fmt.Errorf("encoding %s: %w", what, err)
	}
	raw.SealWrap = sealWrap
	if err := s.Put(ctx, raw); err != nil {
		return fmt.Errorf("writing %s: %w", what, err)
	}
	return nil
}

package node

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"qkdkms/etsi/pki"
	"qkdkms/raftstore"
)

// TestNodeRefusesLooseTLSKeyMode: a node whose tls.key is readable by group
// or others does not start (the same rule as kek_file, node/CONFIG.md).
func TestNodeRefusesLooseTLSKeyMode(t *testing.T) {
	p := newTestPKI(t)
	crt, key := p.node(t, "sender_app", "n1")
	cfg := Config{
		NodeID: "n1",
		KMEID:  "sender_app",
		// never bound: New fails before it listens.
		Listen:  "127.0.0.1:18443",
		DataDir: filepath.Join(t.TempDir(), "n1"),
		TLS:     TLSFiles{CA: p.caFile(), Cert: crt, Key: key},
		// absent: a node that got past its TLS files stops at the KEK.
		KEKFile: filepath.Join(t.TempDir(), "absent.kek"),
	}
	for _, tc := range []struct {
		mode    os.FileMode
		refused bool
	}{
		{0o644, true},
		{0o640, true},
		{0o600, false},
	} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			if err := os.Chmod(key, tc.mode); err != nil {
				t.Fatal(err)
			}
			n, err := New(context.Background(), cfg)
			if err == nil {
				_ = n.Close(context.Background())
				t.Fatal("node started without its KEK")
			}
			if got := errors.Is(err, pki.ErrKeyFileMode); got != tc.refused {
				t.Fatalf("tls.key mode %v: err = %v", tc.mode, err)
			}
			if !tc.refused && !errors.Is(err, raftstore.ErrBadKEK) {
				t.Fatalf("tls.key mode %v: err = %v, want the KEK's", tc.mode, err)
			}
		})
	}
}

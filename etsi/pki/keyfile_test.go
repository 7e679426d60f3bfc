package pki

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestLoadKeyPairRefusesLooseKeyMode: a private key file readable by group
// or others is refused, like the KEK file; 0600 and 0400 load.
func TestLoadKeyPairRefusesLooseKeyMode(t *testing.T) {
	dir := t.TempDir()
	ca, err := Init(dir)
	if err != nil {
		t.Fatal(err)
	}
	l, err := ca.IssueNode("n1", "sender_app", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Write(dir, "n1"); err != nil {
		t.Fatal(err)
	}
	crt, key := filepath.Join(dir, "n1.crt"), filepath.Join(dir, "n1.key")
	for _, tc := range []struct {
		mode os.FileMode
		ok   bool
	}{
		{0o600, true},
		{0o400, true},
		{0o640, false},
		{0o644, false},
		{0o604, false},
		{0o660, false},
	} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			if err := os.Chmod(key, tc.mode); err != nil {
				t.Fatal(err)
			}
			_, err := LoadKeyPair(crt, key)
			if tc.ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tc.ok && !errors.Is(err, ErrKeyFileMode) {
				t.Fatalf("err = %v, want ErrKeyFileMode", err)
			}
		})
	}
}

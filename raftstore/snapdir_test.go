package raftstore

import (
	"context"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// TestSnapshotDirsAre0700: every directory of the snapshot store (snapshots/,
// snapshots/snapshots/, one per snapshot) is mode 0700 after a snapshot, and
// a data directory left at 0755 by an older version is tightened at Open.
func TestSnapshotDirsAre0700(t *testing.T) {
	dir := t.TempDir()
	kek := newKEK(t)
	s := openSingle(t, dir, kek, io.Discard, nil)
	if err := s.Snapshot(context.Background()); err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		n := 0
		err := filepath.WalkDir(filepath.Join(dir, "snapshots"), func(path string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return err
			}
			n++
			info, err := d.Info()
			if err != nil {
				return err
			}
			if got := info.Mode().Perm(); got != 0o700 {
				t.Errorf("%s: %s has mode %#o, want 0700", when, path, got)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if n < 3 {
			t.Fatalf("%s: %d snapshot directories, want snapshots/, snapshots/snapshots/ and one snapshot", when, n)
		}
	}
	check("after a snapshot")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	if err := filepath.WalkDir(filepath.Join(dir, "snapshots"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		return os.Chmod(path, 0o755)
	}); err != nil {
		t.Fatal(err)
	}
	s = openSingle(t, dir, kek, io.Discard, nil)
	defer s.Close()
	check("after reopening")
}

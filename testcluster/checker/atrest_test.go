package checker

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
)

func TestScanAtRest(t *testing.T) {
	dir := t.TempDir()
	k1, k2, k3, k4 := make([]byte, 32), make([]byte, 32), make([]byte, 32), make([]byte, 32)
	for _, k := range [][]byte{k1, k2, k3, k4} {
		_, _ = rand.Read(k)
	}
	noise := make([]byte, 4096)
	_, _ = rand.Read(noise)
	write := func(name string, parts ...[]byte) {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("raft/raft.db", noise, k1, noise)                                                    // raw
	write("logs/node.log", []byte(`{"key":"`+base64.StdEncoding.EncodeToString(k2)+`"}`+"\n")) // base64
	write("snap/1/state.bin", []byte(hex.EncodeToString(k3)))                                  // hex
	write("clean.bin", noise)                                                                  // k4 nowhere

	hits, err := ScanAtRest([]string{dir, filepath.Join(dir, "missing")}, [][]byte{k1, k2, k3, k4, {1, 2, 3}})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"raft.db": "raw", "node.log": "base64", "state.bin": "hex"}
	if len(hits) != len(want) {
		t.Fatalf("hits %+v, want %v", hits, want)
	}
	for _, h := range hits {
		if want[filepath.Base(h.File)] != h.Encoding {
			t.Errorf("unexpected hit %+v", h)
		}
	}
	if hits[0].Offset != 0 && filepath.Base(hits[0].File) == "raft.db" && hits[0].Offset != 4096 {
		t.Errorf("raw hit at %d, want 4096", hits[0].Offset)
	}
}

package testcluster

import (
	"os"
	"testing"
	"time"
)

func TestWritePlots(t *testing.T) {
	s := newSynth()
	for i := 0; i < 50; i++ {
		s.enc(OK, 200, key(i))
		s.dec("jkl", key(i))
		if i == 20 {
			s.h.MarkAt(s.tick(time.Second), EventFault, "kill")
			s.enc(Failed, 503)
			s.enc(Ambiguous, 0)
		}
		if i == 30 {
			s.h.MarkAt(s.tick(time.Second), EventHeal, "restart")
		}
		s.tick(100 * time.Millisecond)
	}
	pool := []PoolSample{{At: s.h.Start, Site: "a", Stored: 100}, {At: s.now, Site: "a", Stored: 50}, {At: s.now, Site: "b", Stored: 60}}
	files, err := writePlots(t.TempDir(), "synthetic", s.h, pool)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 3 {
		t.Fatalf("plots %v, want 3", files)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) < 8 || string(b[1:4]) != "PNG" {
			t.Fatalf("%s is not a PNG", f)
		}
	}
}

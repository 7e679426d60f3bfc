package report

import (
	"os"
	"testing"
	"time"

	"qkdkms/testcluster/history"
	"qkdkms/testcluster/internal/histtest"
)

// TestWritePlots draws the three plots of a synthetic run with a fault
// and checks each file is a PNG.
func TestWritePlots(t *testing.T) {
	s := histtest.New()
	for i := 0; i < 50; i++ {
		s.Enc(history.OK, 200, histtest.Key(i))
		s.Dec("jkl", histtest.Key(i))
		if i == 20 {
			s.H.MarkAt(s.Tick(time.Second), history.EventFault, "kill")
			s.Enc(history.Failed, 503)
			s.Enc(history.Ambiguous, 0)
		}
		if i == 30 {
			s.H.MarkAt(s.Tick(time.Second), history.EventHeal, "restart")
		}
		s.Tick(100 * time.Millisecond)
	}
	pool := []PoolSample{{At: s.H.Start, Site: "a", Stored: 100}, {At: s.Now, Site: "a", Stored: 50}, {At: s.Now, Site: "b", Stored: 60}}
	files, err := WritePlots(t.TempDir(), "synthetic", s.H, pool)
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

package history_test

import (
	"path/filepath"
	"testing"
	"time"

	"qkdkms/testcluster/checker"
	"qkdkms/testcluster/history"
	"qkdkms/testcluster/internal/histtest"
)

// TestHistoryRoundTrip: a history read back from history.json gives the
// checker the same verdict as the one written.
func TestHistoryRoundTrip(t *testing.T) {
	s := histtest.New()
	s.Enc(history.OK, 200, histtest.Key(1))
	s.H.MarkAt(s.Tick(time.Second), history.EventFault, "x")
	s.Dec("jkl", histtest.Key(1))
	s.H.Burned = 3
	p := filepath.Join(t.TempDir(), "history.json")
	if err := s.H.WriteFile(p); err != nil {
		t.Fatal(err)
	}
	h, err := history.Read(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Ops()) != 2 || len(h.Events()) != 1 || h.Burned != 3 {
		t.Fatalf("round trip lost data: %d ops, %d events, burned %d", len(h.Ops()), len(h.Events()), h.Burned)
	}
	a, b := checker.Check(s.H, checker.Config{}), checker.Check(h, checker.Config{})
	if a.Markdown("x") != b.Markdown("x") {
		t.Fatalf("reports differ:\n%s\n%s", a.Markdown("x"), b.Markdown("x"))
	}
}

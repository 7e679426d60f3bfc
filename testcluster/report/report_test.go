package report

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"qkdkms/testcluster/checker"
	"qkdkms/testcluster/history"
	"qkdkms/testcluster/internal/histtest"
)

// TestWrite writes a report of three scenarios — one that passed, one the
// checker failed, one that never ran — and reads back report.md and
// report.json.
func TestWrite(t *testing.T) {
	dir := t.TempDir()
	clean := histtest.New()
	clean.Enc(history.OK, 200, histtest.Key(1))
	clean.Dec("jkl", histtest.Key(1))
	double := histtest.New()
	double.Enc(history.OK, 200, histtest.Key(1))
	double.Enc(history.OK, 200, histtest.Key(1)) // the same key ID issued twice (I1)
	double.Dec("jkl", histtest.Key(1))
	plot := filepath.Join(dir, "none", "latency.png")
	results := []*Result{
		{Scenario: "none", Description: "no fault", Report: checker.Check(clean.H, checker.Config{}), Plots: []string{plot}},
		{Scenario: "leader-kill", Description: "kill", Report: checker.Check(double.H, checker.Config{})},
		{Scenario: "leader-isolate", Description: "isolate", Err: "skipped: scenario needs root"},
	}
	if err := Write(dir, Setup{Nodes: 3, Rate: 20, Number: 2, KeyBits: 256, Duration: 12 * time.Second, FetchWindow: 15 * time.Second}, results); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(dir, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		scenario, row string
		ok            bool
	}{
		{"none", "| none | PASS |", true},
		{"leader-kill", "| leader-kill | FAIL |", false},
		{"leader-isolate", "| leader-isolate | ERROR |", false},
	}
	for i, tc := range tests {
		if !strings.Contains(string(md), tc.row) {
			t.Errorf("report.md lacks the row %q:\n%s", tc.row, md)
		}
		if results[i].OK() != tc.ok {
			t.Errorf("%s: OK %v, want %v", tc.scenario, results[i].OK(), tc.ok)
		}
	}
	for _, want := range []string{"× 3 node processes", "20 enc_keys/s × 2 keys of 256 bits for 12s", "](none/latency.png)", "**error:** skipped: scenario needs root"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report.md lacks %q", want)
		}
	}
	js, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var back []*Result
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatal(err)
	}
	if len(back) != len(results) {
		t.Fatalf("report.json holds %d results, want %d", len(back), len(results))
	}
	for i, r := range back {
		if r.Scenario != results[i].Scenario || r.OK() != results[i].OK() {
			t.Errorf("report.json result %d: %s OK %v, want %s OK %v", i, r.Scenario, r.OK(), results[i].Scenario, results[i].OK())
		}
	}
}

// TestWriteNoDir: a report into a directory that cannot be written fails
// with the path in the error.
func TestWriteNoDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "missing", "deeper")
	err := Write(dir, Setup{}, nil)
	if err == nil || !strings.Contains(err.Error(), "report.md") {
		t.Fatalf("Write into %s: %v, want an error naming report.md", dir, err)
	}
}

//go:build e2e

package experiment

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"qkdkms/testcluster/faults"
	"qkdkms/testcluster/history"
	"qkdkms/testcluster/internal/proctest"
)

// TestMain builds the qkdkms binary the e2e scenarios run.
func TestMain(m *testing.M) { proctest.Main(m) }

// TestExperimentScenariosShort runs a short version of every process-mode
// scenario (make e2e) and checks every counter of the checker.
func TestExperimentScenariosShort(t *testing.T) {
	binary := proctest.Binary(t)
	names := faults.Names()
	if s := os.Getenv("TESTCLUSTER_SCENARIOS"); s != "" {
		names = strings.Split(s, ",")
	}
	out := t.TempDir()
	if d := os.Getenv("TESTCLUSTER_REPORT_DIR"); d != "" {
		out = d
	}
	results, err := Run(context.Background(), names, Options{
		Binary: binary, Out: out, Duration: 12 * time.Second, FetchWindow: 15 * time.Second,
		Rate: 20, Number: 2, KeyBits: 256,
	})
	if err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(out, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", md)
	for _, r := range results {
		if !r.OK() {
			t.Errorf("%s: error %q, violations %v", r.Scenario, r.Err, r.Report.Violations)
		}
		for _, p := range r.Plots {
			if fi, err := os.Stat(p); err != nil || fi.Size() == 0 {
				t.Errorf("%s: plot %s missing", r.Scenario, p)
			}
		}
		if r.Report != nil && r.Report.ByKind[history.OpEnc].Successes == 0 {
			t.Errorf("%s: no enc_keys succeeded", r.Scenario)
		}
	}
	if _, err := os.Stat(filepath.Join(out, "report.json")); err != nil {
		t.Fatal(err)
	}
}

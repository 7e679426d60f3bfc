// Package report turns the results of failover experiments into what a
// person reads: report.md with a table of every scenario and each one's
// checker report, report.json, and PNG plots of latency, throughput and
// pool levels with the faults marked (README, "Failover experiments").
//
// It is the only package of the module that links gonum/plot (and with it
// LaTeX, PDF and font code): the server binary must not import it, which
// node's TestServerBinaryDeps enforces; the lab command
// (testcluster/cmd/qkdkms-lab) does.
package report

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"qkdkms/testcluster/checker"
)

// Setup is what every scenario of a run shared, for the report's header.
type Setup struct {
	// Nodes per site.
	Nodes int
	// Rate of enc_keys calls per second, Number keys per call, KeyBits per key.
	Rate    float64
	Number  int
	KeyBits int
	// Duration of the workload per scenario; FetchWindow after healing.
	Duration, FetchWindow time.Duration
}

// PoolSample is one reading of a site's pool level.
type PoolSample struct {
	At     time.Time `json:"at"`
	Site   string    `json:"site"`
	Stored float64   `json:"stored_keys"`
}

// Result is one scenario's outcome, as the report shows it.
type Result struct {
	Scenario    string          `json:"scenario"`
	Description string          `json:"description"`
	Report      *checker.Report `json:"report,omitempty"`
	Pool        []PoolSample    `json:"pool,omitempty"`
	Err         string          `json:"error,omitempty"`
	Wall        time.Duration   `json:"wall_ns"`
	Dir         string          `json:"dir"`
	Plots       []string        `json:"plots,omitempty"`
}

// OK reports a scenario that ran and passed the checker.
func (r *Result) OK() bool { return r.Err == "" && r.Report != nil && r.Report.OK() }

// Write writes report.md (a table of every scenario, then each one's
// checker report and plots) and report.json (the results as they are)
// into dir.
func Write(dir string, s Setup, results []*Result) error {
	var b strings.Builder
	b.WriteString("# qkdkms failover experiments\n\n")
	fmt.Fprintf(&b, "Two sites (the relay-* scenarios: 3 or 4) × %d node processes (loopback; own network namespaces on a bridge for the isolate/link-cut scenarios; tmpfs data dirs for disk-full); workload: %.0f enc_keys/s × %d keys of %d bits for %v, every key fetched by dec_keys at the peer site; drain window %v after healing.\n\n",
		s.Nodes, s.Rate, s.Number, s.KeyBits, s.Duration, s.FetchWindow)
	b.WriteString("| scenario | verdict | requests | ok | errors | ambiguous | double-issued | not fetchable | never issued | 2nd fetch | mismatch | burned ≤ allowance | p50 / p99 during | max recovery |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range results {
		verdict := "PASS"
		if !r.OK() {
			verdict = "FAIL"
		}
		rep := r.Report
		if rep == nil {
			fmt.Fprintf(&b, "| %s | ERROR | | | | | | | | | | | | |\n", r.Scenario)
			continue
		}
		lat := rep.Latency[checker.PhaseDuring]
		if lat.Count == 0 {
			lat = rep.Latency[checker.PhaseBefore]
		}
		rec := "–"
		if len(rep.Recovery) > 0 {
			rec = rep.MaxRecovery.Round(time.Millisecond).String()
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %d | %d | %d | %d | %d | %d | %d | %d | %d ≤ %d | %v / %v | %s |\n",
			r.Scenario, verdict, rep.Requests, rep.Successes, rep.Errors, rep.Ambiguous, rep.DoubleIssued, rep.NotFetchable,
			rep.DecNeverIssued, rep.SecondFetch, rep.ByteMismatch, rep.Burned, rep.BurnAllowance,
			lat.P50.Round(100*time.Microsecond), lat.P99.Round(100*time.Microsecond), rec)
	}
	b.WriteString("\n")
	for _, r := range results {
		fmt.Fprintf(&b, "## %s\n\n%s\n\n", r.Scenario, r.Description)
		if r.Err != "" {
			fmt.Fprintf(&b, "**error:** %s\n\n", r.Err)
		}
		if r.Report != nil {
			b.WriteString(r.Report.Markdown(r.Scenario))
		}
		for _, p := range r.Plots {
			rel, _ := filepath.Rel(dir, p)
			fmt.Fprintf(&b, "\n![%s](%s)\n", filepath.Base(p), rel)
		}
		b.WriteString("\n")
	}
	if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	js, err := json.MarshalIndent(results, "", " ")
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "report.json"), js, 0o644); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	return nil
}

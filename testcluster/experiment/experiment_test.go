package experiment

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"qkdkms/testcluster/faults"
)

// TestMainCLI pins the lab command's answers that start no cluster: the
// scenario list, usage errors, an unknown scenario and a missing binary.
func TestMainCLI(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "qkdkms")
	tests := []struct {
		name      string
		args      []string
		code      int
		out, errs string
	}{
		{name: "list", args: []string{"list"}, code: 0, out: "leader-kill"},
		{name: "no command", args: nil, code: 2, errs: "usage: qkdkms-lab run"},
		{name: "unknown command", args: []string{"experiment"}, code: 2, errs: `unknown command "experiment"`},
		{name: "help", args: []string{"help"}, code: 0, out: "qkdkms-lab list"},
		{name: "run without scenarios", args: []string{"run"}, code: 2, errs: "name scenarios or all"},
		{name: "unknown scenario", args: []string{"run", "--quiet", "--bin", "/bin/sh", "--out", "OUT", "no-such"}, code: 1, errs: `unknown scenario "no-such"`},
		{name: "missing binary", args: []string{"run", "--quiet", "--bin", missing, "--out", "OUT", "none"}, code: 1, errs: "make build, or --bin"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := t.TempDir()
			args := append([]string(nil), tc.args...)
			for i, a := range args {
				if a == "OUT" {
					args[i] = out
				}
			}
			var stdout, stderr bytes.Buffer
			code := Main(context.Background(), args, &stdout, &stderr)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, stdout.String(), stderr.String())
			}
			if !strings.Contains(stdout.String(), tc.out) || !strings.Contains(stderr.String(), tc.errs) {
				t.Fatalf("stdout %q (want %q), stderr %q (want %q)", stdout.String(), tc.out, stderr.String(), tc.errs)
			}
		})
	}
}

// TestListNamesEveryScenario: `qkdkms-lab list` prints one line per
// scenario of testcluster/faults, with its description.
func TestListNamesEveryScenario(t *testing.T) {
	var stdout bytes.Buffer
	if code := Main(context.Background(), []string{"list"}, &stdout, &bytes.Buffer{}); code != 0 {
		t.Fatalf("exit %d", code)
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) != len(faults.Scenarios) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(faults.Scenarios), stdout.String())
	}
	for i, n := range faults.Names() {
		if f := strings.Fields(lines[i]); len(f) < 2 || f[0] != n || !strings.Contains(lines[i], faults.Scenarios[n].Description) {
			t.Errorf("line %d %q, want %s and its description", i, lines[i], n)
		}
	}
}

package node

import (
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestImportGraph keeps the dependencies between the project's parts one
// way: node → (etsi, raftstore, quantum) → plugins, etsi never imports
// raftstore, and only node's own packages (its commands among them) and
// testcluster import node. Shared test helpers (plugins/testenv) sit in the
// bottom layer, so any package may use them.
// Test files count: a test that imports against the grain ties the parts
// together as much as the code does.
func TestImportGraph(t *testing.T) {
	out, err := exec.Command("go", "list", "-e", "-json", "qkdkms/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	type pkg struct {
		ImportPath                         string
		Imports, TestImports, XTestImports []string
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	n := 0
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("go list output: %v", err)
		}
		n++
		for _, imps := range []struct {
			where string
			paths []string
		}{{"", p.Imports}, {" (in its tests)", p.TestImports}, {" (in its external tests)", p.XTestImports}} {
			for _, imp := range imps.paths {
				if why := importRule(p.ImportPath, imp); why != "" {
					t.Errorf("%s imports %s%s: %s", p.ImportPath, imp, imps.where, why)
				}
			}
		}
	}
	if n < 10 {
		t.Fatalf("go list found %d packages: not the whole module", n)
	}
}

// importRule says why from may not import to ("" when it may).
func importRule(from, to string) string {
	part := func(p string) string {
		rest, ok := strings.CutPrefix(p, "qkdkms/")
		if !ok {
			return "" // outside the module (standard library, dependencies)
		}
		first, _, _ := strings.Cut(rest, "/")
		return first
	}
	f, tp := part(from), part(to)
	if tp == "" || tp == f {
		return ""
	}
	switch {
	case tp == "node" && f != "testcluster":
		return "only node's own packages and testcluster import node"
	case f == "plugins":
		return "plugins is the bottom layer: it imports no other part of the project"
	case f == "etsi" && tp == "raftstore":
		return "etsi must not depend on raftstore (the ETSI layer knows only its own Backend)"
	case (f == "etsi" || f == "raftstore" || f == "quantum") && tp != "etsi" && tp != "raftstore" && tp != "quantum" && tp != "plugins":
		return f + " sits below node: it imports only etsi, raftstore, quantum and plugins"
	}
	return ""
}

// TestImportRule pins the rule on the edges it is about.
func TestImportRule(t *testing.T) {
	tests := []struct {
		from, to string
		ok       bool
	}{
		{"qkdkms/node", "qkdkms/etsi", true},
		{"qkdkms/node/kme", "qkdkms/raftstore", true},
		{"qkdkms/node/cmd/qkdkms", "qkdkms/node", true},
		{"qkdkms/node/cmd/qkdkms", "qkdkms/testcluster/demo", true},
		{"qkdkms/testcluster/demo", "qkdkms/node", true},
		{"qkdkms/testcluster/experiment", "qkdkms/node/cmd/qkdkms", true},
		{"qkdkms/quantum/session", "qkdkms/plugins/host", true},
		{"qkdkms/raftstore/storetest", "qkdkms/plugins/testenv", true},
		{"qkdkms/node", "qkdkms/plugins/testenv", true},
		{"qkdkms/etsi", "net/http", true},
		{"qkdkms/etsi", "qkdkms/raftstore", false},
		{"qkdkms/etsi/client", "qkdkms/raftstore/storetest", false},
		{"qkdkms/raftstore", "qkdkms/node", false},
		{"qkdkms/quantum", "qkdkms/node/link", false},
		{"qkdkms/quantum", "qkdkms/testcluster", false},
		{"qkdkms/plugins/host", "qkdkms/quantum", false},
		{"qkdkms/plugins/host", "qkdkms/node", false},
		{"qkdkms/plugins/testenv", "qkdkms/raftstore", false},
		{"qkdkms/plugins/testenv", "qkdkms/node", false},
	}
	for _, tc := range tests {
		if why := importRule(tc.from, tc.to); (why == "") != tc.ok {
			t.Errorf("%s → %s: allowed %v, want %v (%s)", tc.from, tc.to, why == "", tc.ok, why)
		}
	}
}

// serverBinary is the package of bin/qkdkms, the server.
const serverBinary = "qkdkms/node/cmd/qkdkms"

// TestServerBinaryDeps keeps the lab out of the server (README, "Failover
// experiments"): bin/qkdkms links the demo and its process harness
// (testcluster/demo, testcluster/harness: `make run`, `demo-init`) but none
// of the experiment runner, workload, checker, report or plotting code,
// which the lab command testcluster/cmd/qkdkms-lab links instead. Before
// the split the server was 30.2 MB with gonum/plot and its LaTeX, PDF and
// font packages; without them 23.1 MB.
func TestServerBinaryDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", serverBinary).Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", serverBinary, err)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, "qkdkms/testcluster/demo") || !slices.Contains(deps, "github.com/hashicorp/raft") {
		t.Fatalf("go list -deps %s lists %d packages without the demo or Raft: not the server's graph", serverBinary, len(deps))
	}
	for _, d := range deps {
		if why := serverDepRule(d); why != "" {
			t.Errorf("%s links %s: %s", serverBinary, d, why)
		}
	}
}

// serverDepRule says why the server binary may not link package p ("" when
// it may).
func serverDepRule(p string) string {
	for _, prefix := range []string{
		"gonum.org/v1/plot", "codeberg.org/go-latex", "codeberg.org/go-pdf", "codeberg.org/go-fonts",
		"git.sr.ht/~sbinet/gg", "github.com/ajstarks/svgo", "github.com/golang/freetype",
	} {
		if p == prefix || strings.HasPrefix(p, prefix+"/") {
			return "plotting, LaTeX, PDF and font code belong to the lab command (testcluster/report)"
		}
	}
	rest, ok := strings.CutPrefix(p, "qkdkms/testcluster")
	if !ok || (rest != "" && rest[0] != '/') {
		return ""
	}
	switch first, _, _ := strings.Cut(strings.TrimPrefix(rest, "/"), "/"); first {
	case "demo", "harness":
		return ""
	default:
		return "of testcluster the server links only demo and harness (make run, demo-init); experiments are qkdkms-lab's"
	}
}

// TestServerDepRule pins serverDepRule on the packages it is about.
func TestServerDepRule(t *testing.T) {
	tests := []struct {
		pkg string
		ok  bool
	}{
		{"qkdkms/testcluster/demo", true},
		{"qkdkms/testcluster/harness", true},
		{"qkdkms/node/link", true},
		{"github.com/hashicorp/raft", true},
		{"github.com/schollz/progressbar/v3", true},
		{"qkdkms/testclusterx", true},
		{"image/png", true},
		{"qkdkms/testcluster", false},
		{"qkdkms/testcluster/report", false},
		{"qkdkms/testcluster/experiment", false},
		{"qkdkms/testcluster/workload", false},
		{"qkdkms/testcluster/checker", false},
		{"qkdkms/testcluster/faults", false},
		{"qkdkms/testcluster/history", false},
		{"qkdkms/testcluster/internal/proctest", false},
		{"gonum.org/v1/plot", false},
		{"gonum.org/v1/plot/vg/vgpdf", false},
		{"codeberg.org/go-latex/latex/mtex", false},
		{"codeberg.org/go-pdf/fpdf", false},
		{"codeberg.org/go-fonts/liberation/liberationsansregular", false},
		{"git.sr.ht/~sbinet/gg", false},
		{"github.com/ajstarks/svgo", false},
		{"github.com/golang/freetype/raster", false},
	}
	for _, tc := range tests {
		if why := serverDepRule(tc.pkg); (why == "") != tc.ok {
			t.Errorf("%s: allowed %v, want %v (%s)", tc.pkg, why == "", tc.ok, why)
		}
	}
}

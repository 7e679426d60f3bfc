package node

import (
	"encoding/json"
	"errors"
	"io"
	"os/exec"
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
		{"qkdkms/node/cmd/qkdkms", "qkdkms/testcluster", true},
		{"qkdkms/testcluster", "qkdkms/node", true},
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

// Package pluginbuild builds the step plugins for tests and benchmarks: it
// runs plugins/build.sh into a directory under the user cache keyed by a
// hash of the plugin sources and the Go version, so `go test ./...` works on
// a fresh clone and later runs reuse the build.
package pluginbuild

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
)

type result struct {
	once sync.Once
	dir  string
	err  error
}

var shipped, goGuests result

// Dir returns a directory holding the plugins as shipped (plugins/build.sh:
// the committed C builds of the steps that have one, Go builds of the
// others) and manifest.json, building them if needed. Safe for concurrent
// use; builds at most once per process.
func Dir() (string, error) {
	shipped.once.Do(func() { shipped.dir, shipped.err = build(false) })
	return shipped.dir, shipped.err
}

// GoDir is Dir with every step built from its Go guest (GO_GUESTS=1), the
// reference implementation.
func GoDir() (string, error) {
	goGuests.once.Do(func() { goGuests.dir, goGuests.err = build(true) })
	return goGuests.dir, goGuests.err
}

// Root finds the repository root (the directory holding go.mod) above the
// working directory.
func Root() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		p := filepath.Dir(d)
		if p == d {
			return "", fmt.Errorf("pluginbuild: no go.mod above the working directory")
		}
		d = p
	}
}

func build(goOnly bool) (string, error) {
	root, err := Root()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintln(h, runtime.Version(), goOnly)
	var files []string
	for _, sub := range []string{"plugins/steps", "plugins/sdk", "plugins/wasm", "plugins/c/wasm", "plugins/build.sh", "go.mod", "go.sum"} {
		_ = filepath.WalkDir(filepath.Join(root, sub), func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() && (strings.HasSuffix(p, ".go") && !strings.HasSuffix(p, "_test.go") || strings.HasSuffix(p, ".sh") || strings.HasSuffix(p, ".mod") || strings.HasSuffix(p, ".sum") || strings.HasSuffix(p, ".wasm")) {
				files = append(files, p)
			}
			return nil
		})
	}
	sort.Strings(files)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		rel, _ := filepath.Rel(root, f)
		fmt.Fprintf(h, "%s %d\n", rel, len(b))
		h.Write(b)
	}
	key := hex.EncodeToString(h.Sum(nil))[:20]
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	out := filepath.Join(base, "qkdkms-plugins", key)
	if _, err := os.Stat(filepath.Join(out, "manifest.json")); err == nil {
		return out, nil
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(out), "build-")
	if err != nil {
		return "", err
	}
	cmd := exec.Command("sh", filepath.Join(root, "plugins", "build.sh"), tmp)
	cmd.Dir = root
	if goOnly {
		cmd.Env = append(os.Environ(), "GO_GUESTS=1")
	}
	if o, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("pluginbuild: build.sh: %w\n%s", err, o)
	}
	if err := os.Rename(tmp, out); err != nil {
		os.RemoveAll(tmp)
		if _, serr := os.Stat(filepath.Join(out, "manifest.json")); serr == nil {
			return out, nil // a concurrent build won
		}
		return "", err
	}
	return out, nil
}

//go:build e2e

package harness

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"qkdkms/plugins/testenv"
	"qkdkms/testcluster/internal/proctest"
)

// TestComposeSeedWorkflow brings the docker-compose deployment up (the
// Makefile's `e2e` target builds bin/qkdkms and bin/plugins first) with the
// seed API opted in (SeedOverride), runs the seed README's three requests
// against host ports 127.0.0.1:8000/8001 and takes it down. Set TESTCLUSTER_COMPOSE=1 to run it.
func TestComposeSeedWorkflow(t *testing.T) {
	if os.Getenv("TESTCLUSTER_COMPOSE") == "" {
		t.Skip("set TESTCLUSTER_COMPOSE=1 (needs docker-compose and bin/qkdkms)")
	}
	if out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		t.Skipf("SKIPPED: no Docker engine reachable (%v: %s); the compose deployment was not tested", err, out)
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	compose := func(args ...string) {
		t.Helper()
		// The seed API is opt-in: the override turns it on, on the host's
		// loopback only.
		files := []string{"-f", filepath.Join(root, "deploy", "docker-compose.yml"), "-f", filepath.Join(root, SeedOverride)}
		cmd := exec.Command("docker-compose", append(files, args...)...)
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		t.Logf("docker-compose %v:\n%s", args, out)
		if err != nil {
			t.Fatalf("docker-compose %v: %v", args, err)
		}
	}
	compose("up", "-d", "--build")
	t.Cleanup(func() {
		if t.Failed() {
			compose("logs", "--tail=30")
		}
		compose("down")
	})
	for _, port := range []string{"8000", "8001"} {
		testenv.WaitFor(t, "the seed API on "+port, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:"+port+"/ping", nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		})
	}
	pkiDir := filepath.Join(root, ".deploy", "pki")
	proctest.SeedWorkflow(t, 8000, 8001, func() {
		// Keys come from the QKD link between the two sites' leaders: wait
		// until the pool holds one (WASM sessions over the simulated fiber).
		c := &Cluster{Layout: &Layout{PKIDir: pkiDir}, https: map[string]*http.Client{}}
		h, err := c.HTTPClient("ghi")
		if err != nil {
			t.Fatal(err)
		}
		var stored int
		testenv.WaitWithin(t, "a key from the QKD link", 3*time.Minute, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			var st struct {
				Stored int `json:"stored_key_count"`
			}
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://127.0.0.1:8443/api/v1/keys/jkl/status", nil)
			_, err := doJSON(h, req, &st)
			stored = st.Stored
			return err == nil && st.Stored > 0
		})
		t.Logf("pool holds %d keys from the QKD link", stored)
	})
}

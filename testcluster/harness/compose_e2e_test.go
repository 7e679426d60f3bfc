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
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, port := range []string{"8000", "8001"} {
		for {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:"+port+"/ping", nil)
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			if ctx.Err() != nil {
				t.Fatalf("seed API on %s never answered: %v", port, err)
			}
			time.Sleep(300 * time.Millisecond)
		}
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
		wctx, wcancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer wcancel()
		for {
			var st struct {
				Stored int `json:"stored_key_count"`
			}
			req, _ := http.NewRequestWithContext(wctx, http.MethodGet, "https://127.0.0.1:8443/api/v1/keys/jkl/status", nil)
			_, err := doJSON(h, req, &st)
			if err == nil && st.Stored > 0 {
				t.Logf("pool holds %d keys from the QKD link", st.Stored)
				return
			}
			if wctx.Err() != nil {
				t.Fatalf("no key from the QKD link within 3 minutes: %v", err)
			}
			time.Sleep(time.Second)
		}
	})
}

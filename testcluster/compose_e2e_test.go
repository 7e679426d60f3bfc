//go:build e2e

package testcluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestComposeSeedWorkflow brings the docker-compose deployment up (the
// Makefile's `e2e` target builds bin/qkdkms and bin/plugins first), runs the
// seed README's three requests against host ports 8000/8001 and takes it
// down. Set TESTCLUSTER_COMPOSE=1 to run it.
func TestComposeSeedWorkflow(t *testing.T) {
	if os.Getenv("TESTCLUSTER_COMPOSE") == "" {
		t.Skip("set TESTCLUSTER_COMPOSE=1 (needs docker-compose and bin/qkdkms)")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	compose := func(args ...string) {
		t.Helper()
		cmd := exec.Command("docker-compose", append([]string{"-f", filepath.Join(root, "deploy", "docker-compose.yml")}, args...)...)
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
	seedWorkflowWith(t, 8000, 8001, func() {
		// Give key generation a chance; without it, import one block with
		// the operator certificate (a stand-in, logged).
		time.Sleep(3 * time.Second)
		c := &Cluster{Layout: &Layout{PKIDir: pkiDir}, https: map[string]*http.Client{}}
		h, err := c.HTTPClient(OperatorName(DefaultSender))
		if err != nil {
			t.Fatal(err)
		}
		bits := make([]byte, 10)
		_, _ = rand.Read(bits)
		body, _ := json.Marshal(map[string]any{"master_SAE_ID": "ghi", "slave_SAE_ID": "jkl", "block_id": "e2e-" + time.Now().Format("150405.000"), "bits": bits})
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "https://127.0.0.1:8443/admin/v1/blocks", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if _, err := doJSON(h, req, nil); err != nil {
			t.Logf("block import (stand-in for key generation): %v", err)
		} else {
			t.Log("imported one block through the admin API (stand-in for key generation)")
		}
	})
}

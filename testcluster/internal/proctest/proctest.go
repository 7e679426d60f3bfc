// Package proctest is what the process-level tests of testcluster share:
// the qkdkms binary their nodes run, built once per test binary by Main,
// and the seed README's three requests (README, "The seed's workflow")
// against a running deployment.
package proctest

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"qkdkms/plugins/testenv"
)

// binary is the qkdkms built by Main ("" with -short, with
// TESTCLUSTER_SKIP_BUILD set, or when the build failed: buildErr).
var (
	binary   string
	buildErr error
)

// Main is a package's TestMain: it builds qkdkms/node/cmd/qkdkms
// (CGO_ENABLED=0) into a temporary directory unless the tests run with
// -short or TESTCLUSTER_SKIP_BUILD is set, runs the tests and removes it.
func Main(m *testing.M) {
	flag.Parse()
	code := func() int {
		if !testing.Short() && os.Getenv("TESTCLUSTER_SKIP_BUILD") == "" {
			dir, err := os.MkdirTemp("", "testcluster-bin-")
			if err != nil {
				buildErr = fmt.Errorf("proctest: %w", err)
			} else {
				defer os.RemoveAll(dir)
				binary = filepath.Join(dir, "qkdkms")
				cmd := exec.Command("go", "build", "-o", binary, "qkdkms/node/cmd/qkdkms")
				cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
				if out, err := cmd.CombinedOutput(); err != nil {
					buildErr = fmt.Errorf("proctest: go build: %w\n%s", err, out)
				}
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

// Binary returns the qkdkms binary Main built. It skips the test with
// -short and fails it when the build failed.
func Binary(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("process cluster test: skipped with -short")
	}
	if buildErr != nil {
		t.Fatalf("build qkdkms: %v", buildErr)
	}
	if binary == "" {
		t.Fatal("proctest: no binary: the package's TestMain must call proctest.Main (or unset TESTCLUSTER_SKIP_BUILD)")
	}
	return binary
}

// SeedWorkflow runs the seed README's three curl lines (as HTTP requests,
// same methods, bodies and headers) against the seed APIs on 127.0.0.1 at
// senderPort and receiverPort: register, get a key at the master side,
// fetch it by ID at the slave side; the bytes must match. fill, when not
// nil, runs once after registering, for deployments that need a stand-in
// for key generation or a wait for it.
func SeedWorkflow(t *testing.T, senderPort, receiverPort int, fill func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	post := func(url, ctype, body string) (int, map[string]any) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		// curl --data sets this Content-Type unless --header overrides it.
		req.Header.Set("Content-Type", ctype)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	code, m := post(fmt.Sprintf("http://localhost:%d/register_connection", senderPort), "application/json", `{
  "source_KME_ID": "sender_app",
  "target_KME_ID": "receiver_app",
  "master_SAE_ID": "ghi",
  "slave_SAE_ID": "jkl",
  "key_size": 8,
  "max_keys_count": 10,
  "max_key_per_request": 1,
  "max_SAE_ID_count": 0

}`)
	if code != http.StatusOK {
		t.Fatalf("register_connection: %d %v", code, m)
	}
	if fill != nil {
		fill()
	}
	// Keys arrive from the QKD link; get_key answers 503 until they have.
	ctx, cancel = context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var master map[string]any
	testenv.WaitFor(t, "a key from master get_key", func() bool {
		code, master = post(fmt.Sprintf("http://127.0.0.1:%d/get_key?slave_host=jkl", senderPort), "application/x-www-form-urlencoded", "")
		if code != http.StatusOK && code != http.StatusServiceUnavailable {
			t.Fatalf("master get_key: %d %v", code, master)
		}
		return code == http.StatusOK
	})
	id, _ := master["key_id"].(string)
	code, slave := post(fmt.Sprintf("http://127.0.0.1:%d/get_key?key_id=%s", receiverPort, id), "application/x-www-form-urlencoded", "")
	if code != http.StatusOK {
		t.Fatalf("slave get_key: %d %v", code, slave)
	}
	if slave["key_id"] != id || slave["key_data"] != master["key_data"] || master["key_data"] == "" {
		t.Fatalf("slave got %v, master got %v", slave, master)
	}
	t.Logf("seed workflow: key %s = %v at both sites", id, master["key_data"])
}
